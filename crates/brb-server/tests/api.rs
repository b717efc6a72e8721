//! The HTTP API against a real server on a loopback port: every endpoint's success and error
//! cases, and the whole auth matrix.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use brb_api::Role;
use common::{TestServer, read_events};
use serde_json::{Value, json};

#[tokio::test]
async fn health_ready_metrics_and_openapi_need_no_token() {
    let s = TestServer::start().await;
    for path in ["/healthz", "/readyz"] {
        let r = s.http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    }
    let r = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("# TYPE brb_http_request_duration_seconds histogram"));
    assert!(text.contains("brb_watchers{kind=\"sse\"}"));

    let doc: Value = s
        .http
        .get(s.api("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/switches",
        "/api/v1/switches/{name}",
        "/api/v1/switches/{name}/state",
        "/api/v1/switches/{name}/events",
        "/api/v1/events",
        "/api/v1/audit",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/info",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    assert!(doc["components"]["schemas"].get("Switch").is_some());
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
}

#[tokio::test]
async fn first_start_has_the_primary_switch() {
    let s = TestServer::start().await;
    let (st, body) = s.get(&s.admin, "/switches").await;
    assert_eq!(st, 200);
    let list = body["switches"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "workers");
    assert_eq!(list[0]["primary"], true);
    assert_eq!(list[0]["state"], "running");
    assert_eq!(list[0]["version"], 1);
    assert_eq!(list[0]["description"], "Pause all background workers");
    for field in ["changed_at", "changed_by", "source", "reason"] {
        assert!(list[0].get(field).is_some(), "Switch lacks {field}");
    }
    let (st, info) = s.get(&s.admin, "/info").await;
    assert_eq!(st, 200);
    assert_eq!(info["primary_switch"], "workers");
    assert_eq!(info["caller"]["role"], "admin");
}

/// Every endpoint × {no token, malformed token, unknown token, viewer, operator, admin}.
#[tokio::test]
async fn auth_matrix() {
    let s = TestServer::start().await;
    let viewer = s.token("v", Role::Viewer).await;
    let operator = s.token("o", Role::Operator).await;
    let admin = s.admin.clone();
    // A syntactically valid token whose secret is wrong.
    let forged = {
        let (id, _) = operator
            .strip_prefix("brb_")
            .unwrap()
            .split_once('_')
            .unwrap();
        format!("brb_{id}_{}", "0".repeat(64))
    };

    // (method, path, body, minimum role). The bodies are valid so that a passing auth check
    // reaches a 2xx.
    let mut n = 0;
    let cases: Vec<(&str, String, Option<Value>, Role)> = vec![
        ("GET", "/info".into(), None, Role::Viewer),
        ("GET", "/switches".into(), None, Role::Viewer),
        ("GET", "/switches/workers".into(), None, Role::Viewer),
        ("GET", "/audit".into(), None, Role::Viewer),
        (
            "PUT",
            "/switches/workers/state".into(),
            Some(json!({"state": "paused"})),
            Role::Operator,
        ),
        ("GET", "/tokens".into(), None, Role::Admin),
        (
            "POST",
            "/tokens".into(),
            Some(json!({"name": "n", "role": "viewer"})),
            Role::Admin,
        ),
        (
            "POST",
            "/switches".into(),
            Some(json!({"name": "s", "description": "d"})),
            Role::Admin,
        ),
        (
            "PATCH",
            "/switches/workers".into(),
            Some(json!({"description": "d2"})),
            Role::Admin,
        ),
    ];
    for (method, path, body, min) in cases {
        for (who, tok, role) in [
            ("none", None, None),
            ("malformed", Some("not-a-token".to_string()), None),
            ("forged", Some(forged.clone()), None),
            ("viewer", Some(viewer.clone()), Some(Role::Viewer)),
            ("operator", Some(operator.clone()), Some(Role::Operator)),
            ("admin", Some(admin.clone()), Some(Role::Admin)),
        ] {
            // Unique names so repeated creates by different roles do not collide.
            n += 1;
            let body = body.clone().map(|mut b| {
                if path == "/tokens" || path == "/switches" {
                    b["name"] = json!(format!("x{n}"));
                }
                b
            });
            let mut rb = s.http.request(method.parse().unwrap(), s.api(&path));
            if let Some(t) = &tok {
                rb = rb.bearer_auth(t);
            }
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            let expected = match role {
                None => 401,
                Some(r) if r < min => 403,
                Some(_) => {
                    if method == "POST" {
                        201
                    } else {
                        200
                    }
                }
            };
            assert_eq!(status, expected, "{method} {path} as {who}: {v}");
            if expected >= 400 {
                let code = if expected == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(v["error"]["code"], code, "{method} {path} as {who}");
                assert!(v["error"]["message"].as_str().unwrap().len() > 5);
            }
        }
    }
    // Event streams follow the same rules.
    for (tok, expected) in [(None, 401), (Some(viewer.clone()), 200)] {
        let mut rb = s.http.get(s.api("/events"));
        if let Some(t) = &tok {
            rb = rb.bearer_auth(t);
        }
        assert_eq!(rb.send().await.unwrap().status(), expected);
    }
    // Bad tokens are counted.
    let metrics = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("brb_auth_failures_total 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn set_state_success_idempotence_and_conflict() {
    let s = TestServer::start().await;
    let op = s.token("alice", Role::Operator).await;
    let (st, sw) = s
        .set(
            &op,
            "workers",
            json!({"state": "paused", "reason": "db on fire", "source": "desktop"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(sw["state"], "paused");
    assert_eq!(sw["version"], 2);
    assert_eq!(sw["changed_by"], "alice");
    assert_eq!(sw["source"], "desktop");
    assert_eq!(sw["reason"], "db on fire");

    // Same state again: 200, same version, no audit entry.
    let (_, before) = s.get(&op, "/audit").await;
    let (st, again) = s.set(&op, "workers", json!({"state": "paused"})).await;
    assert_eq!(st, 200);
    assert_eq!(again["version"], 2);
    assert_eq!(again["reason"], "db on fire", "nothing was overwritten");
    let (_, after) = s.get(&op, "/audit").await;
    assert_eq!(before["entries"], after["entries"]);

    // Stale expected_version: 409 with the current switch, nothing changed.
    let (st, err) = s
        .set(
            &op,
            "workers",
            json!({"state": "running", "expected_version": 1}),
        )
        .await;
    assert_eq!(st, 409);
    assert_eq!(err["error"]["code"], "version_conflict");
    assert_eq!(err["error"]["current"]["version"], 2);
    assert_eq!(err["error"]["current"]["state"], "paused");
    let (st, ok) = s
        .set(
            &op,
            "workers",
            json!({"state": "running", "expected_version": 2}),
        )
        .await;
    assert_eq!((st, ok["version"].as_u64()), (200, Some(3)));
    assert_eq!(ok["source"], "api", "default source");

    // The audit entry says who, from where, why, when.
    let (_, audit) = s.get(&op, "/audit?switch=workers&limit=2").await;
    let e = &audit["entries"][1];
    assert_eq!(e["action"], "state_changed");
    assert_eq!(e["from"], "running");
    assert_eq!(e["to"], "paused");
    assert_eq!(e["version"], 2);
    assert_eq!(e["actor"], "alice");
    assert_eq!(e["source"], "desktop");
    assert_eq!(e["reason"], "db on fire");
    assert_eq!(e["remote_addr"], "127.0.0.1");
    assert!(e["at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn bad_input_is_a_clean_json_error_and_changes_nothing() {
    let s = TestServer::start().await;
    let op = s.token("o", Role::Operator).await;
    let raw = |body: Vec<u8>| {
        s.http
            .put(s.api("/switches/workers/state"))
            .bearer_auth(&op)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"state\":".to_vec(), 400, "malformed_json"),
        (b"not json at all".to_vec(), 400, "malformed_json"),
        (Vec::new(), 400, "malformed_json"),
        (b"\xff\xfe\x00garbage".to_vec(), 400, "malformed_json"),
        (b"{\"state\":\"off\"}".to_vec(), 422, "invalid_value"),
        (b"{\"state\":1}".to_vec(), 422, "invalid_value"),
        (b"[]".to_vec(), 422, "invalid_value"),
        (
            b"{\"state\":\"paused\",\"reson\":\"typo\"}".to_vec(),
            422,
            "invalid_value",
        ),
        (
            b"{\"state\":\"paused\",\"source\":\"toaster\"}".to_vec(),
            422,
            "invalid_value",
        ),
        (
            b"{\"state\":\"paused\",\"expected_version\":-1}".to_vec(),
            422,
            "invalid_value",
        ),
        (
            serde_json::to_vec(&json!({"state": "paused", "reason": "x".repeat(1001)})).unwrap(),
            422,
            "invalid_value",
        ),
        (
            serde_json::to_vec(&json!({"state": "paused", "reason": "x".repeat(70_000)})).unwrap(),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).to_string();
        let r = raw(body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{shown}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("json")
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{shown}: {v}");
    }
    let (_, sw) = s.get(&op, "/switches/workers").await;
    assert_eq!(sw["version"], 1, "nothing changed");
    let (_, audit) = s.get(&op, "/audit").await;
    assert_eq!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "state_changed")
            .count(),
        0
    );

    // Unknown switch, unknown route, wrong method, bad query.
    let (st, v) = s.set(&op, "nope", json!({"state": "paused"})).await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, v) = s.get(&op, "/switches/nope").await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, v) = s.get(&op, "/nowhere").await;
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    let r = s
        .http
        .delete(s.api("/audit"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "method_not_allowed"
    );
    let (st, v) = s.get(&op, "/audit?limit=abc").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (st, v) = s.get(&op, "/audit?limit=0").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_value"))
    );
    let (st, _) = s.get(&op, "/switches/workers?after_version=x").await;
    assert_eq!(st, 400);
    let r = s
        .http
        .get(s.api("/switches/workers/events"))
        .bearer_auth(&op)
        .header("last-event-id", "seven")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn switch_management() {
    let s = TestServer::start().await;
    let a = s.admin.clone();
    let post = |body: Value| {
        s.http
            .post(s.api("/switches"))
            .bearer_auth(&a)
            .json(&body)
            .send()
    };
    let r = post(json!({"name": "search-indexing", "description": "Reindexing"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sw: Value = r.json().await.unwrap();
    assert_eq!(
        (sw["primary"].as_bool(), sw["version"].as_u64()),
        (Some(false), Some(1))
    );
    let r = post(json!({"name": "search-indexing"})).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "already_exists"
    );
    let r = post(json!({"name": "Bad Name"})).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = post(json!({"name": "ok", "description": "d".repeat(501)}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    let r = s
        .http
        .patch(s.api("/switches/search-indexing"))
        .bearer_auth(&a)
        .json(&json!({"description": "Search re-indexing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sw: Value = r.json().await.unwrap();
    assert_eq!(sw["description"], "Search re-indexing");
    assert_eq!(sw["version"], 2);

    let (_, list) = s.get(&a, "/switches").await;
    let names: Vec<_> = list["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["workers", "search-indexing"], "primary first");

    let del = |name: &str| {
        s.http
            .delete(s.api(&format!("/switches/{name}")))
            .bearer_auth(&a)
            .send()
    };
    let r = del("workers").await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "protected"
    );
    assert_eq!(del("search-indexing").await.unwrap().status(), 204);
    assert_eq!(del("search-indexing").await.unwrap().status(), 404);
    let (st, _) = s.get(&a, "/switches/search-indexing").await;
    assert_eq!(st, 404);
    let (_, audit) = s.get(&a, "/audit?switch=search-indexing").await;
    let actions: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        vec!["switch_deleted", "switch_updated", "switch_created"]
    );
}

#[tokio::test]
async fn config_declared_switches_exist_on_start() {
    let s = TestServer::start_with(|c| {
        c.switches.push(brb_server::config::SwitchConfig {
            name: "kill-search".into(),
            description: "Search".into(),
            remind: false,
            approval: Default::default(),
        });
        c.environment.name = "production".into();
    })
    .await;
    let (_, sw) = s.get(&s.admin, "/switches/kill-search").await;
    assert_eq!(sw["primary"], false);
    let (_, info) = s.get(&s.admin, "/info").await;
    assert_eq!(info["environment"]["name"], "production");
}

/// The console must say before a resume that it will only file a request: `/info` names the
/// switches whose resumes need approval (those the token may see), with the request's lifetime.
#[tokio::test]
async fn info_names_the_switches_whose_resumes_need_approval() {
    let s = TestServer::start_with(|c| {
        c.primary.approval = brb_server::config::ApprovalConfig {
            resume: 1,
            expire: "10m".into(),
        };
        for name in ["kill-search", "kill-mail"] {
            c.switches.push(brb_server::config::SwitchConfig {
                name: name.into(),
                description: name.into(),
                remind: false,
                approval: brb_server::config::ApprovalConfig {
                    resume: u8::from(name == "kill-mail"),
                    expire: "30s".into(),
                },
            });
        }
    })
    .await;
    let (st, info) = s.get(&s.admin, "/info").await;
    assert_eq!(st, 200);
    assert_eq!(
        info["approvals"],
        json!([{"switch": "workers", "request_secs": 600},
               {"switch": "kill-mail", "request_secs": 30}])
    );
    // A token scoped to one switch hears only of that one.
    let r = s
        .http
        .post(s.api("/tokens"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "search-bot", "role": "operator",
            "scope": {"switches": ["kill-search"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let scoped = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, info) = s.get(&scoped, "/info").await;
    assert!(info.get("approvals").is_none(), "{info}");
    // Without approvals configured the field is absent.
    let plain = TestServer::start().await;
    let (_, info) = plain.get(&plain.admin, "/info").await;
    assert!(info.get("approvals").is_none(), "{info}");
}

#[tokio::test]
async fn tokens_lifecycle() {
    let s = TestServer::start().await;
    let r = s
        .http
        .post(s.api("/tokens"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "ci-bot", "role": "operator"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("brb_"));

    let (st, list) = s.get(&s.admin, "/tokens").await;
    assert_eq!(st, 200);
    let text = list.to_string();
    assert!(text.contains("ci-bot"));
    assert!(!text.contains(&secret), "list never shows secrets");
    assert!(!text.contains("secret"), "{text}");

    // The raw secret is not in the database either: only its hash.
    let db = std::fs::read(s.dir.path().join("brb.db")).unwrap();
    let wal = std::fs::read(s.dir.path().join("brb.db-wal")).unwrap_or_default();
    let needle = secret.rsplit('_').next().unwrap().as_bytes();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    let r = s
        .http
        .post(s.api("/tokens"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "ci-bot", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "live names are unique");
    let r = s
        .http
        .post(s.api("/tokens"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "x", "role": "root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    assert_eq!(s.get(&secret, "/switches").await.0, 200);
    let r = s
        .http
        .delete(s.api(&format!("/tokens/{id}")))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["revoked_at"].is_string());
    let (st, v) = s.get(&secret, "/switches").await;
    assert_eq!(st, 401, "revocation takes effect at once");
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
    let r = s
        .http
        .delete(s.api("/tokens/nope"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn audit_pages() {
    let s = TestServer::start().await;
    for i in 0..7 {
        let state = if i % 2 == 0 { "paused" } else { "running" };
        s.set(
            &s.admin,
            "workers",
            json!({"state": state, "reason": format!("r{i}")}),
        )
        .await;
    }
    let (_, p1) = s.get(&s.admin, "/audit?switch=workers&limit=3").await;
    let e1 = p1["entries"].as_array().unwrap();
    assert_eq!(e1.len(), 3);
    assert_eq!(e1[0]["reason"], "r6", "newest first");
    let before = p1["next_before"].as_u64().unwrap();
    let (_, p2) = s
        .get(
            &s.admin,
            &format!("/audit?switch=workers&limit=3&before={before}"),
        )
        .await;
    let e2 = p2["entries"].as_array().unwrap();
    assert_eq!(e2[0]["reason"], "r3");
    let (_, p3) = s
        .get(
            &s.admin,
            &format!(
                "/audit?switch=workers&limit=3&before={}",
                p2["next_before"].as_u64().unwrap()
            ),
        )
        .await;
    let e3 = p3["entries"].as_array().unwrap();
    assert_eq!(e3.len(), 2, "r0 and the creation");
    assert!(p3["next_before"].is_null());
}

/// The wait is a time rule, so this runs on tokio's paused clock: time stands still while any
/// task can run and jumps to the next timer when all are idle, so "answers after `wait`" is
/// checked exactly, and the test does not spend the wait.
#[tokio::test(start_paused = true)]
async fn long_poll_returns_on_change_and_on_timeout() {
    use tokio::time::Instant;
    let s = TestServer::start().await;
    // Timeout: answers after `wait` with the current state, not before.
    let t = Instant::now();
    let (st, sw) = s
        .get(&s.admin, "/switches/workers?after_version=1&wait=1")
        .await;
    let took = t.elapsed();
    assert_eq!((st, sw["version"].as_u64()), (200, Some(1)));
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Change: answers on the change, long before the wait is over.
    let url = s.api("/switches/workers?after_version=1&wait=30");
    let (http, admin) = (s.http.clone(), s.admin.clone());
    let poll = tokio::spawn(async move {
        let v: Value = http
            .get(url)
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v, Instant::now())
    });
    // The poll must be waiting inside the server before the change, or it would be answered
    // at once and prove nothing.
    let t = Instant::now();
    while common::long_polls(&s.state) != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the long-poll never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let changed = Instant::now();
    s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    let (v, answered) = poll.await.unwrap();
    assert_eq!(v["state"], "paused");
    assert_eq!(v["version"], 2);
    let took = answered - changed;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(common::long_polls(&s.state), 0);

    // Already past: immediate.
    let t = Instant::now();
    let (_, v) = s
        .get(&s.admin, "/switches/workers?after_version=0&wait=30")
        .await;
    assert_eq!(v["version"], 2);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

async fn open_stream(s: &TestServer, path: &str, last: Option<&str>) -> reqwest::Response {
    let mut rb = s.http.get(s.api(path)).bearer_auth(&s.admin);
    if let Some(l) = last {
        rb = rb.header("last-event-id", l);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r
}

#[tokio::test]
async fn sse_watcher_sees_every_change_in_order_and_resumes_without_gaps() {
    let s = TestServer::start().await;
    let stream = open_stream(&s, "/switches/workers/events", None).await;
    let all = open_stream(&s, "/events", None).await;
    const N: u64 = 40;
    for i in 0..N {
        let state = if i % 2 == 0 { "paused" } else { "running" };
        let (st, _) = s.set(&s.admin, "workers", json!({"state": state})).await;
        assert_eq!(st, 200);
    }
    let evs = read_events(stream, N as usize + 1, Duration::from_secs(10)).await;
    let versions: Vec<u64> = evs
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        versions,
        (1..=N + 1).collect::<Vec<_>>(),
        "first the current state, then each change"
    );
    for e in &evs {
        assert_eq!(e.event, "switch");
        let sw: brb_api::Switch = serde_json::from_str(&e.data).unwrap();
        assert_eq!(sw.version.to_string(), *e.id.as_ref().unwrap());
    }
    let all_evs =
        common::read_events_named(all, Some("switch"), N as usize + 1, Duration::from_secs(10))
            .await;
    assert_eq!(all_evs.len(), N as usize + 1);
    let ids: Vec<u64> = all_evs
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Resume from version 10: exactly 11..=N+1, nothing missed, nothing repeated.
    let resumed = open_stream(&s, "/switches/workers/events", Some("10")).await;
    let evs = read_events(resumed, (N + 1 - 10) as usize, Duration::from_secs(10)).await;
    let versions: Vec<u64> = evs
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(versions, (11..=N + 1).collect::<Vec<_>>());
    // The replayed events carry the state each version had.
    let v11: brb_api::Switch = serde_json::from_str(&evs[0].data).unwrap();
    assert_eq!(
        v11.state,
        brb_api::SwitchState::Running,
        "v11 is the 10th change: running"
    );

    // Resume the all-switches stream from an audit id.
    let mid = ids[ids.len() / 2];
    let resumed = open_stream(&s, "/events", Some(&mid.to_string())).await;
    let expected: Vec<u64> = ids.iter().copied().filter(|i| *i > mid).collect();
    let evs = read_events(resumed, expected.len(), Duration::from_secs(10)).await;
    let got: Vec<u64> = evs
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn sse_resume_at_current_version_sends_only_new_changes() {
    let s = TestServer::start().await;
    let stream = open_stream(&s, "/switches/workers/events", Some("1")).await;
    s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    let evs = read_events(stream, 1, Duration::from_secs(5)).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].id.as_deref(), Some("2"));
}

#[tokio::test]
async fn sse_keepalive_and_deleted_switch_ends_stream() {
    let s = TestServer::start_with(|c| c.limits.keepalive_secs = 1).await;
    let r = s
        .http
        .post(s.api("/switches"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": "temp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let res = open_stream(&s, "/switches/temp/events", None).await;
    use futures_util::StreamExt;
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let t = Instant::now();
    while !text.contains(": keep-alive") && t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(Ok(b))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await {
            text.push_str(&String::from_utf8_lossy(&b));
        }
    }
    assert!(text.contains(": keep-alive"), "{text}");
    let r = s
        .http
        .delete(s.api("/switches/temp"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The stream sends `deleted` and ends.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = String::new();
        while let Some(Ok(b)) = body.next().await {
            rest.push_str(&String::from_utf8_lossy(&b));
        }
        rest
    })
    .await
    .expect("stream ended");
    assert!(rest.contains("event: deleted"), "{rest}");
}

/// People watch `/events` (console, desktop, `brb watch`): with the default 15 s interval of
/// worker streams, it still says "still here" every 2 s, so a frozen control plane shows
/// within ~5 s.
#[tokio::test]
async fn all_events_stream_keeps_alive_every_two_seconds() {
    use futures_util::StreamExt;
    let s = TestServer::start().await;
    assert_eq!(s.state.config().limits.keepalive_secs, 15);
    let res = open_stream(&s, "/events", None).await;
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let t = Instant::now();
    while text.matches(": keep-alive").count() < 2 && t.elapsed() < Duration::from_secs(6) {
        if let Ok(Some(Ok(b))) = tokio::time::timeout(Duration::from_secs(6), body.next()).await {
            text.push_str(&String::from_utf8_lossy(&b));
        }
    }
    assert!(
        text.matches(": keep-alive").count() >= 2,
        "two keep-alives within {:?}: {text}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn graceful_shutdown_ends_streams() {
    use futures_util::StreamExt;
    let s = TestServer::start().await;
    let stream = open_stream(&s, "/events", None).await;
    let mut body = stream.bytes_stream();
    let mut parser = brb_client::sse::Parser::new();
    // The snapshot first: the stream is being served before the shutdown begins.
    let mut events: Vec<brb_client::sse::Event> = Vec::new();
    while !events.iter().any(|e| e.event == "switch") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the snapshot")
            .expect("the stream is open")
            .unwrap();
        events.extend(parser.feed(&chunk).unwrap());
    }
    let took = s.stop().await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    // Then the stream ends with its terminating chunk: cleanly, not cut, and not left open.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = Vec::new();
        while let Some(chunk) = body.next().await {
            rest.extend(parser.feed(&chunk.expect("ended cleanly")).unwrap());
        }
        rest
    })
    .await
    .expect("the stream ended");
    assert!(
        rest.iter().all(|e| e.event != "switch"),
        "no change after the snapshot: {rest:?}"
    );
}

#[tokio::test]
async fn in_process_router_answers_without_a_socket() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(brb_store::SqliteStore::open(dir.path().join("b.db")).unwrap());
    let state =
        brb_server::AppState::new(store, common::config(dir.path()), Some("env-admin-token"))
            .await
            .unwrap();
    let app = brb_server::app(state);
    let res = app
        .clone()
        .oneshot(
            axum::http::Request::get("/api/v1/switches/workers")
                .header("authorization", "Bearer env-admin-token")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .oneshot(
            axum::http::Request::get("/api/v1/switches/workers")
                .header("authorization", "Bearer env-admin-tokenX")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
}
