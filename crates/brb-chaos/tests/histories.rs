//! Hand-written histories the checkers must reject, and ones they must accept. Each rejected
//! history is also given to the general search (WGL), which must agree where the question is
//! one of order.
#![allow(clippy::unwrap_used)]

use brb_chaos::history::{
    AuditRow, Delivery, GateObs, History, HubRead, Initial, Op, OpKind, Outage, Outcome, St,
    WatchEvent, Window,
};
use brb_chaos::register::{check_model, resolve};
use brb_chaos::wgl::{self, Verdict};
use brb_chaos::{Violation, register, weak};

const K: &str = "workers";
const P: St = St::Paused;
const R: St = St::Running;

/// A history of key `workers`, starting at version 4, running.
fn h() -> History {
    History {
        initial: vec![Initial {
            key: K.into(),
            version: 4,
            state: R,
        }],
        ..History::default()
    }
}

fn op(id: u64, kind: OpKind, inv: u64, ret: Option<u64>, outcome: Outcome) -> Op {
    Op {
        id,
        client: id as u32,
        key: K.into(),
        kind,
        replica: 0,
        pid: None,
        inv,
        ret,
        outcome,
    }
}

fn ok(v: u64, s: St) -> Outcome {
    Outcome::Ok {
        version: v,
        state: s,
    }
}
fn conflict(v: u64, s: St) -> Outcome {
    Outcome::Conflict {
        version: v,
        state: s,
    }
}
fn unknown() -> Outcome {
    Outcome::Unknown {
        why: "timeout".into(),
    }
}
fn cas(e: u64, to: St) -> OpKind {
    OpKind::Cas { expected: e, to }
}
fn put(to: St) -> OpKind {
    OpKind::Put { to }
}
fn row(v: u64, to: St, op: u64) -> AuditRow {
    AuditRow {
        key: K.into(),
        version: v,
        to,
        op: Some(op),
    }
}

fn kinds(h: &History) -> Vec<String> {
    register::check(h).iter().map(Violation::kind).collect()
}

/// The register checker rejects with `want`, and the general search agrees that the model has
/// no linearization whenever the resolution itself found nothing.
fn rejects(h: &History, want: &str) {
    let k = kinds(h);
    assert!(k.iter().any(|x| x == want), "want {want}, got {k:?}");
    for (m, named) in resolve(h) {
        if named.is_empty() {
            assert_eq!(
                check_model(&m).is_ok(),
                wgl::check(&m, 1_000_000) == Verdict::Linearizable,
                "fast and wgl disagree on {m:?}"
            );
        }
    }
}

fn accepts(h: &History) {
    let v = register::check(h);
    assert!(v.is_empty(), "{v:?}");
    for (m, _) in resolve(h) {
        assert_eq!(wgl::check(&m, 1_000_000), Verdict::Linearizable, "{m:?}");
    }
}

// ---------------------------------------------------------------- rejected

#[test]
fn lost_update_two_cas_on_one_expected_version() {
    let mut h = h();
    h.ops = vec![
        op(1, cas(4, P), 0, Some(10), ok(5, P)),
        op(2, cas(4, R), 0, Some(10), ok(6, R)),
    ];
    h.audit = vec![row(5, P, 1), row(6, R, 2)];
    rejects(&h, "lost_update");
}

#[test]
fn stale_linearizable_read() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(10), ok(5, P)),
        op(2, OpKind::Probe, 20, Some(30), conflict(4, R)),
    ];
    h.audit = vec![row(5, P, 1)];
    rejects(&h, "stale_read");
}

#[test]
fn read_from_the_future() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(3), ok(5, P)),
        op(2, OpKind::Probe, 1, Some(5), conflict(6, R)),
        op(3, put(R), 6, Some(9), ok(6, R)),
    ];
    h.audit = vec![row(5, P, 1), row(6, R, 3)];
    rejects(&h, "future_read");
}

#[test]
fn write_order_inverted() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 6, Some(8), ok(5, P)),
        op(2, put(R), 0, Some(5), ok(6, R)),
    ];
    h.audit = vec![row(5, P, 1), row(6, R, 2)];
    rejects(&h, "write_order");
}

