//! Replicas whose wall clocks disagree (the ±5 min skew of tests/chaos.rs, made
//! deterministic): leases and due times of the shared outbox are kept on the database's clock,
//! so a replica running 5 minutes fast that claims a notification and dies does not hold it
//! for 5 minutes more.
//! The fast clock is real: libfaketime preloaded into that replica only.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_e2e::{ServerProc, eventually};
use brb_pgtest::PgCluster;

const ADMIN: &str = "skew-test-admin-token";
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A webhook receiver recording the versions it was sent; `hang` never answers (a claimant
/// stuck in its delivery).
async fn receiver(hang: bool) -> (SocketAddr, Arc<Mutex<Vec<u64>>>) {
    let got: Arc<Mutex<Vec<u64>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let g = g.clone();
        async move {
            let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["type"] == "switch.changed" {
                g.lock()
                    .unwrap()
                    .push(v["switch"]["version"].as_u64().unwrap_or(0));
            }
            if hang {
                std::future::pending::<()>().await;
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

fn replica(dir: &Path, name: &str, db: &str, hook: SocketAddr, fast: bool) -> ServerProc {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    // The same webhook name on both: whichever replica delivers uses its own URL for it.
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!("[[notify.webhooks]]\nname = \"ops\"\nurl = \"http://{hook}/hook\"\n"),
    )
    .unwrap();
    let config = config.display().to_string();
    let mut env = vec![
        ("BRB_DATABASE_URL", db),
        ("BRB_ADMIN_TOKEN", ADMIN),
        ("BRB_CONFIG", config.as_str()),
    ];
    if fast {
        env.extend([
            ("LD_PRELOAD", FAKETIME_LIB),
            ("FAKETIME", "+5m"),
            // Only the wall clock is off, as under a bad NTP source; timers run on time.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]);
    }
    ServerProc::start(&data, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_replica_that_dies_holding_a_notification_holds_it_only_for_the_lease() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: run `scripts/ensure-packages.sh test` (libfaketime)"
    );
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let db = pg.database("skew");
    let dir = tempfile::tempdir().unwrap();
    let (stuck, stuck_got) = receiver(true).await;
    let (ok, ok_got) = receiver(false).await;
    // B first (it creates the schema), then A, 5 minutes fast.
    let b = replica(dir.path(), "b", &db, ok, false);
    let a = replica(dir.path(), "a", &db, stuck, true);

    let http = reqwest::Client::new();
    let res = http
        .put(format!("{}/api/v1/switches/workers/state", a.url))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"state": "paused", "reason": "skew test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    let version = v["version"].as_u64().unwrap();

    // Either B delivered it at once, or A claimed it and is stuck sending it: then A dies.
    assert!(
        eventually(Duration::from_secs(10), || {
            stuck_got.lock().unwrap().contains(&version)
                || ok_got.lock().unwrap().contains(&version)
        })
        .await,
        "nobody tried to deliver version {version}; the logs:\n{}\n{}",
        a.log(),
        b.log()
    );
    if !ok_got.lock().unwrap().contains(&version) {
        a.kill9();
    }
    // The lease is 30 s on the database's clock; on A's own clock it would run 5 min more.
    assert!(
        eventually(Duration::from_secs(45), || ok_got
            .lock()
            .unwrap()
            .contains(&version))
        .await,
        "the other replica did not deliver version {version} after the dead claimant's lease; its log:\n{}",
        b.log()
    );
}
