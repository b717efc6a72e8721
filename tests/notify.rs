//! Notifications against real HTTP receivers on loopback (a local server plays Slack and a
//! webhook receiver and records every request), the Slack slash command with real signatures,
//! reminders, outages and restarts.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brb_api::{SetStateRequest, Source, SwitchState};
use brb_e2e::{InProcess, eventually};
use brb_server::config::{Secret, SlackConfig, WebhookConfig};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Ok,
    Fail500,
    /// Holds the request for 10 s, then 503: never accepted.
    Hang,
}

#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Recorder {
    hits: Arc<Mutex<Vec<Hit>>>,
    mode: Arc<Mutex<Mode>>,
    addr: SocketAddr,
    stop: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

impl Recorder {
    /// Reserves a port without listening on it yet (connections are refused until `start`).
    fn reserve() -> Recorder {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Recorder {
            hits: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            addr,
            stop: Arc::default(),
        }
    }

    async fn start(&self) {
        let (hits, mode) = (self.hits.clone(), self.mode.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (hits, mode) = (hits.clone(), mode.clone());
            async move {
                let path = req.uri().path().to_string();
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap()
                    .to_vec();
                let m = *mode.lock().unwrap();
                match m {
                    Mode::Ok => {
                        hits.lock().unwrap().push(Hit {
                            path,
                            headers,
                            body,
                        });
                        (axum::http::StatusCode::OK, "ok")
                    }
                    Mode::Fail500 => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom"),
                    Mode::Hang => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "late")
                    }
                }
            }
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        *self.stop.lock().unwrap() = Some(tx);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    fn json(&self, path: &str) -> Vec<Value> {
        self.hits(path)
            .iter()
            .map(|h| serde_json::from_slice(&h.body).unwrap())
            .collect()
    }
}

fn with_receivers(r: &Recorder) -> impl FnOnce(&mut brb_server::Config) + '_ {
    move |c| {
        c.public_url = Some("https://brb.example.test".into());
        c.environment.name = "production".into();
        c.notify.office_button_location = Some("next to the coffee machine, 3rd floor".into());
        c.notify.retry_max_secs = 1;
        c.notify.slack = Some(SlackConfig {
            webhook_url: Some(Secret(r.url("/slack"))),
            here_on_pause: true,
            signing_secret: Some(Secret("slack-signing-secret".into())),
            operators: [("U0ALICE".to_string(), "alice".to_string())].into(),
            command: Some("/bigred".into()),
        });
        c.notify.webhooks = vec![WebhookConfig {
            name: "ops".into(),
            url: r.url("/hook"),
            secret: Some(Secret("hook-secret".into())),
        }];
    }
}

async fn toggle(s: &InProcess, state: SwitchState, reason: &str) -> (brb_api::Switch, Duration) {
    let t = Instant::now();
    let sw = s
        .client()
        .set_state(
            "workers",
            &SetStateRequest {
                state,
                reason: Some(reason.into()),
                source: Some(Source::Desktop),
                expected_version: None,
                ramp: None,
            },
        )
        .await
        .unwrap();
    (sw, t.elapsed())
}

