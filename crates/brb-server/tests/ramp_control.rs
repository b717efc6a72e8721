//! Holding, continuing, extending and aborting a release over the real API on loopback: what
//! each does to the switch and its gates, the audit entries, the errors, scopes and the
//! OpenAPI document. (The arithmetic is checked with a fixed clock in `brb-api`'s ramp tests
//! and `brb-store`'s rule tests.)
#![allow(clippy::unwrap_used)]

mod common;

use brb_api::{Role, Switch};
use chrono::Utc;
use common::TestServer;
use serde_json::{Value, json};

async fn ramp(s: &TestServer, token: &str, switch: &str, body: Value) -> (u16, Value) {
    let r = s
        .http
        .post(s.api(&format!("/switches/{switch}/ramp")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn switch(v: &Value) -> Switch {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test]
async fn a_release_is_held_continued_extended_and_aborted_over_http() {
    let s = TestServer::start().await;
    let op = s.token("ops", Role::Operator).await;

    // Nothing to control while running at once, or paused.
    let (st, v) = ramp(&s, &op, "workers", json!({"action": "hold"})).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("no_ramp")),
        "{v}"
    );
    s.set(&op, "workers", json!({"state": "paused"})).await;
    let (st, _) = ramp(&s, &op, "workers", json!({"action": "abort"})).await;
    assert_eq!(st, 409);

    // A ten-minute stepped release: 10% now.
    let (st, v) = s
        .set(
            &op,
            "workers",
            json!({"state": "running", "ramp": {"kind": "steps", "fractions": [0.1, 0.25, 0.5, 1.0], "duration_secs": 600}}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let v0 = switch(&v).version;

    // Hold: still running, the gates' fraction stays at 10% far past the ramp's end.
    let (st, v) = ramp(
        &s,
        &op,
        "workers",
        json!({"action": "hold", "reason": "db warming up", "source": "cli"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let held = switch(&v);
    assert_eq!(held.version, v0 + 1);
    assert_eq!(held.state, brb_api::SwitchState::Running);
    assert!(held.ramp.as_ref().unwrap().held.is_some());
    let later = Utc::now() + chrono::Duration::hours(2);
    assert_eq!(held.admitted_fraction(later), 0.1);
    // What every watcher sees is the same switch.
    let (_, cur) = s.get(&op, "/switches/workers").await;
    assert_eq!(switch(&cur), held);
    // Holding again changes nothing (no version, no audit entry).
    let (st, v) = ramp(&s, &op, "workers", json!({"action": "hold"})).await;
    assert_eq!((st, switch(&v).version), (200, held.version));

    // Continue, then extend by five minutes: running, a plain ramp again, longer.
    let (st, v) = ramp(&s, &op, "workers", json!({"action": "continue"})).await;
    assert_eq!(st, 200, "{v}");
    let cont = switch(&v);
    assert!(cont.ramp.as_ref().unwrap().held.is_none());
    let left = cont.ramp.as_ref().unwrap().duration_secs;
    assert!(
        (599..=600).contains(&left),
        "continued over what was left: {left}"
    );
    let (st, v) = ramp(
        &s,
        &op,
        "workers",
        json!({"action": "extend", "by_secs": 300}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let ext = switch(&v);
    let d = ext.ramp.as_ref().unwrap().duration_secs;
    assert!((899..=900).contains(&d), "extended by 300 s: {d}");
    assert!(ext.admitted_fraction(Utc::now()) <= 0.1 + 1e-9);

    // Bad requests write nothing.
    for (body, code) in [
        (json!({"action": "extend"}), "invalid_value"),
        (json!({"action": "extend", "by_secs": 0}), "invalid_value"),
        (
            json!({"action": "extend", "by_secs": 86400}),
            "invalid_value",
        ),
        (json!({"action": "hold", "by_secs": 5}), "invalid_value"),
        (json!({"action": "faster"}), "invalid_value"),
        (
            json!({"action": "hold", "expected_version": 1}),
            "version_conflict",
        ),
    ] {
        let (st, v) = ramp(&s, &op, "workers", body.clone()).await;
        assert_eq!(v["error"]["code"], code, "{body}: {st} {v}");
    }
    let (_, cur) = s.get(&op, "/switches/workers").await;
    assert_eq!(switch(&cur).version, ext.version, "nothing was written");

    // Abort: back to paused, never to running.
    let (st, v) = ramp(
        &s,
        &op,
        "workers",
        json!({"action": "abort", "reason": "db hot again"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let ab = switch(&v);
    assert_eq!(ab.state, brb_api::SwitchState::Paused);
    assert_eq!(ab.ramp, None);
    assert_eq!(ab.admitted_fraction(Utc::now()), 0.0);

    // The audit log records each, with who, from where and what was done.
    let (_, audit) = s.get(&op, "/audit?switch=workers&limit=5").await;
    let e = audit["entries"].as_array().unwrap();
    let rows: Vec<(String, String)> = e
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(rows[0].0, "state_changed");
    assert_eq!(e[0]["to"], "paused");
    assert!(
        rows[0]
            .1
            .starts_with("release aborted at 10%: db hot again"),
        "{rows:?}"
    );
    assert_eq!(rows[1].0, "ramp_changed");
    assert!(
        rows[1].1.starts_with("release extended by 300 s"),
        "{rows:?}"
    );
    assert_eq!(rows[2].0, "ramp_changed");
    assert!(
        rows[2].1.starts_with("release continued from 10%"),
        "{rows:?}"
    );
    assert_eq!(rows[3].0, "ramp_changed");
    assert_eq!(rows[3].1, "release held at 10%: db warming up");
    assert_eq!(e[3]["source"], "cli");
    assert_eq!(e[3]["actor"], "ops");
}

#[tokio::test]
async fn a_pause_only_token_may_slow_or_stop_a_release_but_not_continue_it() {
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.api("/tokens"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "button", "role": "operator", "scope": {"switches": ["workers"], "pause_only": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let button = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = s.token("viewer", Role::Viewer).await;
    s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    s.set(
        &s.admin,
        "workers",
        json!({"state": "running", "ramp": {"kind": "linear", "from": 0.05, "duration_secs": 600}}),
    )
    .await;

    let (st, v) = ramp(&s, &viewer, "workers", json!({"action": "hold"})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (st, _) = ramp(&s, &button, "workers", json!({"action": "hold"})).await;
    assert_eq!(st, 200);
    let (st, v) = ramp(&s, &button, "workers", json!({"action": "continue"})).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("out_of_scope"))
    );
    let (st, _) = ramp(
        &s,
        &button,
        "workers",
        json!({"action": "extend", "by_secs": 60}),
    )
    .await;
    assert_eq!(st, 200);
    let (st, v) = ramp(&s, &button, "workers", json!({"action": "abort"})).await;
    assert_eq!((st, v["state"].as_str()), (200, Some("paused")));
}

#[tokio::test]
async fn the_openapi_document_describes_the_ramp_endpoint() {
    let s = TestServer::start().await;
    let doc: Value = s
        .http
        .get(s.api("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = &doc["paths"]["/api/v1/switches/{name}/ramp"]["post"];
    assert!(op.is_object(), "POST /switches/{{name}}/ramp is documented");
    for code in ["200", "403", "409", "422"] {
        assert!(op["responses"][code].is_object(), "response {code}");
    }
    let req = &doc["components"]["schemas"]["RampControlRequest"];
    let actions = req["properties"]["action"].to_string()
        + &doc["components"]["schemas"]["RampAction"].to_string();
    for a in ["hold", "continue", "extend", "abort"] {
        assert!(actions.contains(a), "action {a} in {actions}");
    }
    assert!(req["properties"]["by_secs"].is_object());
    assert!(doc["components"]["schemas"]["RampHeld"].is_object());
    let codes = doc["components"]["schemas"]["ErrorCode"].to_string();
    assert!(codes.contains("no_ramp"), "{codes}");
    let audit = doc["components"]["schemas"]["AuditAction"].to_string();
    assert!(audit.contains("ramp_changed"), "{audit}");
}