#[test]
fn probes_go_backwards() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(1), ok(5, P)),
        op(2, OpKind::Probe, 2, Some(3), conflict(5, P)),
        op(3, OpKind::Probe, 4, Some(5), conflict(4, R)),
    ];
    h.audit = vec![row(5, P, 1)];
    rejects(&h, "stale_read");
}

#[test]
fn conflict_on_a_matching_version() {
    let mut h = h();
    h.ops = vec![op(1, cas(4, P), 0, Some(1), conflict(4, R))];
    rejects(&h, "conflict_on_matching_version");
}

#[test]
fn duplicate_version_in_the_audit() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(1), ok(5, P)),
        op(2, put(P), 0, Some(1), ok(5, P)),
    ];
    h.audit = vec![row(5, P, 1), row(5, P, 2)];
    rejects(&h, "duplicate_version");
}

#[test]
fn version_gap_in_the_audit() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(1), ok(5, P)),
        op(2, put(R), 2, Some(3), ok(7, R)),
    ];
    h.audit = vec![row(5, P, 1), row(7, R, 2)];
    rejects(&h, "version_gap");
}

#[test]
fn acknowledged_write_missing_from_the_audit() {
    let mut h = h();
    h.ops = vec![op(1, put(P), 0, Some(1), ok(5, P))];
    rejects(&h, "acked_write_missing");
}

#[test]
fn phantom_write_of_no_operation() {
    let mut h = h();
    h.audit = vec![AuditRow {
        key: K.into(),
        version: 5,
        to: P,
        op: None,
    }];
    rejects(&h, "phantom_write");
    // A probe never writes.
    let mut h2 = self::h();
    h2.ops = vec![op(1, OpKind::Probe, 0, Some(1), conflict(4, R))];
    h2.audit = vec![row(5, P, 1)];
    rejects(&h2, "phantom_write");
}

#[test]
fn wrong_value_read() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(1), ok(5, P)),
        op(2, OpKind::Probe, 2, Some(3), conflict(5, R)),
    ];
    h.audit = vec![row(5, P, 1)];
    rejects(&h, "wrong_value");
}

#[test]
fn an_unchanged_answer_with_another_state() {
    let mut h = h();
    h.ops = vec![op(1, put(P), 0, Some(1), ok(4, R))];
    rejects(&h, "bad_unchanged");
}

#[test]
fn a_no_op_written() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(1), ok(5, P)),
        op(2, put(P), 2, Some(3), ok(6, P)),
    ];
    h.audit = vec![row(5, P, 1), row(6, P, 2)];
    rejects(&h, "no_op_written");
}

#[test]
fn a_refused_write_that_committed() {
    let mut h = h();
    h.ops = vec![op(
        1,
        put(P),
        0,
        Some(1),
        Outcome::Fail {
            status: 403,
            code: "forbidden".into(),
        },
    )];
    h.audit = vec![row(5, P, 1)];
    rejects(&h, "failed_write_committed");
}

#[test]
fn a_cas_acknowledged_on_another_version_than_the_audit_gives() {
    let mut h = h();
    h.ops = vec![op(1, cas(4, P), 0, Some(1), ok(6, P))];
    h.audit = vec![row(5, P, 1)];
    rejects(&h, "wrong_ack");
}

// ---------------------------------------------------------------- accepted

#[test]
fn concurrent_writes_in_either_version_order() {
    for (a, b) in [(5, 6), (6, 5)] {
        let mut h = h();
        let (sa, sb) = if a == 5 { (P, R) } else { (R, P) };
        h.ops = vec![
            op(1, put(sa), 0, Some(10), ok(a, sa)),
            op(2, put(sb), 1, Some(9), ok(b, sb)),
        ];
        h.audit = vec![row(a, sa, 1), row(b, sb, 2)];
        accepts(&h);
    }
}

#[test]
fn an_unknown_write_that_never_committed() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, None, unknown()),
        op(2, OpKind::Probe, 100, Some(101), conflict(4, R)),
    ];
    accepts(&h);
}

#[test]
fn an_unknown_write_that_committed_late() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, None, unknown()),
        op(2, OpKind::Probe, 5, Some(6), conflict(4, R)),
        op(3, OpKind::Probe, 500, Some(501), conflict(5, P)),
    ];
    h.audit = vec![row(5, P, 1)];
    accepts(&h);
}

