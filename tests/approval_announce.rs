//! Resume requests told to people, over real HTTP: every step of a request (filed, rejected,
//! approved, lapsed, overridden by break glass) through the outbox to a local receiver
//! playing Slack's incoming webhook, a generic webhook and PagerDuty, checked for the exact
//! request shapes; and Slack's "Approve resume" / "Reject" buttons (and "Resume…" filing a
//! request) pressed with requests signed like Slack signs them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_api::{Source, SwitchState};
use brb_e2e::calls::{slack_payload_form, slack_signed};
use brb_e2e::{InProcess, wait_for};
use brb_server::config::{
    ApprovalConfig, PagerDutyConfig, Secret, SlackConfig, SwitchConfig, WebhookConfig,
};
use serde_json::{Value, json};

const SECRET: &str = "slack-signing-secret";
const HOOK_SECRET: &str = "webhook-hmac-key";

/// One recorded POST: path, headers (the raw body under `body`), JSON body.
type Post = (String, BTreeMap<String, String>, Value);

/// Records every POST by path: `/slack` plays Slack's incoming webhook, `/hook` a generic
/// webhook, `/pd/v2/enqueue` PagerDuty, `/response` a press's `response_url`.
#[derive(Clone)]
struct Receiver {
    posts: Arc<Mutex<Vec<Post>>>,
    addr: SocketAddr,
}

impl Receiver {
    async fn start() -> Receiver {
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let p = posts.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let p = p.clone();
            async move {
                let path = req.uri().path().to_string();
                let mut headers: BTreeMap<String, String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap();
                headers.insert("body".into(), String::from_utf8_lossy(&body).into_owned());
                p.lock()
                    .unwrap()
                    .push((path, headers, serde_json::from_slice(&body).unwrap()));
                (axum::http::StatusCode::ACCEPTED, "{}")
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

    fn at(&self, path: &str) -> Vec<(BTreeMap<String, String>, Value)> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, h, v)| (h.clone(), v.clone()))
            .collect()
    }

    /// The webhook deliveries of one event type.
    fn hooks(&self, event: &str) -> Vec<(BTreeMap<String, String>, Value)> {
        self.at("/hook")
            .into_iter()
            .filter(|(h, _)| h.get("x-brb-event").map(String::as_str) == Some(event))
            .collect()
    }

    /// Waits up to 10 s for the first webhook delivery of `event` whose body `pick` accepts;
    /// panics naming `what`.
    async fn hook(
        &self,
        what: &str,
        event: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> (BTreeMap<String, String>, Value) {
        self.hook_within(Duration::from_secs(10), what, event, pick)
            .await
    }

    async fn hook_within(
        &self,
        limit: Duration,
        what: &str,
        event: &str,
        pick: impl Fn(&Value) -> bool,
    ) -> (BTreeMap<String, String>, Value) {
        wait_for(limit, what, || async {
            self.hooks(event).into_iter().find(|(_, b)| pick(b))
        })
        .await
    }

    /// Waits up to 10 s for the first Slack message `pick` accepts; panics naming `what`.
    async fn slack(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(10), what, || async {
            self.at("/slack").into_iter().map(|(_, v)| v).find(&pick)
        })
        .await
    }

    /// Waits for the first Slack message whose text contains `needle`.
    async fn slack_saying(&self, what: &str, needle: &str) -> Value {
        self.slack(what, |m| m["text"].as_str().unwrap_or("").contains(needle))
            .await
    }
}

