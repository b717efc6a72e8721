//! Notifications against real HTTP receivers on loopback (a local server plays Slack and a
//! webhook receiver and records every request), the Slack slash command with real signatures,
//! reminders, outages and restarts.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brb_api::{Notification, SetStateRequest, Source, SwitchState};
use brb_e2e::calls::{describe_workers, outbox, set_workers, slack_post, slack_signed};
use brb_e2e::{InProcess, eventually, wait_for};
use brb_server::config::{Secret, SlackConfig, SwitchConfig, WebhookConfig};
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
            follow_up_secs: None,
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
    let sw = set_workers(s, state, reason).await;
    (sw, t.elapsed())
}

/// Waits until the outbox holds `n` notifications, every one delivered: after that nothing
/// is left to send, so the receivers' counts are final (no fixed wait for late duplicates).
async fn all_delivered(s: &InProcess, n: usize, limit: Duration) -> Vec<Notification> {
    let deadline = Instant::now() + limit;
    loop {
        let o = outbox(s).await;
        if o.len() == n
            && o.iter()
                .all(|x| x.status == brb_api::DeliveryStatus::Delivered)
        {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "not all {n} notifications delivered within {limit:?}: {o:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the outbox's JSON text satisfies `pred` (e.g. names an error); returns it.
async fn outbox_until(s: &InProcess, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_for(Duration::from_secs(20), what, || async {
        let text = serde_json::to_string(&outbox(s).await).unwrap();
        pred(&text).then_some(text)
    })
    .await
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

    // Setting the same state again announces nothing: its request returned, so had it
    // queued anything, the outbox would show it now.
    toggle(&s, SwitchState::Paused, "again").await;
    toggle(&s, SwitchState::Running, "recovered").await;
    let n = all_delivered(&s, 4, Duration::from_secs(10)).await;
    assert_eq!(r.hits("/slack").len(), 2, "exactly one message per change");
    assert_eq!(r.hits("/hook").len(), 2);
    let resumed = &r.json("/slack")[1];
    assert!(resumed.to_string().contains("#2e7d32"), "green for resumed");
    assert!(!resumed["text"].as_str().unwrap().contains("<!here>"));
    assert!(n.iter().all(|x| x.attempts == 1), "{n:#?}");

    let list: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/notifications", s.url))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let st = outbox_until(&s, "a failed attempt on the refused receiver", |t| {
        t.contains("connection")
    })
    .await;
    let first = outbox(&s).await.pop().unwrap();
    assert_eq!(first.status, brb_api::DeliveryStatus::Pending, "{st}");
    assert!(first.attempts >= 1, "{st}");
    assert!(
        first
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("connection"),
        "{st}"
    );

    // The mode first: a retry landing between the two would be accepted.
    r.set_mode(Mode::Fail500);
    r.start().await;
    let (_, t) = toggle(&s, SwitchState::Running, "500s").await;
    slowest = slowest.max(t);
    outbox_until(&s, "an attempt answered 500", |t| t.contains("HTTP 500")).await;

    r.set_mode(Mode::Hang);
    let (_, t) = toggle(&s, SwitchState::Paused, "hang").await;
    slowest = slowest.max(t);
    outbox_until(&s, "an attempt that timed out", |t| t.contains("timed out")).await;
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
    // Once each: four versions, one message each per channel, and nothing left to send.
    all_delivered(&s, 8, Duration::from_secs(20)).await;
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
    // Both tried once and failed (nothing listens yet): the restart must not lose them.
    wait_for(
        Duration::from_secs(10),
        "both notifications tried",
        || async {
            let o = outbox(&s).await;
            (o.len() == 2
                && o.iter()
                    .all(|x| x.attempts >= 1 && x.delivered_at.is_none()))
            .then_some(())
        },
    )
    .await;
    s.stop().await;
    r.start().await;
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    all_delivered(&s, 2, Duration::from_secs(10)).await;
    assert_eq!(
        r.hits("/slack").len(),
        1,
        "delivered once after the restart"
    );
    assert_eq!(r.hits("/hook").len(), 1);
    assert!(r.json("/slack")[0].to_string().contains("before restart"));
    s.stop().await;
}

/// A rolling upgrade: a newer binary wrote outbox rows of a kind this one does not know, ahead
/// of the changes this one then announces. They are left for a replica that knows the kind
/// (never attempted, failed or dropped, not even leased) and the announcements behind them are
/// delivered as if they were not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_newer_kind_wait_for_a_newer_replica_and_hold_up_nothing() {
    let r = Recorder::reserve();
    r.start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), with_receivers(&r)).await;
    let db = s.config.db_path();
    let event = serde_json::to_string(&s.client().switch("workers").await.unwrap()).unwrap();
    let written = chrono::Utc::now().timestamp_micros();
    let read = |sql: &'static str| {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut stmt = c.prepare(sql).unwrap();
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
        })
    };
    {
        let (db, event) = (db.clone(), event.clone());
        tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            for ch in ["slack", "webhook:ops"] {
                c.execute(
                    "INSERT INTO outbox (dedupe_key, channel, kind, event, created_at,
                                         next_attempt_at)
                     VALUES (?1, ?2, 'resume_teleported', ?3, ?4, ?4)",
                    rusqlite::params![format!("newer:{ch}"), ch, event, written],
                )
                .unwrap();
            }
        })
        .await
        .unwrap();
    }
    toggle(&s, SwitchState::Paused, "db at 100% CPU").await;
    toggle(&s, SwitchState::Running, "recovered").await;
    let delivered = all_delivered(&s, 4, Duration::from_secs(10)).await;
    assert_eq!(r.hits("/slack").len(), 2, "one message per change");
    assert_eq!(r.hits("/hook").len(), 2);
    assert!(
        r.json("/hook")
            .iter()
            .all(|b| b["type"] == "switch.changed")
    );
    let left = read(
        "SELECT id, attempts, delivered_at, failed, next_attempt_at FROM outbox
         WHERE kind = 'resume_teleported' ORDER BY id",
    )
    .await
    .unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    let first_delivered = delivered.iter().map(|n| n.id as i64).min().unwrap();
    for (id, attempts, delivered_at, failed, next) in left {
        assert!(id < first_delivered, "ahead of the delivered rows");
        assert_eq!(
            (attempts, delivered_at, failed, next),
            (0, None, false, written),
            "left as written, not even leased"
        );
    }
    s.stop().await;
}

