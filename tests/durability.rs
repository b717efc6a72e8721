//! "A toggle that was acknowledged is never lost, not even by `kill -9`": the real binary, a
//! real SQLite file, SIGKILL, restart.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_e2e::{ServerProc, eventually};
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn all_audit(c: &reqwest::Client, url: &str, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut u = format!("{url}/api/v1/audit?switch=workers&limit=500");
        if let Some(b) = before {
            u.push_str(&format!("&before={b}"));
        }
        let page: Value = c
            .get(u)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => return out,
        }
    }
}

#[tokio::test]
async fn acknowledged_pause_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data, &[]);
    let token = server.admin_token();
    let c = http();
    let r = c
        .put(format!("{}/api/v1/switches/workers/state", server.url))
        .bearer_auth(&token)
        .json(&json!({"state": "paused", "reason": "db on fire", "source": "cli"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "acknowledged");
    server.kill9();

    let server = ServerProc::start(&data, &[]);
    assert_eq!(server.admin_token(), token, "the admin token is kept");
    let sw: Value = c
        .get(format!("{}/api/v1/switches/workers", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sw["state"], "paused");
    assert_eq!(sw["version"], 2);
    assert_eq!(sw["reason"], "db on fire");
    let audit = all_audit(&c, &server.url, &token).await;
    assert_eq!(audit[0]["action"], "state_changed");
    assert_eq!(audit[0]["to"], "paused");
    assert_eq!(audit[0]["reason"], "db on fire");
    assert_eq!(audit[0]["source"], "cli");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_concurrent_toggles_then_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProc::start(&data, &[]);
    let token = server.admin_token();
    let url = server.url.clone();

    // Several clients, each with its own connection pool, toggle as fast as they can. Every
    // 200 answer is recorded: (version, state).
    let acked = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client_no in 0..6u64 {
        let (acked, stop, url, token) = (acked.clone(), stop.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let c = http();
            let mut i = client_no;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let state = if i % 2 == 0 { "paused" } else { "running" };
                let res = c
                    .put(format!("{url}/api/v1/switches/workers/state"))
                    .bearer_auth(&token)
                    .json(&json!({"state": state, "reason": format!("c{client_no}-{i}")}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => {
                        if let Ok(v) = r.json::<Value>().await {
                            acked.lock().unwrap().push((
                                v["version"].as_u64().unwrap(),
                                v["state"].as_str().unwrap().to_string(),
                            ));
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    // The server died under us: requests in flight get no answer, which is
                    // fine: they were never acknowledged.
                    Err(_) => break,
                }
            }
        }));
    }
    // Kill it in the middle of the burst: once plenty were acknowledged, whatever is in flight.
    assert!(
        eventually(Duration::from_secs(30), || acked.lock().unwrap().len()
            >= 50)
        .await,
        "the burst made no progress: {} acks",
        acked.lock().unwrap().len()
    );
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50, "{} acks", acked.len());

    let server = ServerProc::start(&data, &[]);
    let c = http();
    let audit = all_audit(&c, &server.url, &token).await;
    let sw: Value = c
        .get(format!("{}/api/v1/switches/workers", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let current = sw["version"].as_u64().unwrap();

    // Versions: exactly 1..=current, each once (the creation is version 1).
    let mut versions: Vec<u64> = audit
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=current).collect::<Vec<_>>(),
        "gapless, no duplicates"
    );

    // Every acknowledged change is there, with the state it was acknowledged with.
    let by_version: std::collections::HashMap<u64, &Value> = audit
        .iter()
        .map(|e| (e["version"].as_u64().unwrap(), e))
        .collect();
    for (v, state) in &acked {
        let e = by_version
            .get(v)
            .unwrap_or_else(|| panic!("acknowledged v{v} lost"));
        assert_eq!(e["to"].as_str().unwrap(), state, "v{v}");
    }
    let max_acked = acked.iter().map(|(v, _)| *v).max().unwrap();
    assert!(current >= max_acked);
    // And the state after restart is the last committed one.
    assert_eq!(sw["state"], by_version[&current]["to"]);
}
