//! Health-guarded release over the real `brb server` binary on loopback, with pushed samples
//! and second-scale steps (`steps:6s` → 2 s a step, guards checked every second):
//! - a guard that passes advances the release one step per dwell to its end, each step in the
//!   audit log with the value (source `guard`), the live state on `GET …/guard` and as the
//!   `guard` event on `/api/v1/events`;
//! - no data holds the step and says so, past its dwell;
//! - a failing guard pauses again after `failure_limit` checks, with the guard and the value in
//!   the reason, announced to a local webhook receiver like any pause;
//! - a guard on a linear ramp, or without a ramp, is refused with 422 naming the problem.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_e2e::calls::get_switch;
use brb_e2e::{Api, ServerProc, SseStream, wait_for};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

fn start(extra_config: &str) -> (tempfile::TempDir, ServerProc, Api, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.path().join("brb.toml");
    std::fs::write(&config, extra_config).unwrap();
    let server = ServerProc::start(&data, &[("BRB_CONFIG", config.to_str().unwrap())]);
    let api = Api::new(&server);
    let token = server.admin_token();
    (dir, server, api, token)
}

async fn pause(api: &Api, token: &str) {
    let (s, v) = api
        .call(
            "PUT",
            "/switches/workers/state",
            token,
            Some(json!({"state": "paused", "reason": "db on fire"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// Resumes with `steps:6s` and the guard; returns the switch.
async fn guarded_resume(api: &Api, token: &str, guard: Value) -> Value {
    let (s, v) = api
        .call(
            "PUT",
            "/switches/workers/state",
            token,
            Some(json!({
                "state": "running",
                "reason": "db recovered",
                "ramp": {"kind": "steps", "fractions": [0.1, 0.25, 0.5, 1.0], "duration_secs": 6},
                "guards": [guard],
            })),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Pushes `value` as `db_load` every 200 ms until the returned sender is dropped or set.
fn push_db_load(
    api: &Api,
    token: &str,
    value: Arc<Mutex<Option<f64>>>,
) -> tokio::task::JoinHandle<()> {
    let (http, base, token) = (api.http.clone(), api.base.clone(), token.to_string());
    tokio::spawn(async move {
        loop {
            let v = *value.lock().unwrap();
            if let Some(v) = v {
                let _ = http
                    .post(format!("{base}/metrics"))
                    .bearer_auth(&token)
                    .json(&json!({"samples": [{"name": "db_load", "value": v}]}))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn audit(api: &Api, token: &str) -> Vec<Value> {
    let (s, v) = api.call("GET", "/audit?limit=100", token, None).await;
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn guarded_release_advances_while_the_guard_holds() {
    let (_dir, server, api, token) = start("");
    let events = SseStream::new(
        api.http
            .get(format!("{}/events", api.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    );
    pause(&api, &token).await;
    let value = Arc::new(Mutex::new(Some(41.0)));
    let pusher = push_db_load(&api, &token, value.clone());
    let started = std::time::Instant::now();
    let sw = guarded_resume(
        &api,
        &token,
        json!({"series": "db_load", "below": 80, "interval_secs": 1}),
    )
    .await;
    assert_eq!(sw["ramp"]["guard"]["step"], 0, "{sw}");
    assert_eq!(sw["ramp"]["guard"]["guards"][0]["series"], "db_load");
    // The guard reports while it advances.
    let mut events = events;
    let ev = events
        .wait_event(LIMIT, "a guard event", |e| e.event == "guard")
        .await;
    let st: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(st["switch"], "workers");
    assert_eq!(st["checks"][0]["condition"], "db_load < 80");
    // It ends fully released, with no ramp left.
    let done = wait_for(LIMIT, "the guarded release to finish", || async {
        let s = get_switch(&api, &token, "workers").await;
        (s["state"] == "running" && s["ramp"].is_null()).then_some(s)
    })
    .await;
    let took = started.elapsed();
    pusher.abort();
    // Four steps of 2 s each (the last one watches full load before the end): never faster.
    assert!(took >= Duration::from_secs(8), "finished after {took:?}");
    let steps: Vec<Value> = audit(&api, &token)
        .await
        .into_iter()
        .filter(|e| e["action"] == "ramp_changed" && e["source"] == "guard")
        .collect();
    let reasons: Vec<&str> = steps
        .iter()
        .rev()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    println!("guarded release finished in {took:?}; steps: {reasons:#?}");
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0]
            .starts_with("guarded release advanced to 25% (step 2/4): guard passed (db_load 41)"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].starts_with("guarded release finished at 100%"),
        "{reasons:?}"
    );
    assert_eq!(done["changed_by"], "guard");
    let st = api
        .call("GET", "/switches/workers/guard", &token, None)
        .await;
    assert_eq!(st.0, 200, "{}", st.1);
    assert_eq!(st.1["phase"], "finished", "{}", st.1);
    drop(server);
}

#[tokio::test]
async fn no_data_holds_the_step_and_says_so() {
    let (_dir, server, api, token) = start("");
    pause(&api, &token).await;
    let sw = guarded_resume(
        &api,
        &token,
        json!({"series": "db_load", "below": 80, "interval_secs": 1, "failure_limit": 1}),
    )
    .await;
    let version = sw["version"].as_u64().unwrap();
    // Wait until a check was made well after the step's dwell ended: still step 1, holding.
    let st = wait_for(LIMIT, "a check 2 s past the dwell", || async {
        let (s, v) = api
            .call("GET", "/switches/workers/guard", &token, None)
            .await;
        if s != 200 {
            return None;
        }
        let ends = chrono::DateTime::parse_from_rfc3339(v["dwell_ends_at"].as_str()?).ok()?;
        let checked =
            chrono::DateTime::parse_from_rfc3339(v["checks"][0]["checked_at"].as_str()?).ok()?;
        (checked > ends + chrono::Duration::seconds(2)).then_some(v)
    })
    .await;
    println!("no data: {st}");
    assert_eq!(st["phase"], "holding", "{st}");
    assert_eq!(st["step"], 1);
    assert_eq!(st["checks"][0]["outcome"], "no_data");
    assert_eq!(
        st["reason"], "holding at step 1/4 (10%): no series named db_load",
        "{st}"
    );
    let now = get_switch(&api, &token, "workers").await;
    assert_eq!(
        (now["state"].as_str(), now["version"].as_u64()),
        (Some("running"), Some(version)),
        "nothing written: {now}"
    );
    // Data comes back: the release moves on.
    let value = Arc::new(Mutex::new(Some(10.0)));
    let pusher = push_db_load(&api, &token, value);
    wait_for(LIMIT, "the next step once data returns", || async {
        let s = get_switch(&api, &token, "workers").await;
        (s["ramp"]["guard"]["step"] == 1).then_some(())
    })
    .await;
    pusher.abort();
    drop(server);
}

/// A local webhook receiver: records every body.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let g = g.clone();
        async move {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                g.lock().unwrap().push(v);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn failing_guard_repauses_and_tells_everyone() {
    let (url, got) = receiver().await;
    let (_dir, server, api, token) = start(&format!(
        "[[notify.webhooks]]\nname = \"ops\"\nurl = \"{url}\"\n"
    ));
    pause(&api, &token).await;
    let value = Arc::new(Mutex::new(Some(97.0)));
    let pusher = push_db_load(&api, &token, value);
    guarded_resume(
        &api,
        &token,
        json!({"series": "db_load", "below": 80, "interval_secs": 1, "failure_limit": 3}),
    )
    .await;
    let sw = wait_for(LIMIT, "the guard to pause again", || async {
        let s = get_switch(&api, &token, "workers").await;
        (s["state"] == "paused" && s["changed_by"] == "guard").then_some(s)
    })
    .await;
    pusher.abort();
    let reason = sw["reason"].as_str().unwrap().to_string();
    println!("tripped: {reason}");
    assert!(
        reason.contains(
            "guard db_load < 80 failed 3 checks in a row at step 1/4 (10%): 97 (limit 80)"
        ),
        "{reason}"
    );
    assert_eq!(sw["source"], "guard");
    assert!(sw["ramp"].is_null());
    let entry = audit(&api, &token)
        .await
        .into_iter()
        .find(|e| e["action"] == "state_changed" && e["to"] == "paused" && e["source"] == "guard")
        .expect("an audit entry by the guard");
    assert_eq!(entry["actor"], "guard");
    // Announced like any pause: the webhook receiver gets it, reason and all.
    let hook = wait_for(LIMIT, "the webhook about the guard's pause", || {
        let got = got.clone();
        let reason = reason.clone();
        async move {
            got.lock()
                .unwrap()
                .iter()
                .find(|v| v.to_string().contains(&reason) && v.to_string().contains("paused"))
                .cloned()
        }
    })
    .await;
    println!("webhook: {hook}");
    let st = api
        .call("GET", "/switches/workers/guard", &token, None)
        .await
        .1;
    assert_eq!(st["phase"], "tripped", "{st}");
    drop(server);
}

#[tokio::test]
async fn a_guard_needs_a_stepped_ramp() {
    let (_dir, server, api, token) = start("");
    pause(&api, &token).await;
    let guard = json!({"series": "db_load", "below": 80});
    for (body, want) in [
        (
            json!({"state": "running", "ramp": {"kind": "linear", "from": 0.1, "duration_secs": 60}, "guards": [guard]}),
            "a guard needs a stepped ramp",
        ),
        (
            json!({"state": "running", "guards": [guard]}),
            "a guard needs a ramp",
        ),
        (
            json!({"state": "running", "ramp": {"kind": "steps", "fractions": [0.1, 1.0], "duration_secs": 60}, "guards": [{"series": "db_load"}]}),
            "needs a limit",
        ),
        (
            json!({"state": "paused", "guards": [guard]}),
            "guards apply only to a resume",
        ),
    ] {
        let (s, v) = api
            .call("PUT", "/switches/workers/state", &token, Some(body.clone()))
            .await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_value", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{body}: {v}"
        );
    }
    assert_eq!(
        get_switch(&api, &token, "workers").await["state"],
        "paused",
        "nothing changed"
    );
    let (s, v) = api
        .call("GET", "/switches/workers/guard", &token, None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    drop(server);
}

#[tokio::test]
async fn the_cli_resumes_with_guards() {
    let (dir, server, api, token) = start("");
    pause(&api, &token).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN", token.as_str()),
    ];
    let run = |args: &[&str]| {
        let o = brb_e2e::cli(&home, &env, args);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    // Refused before anything is sent: a guard without a limit, and on a linear ramp.
    let (ok, out) = run(&["resume", "--ramp", "steps:10m", "--guard", "db_load"]);
    assert!(
        !ok && out.contains("cannot read guard \"db_load\""),
        "{out}"
    );
    let (ok, out) = run(&["resume", "--ramp", "linear:5m", "--guard", "db_load < 80"]);
    assert!(!ok && out.contains("a guard needs a stepped ramp"), "{out}");
    assert_eq!(get_switch(&api, &token, "workers").await["state"], "paused");
    let (ok, out) = run(&[
        "resume",
        "--ramp",
        "steps:10m",
        "--guard",
        "db_load < 80",
        "--guard",
        "queue_depth < 500, interval=5s, failures=2",
        "--wait",
        "0",
    ]);
    assert!(ok, "{out}");
    let sw = get_switch(&api, &token, "workers").await;
    let g = &sw["ramp"]["guard"];
    assert_eq!(
        g["guards"][0],
        json!({"series": "db_load", "below": 80.0, "interval_secs": 10, "failure_limit": 3})
    );
    assert_eq!(g["guards"][1]["failure_limit"], 2);
    assert_eq!(g["step_secs"], 200);
    let (ok, out) = run(&["status"]);
    println!("brb status: {out}");
    assert!(
        ok && out
            .contains("guarded release at 10% (step 1/4), guard db_load < 80, queue_depth < 500"),
        "{out}"
    );
    // `brb audit` says how each release was made, guards included; a plain ramp too.
    let (ok, out) = run(&["audit", "--limit", "1"]);
    println!("brb audit: {out}");
    assert!(
        ok && out.contains(
            "paused -> running ",
        ) && out.contains(
            "[ramp: guarded 10% -> 25% -> 50% -> 100% (200s a step), at step 1/4, guard db_load < 80, queue_depth < 500]"
        ),
        "{out}"
    );
    pause(&api, &token).await;
    let (ok, out) = run(&["resume", "--ramp", "linear:5m", "--wait", "0"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["audit", "--limit", "3"]);
    println!("brb audit: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        ok && lines.len() == 3
            && lines[0].contains("[ramp: 5% -> 100% linearly over 300s]")
            && !lines[1].contains("[ramp:")
            && lines[2].contains("[ramp: guarded"),
        "{out}"
    );
    drop(server);
}
