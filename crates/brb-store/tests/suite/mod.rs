//! Backend-independent store contract. Every function takes a fresh, empty store.

use std::sync::Arc;

use brb_api::{AuditAction, Role, Source, SwitchState};
use brb_store::{
    Actor, AdapterRecord, AuditQuery, Channel, NotificationKind, SetOutcome, StateChange, Store,
    StoreError, SwitchEvent, TokenRecord,
};

pub type S = Arc<dyn Store>;

/// Every case of the contract, once. Each backend's test file expands it into one test per
/// case (`store_contract!(its_macro)`), so a case cannot run on one backend and be forgotten
/// on the other; `every_case_is_in_the_list` checks the list against the functions below.
macro_rules! store_contract {
    ($backend:ident) => {
        $backend!(
            seeds_primary_once,
            state_changes_bump_version_and_audit,
            idempotent_set_writes_nothing,
            expected_version_conflict,
            unknown_switch,
            switch_lifecycle_keeps_versions_monotonic,
            primary_cannot_be_deleted,
            audit_pages_newest_first,
            history_after_version,
            tokens_create_list_revoke,
            token_policy_rotation_and_last_use,
            concurrent_toggles_are_gapless,
            ramps_start_with_resume_and_end_with_pause,
            outbox_is_written_with_the_change_and_claimed_once,
            outbox_dedupes_by_key,
            outbox_pending_before_orders_a_channel,
            adapter_records_are_audit_only,
            resume_requests_are_stored_with_the_switch_and_settled_by_another_operator,
            audit_entries_carry_the_ramp_of_their_version,
        );
    };
}
pub(crate) use store_contract;

macro_rules! names {
    ($($name:ident),* $(,)?) => {
        /// The cases in `store_contract!`, by name.
        pub const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}
store_contract!(names);

/// Functions over a store that are steps of other tests, not cases of their own.
const HELPERS: &[&str] = &["pause_primary", "primary_is_paused"];

#[test]
fn every_case_is_in_the_list() {
    let src = include_str!("mod.rs");
    let mut found: Vec<&str> = src
        .lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter(|rest| rest.contains("(store: &S)"))
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| !HELPERS.contains(name))
        .collect();
    found.sort_unstable();
    let mut listed = CASES.to_vec();
    listed.sort_unstable();
    assert_eq!(
        found, listed,
        "a contract case is missing from store_contract! (or listed without a function)"
    );
}

pub fn alice() -> Actor {
    Actor {
        name: "alice".into(),
        source: Source::Cli,
        remote_addr: Some("127.0.0.1".into()),
    }
}

pub fn change(switch: &str, to: SwitchState) -> StateChange {
    StateChange {
        switch: switch.into(),
        to,
        reason: Some("db on fire".into()),
        expected_version: None,
        ramp: None,
        control: None,
        guards: Vec::new(),
        guard_op: None,
        actor: alice(),
        notify: Vec::new(),
        approval_secs: None,
        request: None,
    }
}

async fn seed(store: &S) {
    store
        .ensure_switch(
            "workers",
            "Pause all background workers",
            true,
            Actor::system(),
        )
        .await
        .unwrap();
}

pub async fn seeds_primary_once(store: &S) {
    assert!(
        store
            .ensure_switch("workers", "d", true, Actor::system())
            .await
            .unwrap()
    );
    assert!(
        !store
            .ensure_switch("workers", "d", true, Actor::system())
            .await
            .unwrap()
    );
    // A second primary is never created.
    assert!(
        !store
            .ensure_switch("other", "d", true, Actor::system())
            .await
            .unwrap()
    );
    let all = store.list_switches().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].primary);
    assert_eq!(all[0].version, 1);
    assert_eq!(all[0].state, SwitchState::Running);
}

pub async fn pause_primary(store: &S) {
    seed(store).await;
    let out = store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap();
    assert!(matches!(out, SetOutcome::Changed { .. }));
}

pub async fn primary_is_paused(store: &S) {
    let s = store.get_switch("workers").await.unwrap().unwrap();
    assert_eq!(s.state, SwitchState::Paused);
    assert_eq!(s.version, 2);
    let audit = store
        .audit(AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit[0].action, AuditAction::StateChanged);
    assert_eq!(audit[0].version, Some(2));
}

