//! OFREP over real HTTP: the single-flag and bulk endpoints against a real server on a loopback
//! port, with the statuses and bodies OpenFeature's providers read, scopes, `X-API-Key`,
//! `ETag`/`If-None-Match`, the rate limit's `Retry-After`, and OFREP readers in the worker
//! counts.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use brb_api::Role;
use common::TestServer;
use serde_json::{Value, json};

fn flag_url(s: &TestServer, key: &str) -> String {
    format!("{}/ofrep/v1/evaluate/flags/{key}", s.url)
}

fn bulk_url(s: &TestServer) -> String {
    format!("{}/ofrep/v1/evaluate/flags", s.url)
}

async fn eval(s: &TestServer, token: &str, key: &str) -> (u16, Value) {
    let r = s
        .http
        .post(flag_url(s, key))
        .bearer_auth(token)
        .json(&json!({"context": {"targetingKey": "worker-1", "host": "a"}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "every OFREP answer with a body is JSON"
    );
    (status, r.json().await.unwrap())
}

async fn scoped_token(s: &TestServer, name: &str, switches: &[&str]) -> String {
    let r = s
        .http
        .post(s.api("/tokens"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": name, "role": "viewer", "scope": {"switches": switches}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn create_switch(s: &TestServer, name: &str) {
    let r = s
        .http
        .post(s.api("/switches"))
        .bearer_auth(&s.admin)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn a_switch_is_a_boolean_flag_true_while_work_is_allowed() {
    let s = TestServer::start().await;
    let viewer = s.token("app", Role::Viewer).await;

    let (st, v) = eval(&s, &viewer, "workers").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["key"], "workers");
    assert_eq!(v["value"], true);
    assert_eq!(v["variant"], "running");
    assert_eq!(v["reason"], "STATIC");
    assert_eq!(v["metadata"]["ramp_fraction"], 1.0);
    assert_eq!(v["metadata"]["primary"], true);
    let v0 = v["metadata"]["version"].as_u64().unwrap();

    let (st, _) = s
        .set(
            &s.admin,
            "workers",
            json!({"state": "paused", "reason": "db at 100%"}),
        )
        .await;
    assert_eq!(st, 200);
    // The change is acknowledged only once the hub has it: the very next evaluation sees it.
    let (st, v) = eval(&s, &viewer, "workers").await;
    assert_eq!(st, 200);
    assert_eq!(v["value"], false);
    assert_eq!(v["variant"], "paused");
    assert_eq!(v["metadata"]["state"], "paused");
    assert_eq!(v["metadata"]["ramp_fraction"], 0.0);
    assert_eq!(v["metadata"]["version"], v0 + 1);
    assert_eq!(v["metadata"]["changed_by"], "admin");
    assert_eq!(v["metadata"]["change_reason"], "db at 100%");

    let (st, _) = s
        .set(
            &s.admin,
            "workers",
            json!({"state": "running",
                   "ramp": {"kind": "steps", "fractions": [0.1, 0.5, 1.0], "duration_secs": 600}}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, v) = eval(&s, &viewer, "workers").await;
    assert_eq!(v["value"], true, "a ramp admits some work: allowed");
    assert_eq!(v["variant"], "ramping");
    assert_eq!(v["metadata"]["ramp_fraction"], 0.1);
    assert!(v["metadata"]["ramp_ends_at"].is_string());
}

#[tokio::test]
async fn errors_have_ofreps_shape_and_status() {
    let s = TestServer::start().await;
    let viewer = s.token("app", Role::Viewer).await;

    let (st, v) = eval(&s, &viewer, "no-such-switch").await;
    assert_eq!(st, 404);
    assert_eq!(v["key"], "no-such-switch");
    assert_eq!(v["errorCode"], "FLAG_NOT_FOUND");
    assert!(
        v["errorDetails"]
            .as_str()
            .unwrap()
            .contains("no-such-switch")
    );

    for token in ["brb_0000000000_nope", "garbage"] {
        let (st, v) = eval(&s, token, "workers").await;
        assert_eq!(st, 401, "{v}");
        assert_eq!(v["errorCode"], "GENERAL");
        assert_eq!(v["key"], "workers");
        assert!(!v.to_string().contains("nope"), "the token is not echoed");
    }
    let r = s
        .http
        .post(flag_url(&s, "workers"))
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], "GENERAL");

    for (body, code) in [
        ("{\"context\":", "PARSE_ERROR"),
        ("", "PARSE_ERROR"),
        ("[1]", "PARSE_ERROR"),
        ("{\"context\": 3}", "INVALID_CONTEXT"),
        (
            "{\"context\": {\"targetingKey\": false}}",
            "INVALID_CONTEXT",
        ),
    ] {
        for url in [flag_url(&s, "workers"), bulk_url(&s)] {
            let r = s
                .http
                .post(&url)
                .bearer_auth(&viewer)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{url} {body}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["errorCode"], code, "{url} {body}: {v}");
            assert_eq!(v.get("key").is_some(), !url.ends_with("/flags"));
        }
    }
    // Too large a body is unreadable: 400, the status OFREP lists.
    let big = format!("{{\"context\":{{\"x\":\"{}\"}}}}", "a".repeat(200_000));
    let r = s
        .http
        .post(flag_url(&s, "workers"))
        .bearer_auth(&viewer)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], "PARSE_ERROR");

    // A wrong method is the API's own business: a JSON 405.
    let r = s
        .http
        .get(flag_url(&s, "workers"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn the_api_key_header_carries_the_same_token() {
    let s = TestServer::start().await;
    let viewer = s.token("app", Role::Viewer).await;
    let r = s
        .http
        .post(flag_url(&s, "workers"))
        .header("X-API-Key", &viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["value"], true);
    let r = s
        .http
        .post(bulk_url(&s))
        .header("X-API-Key", "brb_0000000000_nope")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Authorization wins when both are sent: a bad bearer is not rescued by a good key.
    let r = s
        .http
        .post(flag_url(&s, "workers"))
        .bearer_auth("brb_0000000000_nope")
        .header("X-API-Key", &viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_scoped_token_sees_only_its_switches() {
    let s = TestServer::start().await;
    create_switch(&s, "emails").await;
    create_switch(&s, "search").await;
    let scoped = scoped_token(&s, "mailer", &["emails"]).await;

    let (st, v) = eval(&s, &scoped, "emails").await;
    assert_eq!((st, v["value"].clone()), (200, json!(true)));
    let (st, v) = eval(&s, &scoped, "workers").await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["errorCode"], "GENERAL");
    assert_eq!(v["key"], "workers");

    let r = s
        .http
        .post(bulk_url(&s))
        .bearer_auth(&scoped)
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let keys: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["emails"]);

    let r = s
        .http
        .post(bulk_url(&s))
        .bearer_auth(&s.admin)
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let keys: Vec<&str> = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["workers", "emails", "search"]);
    assert_eq!(v["metadata"]["environment"], "local");
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"]
        .as_str()
        .unwrap();
    assert!(uri.starts_with("/ofrep/v1/events?channel="), "{v}");
}

#[tokio::test]
async fn bulk_answers_304_until_a_flag_changes() {
    let s = TestServer::start().await;
    let viewer = s.token("app", Role::Viewer).await;
    let post = |etag: Option<String>| {
        let mut rb = s
            .http
            .post(bulk_url(&s))
            .bearer_auth(&viewer)
            .json(&json!({"context": {"targetingKey": "k"}}));
        if let Some(t) = etag {
            rb = rb.header("If-None-Match", t);
        }
        rb.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 200);
    let tag = r.headers()["etag"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["flags"][0]["value"], true);

    let r = post(Some(tag.clone())).await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), tag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = post(Some(format!("\"stale\", W/{tag}"))).await.unwrap();
    assert_eq!(r.status(), 304, "a list and a weak tag match too");
    let r = post(Some("\"stale\"".into())).await.unwrap();
    assert_eq!(r.status(), 200);

    s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    let r = post(Some(tag.clone())).await.unwrap();
    assert_eq!(r.status(), 200, "the pause changed the answer");
    let new_tag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_tag, tag);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["flags"][0]["value"], false);
    assert_eq!(v["flags"][0]["variant"], "paused");
}

