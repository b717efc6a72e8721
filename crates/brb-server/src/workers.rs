//! Who obeys: the registry of worker reports, per switch.
//!
//! Workers report what they observed (switch version) and what they do (running, draining,
//! paused). From that the control plane answers "38/40 workers paused · 85 ms": how many live
//! workers there are per status, and for each recent change how long until the last live
//! worker acknowledged it. Workers that stop reporting become stale, then are forgotten.
//!
//! OpenFeature providers reading a switch over OFREP (`ofrep.rs`) send no report: they are
//! counted apart, as the readers seen lately and the version each was last told, never as
//! workers and never as acknowledgements. They are this replica's own: not shared.
//!
//! The registry is in memory: it is rebuilt within one report interval after a restart, and
//! losing it loses no decision, only a few seconds of the picture.
//!
//! With several replicas, each keeps the workers that report to it and, about once a second,
//! exchanges an [`export`](Workers::export) of them through the store (`propagate.rs`); the
//! others' workers are held as a remote set and merged into [`counts`](Workers::counts), the
//! fresher report winning when a worker moved between replicas. Each export carries, per
//! tracked drill, when the worker first reported it, so a drill started anywhere is reported
//! in full by any replica ([`answers`](Workers::answers)).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use brb_api::{
    ChangeAck, Switch, SwitchState, WorkerCounts, WorkerInfo, WorkerReport, WorkerStatus,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Changes remembered per switch for acknowledgement timing.
const TRACKED_CHANGES: usize = 20;

struct Worker {
    status: WorkerStatus,
    observed_version: u64,
    in_flight: u32,
    processed_total: u64,
    last_seen: DateTime<Utc>,
    remote_addr: Option<String>,
    stale: bool,
    error: Option<String>,
}

struct Track {
    version: u64,
    state: SwitchState,
    changed_at: DateTime<Utc>,
    /// worker id → its first report at or past this version (this replica's clock). Kept as
    /// an instant, not a duration, so a drill's start can be set after the reports arrived.
    acks: HashMap<String, DateTime<Utc>>,
    /// A fire drill: its answers' instants are shared (`SharedWorker::acked_at`).
    drill: bool,
}

impl Track {
    fn ms(&self, at: DateTime<Utc>) -> u64 {
        (at - self.changed_at).num_milliseconds().max(0) as u64
    }
}

#[derive(Default)]
struct PerSwitch {
    workers: HashMap<String, Worker>,
    changes: VecDeque<Track>,
    dirty: bool,
}

/// One worker as a replica shares it with the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedWorker {
    pub switch: String,
    pub worker_id: String,
    pub status: WorkerStatus,
    pub observed_version: u64,
    pub in_flight: u32,
    pub processed_total: u64,
    pub last_seen: DateTime<Utc>,
    pub remote_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `(version, ms)`: how long after each tracked change this worker acknowledged it.
    pub acks: Vec<(u64, u64)>,
    /// `(version, instant)`: when this worker first reported each tracked drill, on its
    /// replica's clock (drills only: they are rare, and this doubles an entry's size). A
    /// drill's report reads these whichever replica answers it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked_at: Vec<(u64, DateTime<Utc>)>,
}

pub struct Workers {
    inner: Mutex<HashMap<String, PerSwitch>>,
    /// Workers reporting to other replicas, by switch then id.
    remote: Mutex<HashMap<String, HashMap<String, SharedWorker>>>,
    stale_after: chrono::Duration,
    forget_after: chrono::Duration,
    /// OFREP readers: counted apart, they never report.
    ofrep: crate::ofrep::Readers,
}

impl Workers {
    pub fn new(stale_after: Duration, forget_after: Duration) -> Self {
        Workers {
            inner: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            stale_after: chrono::Duration::from_std(stale_after)
                .unwrap_or(chrono::Duration::seconds(15)),
            forget_after: chrono::Duration::from_std(forget_after)
                .unwrap_or(chrono::Duration::seconds(300)),
            ofrep: crate::ofrep::Readers::default(),
        }
    }

    /// An OFREP reader was answered `version` of `switch`.
    pub fn ofrep_read(
        &self,
        switch: &str,
        reader: crate::ofrep::ReaderId,
        version: u64,
        now: DateTime<Utc>,
    ) {
        if self.ofrep.saw(switch, reader, version, now) {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(switch.to_string()).or_default().dirty = true;
        }
    }