#[test]
fn a_cas_losing_to_a_concurrent_write() {
    let mut h = h();
    h.ops = vec![
        op(1, put(P), 0, Some(10), ok(5, P)),
        op(2, cas(4, R), 1, Some(11), conflict(5, P)),
    ];
    h.audit = vec![row(5, P, 1)];
    accepts(&h);
}

#[test]
fn an_unchanged_put_and_reads_of_the_initial_version() {
    let mut h = h();
    h.ops = vec![
        op(1, put(R), 0, Some(1), ok(4, R)),
        op(2, cas(4, R), 2, Some(3), ok(4, R)),
        op(3, OpKind::Probe, 4, Some(5), conflict(4, R)),
    ];
    accepts(&h);
}

// ---------------------------------------------------------------- the weaker model

fn hub(client: u32, replica: u8, pid: u32, inv: u64, ret: u64, v: u64, s: St) -> HubRead {
    HubRead {
        client,
        key: K.into(),
        replica,
        pid,
        inv,
        ret,
        version: v,
        state: s,
    }
}

fn weak_kinds(h: &History) -> Vec<String> {
    weak::check(h, 5_000).iter().map(Violation::kind).collect()
}

fn one_write() -> History {
    let mut h = h();
    h.ops = vec![op(1, put(P), 100, Some(110), ok(5, P))];
    h.audit = vec![row(5, P, 1)];
    h.deliveries = vec![Delivery {
        t: 120,
        delivery: "1".into(),
        key: K.into(),
        version: 5,
    }];
    h
}

#[test]
fn a_stale_hub_read_is_allowed_but_not_a_backwards_one() {
    let mut h = one_write();
    // Replica 1, cut off, still shows version 4 long after the write: allowed.
    h.hub_reads = vec![hub(1, 0, 10, 200, 210, 5, P), hub(2, 1, 11, 300, 310, 4, R)];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    // The same incarnation going from 5 back to 4 is not.
    h.hub_reads.push(hub(1, 0, 10, 400, 410, 4, R));
    assert_eq!(weak_kinds(&h), ["hub_backwards"]);
    // A new incarnation (restarted) may start lower.
    h.hub_reads.pop();
    h.hub_reads.push(hub(1, 0, 12, 400, 410, 4, R));
    assert!(weak_kinds(&h).is_empty());
}

#[test]
fn a_hub_read_of_what_the_audit_does_not_have_or_of_the_future() {
    let mut h = one_write();
    h.hub_reads = vec![hub(1, 0, 10, 200, 210, 5, R)];
    assert_eq!(weak_kinds(&h), ["hub_phantom"]);
    h.hub_reads = vec![hub(1, 0, 10, 200, 210, 6, R)];
    assert_eq!(weak_kinds(&h), ["hub_phantom"]);
    h.hub_reads = vec![hub(1, 0, 10, 20, 30, 5, P)];
    assert_eq!(weak_kinds(&h), ["hub_future"]);
}

fn ev(watcher: u32, t: u64, v: u64, s: St, resumed: bool, resync: bool) -> WatchEvent {
    WatchEvent {
        watcher,
        key: K.into(),
        t,
        version: v,
        state: s,
        resumed,
        resync,
    }
}

#[test]
fn a_watcher_gap_after_a_resume_is_caught_unless_resynced() {
    let mut h = h();
    h.ops = (0..3)
        .map(|i| {
            let s = if i % 2 == 0 { P } else { R };
            op(i + 1, put(s), i * 10, Some(i * 10 + 5), ok(5 + i, s))
        })
        .collect();
    h.audit = (0..3)
        .map(|i| row(5 + i, if i % 2 == 0 { P } else { R }, i + 1))
        .collect();
    h.watch = vec![ev(1, 6, 5, P, false, false), ev(1, 40, 7, P, true, false)];
    assert!(weak_kinds(&h).contains(&"watcher_order".to_string()));
    h.watch[1].resync = true;
    assert!(!weak_kinds(&h).contains(&"watcher_order".to_string()));
    h.watch = vec![ev(1, 6, 5, P, false, false), ev(1, 7, 5, P, true, false)];
    assert!(weak_kinds(&h).contains(&"watcher_order".to_string()));
}

