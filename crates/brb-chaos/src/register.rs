//! The versioned compare-and-set register, checked for linearizability.
//!
//! Every change of a switch creates exactly the next version, and the audit names the
//! operation that made it (its `reason`), so the order of the effective writes is given, not
//! searched for. What is left is to check the model along that chain and to find, for every
//! operation, a point inside its interval that respects the chain: a greedy sweep that puts
//! every point as early as it may go does that in one pass, and fails exactly when no
//! linearization exists ([`check_model`]). [`crate::wgl`] searches the same question the
//! general way and is this checker's oracle in the tests.

use std::collections::{BTreeMap, HashMap};

use crate::history::{AuditRow, History, Op, OpKind, Outcome, St};
use crate::violation::Violation;

/// What an operation must have done, once the audit has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// It made version `version` (with the state `to`).
    Wrote { version: u64 },
    /// It read the switch at `version` with `state` (a probe, a conflict, an unchanged write).
    Read { version: u64, state: St },
}

/// One operation of a key's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MOp {
    pub id: u64,
    pub kind: OpKind,
    pub inv: u64,
    /// `u64::MAX` when the client never learned the outcome.
    pub end: u64,
    pub outcome: Outcome,
    pub effect: Effect,
}

/// One key's operations with a known effect, and where its chain starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub key: String,
    pub v0: u64,
    pub s0: St,
    pub ops: Vec<MOp>,
}

/// Checks every key's writes and linearizable reads against the register, using the audit.
/// Returns every violation found (empty: linearizable).
pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    for (model, mut named) in resolve(h) {
        out.append(&mut named);
        if let Err(v) = check_model(&model) {
            out.push(v);
        }
    }
    out
}

/// Reads the audit into one [`Model`] per key, with the violations that show without any
/// ordering (gaps, duplicates, phantoms, refused writes that committed…).
pub fn resolve(h: &History) -> Vec<(Model, Vec<Violation>)> {
    let ops_by_id: HashMap<u64, &Op> = h.ops.iter().map(|o| (o.id, o)).collect();
    let mut result = Vec::new();
    for init in &h.initial {
        let key = &init.key;
        let mut named = Vec::new();
        // version -> rows: more than one is a duplicate.
        let mut rows: BTreeMap<u64, Vec<&AuditRow>> = BTreeMap::new();
        for r in h
            .audit
            .iter()
            .filter(|r| &r.key == key && r.version > init.version)
        {
            rows.entry(r.version).or_default().push(r);
        }
        let vmax = rows.keys().next_back().copied().unwrap_or(init.version);
        let mut committed: HashMap<u64, u64> = HashMap::new(); // op -> version
        for v in init.version + 1..=vmax {
            let Some(rs) = rows.get(&v) else {
                named.push(Violation::VersionGap {
                    key: key.clone(),
                    version: v,
                });
                continue;
            };
            if rs.len() > 1 {
                named.push(Violation::DuplicateVersion {
                    key: key.clone(),
                    version: v,
                    ops: rs.iter().map(|r| r.op).collect(),
                });
            }
            for r in rs {
                let known =
                    r.op.and_then(|id| ops_by_id.get(&id))
                        .filter(|o| &o.key == key && o.target().is_some());
                let Some(op) = known else {
                    named.push(Violation::PhantomWrite {
                        key: key.clone(),
                        version: v,
                        op: r.op,
                    });
                    continue;
                };
                if committed.insert(op.id, v).is_some() {
                    named.push(Violation::CommittedTwice { op: op.id });
                }
                if op.target() != Some(r.to) {
                    named.push(Violation::AuditMismatch {
                        key: key.clone(),
                        version: v,
                        op: op.id,
                    });
                }
            }
        }
        let structural = !named.is_empty();
        let state_at = |v: u64| -> Option<St> {
            if v == init.version {
                Some(init.state)
            } else {
                rows.get(&v).and_then(|rs| rs.first()).map(|r| r.to)
            }
        };

        let mut ops = Vec::new();
        for op in h.ops.iter().filter(|o| &o.key == key) {
            let effect = match (committed.get(&op.id), &op.outcome) {
                (Some(&w), Outcome::Ok { version, state }) => {
                    if *version != w || Some(*state) != op.target() {
                        named.push(Violation::WrongAck {
                            op: op.id,
                            acked: *version,
                            audit: w,
                        });
                    }
                    Effect::Wrote { version: w }
                }
                (Some(&w), Outcome::Unknown { .. }) => Effect::Wrote { version: w },
                (Some(&w), Outcome::Conflict { .. }) => {
                    named.push(Violation::WrongAck {
                        op: op.id,
                        acked: 0,
                        audit: w,
                    });
                    Effect::Wrote { version: w }
                }
                (Some(_), Outcome::Fail { .. }) => {
                    named.push(Violation::FailedWriteCommitted { op: op.id });
                    continue;
                }
                (None, Outcome::Ok { version, state }) => {
                    // Not in the audit: a write that changed nothing, answered with the switch
                    // as it already was.
                    if op.target() != Some(*state) {
                        named.push(Violation::BadUnchanged { op: op.id });
                    } else if *version > vmax
                        || (*version >= init.version && state_at(*version) != Some(*state))
                    {
                        named.push(Violation::AckedWriteMissing {
                            key: key.clone(),
                            op: op.id,
                            version: *version,
                        });
                    } else if let OpKind::Cas { expected, .. } = op.kind
                        && expected != *version
                    {
                        named.push(Violation::BadUnchanged { op: op.id });
                    }
                    Effect::Read {
                        version: *version,
                        state: *state,
                    }
                }
                (None, Outcome::Conflict { version, state }) => {
                    match op.kind {
                        OpKind::Cas { expected, .. } if expected == *version => {
                            named.push(Violation::ConflictOnMatchingVersion { op: op.id });
                        }
                        OpKind::Put { .. } => named.push(Violation::BadUnchanged { op: op.id }),
                        _ => {}
                    }
                    Effect::Read {
                        version: *version,
                        state: *state,
                    }
                }
                // Refused, or never answered and not in the audit: no effect to check.
                (None, Outcome::Fail { .. } | Outcome::Unknown { .. }) => continue,
            };
            ops.push(MOp {
                id: op.id,
                kind: op.kind,
                inv: op.inv,
                end: op.end(),
                outcome: op.outcome.clone(),
                effect,
            });
        }
        let model = Model {
            key: key.clone(),
            v0: init.version,
            s0: init.state,
            ops,
        };
        if structural {
            // The chain is broken: ordering questions have no defined answer. Report what was
            // found and an empty model (which always passes).
            result.push((
                Model {
                    ops: Vec::new(),
                    ..model
                },
                named,
            ));
        } else {
            result.push((model, named));
        }
    }
    result
}