const COMMANDS: &str = "/api/v1/slack/commands";

async fn slash(s: &InProcess, body: &str, secret: &str, ts: i64) -> (u16, Value) {
    let r = slack_signed(&s.url, COMMANDS, body, secret, ts).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn slash_raw(s: &InProcess, body: &str, ts: &str, sig: &str) -> (u16, Value) {
    let r = slack_post(&s.url, COMMANDS, body, ts, sig).await;
    (r.status().as_u16(), r.json().await.unwrap())
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
        // A second switch that reminds too: while it stays paused, its reminders show that
        // the reminder loop kept running after "workers" was resumed.
        c.switches.push(SwitchConfig {
            name: "emails".into(),
            description: String::new(),
            remind: true,
            approval: Default::default(),
        });
    })
    .await;
    let (paused, _) = toggle(&s, SwitchState::Paused, "slow db").await;
    let reminders = |r: &Recorder| {
        r.json("/slack")
            .into_iter()
            .filter(|m| m["text"].as_str().unwrap_or("").contains("Reminder"))
            .count()
    };
    assert!(eventually(Duration::from_secs(10), || reminders(&r) >= 3).await);
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
    // On schedule: the k-th reminder is queued once k intervals have passed since the pause,
    // not before (and not long after: the loop looks every 250 ms).
    let queued = |o: &[Notification], switch: &str| {
        let mut t: Vec<_> = o
            .iter()
            .filter(|x| x.kind == "reminder" && x.switch == switch && x.channel == "slack")
            .map(|x| x.created_at)
            .collect();
        t.sort();
        t
    };
    let times = queued(&outbox(&s).await, "workers");
    assert!(times.len() >= 3, "{times:?}");
    for (k, at) in times.iter().enumerate().take(3) {
        let due = paused.changed_at + chrono::TimeDelta::seconds(k as i64 + 1);
        assert!(*at >= due, "reminder {} queued {} early", k + 1, due - *at);
        assert!(
            *at - due < chrono::TimeDelta::seconds(3),
            "reminder {} queued {} late",
            k + 1,
            *at - due
        );
    }

    let c = s.client();
    c.set_state(
        "emails",
        &SetStateRequest {
            state: SwitchState::Paused,
            reason: Some("control".into()),
            source: None,
            expected_version: None,
            ramp: None,
            guards: Vec::new(),
        },
    )
    .await
    .unwrap();
    let (resumed, _) = toggle(&s, SwitchState::Running, "ok").await;
    // Two reminders of "emails" queued after the resume: the loop has looked at "workers"
    // for more than a whole interval since, so a reminder still due would have been queued.
    let after_resume = |o: &[Notification], switch: &str| {
        queued(o, switch)
            .into_iter()
            .filter(|t| *t > resumed.changed_at)
            .count()
    };
    let o = wait_for(
        Duration::from_secs(10),
        "the control switch's reminders",
        || async {
            let o = outbox(&s).await;
            (after_resume(&o, "emails") >= 2).then_some(o)
        },
    )
    .await;
    assert_eq!(
        after_resume(&o, "workers"),
        0,
        "a reminder queued after the resume: {o:#?}"
    );
    s.stop().await;
}

