//! The weaker, documented model of what replicas serve from memory: hub `GET`s, event streams,
//! SDK gates, and webhook notifications.
//!
//! A replica cut off from the database keeps answering reads from its hub (README: "replicas
//! serve reads through an outage"), so a hub read may be stale. It must still never show a
//! version the audit does not have (or with another state), never show a version before its
//! write began, never go backwards within one process incarnation, and, once the faults have
//! healed, every observer must reach the final version within a bound.
//!
//! Two more guarantees of hub reads hold while nothing is broken:
//!
//! - **Read-your-writes.** A replica publishes a change to its hub before it answers the write
//!   (`commit.rs`: the change is read back under the write lock, then the 200 goes out), so a
//!   `GET` to the process that acknowledged version `v`, begun after the acknowledgement, shows
//!   at least `v`. The one exception the code allows: on PostgreSQL, when the read-back fails
//!   after the commit the change is still acknowledged and the propagation task publishes it
//!   later; that needs the database to fail during the write, so a write overlapped by an
//!   [`Outage`](crate::history::Outage) of its replica or of the database is not held to it.
//! - **Bounded staleness.** A read that begins more than [`STALENESS_NS`] after a write
//!   completed shows it (or later), unless an outage touched the read's replica or the
//!   database within [`RECOVERY_NS`] before that point, or during the read. See the constants
//!   for where the bounds come from. A replica stopped or cut off while it holds the global
//!   write lock (`postgres.rs`: `pg_advisory_xact_lock`, no lock timeout) stalls every
//!   replica's writes, and a replica's catch-up waits behind its own queued write (the same
//!   lock in `commit.rs`); the other replicas' connections stay up, so such a *stall* only
//!   excuses reads whose bound window `[begin − bound, end]` it overlaps.
//!
//! And with a full disk (the SQLite variant): once the disk is freed, a write is acknowledged
//! within [`WRITES_RESUME_NS`].

use std::collections::{BTreeMap, HashMap};

use crate::history::{History, Outcome, St};
use crate::violation::Violation;

/// Each key's chain from the audit: version → (state, the op that wrote it).
struct Chains {
    by_key: HashMap<String, (u64, BTreeMap<u64, St>)>,
    write_inv: HashMap<(String, u64), u64>,
    /// (key, version) → the operation the audit says made it.
    op_at: HashMap<(String, u64), u64>,
}

impl Chains {
    fn new(h: &History) -> Chains {
        let mut by_key: HashMap<String, (u64, BTreeMap<u64, St>)> = HashMap::new();
        for i in &h.initial {
            let mut m = BTreeMap::new();
            m.insert(i.version, i.state);
            by_key.insert(i.key.clone(), (i.version, m));
        }
        let inv: HashMap<u64, u64> = h.ops.iter().map(|o| (o.id, o.inv)).collect();
        let mut write_inv = HashMap::new();
        let mut op_at = HashMap::new();
        for r in &h.audit {
            if let Some((v0, m)) = by_key.get_mut(&r.key)
                && r.version > *v0
            {
                m.insert(r.version, r.to);
                if let Some(id) = r.op {
                    op_at.insert((r.key.clone(), r.version), id);
                }
                if let Some(t) = r.op.and_then(|id| inv.get(&id)) {
                    write_inv.insert((r.key.clone(), r.version), *t);
                }
            }
        }
        Chains {
            by_key,
            write_inv,
            op_at,
        }
    }

    /// `Some(true)` when the audit has `(key, version)` with `state`; `None` for a version
    /// before the run (not checked).
    fn matches(&self, key: &str, version: u64, state: St) -> Option<bool> {
        let (v0, m) = self.by_key.get(key)?;
        if version < *v0 {
            return None;
        }
        Some(m.get(&version) == Some(&state))
    }

    fn has(&self, key: &str, version: u64) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|(v0, m)| version < *v0 || m.contains_key(&version))
    }

    fn last(&self, key: &str) -> Option<u64> {
        self.by_key
            .get(key)
            .and_then(|(_, m)| m.keys().next_back().copied())
    }
}