#[tokio::test]
async fn failed_authentications_get_429_with_retry_after() {
    let s = TestServer::start_with(|c| {
        c.abuse.auth_failures_burst = 3.0;
        c.abuse.auth_failures_per_sec = 0.01;
    })
    .await;
    let mut last = None;
    for _ in 0..10 {
        let r = s
            .http
            .post(flag_url(&s, "workers"))
            .bearer_auth("brb_0000000000_nope")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            last = Some(r);
            break;
        }
        assert_eq!(r.status(), 401);
    }
    let r = last.expect("the limit answers 429 within ten failures");
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errorCode"], "GENERAL");
    assert_eq!(v["key"], "workers");
}

/// Reads `workers` events from the all-switches stream until one satisfies `want` (10 s).
async fn workers_event_with(res: reqwest::Response, want: impl Fn(&Value) -> bool) -> bool {
    use futures_util::StreamExt;
    let mut parser = brb_client::sse::Parser::new();
    let mut stream = res.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        for e in parser.feed(&chunk).unwrap() {
            if e.event == "workers" && want(&serde_json::from_str(&e.data).unwrap()) {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn ofrep_readers_are_counted_apart_from_workers() {
    let s = TestServer::start().await;
    let viewer = s.token("app", Role::Viewer).await;
    let events = s
        .http
        .get(s.api("/events"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    for ua in ["python-requests/2.34.2", "node"] {
        let r = s
            .http
            .post(flag_url(&s, "workers"))
            .bearer_auth(&viewer)
            .header("user-agent", ua)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (st, c) = s.get(&s.admin, "/switches/workers/workers").await;
    assert_eq!(st, 200);
    assert_eq!(c["total"], 0, "OFREP readers are not workers");
    assert_eq!(c["unacknowledged"]["readers"], 2);
    assert_eq!(c["unacknowledged"]["served_current"], 2);
    assert_eq!(c["unacknowledged"]["window_secs"], 60);

    // The workers event says so too (the first may have come between the two readers).
    assert!(
        workers_event_with(events, |c| c["unacknowledged"]["readers"] == 2).await,
        "a workers event counts both readers"
    );

    // After a pause, none was told it until one asks again.
    s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    let (_, c) = s.get(&s.admin, "/switches/workers/workers").await;
    assert_eq!(c["unacknowledged"]["served_current"], 0);
    let r = s
        .http
        .post(bulk_url(&s))
        .bearer_auth(&viewer)
        .header("user-agent", "node")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, c) = s.get(&s.admin, "/switches/workers/workers").await;
    assert_eq!(c["unacknowledged"]["readers"], 2);
    assert_eq!(c["unacknowledged"]["served_current"], 1);
}

/// An open OFREP event stream, read event by event.
struct Events {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>>>,
    parser: brb_client::sse::Parser,
    queue: std::collections::VecDeque<brb_client::sse::Event>,
}

impl Events {
    async fn open(s: &TestServer, request_uri: &str) -> Events {
        // No Authorization header: a browser's EventSource sends none.
        let r = s
            .http
            .get(format!("{}{request_uri}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Events {
            stream: Box::pin(r.bytes_stream()),
            parser: brb_client::sse::Parser::new(),
            queue: Default::default(),
        }
    }

    /// The next event's data, or None when the stream ended or 10 s passed.
    async fn next(&mut self) -> Option<Value> {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.queue.pop_front() {
                assert_eq!(e.event, "message", "OFREP events are `message`");
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(v["type"], "refetchEvaluation");
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.queue.extend(self.parser.feed(&chunk).unwrap()),
                _ => return None,
            }
        }
    }
}

/// The bulk answer for `token`: its body and ETag.
async fn bulk(s: &TestServer, token: &str) -> (Value, String) {
    let r = s
        .http
        .post(bulk_url(s))
        .bearer_auth(token)
        .json(&json!({"context": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tag = r.headers()["etag"].to_str().unwrap().to_string();
    (r.json().await.unwrap(), tag)
}

#[tokio::test]
async fn the_event_stream_tells_bulk_readers_to_refetch() {
    let s = TestServer::start().await;
    let viewer = s.token("browser", Role::Viewer).await;
    let (v, tag) = bulk(&s, &viewer).await;
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(v["eventStreams"][0]["type"], "sse");
    let mut events = Events::open(&s, &uri).await;
    // At once: the server cannot know what was fetched before the stream opened.
    assert_eq!(events.next().await.unwrap()["etag"], tag);

    s.set(&s.admin, "workers", json!({"state": "paused"})).await;
    let e = events.next().await.expect("a notification after the pause");
    let (v, new_tag) = bulk(&s, &viewer).await;
    assert_eq!(e["etag"], new_tag, "the event names the answer to fetch");
    assert_ne!(new_tag, tag);
    assert_eq!(v["flags"][0]["value"], false);

    // A ramp's end changes the variant without a new version: it is notified too.
    s.set(
        &s.admin,
        "workers",
        json!({"state": "running",
               "ramp": {"kind": "linear", "from": 0.5, "duration_secs": 1}}),
    )
    .await;
    events.next().await.expect("the resume");
    let e = events.next().await.expect("the ramp's end");
    let (v, tag) = bulk(&s, &viewer).await;
    assert_eq!(v["flags"][0]["variant"], "running");
    assert_eq!(e["etag"], tag);

    // The channel opens nothing else, and dies with its token.
    let channel = uri.split("channel=").nth(1).unwrap().to_string();
    let (st, _) = eval(&s, &channel, "workers").await;
    assert_eq!(st, 401, "a channel is not a token");
    let id = channel.split('.').next().unwrap().to_string();
    let r = s
        .http
        .delete(s.api(&format!("/tokens/{id}")))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        events.next().await.is_none(),
        "the stream ends with its token"
    );
    let r = s.http.get(format!("{}{uri}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["errorCode"], "GENERAL");
}

#[tokio::test]
async fn a_graceful_shutdown_ends_open_event_streams() {
    let s = TestServer::start().await;
    let (v, _) = bulk(&s, &s.admin).await;
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = Events::open(&s, &uri).await;
    events.next().await.unwrap();
    let took = s.stop().await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert!(events.next().await.is_none(), "the stream ended");
}

#[tokio::test]
async fn a_scoped_stream_is_told_only_of_its_switches() {
    let s = TestServer::start().await;
    create_switch(&s, "emails").await;
    create_switch(&s, "search").await;
    let scoped = scoped_token(&s, "mailer", &["emails"]).await;
    let (v, tag) = bulk(&s, &scoped).await;
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = Events::open(&s, &uri).await;
    assert_eq!(events.next().await.unwrap()["etag"], tag);
    s.set(&s.admin, "search", json!({"state": "paused"})).await;
    s.set(&s.admin, "emails", json!({"state": "paused"})).await;
    // Had the change to `search` been notified, this event would carry the old tag.
    let e = events.next().await.unwrap();
    let (v, new_tag) = bulk(&s, &scoped).await;
    assert_eq!(e["etag"], new_tag);
    assert_eq!(v["flags"][0]["value"], false);
}

#[tokio::test]
async fn bad_channels_are_refused() {
    let s = TestServer::start().await;
    let viewer = s.token("browser", Role::Viewer).await;
    let (v, _) = bulk(&s, &viewer).await;
    let uri = v["eventStreams"][0]["endpoint"]["requestUri"]
        .as_str()
        .unwrap()
        .to_string();
    let mut forged = uri.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for path in [
        "/ofrep/v1/events".to_string(),
        "/ofrep/v1/events?channel=".to_string(),
        "/ofrep/v1/events?channel=nodot".to_string(),
        "/ofrep/v1/events?channel=0000000000.zz".to_string(),
        forged,
    ] {
        let r = s.http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errorCode"], "GENERAL", "{path}");
    }
    // A rotation makes the old channel outdated; the next bulk answer has the new one.
    let id = uri
        .split("channel=")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let r = s
        .http
        .post(s.api(&format!("/tokens/{id}/rotate")))
        .bearer_auth(&s.admin)
        .json(&json!({"grace_secs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new_secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s.http.get(format!("{}{uri}", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (v, _) = bulk(&s, &new_secret).await;
    let new_uri = v["eventStreams"][0]["endpoint"]["requestUri"]
        .as_str()
        .unwrap();
    assert_ne!(new_uri, uri);
    Events::open(&s, new_uri).await.next().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_covers_ofrep() {
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
    for p in ["/ofrep/v1/evaluate/flags", "/ofrep/v1/evaluate/flags/{key}"] {
        let op = &doc["paths"][p]["post"];
        assert!(op.is_object(), "{p} documented");
        for status in ["200", "400", "401", "429"] {
            assert!(op["responses"][status].is_object(), "{p} {status}");
        }
    }
    assert!(doc["paths"]["/ofrep/v1/evaluate/flags"]["post"]["responses"]["304"].is_object());
    assert!(doc["paths"]["/ofrep/v1/events"]["get"]["responses"]["200"].is_object());
    assert!(doc["paths"]["/ofrep/v1/evaluate/flags/{key}"]["post"]["responses"]["404"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
}
