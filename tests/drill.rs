//! Fire drills end to end: the real `brb` binary, real SDK gates over HTTP. A drill is a new
//! version with nothing changed; every gate answers it with a report, and nothing pauses.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use brb_client::{Gate, GateConfig, Transport};
use brb_e2e::calls::{get_switch, mint_token};
use brb_e2e::{Api, ServerProc, cli, wait_for};
use serde_json::json;

fn gate(url: &str, token: &str, id: &str) -> Gate {
    let mut c = GateConfig::new(&[url], Some(token.to_string()), "workers");
    c.worker_id = id.to_string();
    c.send_samples = false;
    c.transport = Transport::Sse;
    // No heartbeat during the test: an answer can only be the report a new version causes.
    c.report_interval = Duration::from_secs(600);
    Gate::start(c).unwrap()
}

async fn report(api: &Api, token: &str, id: &str, version: u64) {
    let (s, v) = api
        .call(
            "POST",
            "/workers/report",
            token,
            Some(
                json!({ "worker_id": id, "switch": "workers", "observed_version": version,
                "status": "running", "in_flight": 0, "processed_total": 0 }),
            ),
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {v}");
}

/// Waits until the server lists worker `id` as stale.
async fn turns_stale(api: &Api, token: &str, id: &str) {
    wait_for(
        Duration::from_secs(10),
        &format!("{id} turns stale"),
        || async {
            let (_, c) = api
                .call("GET", "/switches/workers/workers", token, None)
                .await;
            c["workers"]
                .as_array()?
                .iter()
                .any(|w| w["worker_id"] == id && w["stale"] == true)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_is_answered_by_every_gate_reports_who_did_not_and_pauses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("brb.toml");
    std::fs::write(&cfg, "[limits]\nworker_stale_secs = 2\n").unwrap();
    let cfg = cfg.display().to_string();
    let server = ServerProc::start(&dir.path().join("data"), &[("BRB_CONFIG", cfg.as_str())]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    // Releasing gradually, so a drill that touched the ramp would show in the fraction.
    let (s, v) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({ "state": "paused" })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({ "state": "running",
                "ramp": { "kind": "steps", "fractions": [0.25, 1.0], "duration_secs": 3600 } })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let before = v;
    let v0 = before["version"].as_u64().unwrap();

    let gates: Vec<Gate> = (0..3)
        .map(|i| gate(&server.url, &admin, &format!("gate-{i}")))
        .collect();
    for g in &gates {
        assert!(
            g.ready(Duration::from_secs(10)).await,
            "{} not ready",
            g.worker_id()
        );
    }
    // A worker that stopped reporting (stale), and one that reports but never hears the
    // switch (its stream is stuck): it will be the one that does not answer.
    report(&api, &admin, "gone", v0).await;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stuck = {
        let api = Api::new(&server);
        let admin = admin.clone();
        tokio::spawn(async move {
            loop {
                report(&api, &admin, "stuck", v0).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = &mut stop_rx => return,
                }
            }
        })
    };
    turns_stale(&api, &admin, "gone").await;
    let fractions: Vec<f64> = gates.iter().map(Gate::admitted_fraction).collect();

    // A viewer cannot drill.
    let viewer = mint_token(&api, &admin, "dash", "viewer", None).await;
    let (s, v) = api
        .call("POST", "/switches/workers/drill", &viewer, Some(json!({})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );

    let (s, d) = api
        .call(
            "POST",
            "/switches/workers/drill",
            &admin,
            Some(json!({ "reason": "quiet tuesday", "source": "cli" })),
        )
        .await;
    assert_eq!(s, 201, "{d}");
    let version = d["version"].as_u64().unwrap();
    assert_eq!(version, v0 + 1);
    let path = format!("/switches/workers/drills/{version}");
    let r = wait_for(Duration::from_secs(10), "every gate answers", || async {
        let (s, r) = api.call("GET", &path, &viewer, None).await;
        assert_eq!(s, 200, "{r}");
        (r["answered"].as_array()?.len() >= 3).then_some(r)
    })
    .await;
    let answered: Vec<&str> = r["answered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["worker_id"].as_str().unwrap())
        .collect();
    let mut sorted = answered.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["gate-0", "gate-1", "gate-2"], "{r}");
    let (p50, p99, max) = (
        r["p50_ms"].as_u64().unwrap(),
        r["p99_ms"].as_u64().unwrap(),
        r["max_ms"].as_u64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max && max < 10_000, "{r}");
    let missing = r["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{r}");
    assert_eq!(missing[0]["worker_id"], "stuck");
    assert_eq!(missing[0]["observed_version"], v0, "its last report: {r}");
    let stale: Vec<&str> = r["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(stale, ["gone"], "{r}");
    assert_eq!(r["complete"], false);

    // Nothing paused, nothing else changed.
    let after = get_switch(&api, &admin, "workers").await;
    assert_eq!(after["version"], version);
    for k in ["state", "ramp", "changed_at", "changed_by", "reason"] {
        assert_eq!(after[k], before[k], "{k} changed: {after}");
    }
    for (g, f) in gates.iter().zip(&fractions) {
        assert!(g.is_open(), "{} closed", g.worker_id());
        assert_eq!(g.version(), version);
        assert!(
            (g.admitted_fraction() - f).abs() < 1e-9,
            "{} moved",
            g.worker_id()
        );
    }
    let (_, audit) = api
        .call("GET", "/audit?switch=workers&limit=1", &admin, None)
        .await;
    let e = &audit["entries"][0];
    assert_eq!(e["action"], "drill_started", "{audit}");
    assert_eq!(e["reason"], "fire drill: quiet tuesday");
    assert_eq!(e["source"], "cli");

    // The CLI: the same drill from a terminal; `stuck` never answers, so it says so and exits 3.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let o = cli(
        &home,
        &[
            ("BRB_URL", server.url.as_str()),
            ("BRB_TOKEN", admin.as_str()),
        ],
        &["drill", "--timeout", "3s"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("3/4 live workers answered"), "{out}");
    assert!(out.contains("NO ANSWER  stuck"), "{out}");
    assert!(out.contains("nothing paused"), "{out}");
    stop_tx.send(()).unwrap();
    stuck.await.unwrap();
    // With every live worker answering, the CLI exits 0 (`stuck` is forgotten as stale first).
    turns_stale(&api, &admin, "stuck").await;
    let o = cli(
        &home,
        &[
            ("BRB_URL", server.url.as_str()),
            ("BRB_TOKEN", admin.as_str()),
        ],
        &["drill", "workers", "--timeout", "10s"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("3/3 live workers answered"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_on_a_paused_switch_keeps_it_paused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let (s, _) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({ "state": "paused", "reason": "db" })),
        )
        .await;
    assert_eq!(s, 200);
    let g = gate(&server.url, &admin, "g");
    assert!(g.ready(Duration::from_secs(10)).await);
    assert!(!g.is_open());
    let before = get_switch(&api, &admin, "workers").await;
    let (s, d) = api
        .call("POST", "/switches/workers/drill", &admin, Some(json!({})))
        .await;
    assert_eq!(s, 201, "{d}");
    let version = d["version"].as_u64().unwrap();
    let path = format!("/switches/workers/drills/{version}");
    let r = wait_for(Duration::from_secs(10), "the gate answers", || async {
        let (_, r) = api.call("GET", &path, &admin, None).await;
        (r["complete"] == true && r["answered"].as_array()?.len() == 1).then_some(r)
    })
    .await;
    assert_eq!(r["answered"][0]["worker_id"], "g", "{r}");
    assert!(!g.is_open(), "a drill opened a paused gate");
    assert_eq!(g.version(), version);
    let after = get_switch(&api, &admin, "workers").await;
    for k in ["state", "changed_at", "changed_by", "reason"] {
        assert_eq!(after[k], before[k], "{k} changed: {after}");
    }
    // A version that is no drill known here: 404.
    let (s, v) = api
        .call("GET", "/switches/workers/drills/1", &admin, None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
}