pub async fn state_changes_bump_version_and_audit(store: &S) {
    seed(store).await;
    let SetOutcome::Changed { switch, entry } = store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap()
    else {
        panic!("expected a change")
    };
    assert_eq!(switch.state, SwitchState::Paused);
    assert_eq!(switch.version, 2);
    assert_eq!(switch.changed_by, "alice");
    assert_eq!(switch.source, Source::Cli);
    assert_eq!(switch.reason.as_deref(), Some("db on fire"));
    assert_eq!(entry.from, Some(SwitchState::Running));
    assert_eq!(entry.to, Some(SwitchState::Paused));
    assert_eq!(entry.version, Some(2));
    assert_eq!(entry.remote_addr.as_deref(), Some("127.0.0.1"));
    let got = store.get_switch("workers").await.unwrap().unwrap();
    assert_eq!(got, switch);
}

pub async fn idempotent_set_writes_nothing(store: &S) {
    seed(store).await;
    let before = store.last_audit_id().await.unwrap();
    let out = store
        .set_state(change("workers", SwitchState::Running))
        .await
        .unwrap();
    let SetOutcome::Unchanged(s) = out else {
        panic!("expected no change")
    };
    assert_eq!(s.version, 1);
    assert_eq!(store.last_audit_id().await.unwrap(), before);
}

pub async fn expected_version_conflict(store: &S) {
    seed(store).await;
    let mut c = change("workers", SwitchState::Paused);
    c.expected_version = Some(7);
    match store.set_state(c).await {
        Err(StoreError::Conflict { current }) => assert_eq!(current.version, 1),
        other => panic!("expected conflict, got {other:?}"),
    }
    let mut c = change("workers", SwitchState::Paused);
    c.expected_version = Some(1);
    assert!(matches!(
        store.set_state(c).await.unwrap(),
        SetOutcome::Changed { .. }
    ));
}

pub async fn unknown_switch(store: &S) {
    assert!(store.get_switch("nope").await.unwrap().is_none());
    assert!(matches!(
        store.set_state(change("nope", SwitchState::Paused)).await,
        Err(StoreError::SwitchNotFound(_))
    ));
}

