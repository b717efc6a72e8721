//! The weaker, documented model of what replicas serve from memory: hub `GET`s, event streams,
//! SDK gates, and webhook notifications.
//!
//! A replica cut off from the database keeps answering reads from its hub (README: "replicas
//! serve reads through an outage"), so a hub read may be stale. It must still never show a
//! version the audit does not have (or with another state), never show a version before its
//! write began, never go backwards within one process incarnation, and, once the faults have
//! healed, every observer must reach the final version within a bound.

use std::collections::{BTreeMap, HashMap};

use crate::history::{History, St};
use crate::violation::Violation;

/// Each key's chain from the audit: version → (state, the op that wrote it).
struct Chains {
    by_key: HashMap<String, (u64, BTreeMap<u64, St>)>,
    write_inv: HashMap<(String, u64), u64>,
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
        for r in &h.audit {
            if let Some((v0, m)) = by_key.get_mut(&r.key)
                && r.version > *v0
            {
                m.insert(r.version, r.to);
                if let Some(t) = r.op.and_then(|id| inv.get(&id)) {
                    write_inv.insert((r.key.clone(), r.version), *t);
                }
            }
        }
        Chains { by_key, write_inv }
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

/// Hub reads, watchers, gates, convergence within `converge_ns` of the heal (or of the last
/// write, when later), and one notification per change.
pub fn check(h: &History, converge_ns: u64) -> Vec<Violation> {
    let c = Chains::new(h);
    let mut out = Vec::new();
    hub_reads(h, &c, &mut out);
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