fn configure(r: &Receiver) -> impl FnOnce(&mut brb_server::Config) {
    let (slack, hook, pd) = (r.url("/slack"), r.url("/hook"), r.url("/pd/v2/enqueue"));
    move |c| {
        c.public_url = Some("https://brb.example.test".into());
        c.environment.name = "production".into();
        c.primary.approval = ApprovalConfig {
            resume: 1,
            expire: "15m".into(),
        };
        c.switches.push(SwitchConfig {
            name: "quick".into(),
            description: "Lapses fast".into(),
            remind: false,
            approval: ApprovalConfig {
                resume: 1,
                expire: "1s".into(),
            },
        });
        c.notify.slack = Some(SlackConfig {
            webhook_url: Some(Secret(slack)),
            signing_secret: Some(Secret(SECRET.into())),
            operators: [
                ("U0ALICE".to_string(), "op-alice".to_string()),
                ("U0BOB".to_string(), "op-bob".to_string()),
            ]
            .into(),
            follow_up_secs: Some(1),
            ..SlackConfig::default()
        });
        c.notify.webhooks = vec![WebhookConfig {
            name: "ops".into(),
            url: hook,
            secret: Some(Secret(HOOK_SECRET.into())),
        }];
        c.notify.pagerduty = Some(PagerDutyConfig {
            routing_key: Secret("R0UTING".into()),
            url: pd,
            severity: "critical".into(),
            source: None,
        });
        c.primary.remind = false;
    }
}