    /// A state change was committed: start timing its acknowledgements.
    pub fn on_change(&self, s: &Switch) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let per = map.entry(s.name.clone()).or_default();
        // Idempotent: the local write path and the replica catch-up may both announce it.
        if per.changes.front().is_some_and(|t| t.version >= s.version) {
            return;
        }
        let mut track = Track {
            version: s.version,
            state: s.state,
            changed_at: s.changed_at,
            acks: HashMap::new(),
            drill: false,
        };
        // Workers already at or past it (they raced ahead through another replica) count at 0.
        for (id, w) in &per.workers {
            if w.observed_version >= s.version {
                track.acks.insert(id.clone(), s.changed_at);
            }
        }
        per.changes.push_front(track);
        per.changes.truncate(TRACKED_CHANGES);
        per.dirty = true;
    }

    /// A fire drill was committed (version `s.version`, started at `at`): time its
    /// acknowledgements from `at`, not from `changed_at` (which stays the last state change).
    /// Called when this replica publishes the drill (with the time it heard of it) and again by
    /// the replica that started it (with the start): the answers already recorded are kept,
    /// only the start moves. A worker that already reported the version when the drill was
    /// first heard of is timed by its last report.
    pub fn on_drill(&self, s: &Switch, at: DateTime<Utc>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let per = map.entry(s.name.clone()).or_default();
        if let Some(t) = per.changes.iter_mut().find(|t| t.version == s.version) {
            t.changed_at = at;
            per.dirty = true;
            return;
        }
        let mut track = Track {
            version: s.version,
            state: s.state,
            changed_at: at,
            acks: HashMap::new(),
            drill: true,
        };
        for (id, w) in &per.workers {
            if w.observed_version >= s.version {
                track.acks.insert(id.clone(), w.last_seen);
            }
        }
        // Newest first, as `on_change` keeps them.
        let at_pos = per
            .changes
            .iter()
            .position(|t| t.version < s.version)
            .unwrap_or(per.changes.len());
        per.changes.insert(at_pos, track);
        per.changes.truncate(TRACKED_CHANGES);
        per.dirty = true;
    }

    /// When each worker first reported `version` of `switch`: this replica's workers, and the
    /// other replicas' from their shared records (this replica's own report wins for a worker
    /// that moved here).
    pub fn answers(&self, switch: &str, version: u64) -> HashMap<String, DateTime<Utc>> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut acks = map
            .get(switch)
            .and_then(|per| per.changes.iter().find(|t| t.version == version))
            .map(|t| t.acks.clone())
            .unwrap_or_default();
        drop(map);
        let remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        for w in remote.get(switch).into_iter().flat_map(|m| m.values()) {
            if let Some((_, at)) = w.acked_at.iter().find(|(v, _)| *v == version) {
                acks.entry(w.worker_id.clone()).or_insert(*at);
            }
        }
        acks
    }

    pub fn report(&self, r: WorkerReport, remote_addr: Option<String>, now: DateTime<Utc>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let per = map.entry(r.switch.clone()).or_default();
        let changed = match per.workers.get(&r.worker_id) {
            Some(w) => {
                w.status != r.status
                    || w.observed_version != r.observed_version
                    || w.stale
                    || w.error != r.error
            }
            None => true,
        };
        for t in per.changes.iter_mut() {
            if r.observed_version >= t.version && !t.acks.contains_key(&r.worker_id) {
                t.acks.insert(r.worker_id.clone(), now);
            }
        }
        per.workers.insert(
            r.worker_id,
            Worker {
                status: r.status,
                observed_version: r.observed_version,
                in_flight: r.in_flight,
                processed_total: r.processed_total,
                last_seen: now,
                remote_addr,
                stale: false,
                error: r.error,
            },
        );
        if changed {
            per.dirty = true;
        }
    }

    /// Marks workers stale and forgets long-silent ones; flags switches whose picture changed.
    pub fn sweep(&self, now: DateTime<Utc>) {
        let left = self.ofrep.sweep(now);
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for name in left {
            map.entry(name).or_default().dirty = true;
        }
        for per in map.values_mut() {
            let before = per.workers.len();
            per.workers
                .retain(|_, w| now - w.last_seen <= self.forget_after);
            let mut dirty = before != per.workers.len();
            for w in per.workers.values_mut() {
                let stale = now - w.last_seen > self.stale_after;
                if stale != w.stale {
                    w.stale = stale;
                    dirty = true;
                }
            }
            per.dirty |= dirty;
        }
    }

    /// This replica's own workers, for the others.
    pub fn export(&self) -> Vec<SharedWorker> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (switch, per) in map.iter() {
            for (id, w) in &per.workers {
                out.push(SharedWorker {
                    switch: switch.clone(),
                    worker_id: id.clone(),
                    status: w.status,
                    observed_version: w.observed_version,
                    in_flight: w.in_flight,
                    processed_total: w.processed_total,
                    last_seen: w.last_seen,
                    remote_addr: w.remote_addr.clone(),
                    error: w.error.clone(),
                    acks: per
                        .changes
                        .iter()
                        .filter_map(|t| t.acks.get(id).map(|at| (t.version, t.ms(*at))))
                        .collect(),
                    acked_at: per
                        .changes
                        .iter()
                        .filter(|t| t.drill)
                        .filter_map(|t| t.acks.get(id).map(|at| (t.version, *at)))
                        .collect(),
                });
            }
        }
        out
    }

    /// Replaces the picture of the workers reporting to other replicas.
    pub fn set_remote(&self, workers: Vec<SharedWorker>) {
        let mut next: HashMap<String, HashMap<String, SharedWorker>> = HashMap::new();
        for w in workers {
            let slot = next.entry(w.switch.clone()).or_default();
            match slot.get(&w.worker_id) {
                Some(have) if have.last_seen >= w.last_seen => {}
                _ => {
                    slot.insert(w.worker_id.clone(), w);
                }
            }
        }
        let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed: Vec<String> = Vec::new();
        for (switch, ws) in &next {
            let differs = remote.get(switch).is_none_or(|old| {
                old.len() != ws.len()
                    || ws.iter().any(|(id, w)| {
                        old.get(id).is_none_or(|o| {
                            o.status != w.status || o.observed_version != w.observed_version
                        })
                    })
            });
            if differs {
                changed.push(switch.clone());
            }
        }
        changed.extend(remote.keys().filter(|k| !next.contains_key(*k)).cloned());
        *remote = next;
        drop(remote);
        if !changed.is_empty() {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            for name in changed {
                map.entry(name).or_default().dirty = true;
            }
        }
    }

    /// Switches whose counts changed since the last call.
    pub fn take_dirty(&self) -> Vec<String> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.iter_mut()
            .filter_map(|(name, per)| std::mem::take(&mut per.dirty).then(|| name.clone()))
            .collect()
    }

    pub fn counts(&self, switch: &Switch, with_workers: bool) -> WorkerCounts {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let remote = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = WorkerCounts {
            switch: switch.name.clone(),
            version: switch.version,
            total: 0,
            running: 0,
            draining: 0,
            paused: 0,
            stale: 0,
            current: None,
            changes: Vec::new(),
            workers: Vec::new(),
            unacknowledged: self.ofrep.counts(&switch.name, switch.version, Utc::now()),
        };
        let empty = PerSwitch::default();
        let per = map.get(&switch.name).unwrap_or(&empty);
        let now = Utc::now();
        // Every worker once: this replica's, then the others' unless this one heard from the
        // same worker more recently (it moved here).
        // Keyed by worker id, so merging the other replicas' reports stays linear in the fleet.
        let mut by_id: HashMap<&String, View<'_>> = per
            .workers
            .iter()
            .map(|(id, w)| {
                let v = View {
                    id,
                    status: w.status,
                    observed_version: w.observed_version,
                    in_flight: w.in_flight,
                    processed_total: w.processed_total,
                    last_seen: w.last_seen,
                    remote_addr: w.remote_addr.as_deref(),
                    stale: w.stale,
                    error: w.error.as_deref(),
                    remote_acks: None,
                    remote_acked_at: None,
                };
                (id, v)
            })
            .collect();
        if let Some(rs) = remote.get(&switch.name) {
            for (id, w) in rs {
                if per
                    .workers
                    .get(id)
                    .is_some_and(|l| l.last_seen >= w.last_seen)
                {
                    continue;
                }
                by_id.insert(
                    id,
                    View {
                        id,
                        status: w.status,
                        observed_version: w.observed_version,
                        in_flight: w.in_flight,
                        processed_total: w.processed_total,
                        last_seen: w.last_seen,
                        remote_addr: w.remote_addr.as_deref(),
                        stale: now - w.last_seen > self.stale_after,
                        error: w.error.as_deref(),
                        remote_acks: Some(&w.acks),
                        remote_acked_at: Some(&w.acked_at),
                    },
                );
            }
        }
        let views: Vec<View<'_>> = by_id.into_values().collect();
        if views.is_empty() && !map.contains_key(&switch.name) {
            return out;
        }
        for w in &views {
            out.total += 1;
            if w.stale {
                out.stale += 1;
                continue;
            }
            match w.status {
                WorkerStatus::Running => out.running += 1,
                WorkerStatus::Draining => out.draining += 1,
                WorkerStatus::Paused => out.paused += 1,
            }
        }
        let live: Vec<&View<'_>> = views.iter().filter(|w| !w.stale).collect();
        let ack_of = |t: &Track| {
            let acked: Vec<u64> = live
                .iter()
                .filter(|w| w.observed_version >= t.version)
                .map(|w| match (w.remote_acks, w.remote_acked_at) {
                    // From this replica's start of the change (a drill's start may be known
                    // here only), else as the other replica timed it (an older replica).
                    (Some(acks), at) => at
                        .and_then(|a| a.iter().find(|(v, _)| *v == t.version))
                        .map(|(_, at)| t.ms(*at))
                        .or_else(|| {
                            acks.iter()
                                .find(|(v, _)| *v == t.version)
                                .map(|(_, ms)| *ms)
                        })
                        .unwrap_or(0),
                    (None, _) => t.acks.get(w.id).map_or(0, |at| t.ms(*at)),
                })
                .collect();
            let total = live.len() as u32;
            let acknowledged = acked.len() as u32;
            ChangeAck {
                version: t.version,
                state: t.state,
                changed_at: t.changed_at,
                acknowledged,
                total,
                last_ack_ms: (total > 0 && acknowledged == total)
                    .then(|| acked.iter().copied().max().unwrap_or(0)),
            }
        };
        out.changes = per.changes.iter().map(ack_of).collect();
        out.current = match out.changes.iter().find(|c| c.version == switch.version) {
            Some(c) => Some(c.clone()),
            // No state change since this server started (or a description edit): count who
            // is at the current version, without timing.
            None => {
                let acknowledged = live
                    .iter()
                    .filter(|w| w.observed_version >= switch.version)
                    .count() as u32;
                Some(ChangeAck {
                    version: switch.version,
                    state: switch.state,
                    changed_at: switch.changed_at,
                    acknowledged,
                    total: live.len() as u32,
                    last_ack_ms: None,
                })
            }
        };
        if with_workers {
            let mut ws: Vec<WorkerInfo> = views
                .iter()
                .map(|w| WorkerInfo {
                    worker_id: w.id.clone(),
                    status: w.status,
                    observed_version: w.observed_version,
                    in_flight: w.in_flight,
                    processed_total: w.processed_total,
                    last_seen: w.last_seen,
                    stale: w.stale,
                    remote_addr: w.remote_addr.map(str::to_string),
                    error: w.error.map(str::to_string),
                })
                .collect();
            ws.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
            out.workers = ws;
        }
        out
    }
}

