//! What the API promises its clients, against the real `brb server`: sources a token cannot
//! claim, errors that are JSON whatever went wrong (even before a request reaches a handler),
//! and answers that always have the keys the README lists.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use brb_e2e::{Api, ServerProc};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A token names where its change comes from, but not a channel the server runs itself.
#[tokio::test]
async fn a_token_cannot_claim_the_servers_own_sources() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let (s, tok) = api
        .call(
            "POST",
            "/tokens",
            &admin,
            Some(json!({"name": "ci-bot", "role": "operator"})),
        )
        .await;
    assert_eq!(s, 201, "{tok}");
    let op = tok["secret"].as_str().unwrap().to_string();
    let (_, before) = api.call("GET", "/switches/workers", &op, None).await;
    let (_, audit_before) = api.call("GET", "/audit", &admin, None).await;

    for source in ["slack", "system", "adapter"] {
        let (s, b) = api
            .call(
                "PUT",
                "/switches/workers/state",
                &op,
                Some(json!({"state": "paused", "reason": "spoof", "source": source})),
            )
            .await;
        assert_eq!(s, 422, "{source}: {b}");
        assert_eq!(b["error"]["code"], "invalid_value", "{b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("source \"{source}\"")) && msg.contains("control plane itself"),
            "{msg}"
        );
        assert!(
            msg.contains("desktop, tray, button, cli, web, api"),
            "{msg}"
        );
        // Admin requests that carry a source are held to the same rule.
        let (s, b) = api
            .call(
                "POST",
                "/switches",
                &admin,
                Some(json!({"name": "spoofed", "source": source})),
            )
            .await;
        assert_eq!(s, 422, "{b}");
        let (s, b) = api
            .call(
                "PATCH",
                "/switches/workers",
                &admin,
                Some(json!({"description": "x", "source": source})),
            )
            .await;
        assert_eq!(s, 422, "{b}");
    }
    // Nothing changed, nothing was recorded.
    let (_, after) = api.call("GET", "/switches/workers", &op, None).await;
    assert_eq!(after, before);
    let (_, audit_after) = api.call("GET", "/audit", &admin, None).await;
    assert_eq!(audit_after, audit_before);

    // The clients' own names are accepted and recorded with the token's name next to them.
    for (i, source) in ["button", "cli", "desktop", "tray", "web", "api"]
        .iter()
        .enumerate()
    {
        let state = if i % 2 == 0 { "paused" } else { "running" };
        let (s, b) = api
            .call(
                "PUT",
                "/switches/workers/state",
                &op,
                Some(json!({"state": state, "source": source})),
            )
            .await;
        assert_eq!(s, 200, "{source}: {b}");
        assert_eq!(b["source"], *source);
        assert_eq!(b["changed_by"], "ci-bot");
    }
    let (_, audit) = api.call("GET", "/audit?limit=1", &admin, None).await;
    assert_eq!(audit["entries"][0]["source"], "api");
    assert_eq!(audit["entries"][0]["actor"], "ci-bot");
}

/// `GET /switches/{name}/workers` has `workers` even when no worker ever reported.
/// An adapter's token (read + report, scoped) records its own actions about its own switches,
/// always under its own name with source `adapter`, and changes no switch.
#[tokio::test]
async fn an_adapter_records_only_its_own_actions_and_changes_no_switch() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let (s, _) = api
        .call("POST", "/switches", &admin, Some(json!({"name": "search"})))
        .await;
    assert_eq!(s, 201);
    let (s, tok) = api
        .call(
            "POST",
            "/tokens",
            &admin,
            Some(
                json!({"name": "rq-adapter", "role": "viewer", "scope": {"switches": ["workers"]}}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{tok}");
    let adapter = tok["secret"].as_str().unwrap().to_string();
    let (_, before) = api.call("GET", "/switches/workers", &admin, None).await;
    let action = |switch: &str| {
        json!({"adapter_id": "adapter-rq-x", "switch": switch, "applied": "paused",
               "observed_version": 1, "detail": "suspended RQ"})
    };
    let (s, e) = api
        .call(
            "POST",
            "/adapters/actions",
            &adapter,
            Some(action("workers")),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["action"], "adapter_applied");
    assert_eq!(e["source"], "adapter");
    assert_eq!(e["actor"], "rq-adapter");
    assert_eq!(e["to"], "paused");
    assert_eq!(e["version"], Value::Null);
    assert_eq!(e["reason"], "adapter-rq-x: suspended RQ (switch version 1)");
    let (_, after) = api.call("GET", "/switches/workers", &admin, None).await;
    assert_eq!(before, after, "an adapter's record changes no switch");
    // Outside its scope: refused, nothing recorded.
    let (s, b) = api
        .call(
            "POST",
            "/adapters/actions",
            &adapter,
            Some(action("search")),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (_, audit) = api.call("GET", "/audit?switch=search", &admin, None).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "adapter_applied"),
        "{audit}"
    );
    // And it cannot pass a state change off as an adapter's, even with a role that may change.
    let (s, _) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({"state": "paused", "source": "adapter"})),
        )
        .await;
    assert_eq!(s, 422);
}

