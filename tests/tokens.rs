//! Token lifecycle and abuse limits against the real `brb server`: expiry, rotation with a
//! grace period, revocation cutting live streams, scoped tokens, last use, rate limits for
//! failed authentication and for changes, the per-token stream cap, body and header limits; and
//! no secret in any log line or error the tests capture.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use brb_api::{CreateTokenRequest, Role, TokenScope};
use brb_e2e::calls::error_code as code;
use brb_e2e::{Api, ServerProc, SseStream, cli, metric, wait_for};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// What these tests ask of the API beyond a plain call.
trait TokenApi {
    async fn get(&self, path: &str, token: &str) -> (u16, Value);
    async fn put_state(&self, switch: &str, token: &str, state: &str) -> (u16, Value);
    async fn stream(&self, path: &str, token: &str) -> SseStream;
}

impl TokenApi for Api {
    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, v) = self.call("GET", path, token, None).await;
        (s, v)
    }

    async fn put_state(&self, switch: &str, token: &str, state: &str) -> (u16, Value) {
        let (s, v, _) = self
            .call_with_headers(
                "PUT",
                &format!("/switches/{switch}/state"),
                token,
                Some(json!({ "state": state })),
            )
            .await;
        (s, v)
    }

    /// Opens an SSE stream and waits for its first event (the state it starts from).
    async fn stream(&self, path: &str, token: &str) -> SseStream {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "stream refused");
        let mut s = SseStream::new(res);
        s.wait_event(Duration::from_secs(10), "the first event", |_| true)
            .await;
        s
    }
}

/// Waits until `stream` ends with its terminating chunk (not a cut connection, not silence);
/// returns the wall-clock time it was seen ending.
async fn ended_at(stream: &mut SseStream, limit: Duration) -> DateTime<Utc> {
    stream.wait_end(limit).await;
    Utc::now()
}

/// The switch event for `version` on a switch stream.
fn is_version(ev: &brb_client::sse::Event, version: u64) -> bool {
    ev.event == "switch"
        && serde_json::from_str::<Value>(&ev.data)
            .is_ok_and(|v| v["version"].as_u64() == Some(version))
}

async fn create(
    server: &ServerProc,
    name: &str,
    role: Role,
    expires_in: Option<Duration>,
    scope: Option<TokenScope>,
) -> (String, String) {
    let t = create_full(server, name, role, expires_in, scope).await;
    (t.token.id, t.secret)
}

async fn create_full(
    server: &ServerProc,
    name: &str,
    role: Role,
    expires_in: Option<Duration>,
    scope: Option<TokenScope>,
) -> brb_api::CreatedToken {
    server
        .client()
        .create_token(&CreateTokenRequest {
            name: name.into(),
            role,
            expires_at: expires_in.map(|d| Utc::now() + d),
            scope,
        })
        .await
        .unwrap()
}

