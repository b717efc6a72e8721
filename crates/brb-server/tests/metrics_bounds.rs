//! `/metrics` over real HTTP: its size is fixed by the router whatever clients send, and the
//! per-switch gauges say what the switches and their workers are doing at scrape time.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use brb_api::Role;
use common::TestServer;
use serde_json::json;

async fn scrape(s: &TestServer) -> String {
    let r = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// `name{labels} value` lines, keyed by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn series_count(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("brb_http_request_duration_seconds_count"))
        .count()
}

/// Thousands of requests with made-up methods and paths, without a token: the page does not
/// grow with them (it grew from 2 KB to 5 MB when the raw method was a label).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_requests_do_not_grow_the_metrics_page() {
    let s = TestServer::start().await;
    let junk = |i: usize| {
        let method = reqwest::Method::from_bytes(format!("XFOO{i}").as_bytes()).unwrap();
        let path = match i % 4 {
            0 => "/api/v1/switches".to_string(),
            1 => format!("/api/v1/switches/junk-{i}"),
            2 => format!("/api/v1/nothing-here-{i}"),
            _ => format!("/no/such/{i}/path"),
        };
        (method, path)
    };
    let send = |i: usize| {
        let (method, path) = junk(i);
        let (http, url) = (s.http.clone(), s.url.clone());
        async move {
            let r = http
                .request(method, format!("{url}{path}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error(), "{}", r.status());
            // Standard methods on unknown paths, too.
            let r = http
                .get(format!("{url}/api/v1/unknown-{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404);
        }
    };
    for i in 0..100 {
        send(i).await;
    }
    // A scrape counts itself only after it answered: the second one shows the first.
    scrape(&s).await;
    let warm = scrape(&s).await;
    for i in 100..3100 {
        send(i).await;
    }
    let after = scrape(&s).await;
    assert_eq!(
        series_count(&after),
        series_count(&warm),
        "new histogram series appeared for junk requests"
    );
    assert!(
        after.len() < 32 * 1024,
        "/metrics is {} bytes after 6,000 junk requests",
        after.len()
    );
    // The junk is counted, under fixed labels.
    let m = samples(&after);
    let other = m
        .iter()
        .filter(|(k, _)| k.starts_with("brb_http_request_duration_seconds_count{method=\"other\""))
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(other, 3100.0, "{after}");
    assert!(
        m.contains_key(
            "brb_http_request_duration_seconds_count{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ) || m.keys().any(|k| k.starts_with(
            "brb_http_request_duration_seconds_count{method=\"GET\",route=\"/{*path}\",status=\"404\"}"
        )),
        "{after}"
    );
    assert!(!after.contains("XFOO"), "a client's method became a label");
    assert!(!after.contains("junk-"), "a client's path became a label");
    s.stop().await;
}

/// The switch gauges follow the state, the version, the ramp and the workers' reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_gauges_are_computed_at_scrape_time() {
    let s = TestServer::start().await;
    let op = s.token("oncall", Role::Operator).await;
    let m = samples(&scrape(&s).await);
    assert_eq!(m["brb_switch_paused{switch=\"workers\"}"], 0.0);
    assert_eq!(m["brb_switch_version{switch=\"workers\"}"], 1.0);
    assert_eq!(m["brb_switch_ramp_fraction{switch=\"workers\"}"], 1.0);
    for status in ["running", "draining", "paused", "stale"] {
        assert_eq!(
            m[&format!("brb_switch_workers{{switch=\"workers\",status=\"{status}\"}}")],
            0.0
        );
    }

    let (st, sw) = s
        .set(&op, "workers", json!({"state": "paused", "reason": "db"}))
        .await;
    assert_eq!(st, 200, "{sw}");
    let changed_at = chrono::DateTime::parse_from_rfc3339(sw["changed_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    // Two workers: one acted on the pause, one is still on version 1.
    for (id, v, status) in [("w1", 2, "paused"), ("w2", 1, "running")] {
        let r = s
            .http
            .post(s.api("/workers/report"))
            .bearer_auth(&op)
            .json(
                &json!({"worker_id": id, "switch": "workers", "observed_version": v,
                "status": status, "in_flight": 0, "processed_total": 0}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = samples(&scrape(&s).await);
    assert_eq!(m["brb_switch_paused{switch=\"workers\"}"], 1.0);
    assert_eq!(m["brb_switch_version{switch=\"workers\"}"], 2.0);
    assert_eq!(m["brb_switch_ramp_fraction{switch=\"workers\"}"], 0.0);
    assert!(
        (m["brb_switch_state_since_seconds{switch=\"workers\"}"] - changed_at).abs() < 0.002,
        "{m:?} vs {changed_at}"
    );
    assert_eq!(
        m["brb_switch_workers{switch=\"workers\",status=\"paused\"}"],
        1.0
    );
    assert_eq!(
        m["brb_switch_workers{switch=\"workers\",status=\"running\"}"],
        1.0
    );
    assert_eq!(
        m["brb_switch_workers_acknowledged{switch=\"workers\"}"],
        1.0
    );

    // A gradual release: between 0 and 1 while it ramps.
    let (st, sw) = s
        .set(
            &op,
            "workers",
            json!({"state": "running", "ramp": {"kind": "steps",
                "fractions": [0.1, 0.25, 0.5, 1.0], "duration_secs": 600}}),
        )
        .await;
    assert_eq!(st, 200, "{sw}");
    let m = samples(&scrape(&s).await);
    assert_eq!(m["brb_switch_paused{switch=\"workers\"}"], 0.0);
    assert_eq!(m["brb_switch_ramp_fraction{switch=\"workers\"}"], 0.1);
    assert_eq!(
        m["brb_switch_workers_acknowledged{switch=\"workers\"}"],
        0.0
    );

    // Every switch has its own; a deleted one disappears.
    let r = s
        .http
        .post(s.api("/switches"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "kill-search"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let m = samples(&scrape(&s).await);
    assert_eq!(m["brb_switch_paused{switch=\"kill-search\"}"], 0.0);
    let r = s
        .http
        .delete(s.api("/switches/kill-search"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let m = samples(&scrape(&s).await);
    assert!(!m.contains_key("brb_switch_paused{switch=\"kill-search\"}"));
    s.stop().await;
}
