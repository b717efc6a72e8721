//! Token lifecycle and abuse limits against the real `brb server`: expiry, rotation with a
//! grace period, revocation cutting live streams, scoped tokens, last use, rate limits for
//! failed authentication and for changes, the per-token stream cap, body and header limits; and
//! no secret in any log line or error the tests capture.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use brb_api::{CreateTokenRequest, Role, TokenScope};
use brb_e2e::{ServerProc, cli};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &ServerProc) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("{}/api/v1", server.url),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let v = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, v, headers)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, v, _) = self.call(reqwest::Method::GET, path, token, None).await;
        (s, v)
    }

    async fn put_state(&self, switch: &str, token: &str, state: &str) -> (u16, Value) {
        let (s, v, _) = self
            .call(
                reqwest::Method::PUT,
                &format!("/switches/{switch}/state"),
                token,
                Some(json!({ "state": state })),
            )
            .await;
        (s, v)
    }

    /// Opens an SSE stream and waits for its first bytes.
    async fn stream(
        &self,
        path: &str,
        token: &str,
    ) -> impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + use<> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "stream refused");
        let mut s = Box::pin(res.bytes_stream());
        s.next().await.unwrap().unwrap();
        s
    }
}

/// Waits until `stream` ends (or errors); returns how long that took.
async fn ends_within(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), stream.next()).await {
            Err(_) => panic!("stream still open after {limit:?}"),
            Ok(None) | Ok(Some(Err(_))) => return t.elapsed(),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn create(
    server: &ServerProc,
    name: &str,
    role: Role,
    expires_in: Option<Duration>,
    scope: Option<TokenScope>,
) -> (String, String) {
    let t = server
        .client()
        .create_token(&CreateTokenRequest {
            name: name.into(),
            role,
            expires_at: expires_in.map(|d| chrono::Utc::now() + d),
            scope,
        })
        .await
        .unwrap();
    (t.token.id, t.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_ends_access_and_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let api = Api::new(&server);
    let (_, secret) = create(
        &server,
        "short",
        Role::Viewer,
        Some(Duration::from_secs(2)),
        None,
    )
    .await;
    assert_eq!(api.get("/switches/workers", &secret).await.0, 200);
    let mut stream = api.stream("/switches/workers/events", &secret).await;
    let took = ends_within(&mut stream, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(500),
        "ended too early: {took:?}"
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
    assert_eq!(api.get("/switches/workers", &old).await.0, 200);
    assert_eq!(api.get("/switches/workers", &new).await.0, 200);
    let mut old_stream = api.stream("/switches/workers/events", &old).await;
    let mut new_stream = api.stream("/switches/workers/events", &new).await;
    let took = ends_within(&mut old_stream, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let (status, body) = api.get("/switches/workers", &old).await;
    assert_eq!((status, code(&body)), (401, "token_expired"), "{body}");
    assert_eq!(api.get("/switches/workers", &new).await.0, 200);
    // The stream on the new secret is untouched.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), new_stream.next())
            .await
            .map_or(true, |item| matches!(item, Some(Ok(_)))),
        "the new secret's stream ended"
    );
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
            let t = Instant::now();
            let r = http.get(url).bearer_auth(secret).send().await.unwrap();
            (r.status().as_u16(), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.client().revoke_token(&id).await.unwrap();
    assert!(ends_within(&mut sse, Duration::from_secs(2)).await < Duration::from_secs(2));
    assert!(ends_within(&mut all, Duration::from_secs(2)).await < Duration::from_secs(2));
    let (status, waited) = poll.await.unwrap();
    assert_eq!(status, 401);
    assert!(waited < Duration::from_secs(5), "{waited:?}");
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
        .call(
            reqwest::Method::POST,
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
    for i in 0..40 {
        let bad = format!("brb_{i:010x}_{}", "0".repeat(64));
        let (s, _, h) = api
            .call(reqwest::Method::GET, "/switches", &bad, None)
            .await;
        if s == 429 && retry_after.is_none() {
            retry_after = h
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(s);
    }
    let first_429 = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("never limited");
    assert!(first_429 >= 10, "limited too early: {statuses:?}");
    assert!(
        statuses[..first_429].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    assert!(
        statuses[first_429..].iter().all(|s| *s == 429),
        "{statuses:?}"
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
    // State changes: a burst, then 429 with Retry-After; a second later it works again.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let to = if i % 2 == 0 { "paused" } else { "running" };
        statuses.push(api.put_state("workers", &admin, to).await.0);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(api.put_state("workers", &admin, "running").await.0, 200);

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
        .call(
            reqwest::Method::PUT,
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
    // header-read timeout, while an event stream older than that keeps flowing.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /api/v1/switches HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut live = api.stream("/switches/workers/events", &admin).await;
    let mut buf = [0u8; 256];
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("slow connection was never closed")
        .unwrap_or(0);
    let _ = n; // hyper may answer 408 before closing; either way the socket ends.
    assert!(t.elapsed() < Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.put_state("workers", &admin, "paused").await;
    let got = tokio::time::timeout(Duration::from_secs(3), live.next()).await;
    assert!(
        matches!(got, Ok(Some(Ok(_)))),
        "the older stream died with the slow one"
    );
}
