//! The fast checker and the general search agree: on random executions of the register that
//! are linearizable by construction both accept, and after one mutation of a result or of an
//! interval they give the same answer.
#![allow(clippy::unwrap_used)]

use brb_chaos::history::{AuditRow, History, Initial, Op, OpKind, Outcome, St};
use brb_chaos::register::{check_model, resolve};
use brb_chaos::wgl::{self, Verdict};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Step {
    key: usize,
    /// 0..6 cas on the current version, 6..8 cas on a stale one, 8..14 put, 14..20 probe
    what: u8,
    to_paused: bool,
    /// Jitter around the linearization point: how early the call, how late the return.
    before: u64,
    after: u64,
    unknown: u8,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..2usize,
        0..20u8,
        any::<bool>(),
        0..40u64,
        0..40u64,
        0..10u8,
    )
        .prop_map(|(key, what, to_paused, before, after, unknown)| Step {
            key,
            what,
            to_paused,
            before,
            after,
            unknown,
        })
}

const KEYS: [&str; 2] = ["a", "b"];

/// Runs the steps sequentially against the register, one every 10 ticks, and records them
/// with intervals around their points; some become Unknown (committed or not).
fn execute(steps: &[Step]) -> History {
    let mut cur = [(1u64, St::Running), (3u64, St::Paused)];
    let mut h = History {
        initial: KEYS
            .iter()
            .zip(cur)
            .map(|(k, (v, s))| Initial {
                key: (*k).into(),
                version: v,
                state: s,
            })
            .collect(),
        ..History::default()
    };
    for (i, s) in steps.iter().enumerate() {
        let id = i as u64 + 1;
        let point = 100 + 10 * i as u64;
        let (v, st) = cur[s.key];
        let to = if s.to_paused { St::Paused } else { St::Running };
        let kind = match s.what {
            0..6 => OpKind::Cas { expected: v, to },
            6..8 => OpKind::Cas {
                expected: v.saturating_sub(1),
                to,
            },
            8..14 => OpKind::Put { to },
            _ => OpKind::Probe,
        };
        // An unknown that never took effect is simply not executed.
        let dropped = s.unknown == 0 && kind != OpKind::Probe;
        let outcome = if dropped {
            Outcome::Unknown { why: "lost".into() }
        } else {
            match kind {
                OpKind::Probe => Outcome::Conflict {
                    version: v,
                    state: st,
                },
                OpKind::Cas { expected, .. } if expected != v => Outcome::Conflict {
                    version: v,
                    state: st,
                },
                _ if to == st => Outcome::Ok {
                    version: v,
                    state: st,
                },
                _ => {
                    cur[s.key] = (v + 1, to);
                    h.audit.push(AuditRow {
                        key: KEYS[s.key].into(),
                        version: v + 1,
                        to,
                        op: Some(id),
                    });
                    Outcome::Ok {
                        version: v + 1,
                        state: to,
                    }
                }
            }
        };
        let outcome = if s.unknown == 1 {
            Outcome::Unknown {
                why: "timeout".into(),
            }
        } else {
            outcome
        };
        let ret = match outcome {
            Outcome::Unknown { .. } => None,
            _ => Some(point + s.after),
        };
        h.ops.push(Op {
            id,
            client: (i % 4) as u32,
            key: KEYS[s.key].into(),
            kind,
            replica: 0,
            pid: None,
            inv: point.saturating_sub(s.before),
            ret,
            outcome,
        });
    }
    h
}

fn agree(h: &History) -> Result<(), TestCaseError> {
    for (m, named) in resolve(h) {
        if !named.is_empty() {
            continue;
        }
        let fast = check_model(&m);
        let slow = wgl::check(&m, 2_000_000);
        prop_assert_ne!(slow, Verdict::Inconclusive);
        prop_assert_eq!(
            fast.is_ok(),
            slow == Verdict::Linearizable,
            "fast {:?} vs wgl {:?} on {:?}",
            fast,
            slow,
            m
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn both_accept_what_a_sequential_run_produced(steps in prop::collection::vec(step(), 0..40)) {
        let h = execute(&steps);
        let v = brb_chaos::register::check(&h);
        prop_assert!(v.is_empty(), "{:?}", v);
        agree(&h)?;
    }

    #[test]
    fn after_one_mutation_both_give_the_same_answer(
        steps in prop::collection::vec(step(), 1..40),
        which in any::<prop::sample::Index>(),
        how in 0..6u8,
        by in 1..60u64,
    ) {
        let mut h = execute(&steps);
        let i = which.index(h.ops.len());
        let o = &mut h.ops[i];
        match how {
            // The version an answer shows, up or down.
            0 | 1 => match &mut o.outcome {
                Outcome::Ok { version, .. } | Outcome::Conflict { version, .. } => {
                    *version = if how == 0 { *version + 1 } else { version.saturating_sub(1) };
                }
                _ => {}
            },
            // The state an answer shows.
            2 => match &mut o.outcome {
                Outcome::Ok { state, .. } | Outcome::Conflict { state, .. } => *state = state.flip(),
                _ => {}
            },
            // An answer lost.
            3 => {
                o.outcome = Outcome::Unknown { why: "mutated".into() };
                o.ret = None;
            }
            // The call later (never past the return) or the return earlier.
            4 => o.inv = (o.inv + by).min(o.ret.unwrap_or(u64::MAX)),
            _ => if let Some(r) = o.ret { o.ret = Some(r.saturating_sub(by).max(o.inv)) },
        }
        agree(&h)?;
    }
}
