//! Slack interactivity over real HTTP: the pause message's "Resume…" button (with Slack's
//! confirmation dialog), and presses on it arriving at `/api/v1/slack/interactions` signed
//! like Slack signs them (v0), from mapped and unmapped users, with bad and stale signatures,
//! answered at once and reported through the payload's `response_url` (a local receiver).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brb_api::{Source, SwitchState};
use brb_e2e::calls::{set_workers, slack_payload_form, slack_post, slack_signed};
use brb_e2e::{InProcess, wait_for};
use brb_server::config::{Secret, SlackConfig};
use serde_json::{Value, json};

const SECRET: &str = "slack-signing-secret";

/// Records every JSON POST by path: `/slack` plays the incoming webhook, `/response` a
/// press's `response_url`.
#[derive(Clone)]
struct Receiver {
    posts: Arc<Mutex<Vec<(String, Value)>>>,
    addr: SocketAddr,
}

impl Receiver {
    async fn start() -> Receiver {
        let posts: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let p = posts.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let p = p.clone();
            async move {
                let path = req.uri().path().to_string();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                p.lock()
                    .unwrap()
                    .push((path, serde_json::from_slice(&body).unwrap()));
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { posts, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn at(&self, path: &str) -> Vec<Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn configure(r: &Receiver, signing: bool) -> impl FnOnce(&mut brb_server::Config) {
    let hook = r.url("/slack");
    move |c| {
        c.public_url = Some("https://brb.example.test".into());
        c.environment.name = "production".into();
        c.notify.slack = Some(SlackConfig {
            webhook_url: Some(Secret(hook)),
            signing_secret: signing.then(|| Secret(SECRET.into())),
            operators: [("U0ALICE".to_string(), "alice".to_string())].into(),
            follow_up_secs: Some(1),
            ..SlackConfig::default()
        });
    }
}

async fn pause(s: &InProcess, reason: &str) -> brb_api::Switch {
    set_workers(s, SwitchState::Paused, reason).await
}

/// The buttons of the newest Slack message announcing `state`.
async fn buttons(r: &Receiver, state: &str) -> Vec<Value> {
    wait_for(Duration::from_secs(10), "the Slack message", || async {
        let msg = r.at("/slack").into_iter().rev().find(|m| {
            m["attachments"][0]["blocks"][1]["fields"][1]["text"]
                .as_str()
                .unwrap_or("")
                .contains(state)
        })?;
        let blocks = msg["attachments"][0]["blocks"].as_array().unwrap().clone();
        let actions = blocks.iter().find(|b| b["type"] == "actions")?;
        Some(actions["elements"].as_array().unwrap().clone())
    })
    .await
}

fn resume_button(elements: &[Value]) -> Option<Value> {
    elements
        .iter()
        .find(|e| e["action_id"] == "brb_resume")
        .cloned()
}

/// A `block_actions` payload as Slack sends it for a button press.
fn press_body(user: &str, username: &str, value: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": username, "name": username, "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": "1764531200.000100", "channel_id": "C1"},
        "trigger_id": "123.456.abc",
        "team": {"id": "T1", "domain": "example"},
        "channel": {"id": "C1", "name": "incidents"},
        "response_url": response_url,
        "actions": [{
            "action_id": "brb_resume",
            "block_id": "b1",
            "text": {"type": "plain_text", "text": "Resume…"},
            "value": value,
            "style": "primary",
            "type": "button",
            "action_ts": "1764531201.000200"
        }]
    });
    slack_payload_form(&payload)
}

const INTERACTIONS: &str = "/api/v1/slack/interactions";

async fn post(s: &InProcess, body: &str, ts: &str, sig: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = slack_post(&s.url, INTERACTIONS, body, ts, sig).await;
    (r.status().as_u16(), t.elapsed())
}

async fn press(s: &InProcess, body: &str, secret: &str, ts: i64) -> (u16, Duration) {
    let t = Instant::now();
    let r = slack_signed(&s.url, INTERACTIONS, body, secret, ts).await;
    (r.status().as_u16(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_messages_carry_a_confirmed_gradual_resume_button_only_when_presses_can_arrive() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), configure(&r, true)).await;
    let paused = pause(&s, "db on fire").await;
    let elements = buttons(&r, "paused").await;
    let b = resume_button(&elements).expect("a Resume… button");
    assert_eq!(b["type"], "button");
    assert_eq!(b["text"]["type"], "plain_text");
    assert_eq!(b["text"]["text"], "Resume…");
    let value: Value = serde_json::from_str(b["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        value,
        json!({"switch": "workers", "paused_at_ms": paused.changed_at.timestamp_millis()})
    );
    assert!(b["value"].as_str().unwrap().len() <= 2000);
    // Slack's confirmation dialog object: title, text, confirm, deny (plain_text where Slack
    // requires it, within its lengths), and it says the release is gradual.
    let c = &b["confirm"];
    assert_eq!(c["title"]["type"], "plain_text");
    assert!(c["title"]["text"].as_str().unwrap().chars().count() <= 100);
    let text = c["text"]["text"].as_str().unwrap();
    assert!(text.chars().count() <= 300, "{text}");
    assert!(
        text.contains("gradually") && text.contains("10% → 25% → 50% → 100%"),
        "{text}"
    );
    for k in ["confirm", "deny"] {
        assert_eq!(c[k]["type"], "plain_text");
        let t = c[k]["text"].as_str().unwrap();
        assert!(!t.is_empty() && t.chars().count() <= 30, "{k}: {t}");
    }
    assert_eq!(c["confirm"]["text"], "Resume gradually");
    assert!(["primary", "danger"].contains(&c["style"].as_str().unwrap()));
    // The console link stays.
    assert!(
        elements
            .iter()
            .any(|e| e["url"] == "https://brb.example.test/")
    );
    s.stop().await;

    // Without a signing secret Slack could not deliver the press: no button.
    let r2 = Receiver::start().await;
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = InProcess::start(dir2.path(), configure(&r2, false)).await;
    pause(&s2, "db on fire").await;
    let elements = buttons(&r2, "paused").await;
    assert!(resume_button(&elements).is_none(), "{elements:#?}");
    assert_eq!(elements.len(), 1);
    s2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressing_resume_checks_the_signature_and_the_user_then_releases_gradually() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), configure(&r, true)).await;
    let paused = pause(&s, "db on fire").await;
    let b = resume_button(&buttons(&r, "paused").await).unwrap();
    let value = b["value"].as_str().unwrap().to_string();
    let response = r.url("/response");
    let now = chrono::Utc::now().timestamp();
    let alice = press_body("U0ALICE", "alice", &value, &response);

    // Signatures: wrong secret, stale (a replay from six minutes ago), tampered, none.
    assert_eq!(press(&s, &alice, "wrong-secret", now).await.0, 401);
    assert_eq!(press(&s, &alice, SECRET, now - 360).await.0, 401);
    let sig = brb_server::slack::sign(SECRET, now, alice.as_bytes());
    let tampered = alice.replace("U0ALICE", "U0BOB00");
    assert_eq!(post(&s, &tampered, &now.to_string(), &sig).await.0, 401);
    assert_eq!(post(&s, &alice, "", "").await.0, 401);
    let sw = s.client().switch("workers").await.unwrap();
    assert_eq!(
        (sw.state, sw.version),
        (SwitchState::Paused, paused.version),
        "nothing changed"
    );
    assert!(
        r.at("/response").is_empty(),
        "refused requests get no answer"
    );

    // An unmapped user is answered (only they see it) and nothing changes.
    let bob = press_body("U0BOB", "bob", &value, &response);
    assert_eq!(press(&s, &bob, SECRET, now).await.0, 200);
    let refusal = wait_for(Duration::from_secs(10), "the refusal", || async {
        r.at("/response").first().cloned()
    })
    .await;
    assert_eq!(refusal["response_type"], "ephemeral");
    assert_eq!(refusal["replace_original"], false);
    assert!(
        refusal["text"].as_str().unwrap().contains("Sorry @bob"),
        "{refusal}"
    );
    let sw = s.client().switch("workers").await.unwrap();
    assert_eq!(
        (sw.state, sw.version),
        (SwitchState::Paused, paused.version)
    );

    // The mapped operator's press: answered at once (Slack allows 3 s), then resumed with the
    // default gradual release, recorded as alice from Slack, the message replaced.
    let (status, took) = press(&s, &alice, SECRET, now).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    let resumed = s
        .client()
        .wait_switch("workers", paused.version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(resumed.state, SwitchState::Running);
    let ramp = resumed
        .ramp
        .as_ref()
        .expect("a gradual release, never at once");
    assert_eq!(ramp.duration_secs, 600);
    assert_eq!(resumed.changed_by, "alice");
    assert_eq!(resumed.source, Source::Slack);
    let audit = s.client().audit(Some("workers"), 1, None).await.unwrap();
    assert_eq!(audit.entries[0].actor, "alice");
    assert_eq!(audit.entries[0].source, Source::Slack);
    let replaced = wait_for(Duration::from_secs(10), "the replaced message", || async {
        r.at("/response")
            .into_iter()
            .find(|m| m["replace_original"] == true)
    })
    .await;
    let text = replaced["text"].as_str().unwrap();
    assert!(
        text.contains("resuming gradually") && text.contains("alice"),
        "{text}"
    );
    assert!(
        !replaced.to_string().contains("brb_resume"),
        "no button left to press: {replaced}"
    );

    // The same (old) message pressed again: that pause is over, nothing changes.
    assert_eq!(press(&s, &alice, SECRET, now).await.0, 200);
    let over = wait_for(
        Duration::from_secs(10),
        "the 'pause is over' answer",
        || async {
            r.at("/response").into_iter().find(|m| {
                m["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("This pause is over")
            })
        },
    )
    .await;
    assert_eq!(over["replace_original"], false);
    assert_eq!(
        s.client().switch("workers").await.unwrap().version,
        resumed.version
    );
    s.stop().await;
}
