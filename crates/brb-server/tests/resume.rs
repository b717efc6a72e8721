//! A watcher that resumes, however far behind, ends at the committed state: over real HTTP,
//! on each way a stream reaches the wire (the fan-out threads for a switch stream that is its
//! connection's first request, a stream's own task for `/events`, hyper for a stream after
//! another request on a keep-alive connection).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use brb_client::chunked::ChunkDecoder;
use brb_client::sse::{Event, Parser};
use common::TestServer;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Toggles the primary switch until it is at `version` (it starts at 1, running).
async fn toggle_to(s: &TestServer, version: u64) {
    let mut v = s.get(&s.admin, "/switches/workers").await.1["version"]
        .as_u64()
        .unwrap();
    while v < version {
        let to = if v % 2 == 1 { "paused" } else { "running" };
        let (st, b) = s.set(&s.admin, "workers", json!({"state": to})).await;
        assert_eq!(st, 200, "{b}");
        v = b["version"].as_u64().unwrap();
    }
}

/// One event stream read over a raw socket: the response head, then chunked SSE.
struct RawStream {
    sock: TcpStream,
    head: String,
    buf: Vec<u8>,
    chunks: ChunkDecoder,
    parser: Parser,
    events: Vec<Event>,
}

impl RawStream {
    /// `after_other_request`: first a plain GET on the same connection, so the stream goes
    /// through hyper rather than being served directly.
    async fn open(s: &TestServer, path: &str, last_id: u64, after_other_request: bool) -> Self {
        let mut sock = TcpStream::connect(s.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let mut buf = Vec::new();
        if after_other_request {
            sock.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            loop {
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n")
                    && head.contains("content-length")
                    && body.ends_with('}')
                {
                    break;
                }
                read_more(&mut sock, &mut buf).await;
            }
            buf.clear();
        }
        let req = format!(
            "GET /api/v1{path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             last-event-id: {last_id}\r\n\r\n",
            s.admin
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let head = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                buf.drain(..i + 4);
                break head;
            }
            read_more(&mut sock, &mut buf).await;
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            head.contains("date:"),
            after_other_request,
            "hyper adds a date header, the direct writers do not: {head}"
        );
        RawStream {
            sock,
            head,
            buf,
            chunks: ChunkDecoder::new(),
            parser: Parser::new(),
            events: Vec::new(),
        }
    }

    /// Reads until an event satisfies `done`; returns every event so far.
    async fn until(&mut self, done: impl Fn(&Event) -> bool) -> &[Event] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut payload = Vec::new();
            let used = self
                .chunks
                .decode(&self.buf, |p| payload.extend_from_slice(p))
                .unwrap();
            self.buf.drain(..used);
            self.events.extend(self.parser.feed(&payload).unwrap());
            if self.events.iter().any(&done) {
                return &self.events;
            }
            assert!(
                !self.chunks.is_done(),
                "the stream ended: {:?}",
                names(&self.events)
            );
            tokio::time::timeout_at(deadline, read_more(&mut self.sock, &mut self.buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "nothing more within 30 s ({}); events: {:?}",
                        self.head.lines().next().unwrap_or(""),
                        names(&self.events)
                    )
                });
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut b = [0u8; 16384];
    let n = sock.read(&mut b).await.unwrap();
    assert!(n > 0, "the server closed the connection");
    buf.extend_from_slice(&b[..n]);
}

fn names(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .map(|e| format!("{}#{}", e.event, e.id.as_deref().unwrap_or("-")))
        .collect();
    if v.len() > 12 {
        v.drain(6..v.len() - 6);
    }
    v
}

fn data(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

/// The case: 1,501 toggles behind. The stream must end at version 1,502 (paused),
/// say that it skipped, and carry nothing older after the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_stream_far_behind_ends_at_the_current_version() {
    let s = TestServer::start().await;
    toggle_to(&s, 1502).await;
    for via_hyper in [false, true] {
        let (_, now) = s.get(&s.admin, "/switches/workers").await;
        let current = now["version"].as_u64().unwrap();
        let want = current.to_string();
        let mut st = RawStream::open(&s, "/switches/workers/events", 1, via_hyper).await;
        let events = st
            .until(|e| e.event == "switch" && e.id.as_deref() == Some(&want))
            .await
            .to_vec();
        let switches: Vec<&Event> = events.iter().filter(|e| e.event == "switch").collect();
        assert_eq!(
            switches.len(),
            1,
            "via hyper {via_hyper}: {:?}",
            names(&events)
        );
        assert_eq!(data(switches[0]), now, "the current state, as GET has it");
        let resync = events
            .iter()
            .find(|e| e.event == "resync")
            .expect("a resync event");
        assert_eq!(resync.id, None, "a resync is not a change: no id");
        assert_eq!(
            data(resync),
            json!({"after": 1, "current": current, "reason": "too_far_behind"})
        );
        // And it stays live: the next change arrives.
        toggle_to(&s, current + 1).await;
        let next = (current + 1).to_string();
        st.until(|e| e.id.as_deref() == Some(&next)).await;
    }
    let (_, now) = s.get(&s.admin, "/switches/workers").await;
    assert_eq!(now["version"], 1504);
}

/// Within the replay limit every step is replayed, in order, up to the current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_stream_within_the_limit_replays_every_step_to_the_current_version() {
    let s = TestServer::start().await;
    toggle_to(&s, 1502).await;
    for via_hyper in [false, true] {
        let mut st = RawStream::open(&s, "/switches/workers/events", 502, via_hyper).await;
        let events = st.until(|e| e.id.as_deref() == Some("1502")).await;
        let ids: Vec<u64> = events
            .iter()
            .filter(|e| e.event == "switch")
            .map(|e| e.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            ids,
            (503..=1502).collect::<Vec<_>>(),
            "via hyper {via_hyper}"
        );
        assert!(events.iter().all(|e| e.event != "resync"));
    }
}

/// The all-switches stream counts audit ids: far behind, it ends at the current state of
/// every switch (and says so, so a console reloads its picture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_switches_stream_far_behind_ends_at_the_current_state() {
    let s = TestServer::start().await;
    let first = s.get(&s.admin, "/audit?limit=1").await.1["entries"][0]["id"]
        .as_u64()
        .unwrap();
    toggle_to(&s, 1502).await;
    let last_id = s.get(&s.admin, "/audit?limit=1").await.1["entries"][0]["id"]
        .as_u64()
        .unwrap();
    for via_hyper in [false, true] {
        let mut st = RawStream::open(&s, "/events", first, via_hyper).await;
        let want = last_id.to_string();
        let events = st
            .until(|e| e.event == "switch" && e.id.as_deref() == Some(&want))
            .await;
        let last = events.iter().rev().find(|e| e.event == "switch").unwrap();
        assert_eq!(data(last)["version"], 1502);
        assert_eq!(data(last)["state"], "paused");
        assert!(
            events.iter().any(|e| e.event == "resync"),
            "{:?}",
            names(events)
        );
    }
}
