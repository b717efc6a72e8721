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

suite::store_contract!(sqlite_suite);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_of_an_unknown_kind_wait() {
    let (dir, store) = open();
    let path = dir.path().join("brb.db");
    suite::outbox_rows_of_an_unknown_kind_wait(&store, |sql| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let c = rusqlite::Connection::open(&path).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                c.execute(sql, []).unwrap();
            })
            .await
            .unwrap();
        }
    })
    .await;
}