#[test]
fn gates_never_go_back_and_all_converge_after_the_heal() {
    let mut h = one_write();
    h.healed_at = Some(1_000);
    let g = |t, v| GateObs {
        gate: 1,
        key: K.into(),
        t,
        version: v,
    };
    h.gates = vec![g(50, 4), g(500, 5)];
    h.watch = vec![ev(1, 300, 5, P, false, false)];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    h.gates.push(g(600, 4));
    assert!(weak_kinds(&h).contains(&"gate_backwards".to_string()));
    // Reaching the final version 6 s after the heal is too late.
    h.gates = vec![g(50, 4), g(1_000 + 6_000, 5)];
    assert_eq!(weak_kinds(&h), ["not_converged"]);
    h.gates = vec![g(50, 4)];
    assert_eq!(weak_kinds(&h), ["not_converged"]);
}

#[test]
fn one_notification_per_change_with_duplicates_only_inside_a_fault_window() {
    let mut h = one_write();
    assert!(weak_kinds(&h).is_empty());
    h.deliveries.push(Delivery {
        t: 900,
        delivery: "1".into(),
        key: K.into(),
        version: 5,
    });
    assert_eq!(weak_kinds(&h), ["duplicate_notification"]);
    h.redelivery_windows = vec![Window { from: 100, to: 130 }];
    assert!(weak_kinds(&h).is_empty());
    h.deliveries.clear();
    assert_eq!(weak_kinds(&h), ["notification_missing"]);
}

// ---------------------------------------------------------------- read-your-writes, staleness

const S: u64 = 1_000_000_000;

/// Version 5 (paused) written through replica 0, process 10, in [1 s, 1.1 s]; every audit
/// version notified.
fn acked_on_replica_0() -> History {
    let mut h = h();
    let mut w = op(1, put(P), S, Some(S + S / 10), ok(5, P));
    w.pid = Some(10);
    h.ops = vec![w];
    h.audit = vec![row(5, P, 1)];
    h.deliveries = vec![Delivery {
        t: 2 * S,
        delivery: "1".into(),
        key: K.into(),
        version: 5,
    }];
    h
}

#[test]
fn read_your_writes_on_the_acknowledging_process() {
    let mut h = acked_on_replica_0();
    // Reads that began before the answer, or on another replica, may still show 4.
    h.hub_reads = vec![
        hub(1, 0, 10, S + S / 20, S + S / 5, 4, R),
        hub(2, 1, 11, S + S / 5, S + S / 4, 4, R),
    ];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    // The process that answered "5", asked afterwards, shows 4: rejected.
    h.hub_reads.push(hub(3, 0, 10, S + S / 5, S + S / 4, 4, R));
    assert_eq!(weak_kinds(&h), ["read_your_writes"]);
    let v = weak::check(&h, 5 * S);
    assert!(
        matches!(
            &v[0],
            Violation::ReadYourWrites {
                op: 1,
                acked: 5,
                saw: 4,
                replica: 0,
                pid: 10,
                ..
            }
        ),
        "{v:?}"
    );
    // Unless the database failed during the write (it may be acknowledged before published).
    h.outages = vec![Outage {
        replica: None,
        from: S + S / 20,
        to: S + S / 2,
    }];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    // An outage of another replica excuses nothing.
    h.outages = vec![Outage {
        replica: Some(2),
        from: 0,
        to: 3 * S,
    }];
    assert_eq!(weak_kinds(&h), ["read_your_writes"]);
    // A write without a known process is not held to it.
    h.outages.clear();
    h.ops[0].pid = None;
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
}

