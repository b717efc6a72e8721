//! Fault injection on the storage under a real `brb server`: the disk holding the data dir
//! fills up, then the file system turns read-only. Writes must fail with a clear error and
//! change nothing, reads and open event streams must keep working, the process must survive,
//! and afterwards the database must be intact with every acknowledged change in it.
//!
//! The other faults of the suite live beside the features they break (see README, "Fault
//! injection"): kill -9 during a toggle storm (`durability.rs`), the control plane down under
//! gates with each failure policy (`workers.rs`), notification receivers down, slow and failing
//! (`notify.rs`), the button's cable pulled and re-plugged (`button_sim.rs`), a PostgreSQL restart
//! under replicas (`replicas.rs`).
//!
//! The data dir is a 16 MiB ext4 disk of the test's own on a loop device (`brb_e2e::disk`, the
//! same as the chaos test's SQLite variant; the suite runs as root, as `make test` does: it
//! installs packages).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use brb_e2e::ServerProc;
use brb_e2e::disk::Disk;
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// The test's own small ext4 disk (`brb_e2e::disk`), mounted on `dir`.
fn disk(dir: &Path) -> Disk {
    Disk::new(dir, 16).unwrap_or_else(|e| {
        panic!("this fault test mounts a file system and needs root (make test runs as root): {e}")
    })
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn set(&self, state: &str, reason: &str) -> (u16, Value, Duration) {
        let t = Instant::now();
        let res = self
            .http
            .put(format!("{}/switches/workers/state", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"state": state, "reason": reason}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap(), t.elapsed())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }
}

/// A write refused because of the storage: 503, a message naming the cause, nothing changed.
async fn refused(api: &Api, cause: &str, version_before: u64) {
    let (status, body, took) = api.set("paused", "during a storage fault").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(cause) && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert!(
        took < Duration::from_secs(5),
        "a refused write took {took:?}"
    );
    let (s, sw) = api.get("/switches/workers").await;
    assert_eq!(s, 200, "reads must keep working");
    assert_eq!(
        sw["version"], version_before,
        "a refused write changed the switch"
    );
    assert_eq!(sw["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_and_read_only_data_dir_refuse_writes_cleanly_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = disk(&dir.path().join("mnt"));
    // The data dir is the mount itself, so the server log (next to it) stays off the full disk.
    let data = fs.dir().to_path_buf();
    let server = ServerProc::start(&data, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("{}/api/v1", server.url),
        token: server.admin_token(),
    };
    // Some history first; every acknowledged version is remembered.
    let mut acked = Vec::new();
    for i in 0..10 {
        let (s, b, _) = api
            .set(if i % 2 == 0 { "paused" } else { "running" }, "before")
            .await;
        assert_eq!(s, 200, "{b}");
        acked.push(b["version"].as_u64().unwrap());
    }
    let v = *acked.last().unwrap();
    // A watcher that must survive the whole ordeal.
    let res = api
        .http
        .get(format!("{}/switches/workers/events", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let mut watcher = res.bytes_stream();
    watcher.next().await.unwrap().unwrap();

    // 1. The disk is full.
    fs.fill();
    refused(&api, "disk holding the database is full", v).await;
    refused(&api, "disk holding the database is full", v).await;
    let (s, _) = api.get("/audit?limit=5").await;
    assert_eq!(s, 200);
    assert!(server.log().contains("store unavailable"));
    // Space comes back: writes work again, without a restart.
    fs.free();
    let (s, b, _) = api.set("paused", "space is back").await;
    assert_eq!(s, 200, "{b}");
    acked.push(b["version"].as_u64().unwrap());
    let (s, b, _) = api.set("running", "space is back").await;
    assert_eq!(s, 200, "{b}");
    acked.push(b["version"].as_u64().unwrap());
    let v = *acked.last().unwrap();

    // The watcher saw the changes that happened, on the same connection.
    let mut seen = String::new();
    let t = Instant::now();
    while !seen.contains("space is back") || !seen.contains("\"running\"") {
        assert!(t.elapsed() < Duration::from_secs(5), "watcher died: {seen}");
        if let Ok(Some(Ok(b))) = tokio::time::timeout(Duration::from_secs(1), watcher.next()).await
        {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }

    // 2. The disk fails read-only under the running server (ext4 aborts, as on I/O errors).
    fs.abort().unwrap();
    refused(&api, "read-only", v).await;
    refused(&api, "read-only", v).await;
    let (s, _) = api.get("/switches").await;
    assert_eq!(s, 200);
    // The open stream is still there: it gets its keep-alive.
    let alive = tokio::time::timeout(Duration::from_secs(20), watcher.next()).await;
    assert!(
        matches!(alive, Ok(Some(Ok(_)))),
        "the watcher died with the disk"
    );

    // 3. A hard stop, the disk repaired, a restart: the file is intact and nothing
    //    acknowledged is lost.
    server.kill9();
    fs.repair().unwrap();

    let out = Command::new("sqlite3")
        .arg(data.join("brb.db"))
        .arg("PRAGMA integrity_check;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{out:?}");
    let server = ServerProc::start(&data, &[]);
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("{}/api/v1", server.url),
        token: server.admin_token(),
    };
    let (_, audit) = api.get("/audit?switch=workers&limit=500").await;
    let versions: Vec<u64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    for a in &acked {
        assert!(versions.contains(a), "acknowledged version {a} lost");
    }
    let max = *versions.iter().max().unwrap();
    assert_eq!(
        max,
        *acked.last().unwrap(),
        "a refused write left a version behind"
    );
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=max).collect::<Vec<_>>(),
        "versions are not gapless"
    );
}

/// The log shares the full disk: writing a log line fails, and that must cost the log line,
/// not the request (tracing's internal error report used to panic in the handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_costs_log_lines_not_requests() {
    let dir = tempfile::tempdir().unwrap();
    let fs = disk(&dir.path().join("mnt"));
    // ServerProc writes the server's stderr next to the data dir: here, on the small disk.
    let data = fs.dir().join("data");
    let mut server = ServerProc::start(&data, &[("BRB_LOG", "debug")]);
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("{}/api/v1", server.url),
        token: server.admin_token(),
    };
    let (s, b, _) = api.set("paused", "before").await;
    assert_eq!(s, 200, "{b}");
    let v = b["version"].as_u64().unwrap();
    fs.fill();
    for i in 0..6 {
        let (s, b, _) = api
            .set(
                if i % 2 == 0 { "running" } else { "paused" },
                "log disk full",
            )
            .await;
        // Either the write still fits in the WAL (200) or it is refused cleanly (503); never a
        // dropped connection or a 500.
        assert!(s == 200 || s == 503, "{s}: {b}");
        assert!(b.is_object(), "{b}");
        let (s, sw) = api.get("/switches/workers").await;
        assert_eq!(s, 200);
        assert!(sw["version"].as_u64().unwrap() >= v);
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
}