fn verify_hook(h: &Hit) {
    let ts: i64 = h.headers["x-brb-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let sig = h.headers["x-brb-signature"].to_str().unwrap();
    assert_eq!(
        sig,
        brb_server::notify_signature("hook-secret", ts, &h.body)
    );
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() < 60,
        "fresh timestamp"
    );
    assert!(h.headers.contains_key("x-brb-delivery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_each_send_exactly_one_message() {
    let r = Recorder::reserve();
    r.start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    let (paused, _) = toggle(&s, SwitchState::Paused, "db at 100% CPU").await;
    assert!(
        eventually(Duration::from_secs(5), || r.hits("/slack").len() == 1
            && r.hits("/hook").len() == 1)
        .await
    );
    let msg = &r.json("/slack")[0];
    let text = msg.to_string();
    for needle in [
        "<!here>",
        "PAUSED",
        "admin",
        "the desktop app",
        "db at 100% CPU",
        "https://brb.example.test/",
        "brb resume workers",
        "#d32f2f",
        "production",
    ] {
        assert!(
            text.contains(needle),
            "Slack message lacks {needle}: {text}"
        );
    }
    let hook = &r.hits("/hook")[0];
    verify_hook(hook);
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(body["type"], "switch.changed");
    assert_eq!(body["switch"]["state"], "paused");
    assert_eq!(body["switch"]["version"], paused.version);
    assert_eq!(body["switch"]["reason"], "db at 100% CPU");

    // Setting the same state again announces nothing.
    toggle(&s, SwitchState::Paused, "again").await;
    toggle(&s, SwitchState::Running, "recovered").await;
    assert!(eventually(Duration::from_secs(5), || r.hits("/slack").len() == 2).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.hits("/slack").len(), 2, "exactly one message per change");
    assert_eq!(r.hits("/hook").len(), 2);
    let resumed = &r.json("/slack")[1];
    assert!(resumed.to_string().contains("#2e7d32"), "green for resumed");
    assert!(!resumed["text"].as_str().unwrap().contains("<!here>"));

    let list: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/notifications", s.url))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = list["notifications"].as_array().unwrap();
    assert_eq!(n.len(), 4);
    assert!(
        n.iter()
            .all(|x| x["status"] == "delivered" && x["attempts"] == 1),
        "{list}"
    );
    assert!(
        !list.to_string().contains("/slack"),
        "no secret URLs in the status"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_outages_keep_toggles_fast_and_each_notification_arrives_once() {
    let r = Recorder::reserve(); // not listening: connection refused
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    let mut slowest = Duration::ZERO;
    let (_, t) = toggle(&s, SwitchState::Paused, "refused").await;
    slowest = slowest.max(t);
    let status = |s: &InProcess| {
        let (url, admin) = (s.url.clone(), s.admin.clone());
        async move {
            reqwest::Client::new()
                .get(format!("{url}/api/v1/notifications"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = status(&s).await;
    let first = &st["notifications"][0];
    assert_eq!(first["status"], "pending");
    assert!(first["attempts"].as_u64().unwrap() >= 1);
    assert!(
        first["last_error"].as_str().unwrap().contains("connection"),
        "{st}"
    );

    r.start().await;
    r.set_mode(Mode::Fail500);
    let (_, t) = toggle(&s, SwitchState::Running, "500s").await;
    slowest = slowest.max(t);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = status(&s).await;
    assert!(st.to_string().contains("HTTP 500"), "{st}");

    r.set_mode(Mode::Hang);
    let (_, t) = toggle(&s, SwitchState::Paused, "hang").await;
    slowest = slowest.max(t);
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let st = status(&s).await;
    assert!(st.to_string().contains("timed out"), "{st}");
    let (_, t) = toggle(&s, SwitchState::Running, "still hanging").await;
    slowest = slowest.max(t);
    assert!(
        slowest < Duration::from_millis(500),
        "toggles stayed fast: slowest {slowest:?}"
    );
    assert!(r.hits("/slack").is_empty(), "nothing accepted yet");

    r.set_mode(Mode::Ok);
    assert!(
        eventually(Duration::from_secs(20), || r.hits("/slack").len() == 4
            && r.hits("/hook").len() == 4)
        .await,
        "all four changes delivered after recovery: {} slack, {} hook",
        r.hits("/slack").len(),
        r.hits("/hook").len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Once each: four versions, one message each per channel.
    let mut versions: Vec<u64> = r
        .json("/hook")
        .iter()
        .map(|b| b["switch"]["version"].as_u64().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, vec![2, 3, 4, 5]);
    assert_eq!(r.hits("/slack").len(), 4);
    for h in r.hits("/hook") {
        verify_hook(&h);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_notifications_survive_a_restart() {
    let r = Recorder::reserve();
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    toggle(&s, SwitchState::Paused, "before restart").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stop().await;
    r.start().await;
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    assert!(eventually(Duration::from_secs(10), || r.hits("/slack").len() == 1).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        r.hits("/slack").len(),
        1,
        "delivered once after the restart"
    );
    assert_eq!(r.hits("/hook").len(), 1);
    assert!(r.json("/slack")[0].to_string().contains("before restart"));
    s.stop().await;
}

async fn slash(s: &InProcess, body: &str, secret: &str, ts: i64) -> (u16, Value) {
    let sig = brb_server::slack::sign(secret, ts, body.as_bytes());
    slash_raw(s, body, &ts.to_string(), &sig).await
}

async fn slash_raw(s: &InProcess, body: &str, ts: &str, sig: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/slack/commands", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_slash_command() {
    let r = Recorder::reserve();
    r.start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    let now = chrono::Utc::now().timestamp();
    let secret = "slack-signing-secret";
    let form = |user: &str, name: &str, text: &str| {
        format!(
            "token=x&team_id=T1&user_id={user}&user_name={name}&command=%2Fbigred&text={}&response_url=https%3A%2F%2Fhooks.example%2Fx",
            text.replace(' ', "+")
        )
    };

    // Status: the state and where the button is.
    let (st, v) = slash(&s, &form("U0BOB", "bob", ""), secret, now).await;
    assert_eq!(st, 200);
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("running"), "{text}");
    assert!(
        text.contains("next to the coffee machine, 3rd floor"),
        "{text}"
    );
    assert!(text.contains("https://brb.example.test/"), "{text}");
    assert!(text.contains("tray"), "{text}");
    assert_eq!(v["response_type"], "ephemeral");

    // Signatures: wrong secret, stale timestamp, tampered body, none at all.
    let body = form("U0ALICE", "alice", "pause fire");
    assert_eq!(slash(&s, &body, "wrong-secret", now).await.0, 401);
    assert_eq!(slash(&s, &body, secret, now - 301).await.0, 401);
    let sig = brb_server::slack::sign(secret, now, body.as_bytes());
    let tampered = body.replace("alice", "mallory");
    let (st, v) = slash_raw(&s, &tampered, &now.to_string(), &sig).await;
    assert_eq!(st, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    assert_eq!(slash_raw(&s, &body, "", "").await.0, 401);
    let sw = s.client().switch("workers").await.unwrap();
    assert_eq!(
        (sw.state, sw.version),
        (SwitchState::Running, 1),
        "nothing changed"
    );

    // An unmapped user is refused politely; nothing changes.
    let (st, v) = slash(&s, &form("U0BOB", "bob", "pause let me"), secret, now).await;
    assert_eq!(st, 200);
    assert!(v["text"].as_str().unwrap().contains("Sorry @bob"), "{v}");
    assert_eq!(s.client().switch("workers").await.unwrap().version, 1);

    // A mapped operator pauses, recorded with source slack.
    let (st, v) = slash(
        &s,
        &form("U0ALICE", "alice", "pause db on fire"),
        secret,
        now,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["response_type"], "in_channel");
    assert!(v["text"].as_str().unwrap().contains("PAUSED"), "{v}");
    let sw = s.client().switch("workers").await.unwrap();
    assert_eq!(sw.state, SwitchState::Paused);
    assert_eq!(sw.source, Source::Slack);
    assert_eq!(sw.changed_by, "alice");
    assert_eq!(sw.reason.as_deref(), Some("db on fire"));
    let audit = s.client().audit(Some("workers"), 1, None).await.unwrap();
    assert_eq!(audit.entries[0].source, Source::Slack);
    // ...and it is announced like any other change.
    assert!(eventually(Duration::from_secs(5), || r.hits("/slack").len() == 1).await);
    assert!(r.json("/slack")[0].to_string().contains("Slack"));

    let (_, v) = slash(
        &s,
        &form("U0ALICE", "alice", "resume steps:10m"),
        secret,
        now,
    )
    .await;
    assert!(
        v["text"].as_str().unwrap().contains("resuming gradually"),
        "{v}"
    );
    let sw = s.client().switch("workers").await.unwrap();
    assert_eq!(sw.state, SwitchState::Running);
    assert_eq!(sw.ramp.unwrap().duration_secs, 600);
    let (_, v) = slash(&s, &form("U0ALICE", "alice", "dance"), secret, now).await;
    assert!(
        v["text"].as_str().unwrap().contains("/bigred pause"),
        "help: {v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_on_schedule_and_stop_on_resume() {
    let r = Recorder::reserve();
    r.start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        with_receivers(&r)(c);
        c.notify.remind_every = "1s".into();
    })
    .await;
    toggle(&s, SwitchState::Paused, "slow db").await;
    let reminders = |r: &Recorder| {
        r.json("/slack")
            .into_iter()
            .filter(|m| m["text"].as_str().unwrap_or("").contains("Reminder"))
            .count()
    };
    assert!(eventually(Duration::from_secs(6), || reminders(&r) >= 3).await);
    let texts: Vec<String> = r
        .json("/slack")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_string))
        .filter(|t| t.contains("Reminder"))
        .collect();
    assert!(
        texts[0].contains("Workers paused for") && texts[0].contains("by admin — slow db"),
        "{texts:?}"
    );
    let hooks = r.json("/hook");
    assert!(hooks.iter().any(|h| h["type"] == "switch.reminder"));
    toggle(&s, SwitchState::Running, "ok").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = reminders(&r);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reminders(&r), after, "no reminders once resumed");
    s.stop().await;
}
