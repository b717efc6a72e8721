//! The two ways an event stream reaches the wire (`net.rs`), over raw sockets: written directly
//! when it is a connection's first request, through hyper when it follows another request on a
//! keep-alive connection. Both must carry the same events with correct HTTP/1.1 framing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until `needle` shows up in what arrived (or fails after 5 s); returns all of it.
async fn read_until(sock: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(seen).into_owned();
        if text.contains(needle) {
            return text;
        }
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, sock.read(&mut b))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 5 s; got:\n{text}"))
            .unwrap();
        assert!(n > 0, "closed before {needle:?}; got:\n{text}");
        seen.extend_from_slice(&b[..n]);
    }
}

fn stream_request(path: &str, token: &str) -> String {
    format!("GET /api/v1{path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n")
}

#[tokio::test]
async fn a_first_request_stream_is_written_directly_with_chunked_framing() {
    let s = TestServer::start().await;
    let mut sock = connect(&s).await;
    sock.write_all(stream_request("/switches/workers/events", &s.admin).as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let head = read_until(&mut sock, &mut seen, "\"version\":1").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    // Hyper adds a `date:` header; the direct writer does not. That is how this test knows
    // which path answered.
    assert!(!head.contains("date:"), "not the direct path: {head}");
    // `retry: 1000\n\n` is 13 bytes: one chunk.
    assert!(head.contains("\r\n\r\nd\r\nretry: 1000\n\n\r\n"), "{head}");

    let (st, _) = s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    assert_eq!(st, 200);
    let text = read_until(&mut sock, &mut seen, "\"version\":2").await;
    let frame = text.rsplit("\r\n").nth(1).unwrap();
    assert!(frame.starts_with("event: switch\nid: 2\n"), "{frame:?}");
    // The chunk-size line before it matches its length.
    let size_line = text.rsplit("\r\n").nth(2).unwrap();
    assert_eq!(usize::from_str_radix(size_line, 16).unwrap(), frame.len());

    // Graceful shutdown ends the body properly (last chunk) and closes the socket.
    let stop = tokio::spawn(s.stop());
    read_until(&mut sock, &mut seen, "\r\n0\r\n\r\n").await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert!(stop.await.unwrap() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_stream_after_another_request_goes_through_hyper_and_works_the_same() {
    let s = TestServer::start().await;
    let mut sock = connect(&s).await;
    sock.write_all(
        format!(
            "GET /api/v1/switches/workers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
            s.admin
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    read_until(&mut sock, &mut seen, "\"primary\":true").await;
    seen.clear();
    sock.write_all(stream_request("/events", &s.admin).as_bytes())
        .await
        .unwrap();
    let head = read_until(&mut sock, &mut seen, "event: switch").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("date:"), "not hyper: {head}");
    let (st, _) = s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    assert_eq!(st, 200);
    read_until(&mut sock, &mut seen, "\"state\":\"paused\"").await;
}

#[tokio::test]
async fn refusals_on_the_direct_path_are_json_and_close_the_connection() {
    let s = TestServer::start().await;
    for (req, status, code) in [
        (
            stream_request("/events", "brb_nope_nope"),
            "401",
            "unauthorized",
        ),
        (
            stream_request("/switches/nope/events", &s.admin),
            "404",
            "not_found",
        ),
    ] {
        let mut sock = connect(&s).await;
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut all))
            .await
            .expect("the connection closes after the answer")
            .unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], code, "{text}");
    }
}

#[tokio::test]
async fn a_client_that_sends_more_or_hangs_up_frees_its_stream() {
    // One stream per token: the slot must come back when the client misbehaves or leaves.
    let s = TestServer::start_with(|c| c.abuse.max_streams_per_token = 1).await;
    let viewer = s.token("dash", brb_api::Role::Viewer).await;
    for ending in ["sends bytes", "hangs up"] {
        let mut sock = connect(&s).await;
        sock.write_all(stream_request("/switches/workers/events", &viewer).as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        read_until(&mut sock, &mut seen, "event: switch").await;
        // The slot is taken.
        let (st, b) = s.get(&viewer, "/switches/workers/events").await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (429, Some("too_many_streams"))
        );
        if ending == "sends bytes" {
            sock.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest))
                .await
                .expect("the server closes a stream whose client sends more")
                .unwrap();
        }
        drop(sock);
        let t = std::time::Instant::now();
        loop {
            let mut probe = connect(&s).await;
            probe
                .write_all(stream_request("/switches/workers/events", &viewer).as_bytes())
                .await
                .unwrap();
            let mut b = [0u8; 64];
            let n = probe.read(&mut b).await.unwrap();
            if b[..n].starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{ending}: slot never freed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An answer given without reading the request's body (401 before the body was looked at,
/// 413 for one too large) says `connection: close` and closes: hyper will not read a body
/// nobody wanted, and a client that reused the connection would write its next request into
/// a closed socket. An answer after the body was read keeps the connection for the next one.
#[tokio::test]
async fn an_answer_that_left_the_body_unread_closes_the_connection_and_says_so() {
    let s = TestServer::start().await;
    let put = |token: &str, body: &str| {
        format!(
            "PUT /api/v1/switches/workers/state HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let big = format!(
        "{{\"state\":\"paused\",\"reason\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    for (req, status) in [
        (put("brb_nope_nope", r#"{"state":"paused"}"#), "401"),
        (put(&s.admin, &big), "413"),
    ] {
        let mut sock = connect(&s).await;
        // The answer may come before the whole body is sent; a write error then is fine.
        let _ = sock.write_all(req.as_bytes()).await;
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut all))
            .await
            .expect("the server closes the connection after the answer");
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{text:.300}"
        );
        let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{head}");
    }
    // Read to the end: the connection stays for the next request.
    let mut sock = connect(&s).await;
    let mut seen = Vec::new();
    sock.write_all(put(&s.admin, r#"{"state":"paused"}"#).as_bytes())
        .await
        .unwrap();
    let first = read_until(&mut sock, &mut seen, "\"state\":\"paused\"").await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    seen.clear();
    sock.write_all(put(&s.admin, r#"{"state":"running"}"#).as_bytes())
        .await
        .unwrap();
    let second = read_until(&mut sock, &mut seen, "\"state\":\"running\"").await;
    assert!(second.starts_with("HTTP/1.1 200 "), "{second}");
}