#[tokio::test]
async fn the_workers_answer_always_lists_workers() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let (s, b) = api
        .call("GET", "/switches/workers/workers", &admin, None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["workers"], json!([]), "{b}");
    assert_eq!(b["total"], 0);
    let (s, _) = api
        .call(
            "POST",
            "/workers/report",
            &admin,
            Some(
                json!({"worker_id": "w1", "switch": "workers", "observed_version": 1,
                "status": "running", "in_flight": 0, "processed_total": 0}),
            ),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = api
        .call("GET", "/switches/workers/workers", &admin, None)
        .await;
    assert_eq!(b["workers"][0]["worker_id"], "w1", "{b}");
}

/// Sends `bytes` on a fresh connection (or `conn`) and reads one whole answer.
async fn exchange(conn: &mut tokio::net::TcpStream, bytes: &[u8]) -> (u16, String, String) {
    // The server may answer (and close) before it has read all of an oversized head.
    let _ = conn.write_all(bytes).await;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
            .await
            .expect("no answer within 10 s")
            .unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse().unwrap())
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status, head, body);
            }
        }
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&buf)
        );
    }
}

fn assert_json_error(status: u16, head: &str, body: &str, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{head}\n\n{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(v["error"]["code"], want_code, "{body}");
    assert!(
        !v["error"]["message"].as_str().unwrap().is_empty(),
        "{body}"
    );
}

/// A request head too large (431) or unreadable (400) gets the same JSON error body as every
/// other error: on a connection's first request, which the server reads itself, and on a later
/// one, which hyper reads.
#[tokio::test]
async fn unreadable_request_heads_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let big = format!(
        "GET /api/v1/switches HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n",
        "y".repeat(40 * 1024)
    );

    // First request of a connection.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (s, head, body) = exchange(&mut c, big.as_bytes()).await;
    assert_json_error(s, &head, &body, 431, "header_too_large");
    assert!(body.contains("8192 bytes"), "{body}");
    // An event-stream request too (those are otherwise answered without hyper).
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let big_stream = big.replace("/api/v1/switches", "/api/v1/events");
    let (s, head, body) = exchange(&mut c, big_stream.as_bytes()).await;
    assert_json_error(s, &head, &body, 431, "header_too_large");

    // A later request on a kept-alive connection.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (s, _, _) = exchange(&mut c, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(s, 200);
    let (s, head, body) = exchange(&mut c, big.as_bytes()).await;
    assert_json_error(s, &head, &body, 431, "header_too_large");

    // Heads that do not parse, first and later.
    let bad = b"GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n";
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (s, head, body) = exchange(&mut c, bad).await;
    assert_json_error(s, &head, &body, 400, "bad_request");
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (s, _, _) = exchange(&mut c, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(s, 200);
    let (s, head, body) = exchange(&mut c, bad).await;
    assert_json_error(s, &head, &body, 400, "bad_request");

    // A well-formed request on a kept-alive connection is still answered as before.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    for _ in 0..3 {
        let (s, head, body) =
            exchange(&mut c, b"GET /api/v1/switches HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_json_error(s, &head, &body, 401, "unauthorized");
    }
}

/// Integers are read as the OpenAPI document states them: `int64` with minimum 0, where JSON
/// Schema counts `2.0` as an integer.
#[tokio::test]
async fn integers_follow_the_documented_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let (s, b) = api
        .call(
            "GET",
            "/switches/workers?after_version=9223372036854775808",
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (400, &json!("bad_request")),
        "{b}"
    );
    let (s, b) = api
        .call(
            "GET",
            "/switches/workers?after_version=9223372036854775807&wait=0",
            &admin,
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = api
        .call("GET", "/audit?before=9223372036854775808", &admin, None)
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({"state": "paused", "expected_version": 1.5})),
        )
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (422, &json!("invalid_value")),
        "{b}"
    );
    let (s, b) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({"state": "paused", "expected_version": 1.0})),
        )
        .await;
    assert_eq!((s, &b["version"]), (200, &json!(2)), "{b}");
}