/// Hub reads (with read-your-writes and bounded staleness), writes resuming after a full disk,
/// watchers, gates, convergence within `converge_ns` of the heal (or of the last write, when
/// later), and one notification per change.
pub fn check(h: &History, converge_ns: u64) -> Vec<Violation> {
    let c = Chains::new(h);
    let mut out = Vec::new();
    hub_reads(h, &c, &mut out);
    let acks = acks(h, &c);
    read_your_writes(h, &acks, &mut out);
    bounded_staleness(h, &acks, &mut out);
    writes_resume(h, &acks, &mut out);
    watchers(h, &c, &mut out);
    gates(h, &c, &mut out);
    convergence(h, &c, converge_ns, &mut out);
    notifications(h, &c, &mut out);
    out
}

fn hub_reads(h: &History, c: &Chains, out: &mut Vec<Violation>) {
    let mut groups: HashMap<(u8, u32, &str), Vec<usize>> = HashMap::new();
    for (i, r) in h.hub_reads.iter().enumerate() {
        if c.matches(&r.key, r.version, r.state) == Some(false) {
            out.push(Violation::HubPhantom {
                what: format!("hub read by client {}", r.client),
                key: r.key.clone(),
                version: r.version,
            });
            continue;
        }
        if let Some(&w) = c.write_inv.get(&(r.key.clone(), r.version))
            && w > r.ret
        {
            out.push(Violation::HubFuture {
                client: r.client,
                key: r.key.clone(),
                version: r.version,
            });
        }
        groups
            .entry((r.replica, r.pid, &r.key))
            .or_default()
            .push(i);
    }
    // Within one incarnation, a read that began after another ended sees at least its version.
    for ((replica, pid, key), idx) in groups {
        let mut by_inv = idx.clone();
        by_inv.sort_by_key(|&i| h.hub_reads[i].inv);
        let mut by_ret = idx;
        by_ret.sort_by_key(|&i| h.hub_reads[i].ret);
        let mut j = 0;
        let mut seen: Option<u64> = None;
        for i in by_inv {
            let b = &h.hub_reads[i];
            while j < by_ret.len() && h.hub_reads[by_ret[j]].ret < b.inv {
                let v = h.hub_reads[by_ret[j]].version;
                seen = Some(seen.map_or(v, |s| s.max(v)));
                j += 1;
            }
            if let Some(s) = seen
                && b.version < s
            {
                out.push(Violation::HubBackwards {
                    replica,
                    pid,
                    key: key.to_string(),
                    from: s,
                    to: b.version,
                });
                break;
            }
        }
    }
}

/// How far behind the store a replica's hub may be while the replica and the database work.
///
/// Propagation is pushed, not polled: every write sends `pg_notify` in its transaction, the
/// replicas' listeners get it on commit, and each reads the changes after its hub's last one
/// (`events_after_id`) and publishes them (`propagate.rs`). That read waits at most
/// `POOL_WAIT` (3 s, `postgres.rs`) for a connection, and a failed read is retried on the next
/// tick of `RETRY` (1 s, `propagate.rs`): 3 s + 1 s. A faster answer is the norm (milliseconds);
/// the bound is what the code promises with one slow pool wait and one retry.
pub const STALENESS_NS: u64 = 4_000_000_000;

/// How long after an outage of a replica or the database the staleness bound is suspended.
///
/// A listener whose connection died silently notices within `LISTENER_PING` plus the ping's
/// own timeout (2 s + 2 s), reconnects after at most the 2 s backoff cap with a 3 s connect
/// timeout (`postgres.rs`), and on `Connected` catches up within [`STALENESS_NS`]:
/// 2 + 2 + 2 + 3 + 4 = 13 s.
pub const RECOVERY_NS: u64 = 13_000_000_000;

/// Once a full disk is freed, a write is acknowledged within this. Nothing in the server waits
/// for the disk to recover (SQLite simply tries the next write), so the bound is the clients'
/// pace (four operators, a write every 0–50 ms each) with a wide margin for a loaded machine.
pub const WRITES_RESUME_NS: u64 = 5_000_000_000;