/// One worker as counted, whichever replica it reports to.
struct View<'a> {
    id: &'a String,
    status: WorkerStatus,
    observed_version: u64,
    in_flight: u32,
    processed_total: u64,
    last_seen: DateTime<Utc>,
    remote_addr: Option<&'a str>,
    stale: bool,
    error: Option<&'a str>,
    /// For a worker of another replica: its acknowledgement times.
    remote_acks: Option<&'a Vec<(u64, u64)>>,
    /// And when it first reported each version.
    remote_acked_at: Option<&'a Vec<(u64, DateTime<Utc>)>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::Source;

    fn sw(version: u64, state: SwitchState, at: DateTime<Utc>) -> Switch {
        Switch {
            name: "workers".into(),
            description: String::new(),
            primary: true,
            state,
            version,
            changed_at: at,
            changed_by: "t".into(),
            source: Source::Api,
            reason: None,
            ramp: None,
            resume_request: None,
        }
    }

    fn rep(id: &str, v: u64, status: WorkerStatus) -> WorkerReport {
        WorkerReport {
            worker_id: id.into(),
            switch: "workers".into(),
            observed_version: v,
            status,
            in_flight: 0,
            processed_total: 0,
            error: None,
        }
    }

    #[test]
    fn counts_and_ack_latency() {
        let reg = Workers::new(Duration::from_secs(15), Duration::from_secs(300));
        let t0 = Utc::now();
        reg.report(rep("a", 1, WorkerStatus::Running), None, t0);
        reg.report(rep("b", 1, WorkerStatus::Running), None, t0);
        let s2 = sw(2, SwitchState::Paused, t0);
        reg.on_change(&s2);
        reg.report(
            rep("a", 2, WorkerStatus::Paused),
            None,
            t0 + chrono::Duration::milliseconds(40),
        );
        let c = reg.counts(&s2, false);
        assert_eq!((c.total, c.running, c.paused), (2, 1, 1));
        let cur = c.current.unwrap();
        assert_eq!((cur.acknowledged, cur.total, cur.last_ack_ms), (1, 2, None));
        reg.report(
            rep("b", 2, WorkerStatus::Draining),
            None,
            t0 + chrono::Duration::milliseconds(85),
        );
        let c = reg.counts(&s2, true);
        assert_eq!((c.draining, c.paused), (1, 1));
        assert_eq!(c.current.unwrap().last_ack_ms, Some(85));
        assert_eq!(c.workers.len(), 2);
        assert!(reg.take_dirty().contains(&"workers".to_string()));
        assert!(reg.take_dirty().is_empty());
    }

    #[test]
    fn workers_of_other_replicas_are_counted_once() {
        let here = Workers::new(Duration::from_secs(15), Duration::from_secs(300));
        let there = Workers::new(Duration::from_secs(15), Duration::from_secs(300));
        let t0 = Utc::now();
        let s2 = sw(2, SwitchState::Paused, t0);
        here.on_change(&s2);
        there.on_change(&s2);
        here.on_change(&s2); // announced twice: still one tracked change
        here.report(rep("a", 2, WorkerStatus::Paused), None, t0);
        there.report(
            rep("b", 2, WorkerStatus::Paused),
            None,
            t0 + chrono::Duration::milliseconds(70),
        );
        // "a" moved: the older report on the other replica does not count twice.
        there.report(
            rep("a", 1, WorkerStatus::Running),
            None,
            t0 - chrono::Duration::seconds(1),
        );
        here.take_dirty();
        here.set_remote(there.export());
        assert_eq!(here.take_dirty(), vec!["workers".to_string()]);
        let c = here.counts(&s2, true);
        assert_eq!((c.total, c.paused, c.running), (2, 2, 0));
        assert_eq!(c.changes.len(), 1);
        let cur = c.current.unwrap();
        assert_eq!((cur.acknowledged, cur.total), (2, 2));
        assert_eq!(cur.last_ack_ms, Some(70));
        assert_eq!(c.workers.len(), 2);
    }

    #[test]
    fn a_drill_is_answered_on_every_replica_and_its_start_can_come_later() {
        let here = Workers::new(Duration::from_secs(15), Duration::from_secs(300));
        let there = Workers::new(Duration::from_secs(15), Duration::from_secs(300));
        let t0 = Utc::now();
        let ms = chrono::Duration::milliseconds;
        let s5 = sw(5, SwitchState::Running, t0 - chrono::Duration::hours(1));
        // Each replica heard of the drill when it published it; "there" a little later.
        here.on_drill(&s5, t0 + ms(2));
        there.on_drill(&s5, t0 + ms(9));
        here.report(rep("a", 5, WorkerStatus::Running), None, t0 + ms(30));
        there.report(rep("b", 5, WorkerStatus::Running), None, t0 + ms(50));
        // The start, learned afterwards: the answers keep their instants.
        here.on_drill(&s5, t0);
        here.set_remote(there.export());
        let got = here.answers("workers", 5);
        assert_eq!(got.len(), 2);
        assert_eq!(got["a"], t0 + ms(30));
        assert_eq!(
            got["b"],
            t0 + ms(50),
            "the other replica's worker, by its instant"
        );
        let c = here.counts(&s5, false);
        assert_eq!(c.current.unwrap().last_ack_ms, Some(50));
        assert!(here.answers("workers", 4).is_empty());
    }

    #[test]
    fn silent_workers_go_stale_then_away() {
        let reg = Workers::new(Duration::from_secs(15), Duration::from_secs(60));
        let t0 = Utc::now();
        reg.report(rep("a", 1, WorkerStatus::Running), None, t0);
        reg.report(rep("b", 1, WorkerStatus::Running), None, t0);
        reg.take_dirty();
        reg.report(
            rep("b", 1, WorkerStatus::Running),
            None,
            t0 + chrono::Duration::seconds(14),
        );
        reg.sweep(t0 + chrono::Duration::seconds(16));
        let s = sw(1, SwitchState::Running, t0);
        let c = reg.counts(&s, false);
        assert_eq!((c.total, c.running, c.stale), (2, 1, 1));
        assert_eq!(reg.take_dirty(), vec!["workers".to_string()]);
        // Stale workers do not hold up "all acknowledged".
        assert_eq!(c.current.unwrap().total, 1);
        reg.sweep(t0 + chrono::Duration::seconds(61));
        assert_eq!(reg.counts(&s, false).total, 1);
        reg.sweep(t0 + chrono::Duration::seconds(80));
        assert_eq!(reg.counts(&s, false).total, 0);
    }
}
