//! The store contract, run against a real PostgreSQL: a private cluster started for this test
//! binary (`brb-pgtest`), one fresh database per test. Same functions as `sqlite_suite.rs`.
#![allow(clippy::unwrap_used)]

mod suite;

use std::sync::Arc;
use std::time::Duration;

use brb_api::SwitchState;
use brb_pgtest::PgCluster;
use brb_store::{FeedEvent, PgStore, SetOutcome, Store};

async fn open(name: &str) -> (String, Arc<dyn Store>) {
    let url = tokio::task::spawn_blocking({
        let name = name.to_string();
        move || PgCluster::shared().database(&name)
    })
    .await
    .unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    (url, Arc::new(store))
}

macro_rules! pg_suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_url, store) = open(stringify!($name)).await;
            tokio::time::timeout(Duration::from_secs(120), suite::$name(&store))
                .await
                .expect("test timed out");
        }
    )*};
}

suite::store_contract!(pg_suite);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_of_an_unknown_kind_wait() {
    let (url, store) = open("outbox_unknown_kind").await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let client = &client;
    tokio::time::timeout(
        Duration::from_secs(120),
        suite::outbox_rows_of_an_unknown_kind_wait(&store, |sql| async move {
            client.batch_execute(sql).await.unwrap();
        }),
    )
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_reconnect() {
    let (url, store) = open("survives_reconnect").await;
    suite::pause_primary(&store).await;
    drop(store);
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
    suite::primary_is_paused(&store).await;
}

/// Two stores on one database behave like two replicas: writes through both interleave into
/// one gapless history, stale `expected_version`s conflict, and each hears the other's
/// commits on its feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_history() {
    let (url, a) = open("two_processes").await;
    let b: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
    let mut feed_b = b.feed().expect("PostgreSQL has a feed");
    // The listener announces itself once LISTEN is active.
    tokio::time::timeout(Duration::from_secs(10), async {
        while feed_b.recv().await.unwrap() != FeedEvent::Connected {}
    })
    .await
    .expect("listener connects");
    suite::seeds_primary_once(&a).await;
    let SetOutcome::Changed { switch, .. } = a
        .set_state(suite::change("workers", SwitchState::Paused))
        .await
        .unwrap()
    else {
        panic!("a change")
    };
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let FeedEvent::Switch { name, version } = feed_b.recv().await.unwrap()
                && name == "workers"
                && version == switch.version
            {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "b hears a's commit");
    // b's expected_version check sees a's commit.
    let mut stale = suite::change("workers", SwitchState::Running);
    stale.expected_version = Some(1);
    assert!(matches!(
        b.set_state(stale).await,
        Err(brb_store::StoreError::Conflict { current }) if current.version == 2
    ));
    // Concurrent toggles through both: versions gapless, audit ids in commit order.
    let mut tasks = Vec::new();
    for (i, s) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for j in 0..20usize {
                let to = if (i + j) % 2 == 0 {
                    SwitchState::Paused
                } else {
                    SwitchState::Running
                };
                if let SetOutcome::Changed { switch, entry } =
                    s.set_state(suite::change("workers", to)).await.unwrap()
                {
                    acked.push((switch.version, entry.id));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_unstable();
    let n = acked.len() as u64;
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        (3..n + 3).collect::<Vec<_>>()
    );
    assert!(
        acked.windows(2).all(|w| w[0].1 < w[1].1),
        "audit ids follow version (commit) order"
    );
    let all = a.events_after_id(0, 10_000).await.unwrap();
    assert_eq!(all.len() as u64, n + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pictures_are_shared() {
    let (_url, store) = open("workers_shared").await;
    let now = chrono::Utc::now();
    store
        .workers_share("r1", "{\"a\":1}".into(), now)
        .await
        .unwrap();
    store
        .workers_share(
            "r2",
            "{\"b\":2}".into(),
            now - chrono::Duration::seconds(30),
        )
        .await
        .unwrap();
    store
        .workers_share("r1", "{\"a\":3}".into(), now)
        .await
        .unwrap();
    let got = store
        .workers_shared(now - chrono::Duration::seconds(10))
        .await
        .unwrap();
    assert_eq!(got, vec![("r1".to_string(), "{\"a\":3}".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_is_append_only() {
    let (url, store) = open("append_only").await;
    suite::pause_primary(&store).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let upd = client
        .execute("UPDATE audit SET actor = 'mallory'", &[])
        .await;
    assert!(format!("{:?}", upd.unwrap_err()).contains("append-only"));
    let del = client.batch_execute("DELETE FROM audit").await;
    assert!(format!("{:?}", del.unwrap_err()).contains("append-only"));
    let tr = client.batch_execute("TRUNCATE audit").await;
    assert!(format!("{:?}", tr.unwrap_err()).contains("append-only"));
}

/// Three processes claiming the same outbox at once: every notification is claimed by exactly
/// one of them (`FOR UPDATE SKIP LOCKED` + lease); one that claimed and died leaves its rows to
/// the others once the lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_claims_are_exclusive_across_processes() {
    let (url, a) = open("outbox_exclusive").await;
    suite::seeds_primary_once(&a).await;
    let sw = a.get_switch("workers").await.unwrap().unwrap();
    let items = (0..60)
        .map(|i| brb_store::NewNotification {
            channel: brb_store::Channel::Slack,
            kind: brb_store::NotificationKind::Reminder,
            event: sw.clone(),
            dedupe_key: format!("k{i}"),
        })
        .collect();
    assert_eq!(a.outbox_enqueue(items).await.unwrap(), 60);
    let mut stores = vec![a];
    for _ in 0..2 {
        stores.push(Arc::new(PgStore::connect(&url).await.unwrap()) as Arc<dyn Store>);
    }
    let now = chrono::Utc::now();
    let mut tasks = Vec::new();
    for s in stores.clone() {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = s
                    .outbox_claim(now, Duration::from_secs(30), 4)
                    .await
                    .unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|i| i.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(n, 60, "no notification claimed twice");
    assert_eq!(all.len(), 60, "every notification claimed");
    // The claimers "died" without recording anything: after the lease, all are due again.
    let later = now + chrono::Duration::seconds(31);
    let again = stores[2]
        .outbox_claim(later, Duration::from_secs(30), 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 60);
}