/// A write the audit says this operation made, acknowledged by `replica`.
struct Ack<'a> {
    op: u64,
    key: &'a str,
    version: u64,
    replica: u8,
    pid: Option<u32>,
    inv: u64,
    ret: u64,
}

fn acks<'a>(h: &'a History, c: &Chains) -> Vec<Ack<'a>> {
    h.ops
        .iter()
        .filter_map(|o| {
            let Outcome::Ok { version, .. } = o.outcome else {
                return None;
            };
            let ret = o.ret?;
            (c.op_at.get(&(o.key.clone(), version)) == Some(&o.id)).then_some(Ack {
                op: o.id,
                key: &o.key,
                version,
                replica: o.replica,
                pid: o.pid,
                inv: o.inv,
                ret,
            })
        })
        .collect()
}

fn down(h: &History, replica: u8, from: u64, to: u64) -> bool {
    h.outages.iter().any(|o| o.hits(replica, from, to))
}

/// Acknowledgements sorted by completion, with the running maximum of their versions: the
/// newest version acknowledged by a time is one binary search away.
struct Frontier {
    rets: Vec<u64>,
    best: Vec<(u64, u64)>, // (version, op) of the highest version so far
}

impl Frontier {
    fn new<'a>(mut acks: Vec<&Ack<'a>>) -> Frontier {
        acks.sort_by_key(|a| a.ret);
        let mut best: Vec<(u64, u64)> = Vec::with_capacity(acks.len());
        for a in &acks {
            let b = match best.last() {
                Some(&(v, op)) if v >= a.version => (v, op),
                _ => (a.version, a.op),
            };
            best.push(b);
        }
        Frontier {
            rets: acks.iter().map(|a| a.ret).collect(),
            best,
        }
    }

    /// The highest version acknowledged strictly before `t` (or at `t` with `inclusive`).
    fn before(&self, t: u64, inclusive: bool) -> Option<(u64, u64)> {
        let n = self
            .rets
            .partition_point(|&r| r < t || (inclusive && r == t));
        n.checked_sub(1).map(|i| self.best[i])
    }
}

