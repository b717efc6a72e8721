//! The store contract, run against a real SQLite file. Each check is a function over
//! `&dyn Store` so the PostgreSQL backend runs the very same suite.
#![allow(clippy::unwrap_used)]

mod suite;

use std::sync::Arc;

use brb_store::{SqliteStore, Store};

fn open() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("brb.db")).unwrap();
    (dir, Arc::new(store))
}

macro_rules! sqlite_suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, store) = open();
            suite::$name(&store).await;
        }
    )*};
}

sqlite_suite!(
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
);

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brb.db");
    {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        suite::pause_primary(&store).await;
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    suite::primary_is_paused(&store).await;
}