/// A version bump while paused (a description edit) is not a new pause: reminder n still goes
/// out once. Reminders are keyed on the pause instant (`changed_at`), not on the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_are_not_repeated_after_a_description_edit() {
    let r = Recorder::reserve();
    r.start().await;
    let dir = tempfile::tempdir().unwrap();
    let every = chrono::TimeDelta::seconds(2);
    let s = InProcess::start(dir.path(), |c| {
        with_receivers(&r)(c);
        c.notify.remind_every = "2s".into();
    })
    .await;
    let (paused, _) = toggle(&s, SwitchState::Paused, "slow db").await;
    let reminders = |o: &[Notification]| {
        o.iter()
            .filter(|x| x.kind == "reminder" && x.switch == "workers" && x.channel == "slack")
            .map(|x| x.created_at)
            .collect::<Vec<_>>()
    };
    // Reminder 1 is queued; then the description changes (version + 1, same pause).
    wait_for(Duration::from_secs(10), "reminder 1", || async {
        (!reminders(&outbox(&s).await).is_empty()).then_some(())
    })
    .await;
    let edited = describe_workers(&s, "edited while paused").await;
    assert!(edited.version > paused.version);
    assert_eq!(edited.changed_at, paused.changed_at, "still the same pause");
    // Wait for reminder 2 (due two intervals after the pause): by then a repeated reminder 1
    // would have been queued long ago (the loop looks every 250 ms).
    let o = wait_for(Duration::from_secs(10), "reminder 2", || async {
        let o = outbox(&s).await;
        reminders(&o)
            .iter()
            .any(|t| *t >= paused.changed_at + every * 2)
            .then_some(o)
    })
    .await;
    let times = reminders(&o);
    assert_eq!(
        times.len(),
        2,
        "reminders 1 and 2, each once (not reminder 1 again after the edit): {times:?}"
    );
    s.stop().await;
}

/// Drills (and resume requests, description edits) bump the version while a switch stays
/// paused; reminder n must still go out once per pause, not once per version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_while_paused_does_not_repeat_a_reminder() {
    let r = Recorder::reserve();
    r.start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        with_receivers(&r)(c);
        c.notify.remind_every = "1s".into();
    })
    .await;
    let (paused, _) = toggle(&s, SwitchState::Paused, "slow db").await;
    let c = s.client();
    let reminder_times = |o: &[Notification]| {
        o.iter()
            .filter(|x| x.kind == "reminder" && x.switch == "workers" && x.channel == "slack")
            .map(|x| x.created_at)
            .collect::<Vec<_>>()
    };
    // A drill before the first reminder and right after each of the first three: each is a
    // new version of the paused switch. A reminder repeated per version would be queued at
    // the loop's next look (every 250 ms), before the next one is due a second later; so
    // once reminder k is queued, at most k were queued before reminder k+1 was due.
    c.drill("workers", &brb_api::DrillRequest::default())
        .await
        .unwrap();
    let due = |n: i64| paused.changed_at + chrono::TimeDelta::seconds(n);
    for k in 1..=4 {
        let o = wait_for(
            Duration::from_secs(10),
            &format!("reminder {k}"),
            || async {
                let o = outbox(&s).await;
                reminder_times(&o).iter().any(|t| *t >= due(k)).then_some(o)
            },
        )
        .await;
        let before_next = reminder_times(&o)
            .into_iter()
            .filter(|t| *t < due(k + 1))
            .count();
        assert!(
            before_next <= k as usize,
            "{before_next} reminders queued before reminder {} was due: one was repeated per \
             version: {o:#?}",
            k + 1
        );
        if k < 4 {
            c.drill("workers", &brb_api::DrillRequest::default())
                .await
                .unwrap();
        }
    }
    s.stop().await;
}