/// Read-your-writes: a read from the process that acknowledged `v`, begun after the
/// acknowledgement, shows at least `v`. The first miss per process and key is reported.
fn read_your_writes(h: &History, acks: &[Ack<'_>], out: &mut Vec<Violation>) -> usize {
    let mut by_proc: HashMap<(u8, u32, &str), Vec<&Ack<'_>>> = HashMap::new();
    for a in acks {
        // A write the database failed during may be acknowledged before it is published.
        if let Some(pid) = a.pid
            && !down(h, a.replica, a.inv, a.ret)
        {
            by_proc.entry((a.replica, pid, a.key)).or_default().push(a);
        }
    }
    let frontiers: HashMap<(u8, u32, &str), Frontier> = by_proc
        .into_iter()
        .map(|(k, v)| (k, Frontier::new(v)))
        .collect();
    let mut reported: std::collections::HashSet<(u8, u32, &str)> = Default::default();
    let mut checked = 0;
    for r in &h.hub_reads {
        let k = (r.replica, r.pid, r.key.as_str());
        let Some((acked, op)) = frontiers.get(&k).and_then(|f| f.before(r.inv, false)) else {
            continue;
        };
        checked += 1;
        if r.version < acked && reported.insert(k) {
            out.push(Violation::ReadYourWrites {
                client: r.client,
                replica: r.replica,
                pid: r.pid,
                key: r.key.clone(),
                op,
                acked,
                saw: r.version,
            });
        }
    }
    checked
}

/// Bounded staleness: a read of a healthy replica begun more than [`STALENESS_NS`] after a
/// write completed shows it. The first miss per replica and key is reported.
fn bounded_staleness(h: &History, acks: &[Ack<'_>], out: &mut Vec<Violation>) -> usize {
    let mut by_key: HashMap<&str, Vec<&Ack<'_>>> = HashMap::new();
    for a in acks {
        by_key.entry(a.key).or_default().push(a);
    }
    let frontiers: HashMap<&str, Frontier> = by_key
        .into_iter()
        .map(|(k, v)| (k, Frontier::new(v)))
        .collect();
    let mut reported: std::collections::HashSet<(u8, &str)> = Default::default();
    let mut checked = 0;
    for r in &h.hub_reads {
        let Some(cutoff) = r.inv.checked_sub(STALENESS_NS) else {
            continue;
        };
        if down(h, r.replica, cutoff.saturating_sub(RECOVERY_NS), r.ret)
            || h.stalls.iter().any(|w| w.from <= r.ret && cutoff <= w.to)
        {
            continue;
        }
        let Some((want, _)) = frontiers
            .get(r.key.as_str())
            .and_then(|f| f.before(cutoff, true))
        else {
            continue;
        };
        checked += 1;
        if r.version < want && reported.insert((r.replica, r.key.as_str())) {
            // When the newest write the read missed completed.
            let missed = acks
                .iter()
                .filter(|a| a.key == r.key && a.version > r.version && a.ret <= cutoff)
                .map(|a| a.ret)
                .min()
                .unwrap_or(cutoff);
            out.push(Violation::StaleBeyondBound {
                client: r.client,
                replica: r.replica,
                key: r.key.clone(),
                saw: r.version,
                want,
                behind_ms: (r.inv - missed) / 1_000_000,
            });
        }
    }
    checked
}

/// After each full disk is freed, some write is acknowledged within [`WRITES_RESUME_NS`].
/// The window starts once no outage (the server stopped or killed) covers the free, and a
/// new fault inside it excuses it.
fn writes_resume(h: &History, acks: &[Ack<'_>], out: &mut Vec<Violation>) -> usize {
    let last_inv = h.ops.iter().map(|o| o.inv).max().unwrap_or(0);
    let mut checked = 0;
    for w in &h.disk_full {
        let mut start = w.to;
        while let Some(t) = h
            .outages
            .iter()
            .filter(|o| o.from <= start && start < o.to)
            .map(|o| o.to)
            .max()
        {
            start = t;
        }
        let end = start.saturating_add(WRITES_RESUME_NS);
        let interrupted = h.outages.iter().any(|o| o.from > start && o.from < end)
            || h.disk_full.iter().any(|d| d.from > w.to && d.from < end);
        if interrupted || last_inv < end {
            continue;
        }
        checked += 1;
        if !acks.iter().any(|a| a.ret > start && a.ret <= end) {
            out.push(Violation::WritesNotResumed {
                freed_ms: w.to / 1_000_000,
                within_ms: WRITES_RESUME_NS / 1_000_000,
            });
        }
    }
    checked
}

/// How many hub reads and frees the guarded checks held to their rule: a run whose faults
/// excuse everything proves little, and the summary says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub read_your_writes: usize,
    pub bounded_staleness: usize,
    pub disk_frees: usize,
}

pub fn coverage(h: &History) -> Coverage {
    let c = Chains::new(h);
    let acks = acks(h, &c);
    let mut scratch = Vec::new();
    Coverage {
        read_your_writes: read_your_writes(h, &acks, &mut scratch),
        bounded_staleness: bounded_staleness(h, &acks, &mut scratch),
        disk_frees: writes_resume(h, &acks, &mut scratch),
    }
}

fn watchers(h: &History, c: &Chains, out: &mut Vec<Violation>) {
    let mut last: HashMap<(u32, &str), u64> = HashMap::new();
    for e in &h.watch {
        if c.matches(&e.key, e.version, e.state) == Some(false) {
            out.push(Violation::HubPhantom {
                what: format!("watcher {}", e.watcher),
                key: e.key.clone(),
                version: e.version,
            });
        }
        if let Some(&prev) = last.get(&(e.watcher, e.key.as_str())) {
            let ok = e.version > prev && (e.resync || e.version == prev + 1);
            if !ok {
                out.push(Violation::WatcherOrder {
                    watcher: e.watcher,
                    key: e.key.clone(),
                    from: prev,
                    to: e.version,
                });
            }
        }
        last.insert((e.watcher, e.key.as_str()), e.version);
    }
}

fn gates(h: &History, c: &Chains, out: &mut Vec<Violation>) {
    let mut last: HashMap<(u32, &str), u64> = HashMap::new();
    for g in &h.gates {
        if !c.has(&g.key, g.version) {
            out.push(Violation::HubPhantom {
                what: format!("gate {}", g.gate),
                key: g.key.clone(),
                version: g.version,
            });
        }
        if let Some(&prev) = last.get(&(g.gate, g.key.as_str()))
            && g.version < prev
        {
            out.push(Violation::GateBackwards {
                gate: g.gate,
                key: g.key.clone(),
                from: prev,
                to: g.version,
            });
        }
        last.insert((g.gate, g.key.as_str()), g.version);
    }
}

fn convergence(h: &History, c: &Chains, bound: u64, out: &mut Vec<Violation>) {
    let Some(healed) = h.healed_at else {
        return;
    };
    for init in &h.initial {
        let key = init.key.as_str();
        let Some(want) = c.last(key) else { continue };
        // The last write may complete after the heal; count from whichever is later.
        let last_write_end = h
            .ops
            .iter()
            .filter(|o| o.key == key)
            .filter_map(|o| o.ret)
            .max()
            .unwrap_or(0);
        let from = healed.max(last_write_end);
        let mut observers: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
        for e in h.watch.iter().filter(|e| e.key == key) {
            let o = observers
                .entry(format!("watcher {}", e.watcher))
                .or_default();
            o.0 = Some(e.version);
            if e.version >= want && o.1.is_none() {
                o.1 = Some(e.t);
            }
        }
        for g in h.gates.iter().filter(|g| g.key == key) {
            let o = observers.entry(format!("gate {}", g.gate)).or_default();
            o.0 = Some(g.version);
            if g.version >= want && o.1.is_none() {
                o.1 = Some(g.t);
            }
        }
        for (what, (last, reached)) in observers {
            let late = reached.map(|t| t.saturating_sub(from));
            if late.is_none_or(|l| l > bound) {
                out.push(Violation::NotConverged {
                    what,
                    key: key.to_string(),
                    last,
                    want,
                    after_ms: late.map(|l| l / 1_000_000),
                });
            }
        }
    }
}

fn notifications(h: &History, c: &Chains, out: &mut Vec<Violation>) {
    let mut by_change: BTreeMap<(String, u64), Vec<(u64, &str)>> = BTreeMap::new();
    for d in &h.deliveries {
        if !c.has(&d.key, d.version) {
            out.push(Violation::HubPhantom {
                what: format!("notification {}", d.delivery),
                key: d.key.clone(),
                version: d.version,
            });
            continue;
        }
        by_change
            .entry((d.key.clone(), d.version))
            .or_default()
            .push((d.t, d.delivery.as_str()));
    }
    for (key, (v0, m)) in &c.by_key {
        for &v in m.keys().filter(|&&v| v > *v0) {
            let Some(ds) = by_change.get(&(key.clone(), v)) else {
                out.push(Violation::NotificationMissing {
                    key: key.clone(),
                    version: v,
                });
                continue;
            };
            let first = ds.iter().map(|d| d.0).min().unwrap_or(0);
            for &(t, id) in ds.iter().filter(|d| d.0 != first).chain(
                // Two deliveries at the same instant are duplicates too.
                ds.iter().filter(|d| d.0 == first).skip(1),
            ) {
                let excused = h
                    .redelivery_windows
                    .iter()
                    .any(|w| w.from <= t && w.to >= first);
                if !excused {
                    out.push(Violation::DuplicateNotification {
                        delivery: id.to_string(),
                        key: key.clone(),
                        version: v,
                    });
                }
            }
        }
    }
}
