//! The general linearizability search (Wing & Gong, with Lowe's just-in-time linearization and
//! memo of (linearized set, state), as Porcupine does) over one key's [`Model`].
//!
//! It decides the same question as [`crate::register::check_model`] by search instead of by the
//! version chain, and serves as that checker's oracle in the tests. Each operation is stepped
//! against the sequential register: a write with a known version must make exactly the next
//! version (a CAS only on the version it expected, never a no-op), a read must see the state as
//! it is.

use std::collections::HashSet;

use crate::history::{OpKind, Outcome, St};
use crate::register::{Effect, MOp, Model};

/// The search's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The memo grew past its budget: treat as a failure, never as a pass.
    Inconclusive,
}

/// The sequential register: `Some(next state)` when `op` may take effect in state `(v, s)`.
fn step(op: &MOp, v: u64, s: St) -> Option<(u64, St)> {
    match (op.effect.clone(), op.kind) {
        (Effect::Wrote { version }, OpKind::Cas { expected, to }) => {
            (version == v + 1 && expected == v && to != s && acked(op, version, to))
                .then_some((version, to))
        }
        (Effect::Wrote { version }, OpKind::Put { to }) => {
            (version == v + 1 && to != s && acked(op, version, to)).then_some((version, to))
        }
        (Effect::Wrote { .. }, OpKind::Probe) => None,
        (Effect::Read { version, state }, kind) => {
            if (version, state) != (v, s) {
                return None;
            }
            let ok = match (kind, &op.outcome) {
                (OpKind::Probe, Outcome::Conflict { .. }) => true,
                (OpKind::Cas { expected, .. }, Outcome::Conflict { .. }) => expected != v,
                (OpKind::Cas { expected, to }, Outcome::Ok { .. }) => expected == v && to == s,
                (OpKind::Put { to }, Outcome::Ok { .. }) => to == s,
                _ => false,
            };
            ok.then_some((v, s))
        }
    }
}

fn acked(op: &MOp, version: u64, to: St) -> bool {
    match op.outcome {
        Outcome::Ok { version: av, state } => av == version && state == to,
        Outcome::Unknown { .. } => true,
        _ => false,
    }
}

/// Searches for a linearization of `m`'s operations, giving up after `budget` memo entries.
pub fn check(m: &Model, budget: usize) -> Verdict {
    let n = m.ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Entries: call (op, true) and return (op, false), by time; at equal times calls first,
    // since closed intervals that touch may be ordered either way.
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in m.ops.iter().enumerate() {
        entries.push((op.inv, true, i));
        entries.push((op.end, false, i));
    }
    entries.sort_by_key(|&(t, call, i)| (t, !call, i));
    // A doubly linked list over entries 1..=2n with a head sentinel 0.
    let len = entries.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    next[len - 1] = usize::MAX;
    let mut ret_of = vec![0usize; n];
    for (k, &(_, call, i)) in entries.iter().enumerate() {
        if !call {
            ret_of[i] = k + 1;
        }
    }
    let node = |k: usize| entries[k - 1];
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        let (p, nx) = (prev[k], next[k]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        let (p, nx) = (prev[k], next[k]);
        next[p] = k;
        if nx != usize::MAX {
            prev[nx] = k;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut memo: HashSet<(Vec<u64>, u64, St)> = HashSet::new();
    let mut state = (m.v0, m.s0);
    // (call entry, state before it)
    let mut stack: Vec<(usize, (u64, St))> = Vec::new();
    let mut cur = next[0];
    loop {
        if next[0] == usize::MAX {
            return Verdict::Linearizable;
        }
        if cur == usize::MAX {
            // Cannot happen: the list always ends with a return entry, handled below.
            return Verdict::NotLinearizable;
        }
        let (_, call, i) = node(cur);
        if call {
            let lifted = step(&m.ops[i], state.0, state.1).and_then(|ns| {
                let mut bits = linearized.clone();
                bits[i / 64] |= 1 << (i % 64);
                memo.insert((bits.clone(), ns.0, ns.1))
                    .then_some((bits, ns))
            });
            if memo.len() > budget {
                return Verdict::Inconclusive;
            }
            match lifted {
                Some((bits, ns)) => {
                    stack.push((cur, state));
                    state = ns;
                    linearized = bits;
                    unlink(&mut next, &mut prev, cur);
                    unlink(&mut next, &mut prev, ret_of[i]);
                    cur = next[0];
                }
                None => cur = next[cur],
            }
        } else {
            // A return of an operation not yet linearized: undo the last choice.
            let Some((k, before)) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            let (_, _, j) = node(k);
            state = before;
            linearized[j / 64] &= !(1 << (j % 64));
            relink(&mut next, &mut prev, ret_of[j]);
            relink(&mut next, &mut prev, k);
            cur = next[k];
        }
    }
}