/// An adapter's record is an audit entry about a live switch, with no version and no
/// snapshot: the switch is unchanged and no event stream replays it.
pub async fn adapter_records_are_audit_only(store: &S) {
    seed(store).await;
    let before = store.get_switch("workers").await.unwrap().unwrap();
    let events_before = store.events_after_id(0, 100).await.unwrap().len();
    let record = |switch: &str| AdapterRecord {
        switch: switch.into(),
        applied: SwitchState::Paused,
        reason: "adapter-rq: suspended RQ".into(),
        actor: Actor {
            name: "rq-adapter".into(),
            source: Source::Adapter,
            remote_addr: None,
        },
    };
    let e = store
        .record_adapter_action(record("workers"))
        .await
        .unwrap();
    assert_eq!(e.action, AuditAction::AdapterApplied);
    assert_eq!(
        (e.version, e.to, e.source),
        (None, Some(SwitchState::Paused), Source::Adapter)
    );
    // Twice is fine: entries without a version never collide on (switch, version).
    store
        .record_adapter_action(record("workers"))
        .await
        .unwrap();
    assert!(matches!(
        store.record_adapter_action(record("nope")).await,
        Err(StoreError::SwitchNotFound(_))
    ));
    assert_eq!(store.get_switch("workers").await.unwrap().unwrap(), before);
    assert_eq!(
        store.events_after_id(0, 100).await.unwrap().len(),
        events_before
    );
    assert_eq!(
        store
            .events_after_version("workers", 0, 100)
            .await
            .unwrap()
            .len(),
        1,
        "only the creation"
    );
    let page = store
        .audit(AuditQuery {
            switch: Some("workers".into()),
            before: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page[1], e, "read back as written");
    assert_eq!(page[0].action, AuditAction::AdapterApplied);
    assert_eq!(store.last_audit_id().await.unwrap(), page[0].id);
}

pub async fn switch_lifecycle_keeps_versions_monotonic(store: &S) {
    seed(store).await;
    let (s, _) = store
        .create_switch("search", "Search indexing", alice())
        .await
        .unwrap();
    assert_eq!((s.version, s.primary), (1, false));
    assert!(matches!(
        store.create_switch("search", "again", alice()).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let (s, _) = store
        .update_description("search", "Search re-indexing", alice())
        .await
        .unwrap();
    assert_eq!(
        (s.version, s.description.as_str()),
        (2, "Search re-indexing")
    );
    store
        .set_state(change("search", SwitchState::Paused))
        .await
        .unwrap();
    let del = store.delete_switch("search", alice()).await.unwrap();
    assert_eq!(del.version, Some(4));
    assert!(store.get_switch("search").await.unwrap().is_none());
    let (s, _) = store
        .create_switch("search", "back", alice())
        .await
        .unwrap();
    assert_eq!(
        s.version, 5,
        "re-created switch continues its version sequence"
    );
    assert_eq!(s.state, SwitchState::Running);
    let hist = store.switch_history_after("search", 0, 100).await.unwrap();
    let versions: Vec<_> = hist.iter().map(|e| e.version.unwrap()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
}

pub async fn primary_cannot_be_deleted(store: &S) {
    seed(store).await;
    assert!(matches!(
        store.delete_switch("workers", alice()).await,
        Err(StoreError::Protected)
    ));
    assert!(store.get_switch("workers").await.unwrap().is_some());
}

pub async fn audit_pages_newest_first(store: &S) {
    seed(store).await;
    for i in 0..6 {
        let to = if i % 2 == 0 {
            SwitchState::Paused
        } else {
            SwitchState::Running
        };
        store.set_state(change("workers", to)).await.unwrap();
    }
    let page = store
        .audit(AuditQuery {
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 4);
    assert!(page.windows(2).all(|w| w[0].id > w[1].id));
    let older = store
        .audit(AuditQuery {
            limit: 4,
            before: Some(page[3].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(older.len(), 3, "6 changes + creation = 7 entries");
    assert!(older[0].id < page[3].id);
    let only = store
        .audit(AuditQuery {
            switch: Some("other".into()),
            limit: 10,
            before: None,
        })
        .await
        .unwrap();
    assert!(only.is_empty());
}

pub async fn history_after_version(store: &S) {
    seed(store).await;
    store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap();
    store
        .set_state(change("workers", SwitchState::Running))
        .await
        .unwrap();
    let h = store.switch_history_after("workers", 1, 100).await.unwrap();
    assert_eq!(
        h.iter().map(|e| e.version.unwrap()).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let ev = store.events_after_version("workers", 1, 100).await.unwrap();
    let states: Vec<_> = ev
        .iter()
        .map(|e| match &e.event {
            SwitchEvent::Changed(s) => (s.version, s.state),
            SwitchEvent::Deleted(_) => panic!("not deleted"),
        })
        .collect();
    assert_eq!(
        states,
        vec![(2, SwitchState::Paused), (3, SwitchState::Running)]
    );
    let all = store.events_after_id(0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].audit_id < w[1].audit_id));
    let tail = store.events_after_id(all[1].audit_id, 100).await.unwrap();
    assert_eq!(tail, all[2..].to_vec());
}

pub async fn tokens_create_list_revoke(store: &S) {
    let rec = TokenRecord {
        id: "abc123".into(),
        name: "ci".into(),
        role: Role::Operator,
        secret_hash: vec![7; 32],
        created_at: chrono::Utc::now(),
        revoked_at: None,
        policy: Default::default(),
        last_used_at: None,
        last_used_addr: None,
    };
    store.create_token(rec.clone(), alice()).await.unwrap();
    let mut dup = rec.clone();
    dup.id = "other".into();
    assert!(matches!(
        store.create_token(dup, alice()).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let list = store.list_tokens().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].secret_hash, vec![7; 32]);
    let (revoked, entry) = store.revoke_token("abc123", alice()).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(entry.action, AuditAction::TokenRevoked);
    // The name is free again once revoked.
    let mut again = rec.clone();
    again.id = "def456".into();
    store.create_token(again, alice()).await.unwrap();
    assert!(matches!(
        store.revoke_token("missing", alice()).await,
        Err(StoreError::TokenNotFound(_))
    ));
}

pub async fn token_policy_rotation_and_last_use(store: &S) {
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::days(30);
    let rec = TokenRecord {
        id: "btn1".into(),
        name: "office-button".into(),
        role: Role::Operator,
        secret_hash: vec![1; 32],
        created_at: now,
        revoked_at: None,
        policy: brb_store::TokenPolicy {
            expires_at: Some(expires),
            scope: Some(brb_api::TokenScope {
                switches: vec!["workers".into()],
                pause_only: true,
            }),
            previous: None,
        },
        last_used_at: None,
        last_used_addr: None,
    };
    store.create_token(rec.clone(), alice()).await.unwrap();
    let got = store.get_token("btn1").await.unwrap().unwrap();
    assert_eq!(got.policy, rec.policy);
    // Stored with microsecond precision.
    assert_eq!(
        got.policy.expires_at.map(|t| t.timestamp_micros()),
        Some(expires.timestamp_micros())
    );

    let grace = now + chrono::Duration::hours(1);
    let (rotated, entry) = store
        .rotate_token("btn1", vec![2; 32], grace, alice())
        .await
        .unwrap();
    assert_eq!(entry.action, AuditAction::TokenRotated);
    assert_eq!(rotated.secret_hash, vec![2; 32]);
    let prev = rotated.policy.previous.clone().unwrap();
    assert_eq!(prev.secret_hash, "01".repeat(32));
    assert_eq!(
        prev.valid_until.timestamp_micros(),
        grace.timestamp_micros()
    );
    assert_eq!(
        rotated.policy.scope, rec.policy.scope,
        "rotation keeps the scope"
    );
    assert!(
        !entry.reason.unwrap_or_default().contains("0101"),
        "no hash in the audit"
    );
    // A rotation without grace drops the previous secret.
    let (again, _) = store
        .rotate_token("btn1", vec![3; 32], now, alice())
        .await
        .unwrap();
    assert!(again.policy.previous.is_none());

    let t1 = now + chrono::Duration::seconds(5);
    store
        .touch_tokens(vec![brb_store::TokenUse {
            id: "btn1".into(),
            at: t1,
            addr: Some("10.0.0.7".into()),
        }])
        .await
        .unwrap();
    // An older use never moves the record back.
    store
        .touch_tokens(vec![brb_store::TokenUse {
            id: "btn1".into(),
            at: now,
            addr: Some("10.0.0.8".into()),
        }])
        .await
        .unwrap();
    let got = store.get_token("btn1").await.unwrap().unwrap();
    assert_eq!(
        got.last_used_at.map(|t| t.timestamp_micros()),
        Some(t1.timestamp_micros())
    );
    assert_eq!(got.last_used_addr.as_deref(), Some("10.0.0.7"));

    store.revoke_token("btn1", alice()).await.unwrap();
    assert!(matches!(
        store
            .rotate_token("btn1", vec![4; 32], grace, alice())
            .await,
        Err(StoreError::TokenNotFound(_))
    ));
}

pub async fn concurrent_toggles_are_gapless(store: &S) {
    seed(store).await;
    // Many tasks share the store: every acknowledged change must appear in the audit log, and
    // the acknowledged versions are exactly 2..=n+1.
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let (store, acked) = (Arc::clone(store), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            for i in 0..25u32 {
                let to = if (t + i) % 2 == 0 {
                    SwitchState::Paused
                } else {
                    SwitchState::Running
                };
                if let SetOutcome::Changed { switch, .. } =
                    store.set_state(change("workers", to)).await.unwrap()
                {
                    acked.lock().unwrap().push(switch.version);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort_unstable();
    let n = acked.len() as u64;
    assert!(n > 0);
    assert_eq!(
        acked,
        (2..n + 2).collect::<Vec<_>>(),
        "acknowledged versions are gapless"
    );
    let hist = store
        .switch_history_after("workers", 1, 10_000)
        .await
        .unwrap();
    assert_eq!(
        hist.iter().map(|e| e.version.unwrap()).collect::<Vec<_>>(),
        acked
    );
}

pub async fn ramps_start_with_resume_and_end_with_pause(store: &S) {
    seed(store).await;
    store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap();
    let mut resume = change("workers", SwitchState::Running);
    resume.ramp = Some(brb_api::RampSpec::preset("steps", 600).unwrap());
    let SetOutcome::Changed { switch, .. } = store.set_state(resume.clone()).await.unwrap() else {
        panic!("expected a change")
    };
    let ramp = switch.ramp.clone().expect("ramp stored");
    assert_eq!(ramp.duration_secs, 600);
    assert!((switch.admitted_fraction(ramp.started_at) - 0.1).abs() < 1e-9);
    assert_eq!(
        store.get_switch("workers").await.unwrap().unwrap().ramp,
        Some(ramp.clone())
    );
    // The replayed event carries the ramp too.
    let ev = store
        .events_after_version("workers", switch.version - 1, 10)
        .await
        .unwrap();
    assert!(matches!(&ev[0].event, SwitchEvent::Changed(s) if s.ramp == Some(ramp.clone())));
    // Resuming again with a ramp while running: nothing.
    assert!(matches!(
        store.set_state(resume).await.unwrap(),
        SetOutcome::Unchanged(_)
    ));
    // Resuming without a ramp while ramping: release everything now.
    let SetOutcome::Changed { switch, .. } = store
        .set_state(change("workers", SwitchState::Running))
        .await
        .unwrap()
    else {
        panic!("ending a ramp is a change")
    };
    assert_eq!(switch.ramp, None);
    assert!(matches!(
        store
            .set_state(change("workers", SwitchState::Running))
            .await
            .unwrap(),
        SetOutcome::Unchanged(_)
    ));
    // A pause clears any ramp.
    let mut resume = change("workers", SwitchState::Paused);
    resume.ramp = None;
    let SetOutcome::Changed { switch, .. } = store.set_state(resume).await.unwrap() else {
        panic!()
    };
    assert_eq!(switch.ramp, None);
}

pub async fn outbox_is_written_with_the_change_and_claimed_once(store: &S) {
    use std::time::Duration;
    seed(store).await;
    let mut c = change("workers", SwitchState::Paused);
    c.notify = vec![Channel::Slack, Channel::Webhook("ops".into())];
    let SetOutcome::Changed { switch, .. } = store.set_state(c).await.unwrap() else {
        panic!()
    };
    // An idempotent set writes no notification.
    let mut again = change("workers", SwitchState::Paused);
    again.notify = vec![Channel::Slack];
    store.set_state(again).await.unwrap();
    let now = chrono::Utc::now();
    let claimed = store
        .outbox_claim(now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].channel, Channel::Slack);
    assert_eq!(claimed[0].kind, NotificationKind::Change);
    assert_eq!(claimed[0].event, switch);
    // Leased: a second claimer gets nothing until the lease ends.
    assert!(
        store
            .outbox_claim(now, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let later = now + chrono::Duration::seconds(31);
    assert_eq!(
        store
            .outbox_claim(later, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    store.outbox_delivered(claimed[0].id, later).await.unwrap();
    store
        .outbox_failed(
            claimed[1].id,
            later,
            "HTTP 500",
            Some(later + chrono::Duration::seconds(2)),
        )
        .await
        .unwrap();
    let far = later + chrono::Duration::seconds(100);
    let again = store
        .outbox_claim(far, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "delivered ones are never claimed again");
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("HTTP 500"));
    store
        .outbox_failed(again[0].id, far, "gave up", None)
        .await
        .unwrap();
    let farther = far + chrono::Duration::days(2);
    assert!(
        store
            .outbox_claim(farther, Duration::from_secs(30), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let recent = store.outbox_recent(10).await.unwrap();
    assert_eq!(recent.len(), 2);
    assert!(recent.iter().any(|i| i.delivered_at.is_some()));
    assert!(recent.iter().any(|i| i.failed));
}

pub async fn outbox_dedupes_by_key(store: &S) {
    seed(store).await;
    let sw = store.get_switch("workers").await.unwrap().unwrap();
    let n = |key: &str| brb_store::NewNotification {
        channel: Channel::Slack,
        kind: NotificationKind::Reminder,
        event: sw.clone(),
        dedupe_key: key.into(),
    };
    assert_eq!(
        store
            .outbox_enqueue(vec![n("r:1"), n("r:2")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.outbox_enqueue(vec![n("r:1")]).await.unwrap(), 0);
    assert_eq!(store.outbox_recent(10).await.unwrap().len(), 2);
}

/// Rows of a kind this binary does not know (a newer binary wrote them during a rolling
/// upgrade) are left for a replica that knows them: never claimed here, so never attempted,
/// failed or dropped, and the rows behind them are claimed as if they were not there. Not a
/// `store_contract!` case: writing such a row takes SQL of the backend's own, `exec`; each
/// backend's test file runs it.
pub async fn outbox_rows_of_an_unknown_kind_wait<F, Fut>(store: &S, exec: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use std::time::Duration;
    seed(store).await;
    let sw = store.get_switch("workers").await.unwrap().unwrap();
    let n = |key: &str| brb_store::NewNotification {
        channel: Channel::Slack,
        kind: NotificationKind::Reminder,
        event: sw.clone(),
        dedupe_key: key.into(),
    };
    store
        .outbox_enqueue(vec![n("newer:1"), n("known:2"), n("known:3")])
        .await
        .unwrap();
    // The oldest row becomes one a newer binary wrote.
    exec("UPDATE outbox SET kind = 'resume_teleported' WHERE dedupe_key = 'newer:1'").await;
    assert_eq!(
        store.outbox_unknown_kinds().await.unwrap(),
        vec!["resume_teleported".to_string()]
    );
    let now = chrono::Utc::now();
    let lease = Duration::from_secs(30);
    // A claim of one, with the unknown row first in line, still gets a row it can deliver.
    let first = store.outbox_claim(now, lease, 1).await.unwrap();
    let second = store.outbox_claim(now, lease, 10).await.unwrap();
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert!(first[0].id < second[0].id);
    for it in first.iter().chain(&second) {
        assert_eq!(it.kind, NotificationKind::Reminder);
        store.outbox_delivered(it.id, now).await.unwrap();
    }
    // Two days on (past any lease, past the day of retries): never claimed, still pending.
    let later = now + chrono::Duration::days(2);
    assert!(
        store
            .outbox_claim(later, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.outbox_unknown_kinds().await.unwrap(),
        vec!["resume_teleported".to_string()]
    );
    // The listing shows what this binary can read, and does not fail on the rest.
    let recent = store.outbox_recent(10).await.unwrap();
    assert_eq!(recent.len(), 2, "{recent:?}");
    assert!(recent.iter().all(|r| r.delivered_at.is_some()));
    // A binary that knows the kind finds the row as it was written: never attempted.
    exec("UPDATE outbox SET kind = 'reminder' WHERE dedupe_key = 'newer:1'").await;
    assert!(store.outbox_unknown_kinds().await.unwrap().is_empty());
    let found = store.outbox_claim(later, lease, 10).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].id < first[0].id, "the oldest row, left in place");
    assert_eq!(
        (found[0].attempts, found[0].failed, found[0].delivered_at),
        (0, false, None)
    );
    assert_eq!(found[0].last_error, None);
}

/// A resume's notification to an incident tool waits for the pause's: older rows of the same
/// channel count while undelivered (leased or not), not once delivered or given up; other
/// channels never count.
pub async fn outbox_pending_before_orders_a_channel(store: &S) {
    use std::time::Duration;
    seed(store).await;
    let mut pause = change("workers", SwitchState::Paused);
    pause.notify = vec![Channel::PagerDuty, Channel::Slack];
    store.set_state(pause).await.unwrap();
    let mut resume = change("workers", SwitchState::Running);
    resume.notify = vec![Channel::PagerDuty, Channel::Slack];
    store.set_state(resume).await.unwrap();
    let now = chrono::Utc::now();
    let rows = store
        .outbox_claim(now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    let pd: Vec<_> = rows
        .iter()
        .filter(|r| r.channel == Channel::PagerDuty)
        .collect();
    assert_eq!(pd.len(), 2);
    let (first, second) = (pd[0].id, pd[1].id);
    assert!(first < second);
    let pending = |id| store.outbox_pending_before(&Channel::PagerDuty, id);
    assert!(!pending(first).await.unwrap(), "nothing before the first");
    assert!(
        pending(second).await.unwrap(),
        "the pause is leased, not done"
    );
    // Slack's rows never hold PagerDuty's.
    let slack_resume = rows
        .iter()
        .filter(|r| r.channel == Channel::Slack)
        .map(|r| r.id)
        .max()
        .unwrap();
    store.outbox_delivered(first, now).await.unwrap();
    assert!(
        !pending(second).await.unwrap(),
        "delivered: no longer pending"
    );
    assert!(
        store
            .outbox_pending_before(&Channel::Slack, slack_resume)
            .await
            .unwrap(),
        "Slack's pause row is still leased"
    );
    let slack_pause = rows
        .iter()
        .filter(|r| r.channel == Channel::Slack)
        .map(|r| r.id)
        .min()
        .unwrap();
    store
        .outbox_failed(slack_pause, now, "gave up", None)
        .await
        .unwrap();
    assert!(
        !store
            .outbox_pending_before(&Channel::Slack, slack_resume)
            .await
            .unwrap(),
        "given up: no longer pending"
    );
}

pub async fn resume_requests_are_stored_with_the_switch_and_settled_by_another_operator(store: &S) {
    use brb_store::SwitchOp;
    seed(store).await;
    store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap();
    let with_approval = |op: SwitchOp, by: Actor| StateChange {
        approval_secs: Some(900),
        request: Some(op),
        actor: by,
        ramp: Some(brb_api::RampSpec::preset("steps", 600).unwrap()),
        notify: vec![Channel::Slack, Channel::PagerDuty],
        ..change("workers", SwitchState::Running)
    };
    let plain = StateChange {
        approval_secs: Some(900),
        ..change("workers", SwitchState::Running)
    };
    assert!(matches!(
        store.set_state(plain).await,
        Err(StoreError::ApprovalRequired(_))
    ));
    let guard = brb_api::GuardSpec::parse("db_load < 80").unwrap();
    let SetOutcome::Changed { switch, entry } = store
        .set_state(with_approval(
            SwitchOp::Request {
                guards: vec![guard.clone()],
            },
            alice(),
        ))
        .await
        .unwrap()
    else {
        panic!("expected a change")
    };
    assert_eq!(entry.action, AuditAction::ResumeRequested);
    let request = switch.resume_request.clone().expect("the request");
    assert_eq!(
        (request.id, request.guards.clone()),
        (switch.version, vec![guard])
    );
    // Read back from the row and from the audit snapshot: the same request.
    let stored = store.get_switch("workers").await.unwrap().unwrap();
    assert_eq!(stored.resume_request, Some(request.clone()));
    assert_eq!(stored.state, SwitchState::Paused);
    let ev = store
        .events_after_version("workers", switch.version - 1, 10)
        .await
        .unwrap();
    assert!(
        matches!(&ev[0].event, SwitchEvent::Changed(s) if s.resume_request == Some(request.clone()))
    );
    // Its requester cannot approve it; someone else can.
    assert!(matches!(
        store
            .set_state(with_approval(SwitchOp::Approve { id: request.id }, alice()))
            .await,
        Err(StoreError::SelfApproval(_))
    ));
    let bob = Actor {
        name: "bob".into(),
        ..alice()
    };
    let SetOutcome::Changed { switch, entry } = store
        .set_state(with_approval(SwitchOp::Approve { id: request.id }, bob))
        .await
        .unwrap()
    else {
        panic!("expected a change")
    };
    assert_eq!(entry.action, AuditAction::StateChanged);
    assert_eq!(switch.state, SwitchState::Running);
    // The ramp asked for, guarded by the guard asked for.
    let ramp = switch.ramp.as_ref().expect("the requested ramp");
    assert_eq!(
        ramp.guard.as_ref().map(|g| g.guards.clone()),
        Some(vec![brb_api::GuardSpec::parse("db_load < 80").unwrap()])
    );
    let stored = store.get_switch("workers").await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.resume_request),
        (SwitchState::Running, None)
    );
    // Each is announced with its own kind, in its transaction: the request to the chat
    // channels only, the approval (a resume) everywhere.
    let mut told: Vec<(String, NotificationKind, u64)> = store
        .outbox_recent(10)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.channel.to_string(), n.kind, n.event.version))
        .collect();
    told.sort_by_key(|(c, _, v)| (*v, c.clone()));
    assert_eq!(
        told,
        vec![
            (
                "slack".to_string(),
                NotificationKind::ResumeRequested,
                request.id
            ),
            (
                "pagerduty".to_string(),
                NotificationKind::ResumeApproved,
                switch.version
            ),
            (
                "slack".to_string(),
                NotificationKind::ResumeApproved,
                switch.version
            ),
        ]
    );
}

/// Each audit entry reads back with the ramp its snapshot holds: a plain release, a guarded
/// one (with its guard), a hold, and none on a pause or a token entry. The audit table and
/// `brb audit` show releases made before anyone was looking from this.
pub async fn audit_entries_carry_the_ramp_of_their_version(store: &S) {
    use brb_store::RampControl;
    seed(store).await;
    store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap();
    let mut plain = change("workers", SwitchState::Running);
    plain.ramp = Some(brb_api::RampSpec::preset("steps", 600).unwrap());
    let SetOutcome::Changed { switch, entry } = store.set_state(plain).await.unwrap() else {
        panic!("expected a change")
    };
    let plain_ramp = switch.ramp.clone().expect("a ramp");
    // What the write answers and what the log reads back agree.
    assert_eq!(entry.ramp.as_ref(), Some(&plain_ramp));
    let SetOutcome::Changed { switch, .. } = store
        .set_state(StateChange {
            control: Some(RampControl {
                action: brb_api::RampAction::Hold,
                by_secs: 0,
            }),
            ..change("workers", SwitchState::Running)
        })
        .await
        .unwrap()
    else {
        panic!("a hold is a change")
    };
    let held = switch.ramp.clone().expect("a held ramp");
    assert!(held.held.is_some());
    store
        .set_state(change("workers", SwitchState::Paused))
        .await
        .unwrap();
    let guard = brb_api::GuardSpec::parse("db_load < 80").unwrap();
    let mut guarded = change("workers", SwitchState::Running);
    guarded.ramp = Some(brb_api::RampSpec::preset("steps", 600).unwrap());
    guarded.guards = vec![guard.clone()];
    let SetOutcome::Changed { switch, .. } = store.set_state(guarded).await.unwrap() else {
        panic!("expected a change")
    };
    let guarded_ramp = switch.ramp.clone().expect("a guarded ramp");
    let viewer = TokenRecord {
        id: "view01".into(),
        name: "ci-bot".into(),
        role: Role::Viewer,
        secret_hash: vec![7; 32],
        created_at: chrono::Utc::now(),
        revoked_at: None,
        policy: Default::default(),
        last_used_at: None,
        last_used_addr: None,
    };
    store.create_token(viewer, alice()).await.unwrap();
    let log = store
        .audit(AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<_> = log
        .iter()
        .map(|e| (e.action, e.to, e.ramp.clone()))
        .collect();
    assert_eq!(
        got[..6],
        [
            (AuditAction::TokenCreated, None, None),
            (
                AuditAction::StateChanged,
                Some(SwitchState::Running),
                Some(guarded_ramp.clone())
            ),
            (AuditAction::StateChanged, Some(SwitchState::Paused), None),
            (
                AuditAction::RampChanged,
                Some(SwitchState::Running),
                Some(held)
            ),
            (
                AuditAction::StateChanged,
                Some(SwitchState::Running),
                Some(plain_ramp)
            ),
            (AuditAction::StateChanged, Some(SwitchState::Paused), None),
        ]
    );
    assert_eq!(
        guarded_ramp.guard.map(|g| g.guards),
        Some(vec![guard]),
        "the guard is part of the entry's ramp"
    );
    // The switch's own history reads the same snapshots.
    let hist = store.switch_history_after("workers", 0, 10).await.unwrap();
    assert_eq!(hist.last().and_then(|e| e.ramp.clone()), log[1].ramp);
}