#[test]
fn bounded_staleness_on_a_healthy_replica() {
    let mut h = acked_on_replica_0();
    let done = S + S / 10;
    let bound = weak::STALENESS_NS;
    // Replica 1 still shows 4 just inside the bound: allowed.
    h.hub_reads = vec![hub(1, 1, 11, done + bound - 1, done + bound + S / 10, 4, R)];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    assert_eq!(weak::coverage(&h).bounded_staleness, 0);
    // Past it: rejected.
    h.hub_reads = vec![hub(1, 1, 11, done + bound + 1, done + bound + S / 10, 4, R)];
    assert_eq!(weak_kinds(&h), ["stale_beyond_bound"]);
    let v = weak::check(&h, 5 * S);
    assert!(
        matches!(
            &v[0],
            Violation::StaleBeyondBound {
                replica: 1,
                saw: 4,
                want: 5,
                ..
            }
        ),
        "{v:?}"
    );
    // The same read showing 5 is what the bound demands.
    h.hub_reads[0].version = 5;
    h.hub_reads[0].state = P;
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    assert_eq!(weak::coverage(&h).bounded_staleness, 1);
    h.hub_reads[0].version = 4;
    h.hub_reads[0].state = R;
    // Excused: replica 1 was cut off from the database less than the recovery time before.
    let read_inv = done + bound + weak::RECOVERY_NS + S;
    h.hub_reads[0].inv = read_inv;
    h.hub_reads[0].ret = read_inv + S / 10;
    assert_eq!(weak_kinds(&h), ["stale_beyond_bound"]);
    let cut = |replica| Outage {
        replica,
        from: 0,
        to: read_inv - bound - weak::RECOVERY_NS + 1,
    };
    h.outages = vec![cut(Some(1))];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    // ... or the database was down (every replica).
    h.outages = vec![cut(None)];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    // ... but not by an outage of another replica, nor one long enough ago.
    h.outages = vec![cut(Some(2))];
    assert_eq!(weak_kinds(&h), ["stale_beyond_bound"]);
    // A stall (another replica stopped inside a transaction) excuses the read only while it
    // overlaps the bound's window.
    h.stalls = vec![Window {
        from: read_inv - bound - S,
        to: read_inv - bound + 1,
    }];
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    h.stalls = vec![Window {
        from: read_inv - bound - S,
        to: read_inv - bound - 1,
    }];
    assert_eq!(weak_kinds(&h), ["stale_beyond_bound"]);
    h.stalls.clear();
    h.outages = vec![Outage {
        replica: Some(1),
        from: 0,
        to: read_inv - bound - weak::RECOVERY_NS - 1,
    }];
    assert_eq!(weak_kinds(&h), ["stale_beyond_bound"]);
}

fn probe_at(id: u64, t: u64) -> Op {
    op(id, OpKind::Probe, t, Some(t + S / 100), conflict(5, P))
}

#[test]
fn writes_resume_after_the_full_disk_is_freed() {
    // The disk is full in [1 s, 2 s]; version 5 was written before, 6 after the free.
    let mut h = h();
    h.disk_full = vec![Window { from: S, to: 2 * S }];
    let w5 = op(1, put(P), S / 2, Some(S / 2 + 1), ok(5, P));
    let w6 = op(2, put(R), 2 * S + S / 2, Some(3 * S), ok(6, R));
    h.ops = vec![w5, w6, probe_at(3, 20 * S)];
    h.ops[2].outcome = conflict(6, R);
    h.audit = vec![row(5, P, 1), row(6, R, 2)];
    h.deliveries = [5, 6]
        .iter()
        .map(|&v| Delivery {
            t: 10 * S,
            delivery: v.to_string(),
            key: K.into(),
            version: v,
        })
        .collect();
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    assert_eq!(weak::coverage(&h).disk_frees, 1);
    // Nothing acknowledged within the bound after the free: rejected.
    h.ops[1].inv = 2 * S + weak::WRITES_RESUME_NS;
    h.ops[1].ret = Some(2 * S + weak::WRITES_RESUME_NS + 1);
    assert_eq!(weak_kinds(&h), ["writes_not_resumed"]);
    // A refused write does not count.
    h.ops[1].inv = 2 * S + S / 4;
    h.ops[1].ret = Some(2 * S + S / 2);
    h.ops[1].outcome = Outcome::Fail {
        status: 503,
        code: "unavailable".into(),
    };
    h.audit.pop();
    h.deliveries.pop();
    h.ops[2].outcome = conflict(5, P);
    assert_eq!(weak_kinds(&h), ["writes_not_resumed"]);
    // A server stopped over the free starts the window when it is back; a fault inside the
    // window excuses it.
    h.outages = vec![Outage {
        replica: Some(0),
        from: S + S / 2,
        to: 4 * S,
    }];
    assert_eq!(weak_kinds(&h), ["writes_not_resumed"]);
    h.outages.push(Outage {
        replica: Some(0),
        from: 5 * S,
        to: 6 * S,
    });
    assert!(weak_kinds(&h).is_empty(), "{:?}", weak_kinds(&h));
    assert_eq!(weak::coverage(&h).disk_frees, 0);
}
