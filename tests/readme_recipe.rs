//! The README's plain-HTTP worker recipe, exactly as written there, run with bash against the
//! real `brb server`: it is counted, it pauses when the switch is paused, and it stays counted
//! while nothing changes for longer than the server's stale time.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use brb_e2e::ServerProc;
use serde_json::{Value, json};

/// The shell block between `<!-- recipe:plain-http-worker -->` and `<!-- /recipe -->`.
fn recipe() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("<!-- recipe:plain-http-worker -->")
        .expect("the recipe's start marker in README.md");
    let end = start
        + readme[start..]
            .find("<!-- /recipe -->")
            .expect("the recipe's end marker in README.md");
    let block = &readme[start..end];
    let code = block
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    code.split_once("```")
        .expect("the block's end")
        .0
        .to_string()
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn counts(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.get(format!("{url}/api/v1/switches/workers/workers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the worker counts until `f` holds, or fails after `limit`.
async fn until(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    limit: Duration,
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let t = Instant::now();
    loop {
        let c = counts(http, url, token).await;
        if f(&c) {
            return c;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_worker_recipe_obeys_and_stays_counted() {
    const STALE_SECS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    // A shorter stale time than the default 15 s, still above the recipe's 5 s report interval.
    let cfg = dir.path().join("brb.toml");
    std::fs::write(
        &cfg,
        format!("[limits]\nworker_stale_secs = {STALE_SECS}\n"),
    )
    .unwrap();
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[("BRB_CONFIG", cfg.to_str().unwrap())],
    );
    let admin = server.admin_token();
    let http = reqwest::Client::new();
    let url = server.url.clone();

    let script = dir.path().join("worker.sh");
    std::fs::write(&script, recipe()).unwrap();
    // A directory that does not exist yet: the recipe makes it.
    let brake = dir.path().join("run/my-worker/brake");
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let _worker = Worker(
        Command::new("bash")
            .arg(&script)
            .env("BRB_URL", &url)
            .env("BRB_TOKEN", &admin)
            .env("BRAKE_FILE", &brake)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let worker_log = || std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default();

    // Counted, running.
    let c = until(
        &http,
        &url,
        &admin,
        Duration::from_secs(20),
        "the worker is counted",
        |c| c["running"] == 1,
    )
    .await;
    assert_eq!(c["total"], 1, "{c}\n{}", worker_log());
    assert_eq!(std::fs::read_to_string(&brake).unwrap(), "running\n");

    // Paused: the brake file says so and the worker acknowledges at once, not at its next
    // timeout.
    let r = http
        .put(format!("{url}/api/v1/switches/workers/state"))
        .bearer_auth(&admin)
        .json(&json!({"state": "paused", "reason": "recipe test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let paused_at = Instant::now();
    let c = until(
        &http,
        &url,
        &admin,
        Duration::from_secs(3),
        "the worker pauses",
        |c| c["paused"] == 1 && c["current"]["acknowledged"] == 1,
    )
    .await;
    assert_eq!(c["total"], 1, "{c}");
    assert_eq!(std::fs::read_to_string(&brake).unwrap(), "paused\n");

    // Idle while paused for well over the stale time: still counted, never stale.
    let idle = Duration::from_secs(STALE_SECS * 2);
    let mut last_seen = c["workers"][0]["last_seen"].as_str().unwrap().to_string();
    let mut reports = 0;
    while paused_at.elapsed() < idle {
        let c = counts(&http, &url, &admin).await;
        assert_eq!(
            (
                c["total"].as_u64(),
                c["paused"].as_u64(),
                c["stale"].as_u64()
            ),
            (Some(1), Some(1), Some(0)),
            "after {:?} idle: {c}\n{}",
            paused_at.elapsed(),
            worker_log()
        );
        let seen = c["workers"][0]["last_seen"].as_str().unwrap().to_string();
        if seen != last_seen {
            reports += 1;
            last_seen = seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reports >= 2, "only {reports} reports in {idle:?} of idling");

    // Released: running again.
    let r = http
        .put(format!("{url}/api/v1/switches/workers/state"))
        .bearer_auth(&admin)
        .json(&json!({"state": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until(
        &http,
        &url,
        &admin,
        Duration::from_secs(3),
        "the worker resumes",
        |c| c["running"] == 1 && c["current"]["acknowledged"] == 1,
    )
    .await;
    assert_eq!(std::fs::read_to_string(&brake).unwrap(), "running\n");
}
