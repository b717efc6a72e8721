//! The emergency stop and the second person: a pause is never refused (rate limits, approval
//! requirements), and a resume of a switch configured with `[switches.approval]` needs a second
//! operator. Everything over the real HTTP API of the real `brb` binary.

#![allow(clippy::unwrap_used)]
use brb_e2e::{Api, ServerProc, cli};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A token of `role` named `name`, optionally scoped; returns its secret.
async fn token(api: &Api, admin: &str, name: &str, role: &str, scope: Option<Value>) -> String {
    let mut body = json!({ "name": name, "role": role });
    if let Some(s) = scope {
        body["scope"] = s;
    }
    let (s, v) = api.call("POST", "/tokens", admin, Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["secret"].as_str().expect("a secret").to_string()
}

async fn create_switch(api: &Api, admin: &str, name: &str) {
    let (s, v) = api
        .call("POST", "/switches", admin, Some(json!({ "name": name })))
        .await;
    assert_eq!(s, 201, "{v}");
}

async fn state_of(api: &Api, admin: &str, name: &str) -> String {
    let (s, v) = api
        .call("GET", &format!("/switches/{name}"), admin, None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_never_rate_limited_from_any_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    // One state change per token and per address, refilled once in ~17 minutes: after the
    // first resume, every other change from loopback is over its budget for this whole test.
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[("BRB_CHANGES_PER_SEC", "0.001"), ("BRB_CHANGES_BURST", "1")],
    );
    let api = Api::new(&server);
    let admin = server.admin_token();
    let op = token(&api, &admin, "op-alice", "operator", None).await;
    let sources = ["api", "cli", "web", "desktop", "tray", "button"];
    for s in sources {
        create_switch(&api, &admin, &format!("by-{s}")).await;
    }
    create_switch(&api, &admin, "office").await;
    create_switch(&api, &admin, "by-brb-cli").await;
    let button = token(
        &api,
        &admin,
        "office-button",
        "operator",
        Some(json!({ "switches": ["office"], "pause_only": true })),
    )
    .await;

    // A pause, then a gradual release that spends the whole budget.
    let put = |to: &'static str| json!({ "state": to });
    let (s, v) = api
        .call("PUT", "/switches/workers/state", &op, Some(put("paused")))
        .await;
    assert_eq!(s, 200, "the first pause: {v}");
    let (s, v) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &op,
            Some(json!({ "state": "running", "ramp": { "kind": "steps", "fractions": [0.1, 0.5, 1.0], "duration_secs": 600 } })),
        )
        .await;
    assert_eq!(s, 200, "the one resume the budget allows: {v}");
    // The limit is on: another resume, or a ramp extension, is refused.
    let (s, v) = api
        .call("PUT", "/switches/by-api/state", &op, Some(put("running")))
        .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/switches/workers/ramp",
            &op,
            Some(json!({ "action": "extend", "by_secs": 60 })),
        )
        .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");

    // Every way to pause still works, at once.
    let (s, v) = api
        .call(
            "POST",
            "/switches/workers/ramp",
            &op,
            Some(json!({ "action": "abort", "reason": "relapse" })),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("paused")),
        "abort: {v}"
    );
    for src in sources {
        let (s, v) = api
            .call(
                "PUT",
                &format!("/switches/by-{src}/state"),
                &op,
                Some(json!({ "state": "paused", "source": src, "reason": "db on fire" })),
            )
            .await;
        assert_eq!(s, 200, "pause from {src}: {v}");
        assert_eq!(v["source"], src, "{v}");
        assert_eq!(v["state"], "paused", "{v}");
    }
    let (s, v) = api
        .call(
            "PUT",
            "/switches/office/state",
            &button,
            Some(json!({ "state": "paused", "source": "button" })),
        )
        .await;
    assert_eq!(s, 200, "the pause-only button token: {v}");
    // Pausing a paused switch again is fine too (and writes nothing).
    for _ in 0..20 {
        let (s, v) = api
            .call(
                "PUT",
                "/switches/office/state",
                &button,
                Some(put("paused")),
            )
            .await;
        assert_eq!(s, 200, "a repeated pause: {v}");
    }
    // The CLI, a separate process with its own connection.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let o = cli(
        &home,
        &[("BRB_URL", server.url.as_str()), ("BRB_TOKEN", op.as_str())],
        &[
            "pause",
            "by-brb-cli",
            "--wait",
            "0",
            "--reason",
            "from a terminal",
        ],
    );
    assert!(
        o.status.success(),
        "brb pause: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(state_of(&api, &admin, "by-brb-cli").await, "paused");
    // And resumes are still limited afterwards: the exemption is for the brake only.
    let (s, v) = api
        .call(
            "PUT",
            "/switches/by-api/state",
            &admin,
            Some(put("running")),
        )
        .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    assert_eq!(state_of(&api, &admin, "by-api").await, "paused");
}
