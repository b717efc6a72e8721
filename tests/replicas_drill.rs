//! Drills and resume requests across replicas: three real `brb server` processes on one
//! private PostgreSQL. A drill started on one replica is reported in full by every replica,
//! with the SDK gates spread over all three; a resume request that lapses while every replica
//! sweeps is announced once.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_client::{Gate, GateConfig, Transport};
use brb_e2e::{ServerProc, wait_for};
use brb_pgtest::PgCluster;
use serde_json::{Value, json};

const ADMIN: &str = "replicas-drill-admin-token";

/// Records every webhook delivery: its `X-BRB-Event` and body.
#[derive(Clone)]
struct Hooks {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    addr: SocketAddr,
}

impl Hooks {
    async fn start() -> Hooks {
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let g = g.clone();
            async move {
                let event = req
                    .headers()
                    .get("x-brb-event")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                g.lock()
                    .unwrap()
                    .push((event, serde_json::from_slice(&body).unwrap()));
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hooks { got, addr }
    }

    fn of(&self, event: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn replica(dir: &Path, name: &str, db: &str, config: &str) -> ServerProc {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    ServerProc::start(
        &data,
        &[
            ("BRB_DATABASE_URL", db),
            ("BRB_ADMIN_TOKEN", ADMIN),
            ("BRB_CONFIG", config),
            ("BRB_LOG", "info,brb_server=debug"),
        ],
    )
}

fn gate(url: &str, id: String) -> Gate {
    let mut c = GateConfig::new(&[url], Some(ADMIN.to_string()), "workers");
    c.worker_id = id;
    c.send_samples = false;
    c.transport = Transport::Sse;
    // Heartbeats make every gate known to every replica before the drill; the answer is the
    // report a gate sends at once on the drill's version.
    c.report_interval = Duration::from_secs(1);
    Gate::start(c).unwrap()
}

async fn call(url: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}/api/v1{path}"))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drills_and_lapses_across_three_replicas() {
    tokio::time::timeout(Duration::from_secs(180), body())
        .await
        .expect("test timed out");
}

async fn body() {
    let db = tokio::task::spawn_blocking(|| PgCluster::shared().database("drill_replicas"))
        .await
        .unwrap();
    let hooks = Hooks::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("brb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[primary]
remind = false

[[switches]]
name = "quick"
[switches.approval]
resume = 1
expire = "1s"

[[notify.webhooks]]
name = "ops"
url = "http://{}/hook"
"#,
            hooks.addr
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (a, b, c) = std::thread::scope(|s| {
        let ha = s.spawn(|| replica(dir.path(), "a", &db, &config));
        let hb = s.spawn(|| replica(dir.path(), "b", &db, &config));
        let hc = s.spawn(|| replica(dir.path(), "c", &db, &config));
        (ha.join().unwrap(), hb.join().unwrap(), hc.join().unwrap())
    });
    let urls = [a.url.clone(), b.url.clone(), c.url.clone()];

    // Six gates, two on each replica.
    let gates: Vec<Gate> = (0..6)
        .map(|i| gate(&urls[i % 3], format!("gate-{i}")))
        .collect();
    for g in &gates {
        assert!(g.ready(Duration::from_secs(20)).await, "{}", g.worker_id());
    }
    let ids: BTreeSet<String> = gates.iter().map(|g| g.worker_id().to_string()).collect();
    // Every replica sees all six (through the shared worker records) before the drill.
    for u in &urls {
        wait_for(
            Duration::from_secs(20),
            "every worker on every replica",
            || async {
                let (_, v) = call(u, "GET", "/switches/workers/workers", None).await;
                (v["total"] == 6).then_some(())
            },
        )
        .await;
    }

    let (st, started) = call(&urls[0], "POST", "/switches/workers/drill", Some(json!({}))).await;
    assert_eq!(st, 201, "{started}");
    let v = started["version"].as_u64().unwrap();
    let mut starts = BTreeSet::new();
    for u in &urls {
        let report = wait_for(Duration::from_secs(20), "a complete report", || async {
            let (st, r) = call(u, "GET", &format!("/switches/workers/drills/{v}"), None).await;
            (st == 200 && r["complete"] == true && r["answered"].as_array()?.len() == 6)
                .then_some(r)
        })
        .await;
        let answered: BTreeSet<String> = report["answered"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["worker_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(answered, ids, "{u}: {report:#}");
        assert_eq!(report["missing"], json!([]), "{u}");
        let max = report["max_ms"].as_u64().unwrap();
        assert!(
            max < 10_000,
            "{u}: answered within the test's waits: {report:#}"
        );
        starts.insert(report["started_at"].as_str().unwrap().to_string());
        println!(
            "{u}: p50 {} ms, p99 {} ms, max {max} ms",
            report["p50_ms"], report["p99_ms"]
        );
    }
    assert_eq!(starts.len(), 1, "one start for every replica: {starts:?}");
    // The same answer times whichever replica is asked: each worker's first report of the
    // drill, shared by its replica (not its latest heartbeat, which keeps moving).
    let agreed = wait_for(Duration::from_secs(20), "the replicas agree", || async {
        let mut seen = Vec::new();
        for u in &urls {
            let (_, r) = call(u, "GET", &format!("/switches/workers/drills/{v}"), None).await;
            seen.push(r["answered"].clone());
        }
        seen.iter().all(|a| *a == seen[0]).then(|| seen[0].clone())
    })
    .await;
    println!("answers on every replica: {agreed}");
    assert_eq!(
        starts.into_iter().next().unwrap(),
        started["started_at"].as_str().unwrap()
    );
    // A version that is not a drill is not reported.
    let (st, _) = call(&urls[1], "GET", "/switches/workers/drills/1", None).await;
    assert_eq!(st, 404);
    drop(gates);

    // A request lapses while all three sweep: announced once.
    let (st, v) = call(
        &urls[0],
        "PUT",
        "/switches/quick/state",
        Some(json!({"state": "paused"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(
        &urls[1],
        "POST",
        "/switches/quick/resume-requests",
        Some(json!({"reason": "try"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["resume_request"]["id"].as_u64().unwrap();
    for u in &urls {
        wait_for(
            Duration::from_secs(20),
            "the request cleared everywhere",
            || async {
                let (_, s) = call(u, "GET", "/switches/quick", None).await;
                (s["version"].as_u64()? > id && s.get("resume_request").is_none()).then_some(())
            },
        )
        .await;
    }
    let outbox = wait_for(Duration::from_secs(20), "the lapse delivered", || async {
        let (_, n) = call(&urls[2], "GET", "/notifications", None).await;
        let list = n["notifications"].as_array()?.clone();
        (list.iter().any(|n| n["kind"] == "resume_expired")
            && list.iter().all(|n| n["status"] == "delivered"))
        .then_some(list)
    })
    .await;
    let lapses: Vec<&Value> = outbox
        .iter()
        .filter(|n| n["kind"] == "resume_expired")
        .collect();
    assert_eq!(lapses.len(), 1, "{outbox:#?}");
    assert_eq!(lapses[0]["version"].as_u64(), Some(id + 1));
    let got = hooks.of("switch.resume_expired");
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["request"]["id"], id);
    let log = |p: &ServerProc| p.log().matches("resume request lapsed").count();
    assert_eq!(
        log(&a) + log(&b) + log(&c),
        1,
        "one replica recorded the lapse"
    );
}