/// The register's rules along the chain, then real time by a greedy sweep. `Ok` exactly when
/// the model's operations have a linearization (the tests check this against [`crate::wgl`]).
pub fn check_model(m: &Model) -> Result<(), Violation> {
    // Segment v: the write that made v (none for v0) and the reads of v.
    let mut writes: BTreeMap<u64, &MOp> = BTreeMap::new();
    let mut reads: BTreeMap<u64, Vec<&MOp>> = BTreeMap::new();
    for op in &m.ops {
        match op.effect {
            Effect::Wrote { version } => {
                if writes.insert(version, op).is_some() {
                    return Err(Violation::DuplicateVersion {
                        key: m.key.clone(),
                        version,
                        ops: vec![Some(op.id)],
                    });
                }
            }
            Effect::Read { version, .. } => reads.entry(version).or_default().push(op),
        }
    }
    let vmax = writes.keys().next_back().copied().unwrap_or(m.v0);
    // The chain: states, and each write's own rule (a CAS on the version before it, a change).
    let mut states = vec![m.s0];
    for v in m.v0 + 1..=vmax {
        let Some(w) = writes.get(&v) else {
            return Err(Violation::VersionGap {
                key: m.key.clone(),
                version: v,
            });
        };
        let prev = states[states.len() - 1];
        let (to, expected) = match w.kind {
            OpKind::Cas { expected, to } => (to, Some(expected)),
            OpKind::Put { to } => (to, None),
            OpKind::Probe => {
                return Err(Violation::PhantomWrite {
                    key: m.key.clone(),
                    version: v,
                    op: Some(w.id),
                });
            }
        };
        if let Some(e) = expected
            && e != v - 1
        {
            return Err(Violation::LostUpdate {
                key: m.key.clone(),
                version: v,
                op: w.id,
                expected: e,
            });
        }
        if to == prev {
            return Err(Violation::NoOpWritten {
                key: m.key.clone(),
                version: v,
            });
        }
        if let Outcome::Ok { version, state } = w.outcome
            && (version != v || state != to)
        {
            return Err(Violation::WrongAck {
                op: w.id,
                acked: version,
                audit: v,
            });
        }
        states.push(to);
    }
    // Every read: a version of the chain with its state, and what its request allows.
    for (&v, rs) in &reads {
        for r in rs {
            let Effect::Read { state, .. } = r.effect else {
                continue;
            };
            if v < m.v0 || v > vmax {
                return Err(Violation::ReadUnknownVersion {
                    key: m.key.clone(),
                    op: r.id,
                    version: v,
                });
            }
            if states[(v - m.v0) as usize] != state {
                return Err(Violation::WrongValue {
                    key: m.key.clone(),
                    op: r.id,
                    version: v,
                });
            }
            let allowed = match (r.kind, &r.outcome) {
                (OpKind::Probe, Outcome::Conflict { .. }) => true,
                (OpKind::Cas { expected, .. }, Outcome::Conflict { .. }) => expected != v,
                (OpKind::Cas { expected, to }, Outcome::Ok { .. }) => expected == v && to == state,
                (OpKind::Put { to }, Outcome::Ok { .. }) => to == state,
                _ => false,
            };
            if !allowed {
                return Err(Violation::BadUnchanged { op: r.id });
            }
        }
    }
    // Real time. `t` is the latest point placed so far and `by` the operation that put it there.
    let mut t = 0u64;
    let mut by: Option<(u64, bool)> = None; // (op, is_read)
    for v in m.v0..=vmax {
        let mut p = t;
        if let Some(w) = writes.get(&v) {
            p = t.max(w.inv);
            if p > w.end {
                return Err(match by {
                    Some((r, true)) => Violation::StaleRead {
                        key: m.key.clone(),
                        op: r,
                        version: v - 1,
                        newer_write: w.id,
                    },
                    _ => Violation::WriteOrder {
                        key: m.key.clone(),
                        version: v,
                        op: w.id,
                        after: by.map(|b| b.0),
                    },
                });
            }
            if p > t || by.is_none() {
                by = Some((w.id, false));
            }
            t = p;
        }
        for r in reads.get(&v).map(Vec::as_slice).unwrap_or_default() {
            let q = p.max(r.inv);
            if q > r.end {
                return Err(Violation::FutureRead {
                    key: m.key.clone(),
                    op: r.id,
                    version: v,
                    write: writes.get(&v).map(|w| w.id),
                });
            }
            if q > t {
                t = q;
                by = Some((r.id, true));
            }
        }
    }
    Ok(())
}