async fn token(s: &InProcess, name: &str, role: &str) -> String {
    let r: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens", s.url))
        .bearer_auth(&s.admin)
        .json(&json!({ "name": name, "role": role }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["secret"].as_str().unwrap().to_string()
}

async fn call(s: &InProcess, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let mut rb = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{}/api/v1{path}", s.url))
        .bearer_auth(token);
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn pause(s: &InProcess, name: &str) -> Value {
    let (st, v) = call(
        s,
        &s.admin,
        "PUT",
        &format!("/switches/{name}/state"),
        json!({"state": "paused", "reason": "db on fire"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Every notification of the outbox delivered (none pending or failed).
async fn all_delivered(s: &InProcess) -> Vec<Value> {
    wait_for(
        Duration::from_secs(20),
        "every notification delivered",
        || async {
            let (_, v) = call(s, &s.admin, "GET", "/notifications", json!(null)).await;
            let list = v["notifications"].as_array()?.clone();
            list.iter()
                .all(|n| n["status"] == "delivered")
                .then_some(list)
        },
    )
    .await
}

/// The delivery's `X-BRB-Signature` is the HMAC of its timestamp and raw body.
fn signature_ok(h: &BTreeMap<String, String>) -> bool {
    let ts: i64 = h["x-brb-timestamp"].parse().unwrap();
    brb_server::notify_signature(HOOK_SECRET, ts, h["body"].as_bytes()) == h["x-brb-signature"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_of_a_request_is_announced_once_on_slack_and_webhooks_and_only_resumes_page() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), configure(&r)).await;
    let alice = token(&s, "op-alice", "operator").await;
    let bob = token(&s, "op-bob", "operator").await;

    let paused = pause(&s, "workers").await;
    // A worker, so the registry tracks this switch's changes (and would track a request's).
    let (st, _) = call(
        &s,
        &alice,
        "POST",
        "/workers/report",
        json!({"worker_id": "w1", "switch": "workers",
            "observed_version": paused["version"], "status": "paused",
            "in_flight": 0, "processed_total": 0}),
    )
    .await;
    assert!(st == 200 || st == 204);

    // Filed: who, why, release, guard, expiry.
    let (st, v) = call(
        &s,
        &alice,
        "POST",
        "/switches/workers/resume-requests",
        json!({"reason": "backlog drained", "ramp": {"kind": "steps",
            "fractions": [0.1, 0.5, 1.0], "duration_secs": 600},
            "guards": [{"series": "db_load", "below": 80.0}]}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let req = v["resume_request"].clone();
    let id1 = req["id"].as_u64().unwrap();
    let (h, hook) = r
        .hook("the request's webhook", "switch.resume_requested", |_| true)
        .await;
    assert!(signature_ok(&h), "signed like every delivery");
    assert_eq!(h["content-type"], "application/json");
    assert!(h["x-brb-delivery"].parse::<u64>().is_ok());
    assert_eq!(hook["type"], "switch.resume_requested");
    assert_eq!(hook["environment"], "production");
    assert_eq!(hook["console_url"], "https://brb.example.test/");
    assert_eq!(hook["switch"]["version"], id1);
    assert_eq!(hook["switch"]["state"], "paused");
    assert_eq!(hook["request"], req, "the request as the API shows it");
    let text = hook["text"].as_str().unwrap();
    for needle in [
        "op-alice asks to resume workers",
        "gradually (10% → 50% → 100% over 10 min)",
        "guarded by db_load < 80",
        "backlog drained",
        "expires ",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    let slack = r
        .slack_saying("the request's Slack message", "asks to resume")
        .await;
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.starts_with("[production] op-alice asks to resume `workers` gradually"),
        "{text}"
    );
    let blocks = slack["attachments"][0]["blocks"].as_array().unwrap();
    assert_eq!(
        blocks[0]["text"]["text"],
        "[production] Resume requested: workers"
    );
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(
        fields
            .iter()
            .any(|f| f.starts_with("*Requested by*\nop-alice"))
    );
    assert!(fields.iter().any(|f| f.contains("guarded by db_load < 80")));
    assert!(fields.iter().any(|f| f.starts_with("*Expires*\n<!date^")));
    let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
    let ids: Vec<&str> = actions["elements"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action_id"].as_str())
        .collect();
    assert_eq!(ids, ["brb_approve", "brb_reject"]);
    let approve = &actions["elements"][0];
    let value: Value = serde_json::from_str(approve["value"].as_str().unwrap()).unwrap();
    assert_eq!(
        value,
        json!({"switch": "workers", "request_id": id1,
            "paused_at_ms": chrono::DateTime::parse_from_rfc3339(
                paused["changed_at"].as_str().unwrap()).unwrap().timestamp_millis()})
    );
    assert_eq!(approve["confirm"]["confirm"]["text"], "Approve resume");
    assert_eq!(actions["elements"][1]["style"], "danger");
    // A request is not a state change: no acknowledgement timing starts for it.
    let (_, counts) = call(&s, &alice, "GET", "/switches/workers/workers", json!(null)).await;
    let tracked: Vec<u64> = counts["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    assert!(
        !tracked.contains(&id1),
        "the request's version is timed like a change: {counts}"
    );

    // Rejected: by whom, which request; the switch stays paused.
    let (st, v) = call(
        &s,
        &bob,
        "POST",
        &format!("/switches/workers/resume-requests/{id1}/reject"),
        json!({"reason": "not yet"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, hook) = r
        .hook("the rejection's webhook", "switch.resume_rejected", |_| {
            true
        })
        .await;
    assert_eq!(hook["rejected_by"], "op-bob");
    assert_eq!(hook["request"]["id"], id1);
    assert_eq!(hook["request"]["requested_by"], "op-alice");
    assert_eq!(
        hook["text"],
        format!("resume request {id1} by op-alice rejected by op-bob: not yet")
    );
    let slack = r
        .slack_saying("the rejection on Slack", "rejected by")
        .await;
    assert_eq!(
        slack["text"],
        format!(
            "[production] `workers` stays paused: resume request {id1} by op-alice rejected by op-bob: not yet."
        )
    );

    // Approved: a resume, announced as a change that says who approved whose request, and the
    // only one of these that reaches PagerDuty (it resolves the pause's alert).
    let (_, v) = call(
        &s,
        &alice,
        "POST",
        "/switches/workers/resume-requests",
        json!({"reason": "now it is", "ramp": {"kind": "steps",
            "fractions": [0.5, 1.0], "duration_secs": 60}}),
    )
    .await;
    let id2 = v["resume_request"]["id"].as_u64().unwrap();
    let (st, v) = call(
        &s,
        &bob,
        "POST",
        &format!("/switches/workers/resume-requests/{id2}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let approved_version = v["version"].as_u64().unwrap();
    let (h, hook) = r
        .hook("the approval's webhook", "switch.changed", |b| {
            b["approval"].is_object()
        })
        .await;
    assert!(signature_ok(&h));
    assert_eq!(hook["type"], "switch.changed");
    assert_eq!(hook["switch"]["state"], "running");
    assert_eq!(hook["switch"]["version"], approved_version);
    assert_eq!(hook["approval"]["outcome"], "approved");
    assert_eq!(hook["approval"]["approved_by"], "op-bob");
    assert_eq!(hook["approval"]["request"]["id"], id2);
    assert_eq!(hook["approval"]["request"]["requested_by"], "op-alice");
    let slack = r
        .slack_saying(
            "the approval on Slack",
            "Resume approved by op-bob (requested by op-alice)",
        )
        .await;
    assert_eq!(slack["attachments"][0]["color"], "#2e7d32");

    // Break glass: loud on Slack (always @here), `approval.outcome` on webhooks.
    pause(&s, "workers").await;
    let (st, v) = call(
        &s,
        &s.admin,
        "POST",
        "/switches/workers/break-glass",
        json!({"reason": "customers down"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, hook) = r
        .hook("break glass's webhook", "switch.changed", |b| {
            b["approval"]["outcome"] == "break_glass"
        })
        .await;
    assert_eq!(hook["approval"]["by"], "admin");
    assert!(
        hook["text"]
            .as_str()
            .unwrap()
            .starts_with("BREAK GLASS, resumed without approval:"),
        "{hook}"
    );
    let slack = r.slack_saying("break glass on Slack", "BREAK GLASS").await;
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.starts_with("<!here> :rotating_light: [production] BREAK GLASS:")
            && text.contains(
                "WITHOUT APPROVAL (BREAK GLASS by admin, without approval: customers down)"
            ),
        "{text}"
    );
    assert_eq!(slack["attachments"][0]["color"], "#d32f2f");

    // Lapsed: announced once, by whichever sweep cleared it.
    pause(&s, "quick").await;
    let (st, v) = call(
        &s,
        &alice,
        "POST",
        "/switches/quick/resume-requests",
        json!({"reason": "try"}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id3 = v["resume_request"]["id"].as_u64().unwrap();
    // A lapse waits for the expiry (1 s) and a sweep: a longer limit.
    let (_, hook) = r
        .hook_within(
            Duration::from_secs(15),
            "the lapse's webhook",
            "switch.resume_expired",
            |_| true,
        )
        .await;
    assert_eq!(hook["request"]["id"], id3);
    assert!(
        hook["text"].as_str().unwrap().starts_with(&format!(
            "resume request {id3} by op-alice lapsed unapproved at "
        )),
        "{hook}"
    );

    // Once each: every outbox row delivered, and each event arrived exactly once per channel.
    let outbox = all_delivered(&s).await;
    let mut per: BTreeMap<(String, String, String, u64), usize> = BTreeMap::new();
    for n in &outbox {
        *per.entry((
            n["channel"].as_str().unwrap().to_string(),
            n["kind"].as_str().unwrap().to_string(),
            n["switch"].as_str().unwrap().to_string(),
            n["version"].as_u64().unwrap(),
        ))
        .or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 1), "{per:#?}");
    let kinds = |ch: &str| -> Vec<String> {
        let mut k: Vec<String> = per
            .keys()
            .filter(|(c, _, _, _)| c == ch)
            .map(|(_, k, _, _)| k.clone())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    assert_eq!(
        kinds("webhook:ops"),
        [
            "break_glass",
            "change",
            "resume_approved",
            "resume_expired",
            "resume_rejected",
            "resume_requested"
        ]
    );
    assert_eq!(
        kinds("pagerduty"),
        ["break_glass", "change", "resume_approved"],
        "incident tools hear of pauses and resumes only"
    );
    assert_eq!(r.hooks("switch.resume_requested").len(), 3);
    assert_eq!(r.hooks("switch.resume_rejected").len(), 1);
    assert_eq!(r.hooks("switch.resume_expired").len(), 1);
    let mut pd: Vec<String> = r
        .at("/pd/v2/enqueue")
        .into_iter()
        .map(|(_, b)| b["event_action"].as_str().unwrap().to_string())
        .collect();
    pd.sort();
    assert_eq!(
        pd,
        ["resolve", "resolve", "trigger", "trigger", "trigger"],
        "pause, approval, pause, break glass, pause of quick: nothing of requests"
    );
    s.stop().await;
}

/// A `block_actions` press on `action_id`, as Slack sends it.
fn press_body(user: &str, action_id: &str, value: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T1"},
        "api_app_id": "A1",
        "container": {"type": "message", "message_ts": "1764531200.000100", "channel_id": "C1"},
        "trigger_id": "123.456.abc",
        "team": {"id": "T1", "domain": "example"},
        "channel": {"id": "C1", "name": "incidents"},
        "response_url": response_url,
        "actions": [{
            "action_id": action_id,
            "block_id": "b1",
            "value": value,
            "type": "button",
            "action_ts": "1764531201.000200"
        }]
    });
    slack_payload_form(&payload)
}

/// `user` presses `button` (an element of a message's actions) of a message whose answers go
/// to `response_url`; the press must be acknowledged (200).
async fn press(s: &InProcess, user: &str, button: &Value, response_url: &str) {
    let body = press_body(
        user,
        button["action_id"].as_str().unwrap(),
        button["value"].as_str().unwrap(),
        response_url,
    );
    let ts = chrono::Utc::now().timestamp();
    let status = slack_signed(&s.url, "/api/v1/slack/interactions", &body, SECRET, ts)
        .await
        .status();
    assert_eq!(status, 200, "a press is acknowledged at once");
}

fn pause_ms(paused: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(paused["changed_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// The buttons of the Slack message of the pause that began at `pause_ms`.
async fn pause_buttons(r: &Receiver, pause_ms: i64) -> Vec<Value> {
    let mark = format!("\\\"paused_at_ms\\\":{pause_ms}");
    wait_for(Duration::from_secs(10), "the pause message", || async {
        let msg = r.at("/slack").into_iter().rev().map(|(_, v)| v).find(|m| {
            m["text"]
                .as_str()
                .unwrap_or("")
                .contains("Background workers PAUSED")
                && m.to_string().contains(&mark)
        })?;
        let blocks = msg["attachments"][0]["blocks"].as_array().unwrap().clone();
        let actions = blocks.iter().find(|b| b["type"] == "actions")?;
        Some(actions["elements"].as_array().unwrap().clone())
    })
    .await
}

fn button(elements: &[Value], id: &str) -> Value {
    elements
        .iter()
        .find(|e| e["action_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {elements:#?}"))
}

/// The newest answer at the press's `response_url` containing `needle`.
async fn answer(r: &Receiver, needle: &str) -> Value {
    wait_for(Duration::from_secs(10), needle, || async {
        r.at("/response")
            .into_iter()
            .rev()
            .map(|(_, v)| v)
            .find(|m| m["text"].as_str().unwrap_or("").contains(needle))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_files_approves_and_rejects_requests_as_the_api_does_never_the_requesters_own() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), configure(&r)).await;
    let response = r.url("/response");
    let paused = pause(&s, "workers").await;
    let first_ms = pause_ms(&paused);

    // The pause message of a switch that needs approval: Resume… (which files a request, and
    // its dialog says so), Approve resume and Reject, each with Slack's confirm dialog.
    let elements = pause_buttons(&r, first_ms).await;
    let ids: Vec<&str> = elements
        .iter()
        .filter_map(|e| e["action_id"].as_str())
        .collect();
    assert_eq!(ids, ["brb_resume", "brb_approve", "brb_reject"]);
    let resume = button(&elements, "brb_resume");
    let dialog = resume["confirm"]["text"]["text"].as_str().unwrap();
    assert!(
        dialog.contains("needs another operator's approval"),
        "{dialog}"
    );
    assert_eq!(resume["confirm"]["confirm"]["text"], "Request resume");
    let approve = button(&elements, "brb_approve");
    let reject = button(&elements, "brb_reject");
    for b in [&approve, &reject] {
        let c = &b["confirm"];
        assert_eq!(c["title"]["type"], "plain_text");
        assert!(c["title"]["text"].as_str().unwrap().chars().count() <= 100);
        assert_eq!(c["text"]["type"], "mrkdwn");
        assert!(c["text"]["text"].as_str().unwrap().chars().count() <= 300);
        for k in ["confirm", "deny"] {
            assert_eq!(c[k]["type"], "plain_text");
            assert!(c[k]["text"].as_str().unwrap().chars().count() <= 30);
        }
        let v: Value = serde_json::from_str(b["value"].as_str().unwrap()).unwrap();
        assert_eq!(v, json!({"switch": "workers", "paused_at_ms": first_ms}));
    }
    assert_eq!(approve["text"]["text"], "Approve resume");
    assert_eq!(reject["confirm"]["style"], "danger");

    // Approve with nothing filed yet: said so, nothing changes.
    press(&s, "U0BOB", &approve, &response).await;
    let none = answer(&r, "no open request").await;
    assert_eq!(none["response_type"], "ephemeral");

    // Alice's Resume… files a request (the default gradual release), nothing resumes.
    press(&s, "U0ALICE", &resume, &response).await;
    let filed = answer(&r, "your request").await;
    assert_eq!(filed["replace_original"], false);
    let sw = s.client().switch("workers").await.unwrap();
    assert_eq!(sw.state, SwitchState::Paused);
    let req = sw.resume_request.clone().expect("a request was filed");
    assert_eq!(
        (req.requested_by.as_str(), req.source),
        ("op-alice", Source::Slack)
    );
    assert_eq!(req.ramp.as_ref().map(|r| r.duration_secs), Some(600));

    // Her own approval is refused, only she sees why, and nothing changes.
    press(&s, "U0ALICE", &approve, &response).await;
    let refused = answer(&r, "another operator must approve it").await;
    assert_eq!(refused["response_type"], "ephemeral");
    assert_eq!(refused["replace_original"], false);
    let after = s.client().switch("workers").await.unwrap();
    assert_eq!(
        (after.version, after.state),
        (sw.version, SwitchState::Paused)
    );

    // Bob approves from the pause message: the API's path, so the request's ramp starts,
    // recorded as bob from Slack naming both; the message becomes the outcome.
    press(&s, "U0BOB", &approve, &response).await;
    let resumed = s
        .client()
        .wait_switch("workers", sw.version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(resumed.state, SwitchState::Running);
    assert_eq!(resumed.changed_by, "op-bob");
    assert_eq!(resumed.source, Source::Slack);
    assert_eq!(resumed.ramp.as_ref().map(|r| r.duration_secs), Some(600));
    let audit = s.client().audit(Some("workers"), 1, None).await.unwrap();
    assert_eq!(
        audit.entries[0].reason.as_deref(),
        Some(
            "approved by op-bob; requested by op-alice: requested from Slack (the Resume… button)"
        )
    );
    let replaced = answer(&r, "Resume approved by op-bob (requested by op-alice)").await;
    assert_eq!(replaced["replace_original"], true);
    assert!(!replaced.to_string().contains("brb_approve"));

    // Reject, from a request's announcement (its buttons name the request).
    let again = pause(&s, "workers").await;
    let elements = pause_buttons(&r, pause_ms(&again)).await;
    let resume = button(&elements, "brb_resume");
    press(&s, "U0ALICE", &resume, &response).await;
    let sw = s
        .client()
        .wait_switch("workers", resumed.version + 1, Duration::from_secs(10))
        .await
        .unwrap();
    let id = sw.resume_request.as_ref().expect("filed").id;
    let mark = format!("\\\"request_id\\\":{id}");
    let announced = r
        .slack("the request's message", |m| m.to_string().contains(&mark))
        .await;
    let actions = announced["attachments"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"]
        .as_array()
        .unwrap()
        .clone();
    let reject = button(&actions, "brb_reject");
    press(&s, "U0BOB", &reject, &response).await;
    let rejected = answer(&r, &format!("You rejected request {id} by op-alice")).await;
    assert_eq!(rejected["response_type"], "ephemeral");
    let sw = s
        .client()
        .wait_switch("workers", sw.version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(sw.state, SwitchState::Paused);
    assert!(sw.resume_request.is_none());
    let audit = s.client().audit(Some("workers"), 1, None).await.unwrap();
    assert_eq!(
        audit.entries[0].action,
        brb_api::AuditAction::ResumeRejected
    );
    assert_eq!(audit.entries[0].actor, "op-bob");
    s.stop().await;
}