/// How late after `deadline` a stream may end: the server's timer, one write, and a loaded
/// machine. Never earlier than the deadline: that is the rule.
const LATE: chrono::TimeDelta = chrono::TimeDelta::seconds(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_ends_access_and_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let t = create_full(
        &server,
        "short",
        Role::Viewer,
        Some(Duration::from_secs(2)),
        None,
    )
    .await;
    let (expires, secret) = (t.token.expires_at.unwrap(), t.secret);
    assert_eq!(api.get("/switches/workers", &secret).await.0, 200);
    let mut stream = api.stream("/switches/workers/events", &secret).await;
    assert!(
        Utc::now() < expires,
        "the machine took 2 s to open a stream"
    );
    // The stream ends at the expiry: not before it, and not long after.
    let ended = ended_at(&mut stream, Duration::from_secs(8)).await;
    assert!(
        ended >= expires,
        "ended {} before the expiry",
        expires - ended
    );
    assert!(
        ended <= expires + LATE,
        "ended {} after the expiry",
        ended - expires
    );
    let (status, body) = api.get("/switches/workers", &secret).await;
    assert_eq!((status, code(&body)), (401, "token_expired"), "{body}");
    assert!(
        !body.to_string().contains(&secret[10..]),
        "error echoes the secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let (id, old) = create(&server, "ci", Role::Operator, None, None).await;
    let home = dir.path().join("home");
    let admin = server.admin_token();
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN", admin.as_str()),
    ];
    let out = cli(&home, &env, &["token", "rotate", &id, "--grace", "3s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new = stdout
        .lines()
        .find(|l| l.starts_with(&format!("brb_{id}_")))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new, old);
    // Both work inside the grace period; a stream on the old secret ends when it does.
    let grace_end = server
        .client()
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == id)
        .and_then(|t| t.previous_secret_valid_until)
        .expect("the rotated token says until when the old secret works");
    assert_eq!(api.get("/switches/workers", &old).await.0, 200);
    assert_eq!(api.get("/switches/workers", &new).await.0, 200);
    let mut old_stream = api.stream("/switches/workers/events", &old).await;
    let mut new_stream = api.stream("/switches/workers/events", &new).await;
    assert!(
        Utc::now() < grace_end,
        "the machine took 3 s to open two streams"
    );
    let ended = ended_at(&mut old_stream, Duration::from_secs(10)).await;
    assert!(
        ended >= grace_end,
        "ended {} before the grace period",
        grace_end - ended
    );
    assert!(
        ended <= grace_end + LATE,
        "ended {} after the grace period",
        ended - grace_end
    );
    let (status, body) = api.get("/switches/workers", &old).await;
    assert_eq!((status, code(&body)), (401, "token_expired"), "{body}");
    assert_eq!(api.get("/switches/workers", &new).await.0, 200);
    // The stream on the new secret is untouched: it delivers the next change.
    let (s, v) = api.put_state("workers", &admin, "paused").await;
    assert_eq!(s, 200, "{v}");
    let version = v["version"].as_u64().unwrap();
    new_stream
        .wait_event(
            Duration::from_secs(10),
            "the change on the new secret's stream",
            |e| is_version(e, version),
        )
        .await;
    // The audit has the rotation, without either secret.
    let (_, audit) = api.get("/audit?limit=5", &admin).await;
    let text = audit.to_string();
    assert!(text.contains("token_rotated"), "{text}");
    assert!(!text.contains(&old[10..]) && !text.contains(&new[10..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_live_streams_and_long_polls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let (id, secret) = create(&server, "fleet", Role::Viewer, None, None).await;
    let mut sse = api.stream("/switches/workers/events", &secret).await;
    let mut all = api.stream("/events", &secret).await;
    let poll = {
        let http = api.http.clone();
        let url = format!("{}/switches/workers?after_version=999999&wait=30", api.base);
        let secret = secret.clone();
        tokio::spawn(async move {
            let r = http.get(url).bearer_auth(secret).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap(),
                Utc::now(),
            )
        })
    };
    // The long-poll must be waiting inside the server before the revocation, or it would be
    // refused at the door and prove nothing about cutting a waiting request.
    let long_polls = r#"brb_watchers{kind="long_poll"}"#;
    wait_for(Duration::from_secs(10), "the long-poll waiting", || async {
        (metric(&api.http, &server.url, long_polls).await == Some(1.0)).then_some(())
    })
    .await;
    let revoked_at = Utc::now();
    server.client().revoke_token(&id).await.unwrap();
    let limit = chrono::TimeDelta::seconds(2);
    assert!(ended_at(&mut sse, Duration::from_secs(5)).await - revoked_at < limit);
    assert!(ended_at(&mut all, Duration::from_secs(5)).await - revoked_at < limit);
    let (status, body, answered) = poll.await.unwrap();
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("while waiting"),
        "refused at the door, not cut while waiting: {body}"
    );
    assert!(answered - revoked_at < limit, "{}", answered - revoked_at);
    assert_eq!(metric(&api.http, &server.url, long_polls).await, Some(0.0));
    let (status, body) = api.get("/switches/workers", &secret).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_reach_only_their_switches_and_direction() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let (s, _, _) = api
        .call_with_headers(
            "POST",
            "/switches",
            &admin,
            Some(json!({"name": "emails", "description": "outgoing mail"})),
        )
        .await;
    assert_eq!(s, 201);
    let home = dir.path().join("home");
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN", admin.as_str()),
    ];
    let out = cli(
        &home,
        &env,
        &[
            "token",
            "create",
            "office-button",
            "--role",
            "operator",
            "--switches",
            "workers",
            "--pause-only",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let button = created["secret"].as_str().unwrap().to_string();
    assert_eq!(created["scope"]["switches"], json!(["workers"]));

    assert_eq!(api.put_state("workers", &button, "paused").await.0, 200);
    let (s, b) = api.put_state("workers", &button, "running").await;
    assert_eq!((s, code(&b)), (403, "out_of_scope"), "{b}");
    let (s, b) = api.put_state("emails", &button, "paused").await;
    assert_eq!((s, code(&b)), (403, "out_of_scope"), "{b}");
    let (s, b) = api.get("/switches/emails", &button).await;
    assert_eq!((s, code(&b)), (403, "out_of_scope"));
    let (s, b) = api.get("/switches", &button).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = b["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["workers"]);
    assert_eq!(api.get("/events", &button).await.0, 403);
    assert_eq!(api.get("/audit", &button).await.0, 403);
    assert_eq!(api.get("/audit?switch=workers", &button).await.0, 200);
    assert_eq!(api.get("/tokens", &button).await.0, 403);
    // The admin resumes; the button's pause stands in the audit with its name.
    assert_eq!(api.put_state("workers", &admin, "running").await.0, 200);

    // Last use is shown, with the address.
    let out = cli(&home, &env, &["token", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    let line = list.lines().find(|l| l.contains("office-button")).unwrap();
    assert!(line.contains("only workers (pause only)"), "{line}");
    assert!(
        line.contains("last used") && line.contains("from 127.0.0.1"),
        "{line}"
    );
    for secret in [&button, &admin] {
        assert!(!list.contains(&secret[10..]), "token list shows a secret");
    }
    // Nothing the server logged carries a secret.
    let log = server.log();
    assert!(log.contains("token created"), "log not captured?");
    for secret in [&button, &admin] {
        assert!(
            !log.contains(&secret[10..]),
            "a secret is in the server log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_floods_get_429_while_legitimate_clients_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[("BRB_AUTH_FAILURES_BURST", "20")],
    );
    let api = Api::new(&server);
    let admin = server.admin_token();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    // The address's budget is created full at its first failure: within the time T the
    // flood takes, at most 20 + 0.5·T failures may be answered 401 (burst 20, 0.5 a second).
    let t0 = Instant::now();
    for i in 0..40 {
        let bad = format!("brb_{i:010x}_{}", "0".repeat(64));
        let (s, _, h) = api.call_with_headers("GET", "/switches", &bad, None).await;
        if s == 429 && retry_after.is_none() {
            retry_after = h
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(s);
    }
    let took = t0.elapsed().as_secs_f64();
    assert!(
        statuses.iter().all(|s| [401, 429].contains(s)),
        "{statuses:?}"
    );
    let first_429 = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("never limited");
    assert!(first_429 >= 20, "limited before the burst: {statuses:?}");
    let passed = statuses.iter().filter(|s| **s == 401).count();
    let allowed = 20 + (0.5 * took).floor() as usize;
    assert!(
        passed <= allowed,
        "{passed} answered 401 in {took:.2} s, at most {allowed} allowed: {statuses:?}"
    );
    assert!(retry_after.unwrap().parse::<u64>().unwrap() >= 1);
    // The legitimate client at the same address is unaffected.
    for _ in 0..5 {
        assert_eq!(api.get("/switches", &admin).await.0, 200);
    }
    assert!(
        server
            .log()
            .contains("authentication failures over the limit")
    );
}

/// Asks to resume `workers`, pausing it first if it runs (a pause is never limited: it must
/// pass, and it is counted in `pauses`). Returns the resume's status and, on a 429, its
/// Retry-After.
async fn flip(
    api: &Api,
    admin: &str,
    state: &mut &'static str,
    pauses: &mut usize,
) -> (u16, Option<u64>) {
    if *state == "running" {
        let (s, v) = api
            .call(
                "PUT",
                "/switches/workers/state",
                admin,
                Some(json!({ "state": "paused" })),
            )
            .await;
        assert_eq!(s, 200, "a pause was refused: {v}");
        *state = "paused";
        *pauses += 1;
    }
    let (s, v, h) = api
        .call_with_headers(
            "PUT",
            "/switches/workers/state",
            admin,
            Some(json!({ "state": "running" })),
        )
        .await;
    match s {
        200 => {
            *state = "running";
            (s, None)
        }
        429 => {
            assert_eq!(code(&v), "rate_limited", "{v}");
            let ra = h
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            (s, Some(ra.expect("Retry-After on a 429")))
        }
        _ => panic!("unexpected {s}: {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_and_streams_are_capped_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("brb.toml");
    std::fs::write(
        &cfg,
        "[abuse]\nmax_streams_per_token = 3\nheader_read_timeout_secs = 1\n",
    )
    .unwrap();
    let cfg_s = cfg.display().to_string();
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            ("BRB_CONFIG", cfg_s.as_str()),
            ("BRB_CHANGES_PER_SEC", "1"),
            ("BRB_CHANGES_BURST", "5"),
        ],
    );
    let api = Api::new(&server);
    let admin = server.admin_token();
    // State changes: a burst of 5, then 429 with Retry-After, then one more a second. The
    // budgets are created full at the first change, so within the time T from just before it,
    // at most 5 + 1·T resumes can pass, whatever the machine's speed; and a refused change
    // writes nothing. The pauses between them are never limited (tests/approval.rs).
    let t0 = Instant::now();
    let mut state = "running";
    let mut pauses = 0;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let (s, ra) = flip(&api, &admin, &mut state, &mut pauses).await;
        statuses.push(s);
        retry_after = retry_after.or(ra);
    }
    let burst_took = t0.elapsed().as_secs_f64();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        passed <= 5 + burst_took.floor() as usize,
        "{passed} changes passed in {burst_took:.2} s: {statuses:?}"
    );
    assert!(statuses.contains(&429), "never limited: {statuses:?}");
    assert!(retry_after.unwrap() >= 1);
    // It refills: a change passes again within about a second of the first refusal.
    let first_refusal = Instant::now();
    let before = statuses.iter().filter(|s| **s == 200).count();
    while statuses.iter().filter(|s| **s == 200).count() == before {
        assert!(
            first_refusal.elapsed() < Duration::from_secs(4),
            "never refilled: {statuses:?}"
        );
        statuses.push(flip(&api, &admin, &mut state, &mut pauses).await.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        passed <= 5 + took.floor() as usize,
        "{passed} changes passed in {took:.2} s: {statuses:?}"
    );
    let (_, sw) = api.get("/switches/workers", &admin).await;
    assert_eq!(
        sw["version"].as_u64(),
        Some(1 + (passed + pauses) as u64),
        "a refused change wrote something: {statuses:?}"
    );

    // Streams: three per token, the fourth refused; closing one frees a slot.
    let (_, viewer) = create(&server, "dash", Role::Viewer, None, None).await;
    let s1 = api.stream("/switches/workers/events", &viewer).await;
    let _s2 = api.stream("/switches/workers/events", &viewer).await;
    let _s3 = api.stream("/events", &viewer).await;
    let (s, b) = api.get("/switches/workers/events", &viewer).await;
    assert_eq!((s, code(&b)), (429, "too_many_streams"), "{b}");
    drop(s1);
    let t = Instant::now();
    loop {
        let res = api
            .http
            .get(format!("{}/switches/workers/events", api.base))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Oversized body: 413 JSON. Oversized headers: 431.
    let big = "x".repeat(200 * 1024);
    let (s, b, _) = api
        .call_with_headers(
            "PUT",
            "/switches/workers/state",
            &admin,
            Some(json!({"state": "paused", "reason": big})),
        )
        .await;
    assert_eq!((s, code(&b)), (413, "payload_too_large"), "{b}");
    let res = api
        .http
        .get(format!("{}/switches", api.base))
        .bearer_auth(&admin)
        .header("x-padding", "y".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 431);

    // Slowloris: a connection that never finishes its request head is closed after the
    // header-read timeout (1 s), not before, while an event stream older than it keeps
    // flowing: it delivers a change made after the slow connection was cut.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut live = api.stream("/switches/workers/events", &admin).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let connected = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /api/v1/switches HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // hyper may answer 408 before closing; either way the socket ends (read returns 0).
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf))
        .await
        .expect("slow connection was never closed")
        .ok();
    let cut_after = connected.elapsed();
    assert!(
        cut_after >= Duration::from_secs(1) && cut_after < Duration::from_secs(4),
        "slow connection closed after {cut_after:?}"
    );
    let (s, v) = api.put_state("workers", &admin, "paused").await;
    assert_eq!(s, 200, "{v}");
    let version = v["version"].as_u64().unwrap();
    live.wait_event(
        Duration::from_secs(5),
        "the change on the stream older than the slow connection",
        |e| is_version(e, version),
    )
    .await;
}
