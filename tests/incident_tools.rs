//! PagerDuty (Events API v2) and Grafana annotations as outbox channels, against local
//! recording receivers on loopback that answer the way the real APIs do (PagerDuty: `202` with
//! `{"status":"success",...}`; Grafana: `200` with the new annotation's id, finds by tag, patches
//! by id) and check every request's shape: path, method, content type, auth, the exact JSON
//! keys, times in epoch milliseconds. Scripted answers (500, 429, 400, 401) show the retries.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_api::{DeliveryStatus, Notification, Source, SwitchState};
use brb_e2e::calls::{
    describe_workers, outbox, set_workers as set, set_workers_via, slack_payload_form, slack_signed,
};
use brb_e2e::{InProcess, ServerProc, wait_for};
use brb_server::config::{GrafanaConfig, PagerDutyConfig, Secret, SlackConfig};
use serde_json::{Value, json};

const ROUTING_KEY: &str = "R0UTING-KEY-0123456789abcdef";
const GRAFANA_TOKEN: &str = "glsa_T0KEN_do_not_log";

#[derive(Clone, Debug)]
struct Hit {
    method: String,
    path: String,
    query: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
    /// The status the receiver answered.
    status: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Annotation {
    id: u64,
    time: i64,
    time_end: Option<i64>,
    tags: Vec<String>,
    text: String,
}

/// An answer to give instead of the normal one: (method, path prefix, status, extra header).
type Scripted = (
    &'static str,
    &'static str,
    u16,
    Option<(&'static str, &'static str)>,
);

#[derive(Default)]
struct Inner {
    hits: Vec<Hit>,
    script: VecDeque<Scripted>,
    /// With a scripted 500 on a Grafana create: store the annotation anyway (the answer was
    /// lost, the work was done).
    lose_create_answer: bool,
    annotations: Vec<Annotation>,
}

/// Plays PagerDuty's `/v2/enqueue` and Grafana's `/api/annotations` on one loopback port.
#[derive(Clone)]
struct Receiver {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl Receiver {
    async fn start() -> Receiver {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let state = inner.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let inner = state.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or("").to_string();
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap()
                    .to_vec();
                let mut g = inner.lock().unwrap();
                let scripted = match g.script.front() {
                    Some((m, p, _, _)) if *m == method && path.starts_with(p) => g.script.pop_front(),
                    _ => None,
                };
                let (status, extra, answer) = match scripted {
                    Some((_, _, status, extra)) => {
                        if g.lose_create_answer && method == "POST" && path == "/api/annotations" {
                            answer_grafana(&mut g, &method, &path, &query, &body);
                        }
                        (status, extra, json!({"message": "scripted failure"}))
                    }
                    None if path == "/v2/enqueue" => {
                        let key = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v["dedup_key"].as_str().map(str::to_string));
                        (
                            202,
                            None,
                            json!({"status": "success", "message": "Event processed", "dedup_key": key}),
                        )
                    }
                    // Slack's incoming webhook and a press's response_url.
                    None if !path.starts_with("/api/") => (200, None, json!("ok")),
                    None => {
                        let (status, v) = answer_grafana(&mut g, &method, &path, &query, &body);
                        (status, None, v)
                    }
                };
                g.hits.push(Hit {
                    method,
                    path,
                    query,
                    headers,
                    body,
                    status,
                });
                let mut res = axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                if let Some((k, v)) = extra {
                    res = res.header(k, v);
                }
                res.body(axum::body::Body::from(answer.to_string())).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { inner, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn script(&self, answers: &[Scripted]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    fn hits(&self, path_prefix: &str) -> Vec<Hit> {
        let g = self.inner.lock().unwrap();
        g.hits
            .iter()
            .filter(|h| h.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    fn annotations(&self) -> Vec<Annotation> {
        self.inner.lock().unwrap().annotations.clone()
    }
}

/// Grafana's answers: create assigns an id, find filters by every `tags=` given, patch sets
/// `timeEnd`/`text` of an existing id.
fn answer_grafana(
    g: &mut Inner,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> (u16, Value) {
    match (method, path) {
        ("POST", "/api/annotations") => {
            let v: Value = serde_json::from_slice(body).unwrap();
            let id = g.annotations.len() as u64 + 1;
            g.annotations.push(Annotation {
                id,
                time: v["time"].as_i64().unwrap(),
                time_end: v["timeEnd"].as_i64(),
                tags: serde_json::from_value(v["tags"].clone()).unwrap(),
                text: v["text"].as_str().unwrap().to_string(),
            });
            (200, json!({"message": "Annotation added", "id": id}))
        }
        ("GET", "/api/annotations") => {
            let want: Vec<String> = reqwest::Url::parse(&format!("http://grafana/?{query}"))
                .unwrap()
                .query_pairs()
                .filter(|(k, _)| k == "tags")
                .map(|(_, v)| v.to_string())
                .collect();
            let found: Vec<Value> = g
                .annotations
                .iter()
                .filter(|a| want.iter().all(|t| a.tags.contains(t)))
                .map(|a| json!({"id": a.id, "time": a.time, "timeEnd": a.time_end, "tags": a.tags, "text": a.text}))
                .collect();
            (200, Value::Array(found))
        }
        ("PATCH", p) if p.starts_with("/api/annotations/") => {
            let id: u64 = p.trim_start_matches("/api/annotations/").parse().unwrap();
            let v: Value = serde_json::from_slice(body).unwrap();
            match g.annotations.iter_mut().find(|a| a.id == id) {
                Some(a) => {
                    if let Some(end) = v["timeEnd"].as_i64() {
                        a.time_end = Some(end);
                    }
                    if let Some(t) = v["text"].as_str() {
                        a.text = t.to_string();
                    }
                    (200, json!({"message": "Annotation patched"}))
                }
                None => (404, json!({"message": "Annotation not found"})),
            }
        }
        _ => (404, json!({"message": "Not found"})),
    }
}

fn configure(r: &Receiver, slack: Option<&Receiver>) -> impl FnOnce(&mut brb_server::Config) {
    let pd = r.url("/v2/enqueue");
    let grafana = r.url("");
    let slack = slack.map(|s| s.url("/slack"));
    move |c| {
        c.public_url = Some("https://brb.example.test".into());
        c.environment.name = "production".into();
        c.notify.retry_max_secs = 1;
        c.notify.pagerduty = Some(PagerDutyConfig {
            routing_key: Secret(ROUTING_KEY.into()),
            url: pd,
            severity: "critical".into(),
            source: None,
        });
        c.notify.grafana = Some(GrafanaConfig {
            url: grafana,
            token: Secret(GRAFANA_TOKEN.into()),
            tags: vec!["brb".into(), "production".into()],
            dashboard_uid: None,
            panel_id: None,
        });
        if let Some(url) = slack {
            c.notify.slack = Some(SlackConfig {
                webhook_url: Some(Secret(url)),
                ..SlackConfig::default()
            });
        }
    }
}

/// Waits until every notification of `channel` has settled (delivered or given up) and there
/// are `n` of them.
async fn settled(s: &InProcess, channel: &str, n: usize) -> Vec<Notification> {
    wait_for(
        Duration::from_secs(30),
        &format!("{n} {channel} notifications settled"),
        || async {
            let o: Vec<_> = outbox(s)
                .await
                .into_iter()
                .filter(|x| x.channel == channel)
                .collect();
            (o.len() == n && o.iter().all(|x| x.status != DeliveryStatus::Pending)).then_some(o)
        },
    )
    .await
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set_of(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_triggers_on_pause_and_resolves_on_resume() {
    let r = Receiver::start().await;
    let slack = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        configure(&r, Some(&slack))(c);
        c.notify.grafana = None;
        c.notify.remind_every = "1s".into();
    })
    .await;

    let paused = set(&s, SwitchState::Paused, "db on fire").await;
    // While paused: a description edit (a new version, the same pause) and a reminder (which
    // goes to Slack, never to PagerDuty).
    describe_workers(&s, "edited while paused").await;
    wait_for(Duration::from_secs(10), "a Slack reminder", || async {
        slack
            .hits("/slack")
            .iter()
            .any(|h| h.json()["text"].as_str().unwrap_or("").contains("Reminder"))
            .then_some(())
    })
    .await;
    let resumed = set(&s, SwitchState::Running, "recovered").await;
    let o = settled(&s, "pagerduty", 2).await;
    assert!(
        o.iter().all(|x| x.status == DeliveryStatus::Delivered),
        "{o:#?}"
    );
    assert!(o.iter().all(|x| x.kind == "change"), "no reminders: {o:#?}");

    let hits = r.hits("/v2/enqueue");
    assert_eq!(hits.len(), 2, "one trigger, one resolve: {hits:#?}");
    for h in &hits {
        assert_eq!(h.method, "POST");
        assert_eq!(h.status, 202);
        assert_eq!(h.headers["content-type"], "application/json");
    }
    let (trigger, resolve) = (hits[0].json(), hits[1].json());
    let key = format!(
        "brb:production:workers:{}",
        paused.changed_at.timestamp_millis()
    );
    assert_eq!(
        keys(&trigger),
        set_of(&[
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "client",
            "client_url",
            "links"
        ])
    );
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], key);
    let p = &trigger["payload"];
    assert_eq!(
        keys(p),
        set_of(&[
            "summary",
            "source",
            "severity",
            "timestamp",
            "component",
            "group",
            "class",
            "custom_details"
        ])
    );
    let summary = p["summary"].as_str().unwrap();
    assert!(
        summary.contains("PAUSED") && summary.contains("db on fire"),
        "{summary}"
    );
    assert!(summary.chars().count() <= 1024);
    assert_eq!(p["source"], "production");
    assert!(["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap()));
    let ts = chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!(ts.timestamp_millis(), paused.changed_at.timestamp_millis());
    assert_eq!(p["component"], "workers");
    assert_eq!(p["custom_details"]["reason"], "db on fire");
    assert_eq!(trigger["links"][0]["href"], "https://brb.example.test/");
    // The resolve names the same alert and says nothing else.
    assert_eq!(
        keys(&resolve),
        set_of(&["routing_key", "event_action", "dedup_key"])
    );
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(
        resolve["dedup_key"], key,
        "the edit while paused kept the key"
    );
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    assert!(resumed.version > paused.version + 1);

    // A second pause is a second alert.
    let again = set(&s, SwitchState::Paused, "again").await;
    settled(&s, "pagerduty", 3).await;
    let third = r.hits("/v2/enqueue")[2].json();
    assert_eq!(third["event_action"], "trigger");
    assert_ne!(third["dedup_key"], key);
    assert_eq!(
        third["dedup_key"],
        format!(
            "brb:production:workers:{}",
            again.changed_at.timestamp_millis()
        )
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_retries_500_and_429_holds_the_resolve_and_gives_up_on_400() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        configure(&r, None)(c);
        c.notify.grafana = None;
    })
    .await;
    // The trigger meets a 500, then a 429 asking for a second, then is accepted; the resume
    // comes meanwhile, and its resolve must not overtake the trigger.
    r.script(&[
        ("POST", "/v2/enqueue", 500, None),
        ("POST", "/v2/enqueue", 429, Some(("retry-after", "1"))),
    ]);
    set(&s, SwitchState::Paused, "slow").await;
    set(&s, SwitchState::Running, "ok").await;
    let o = settled(&s, "pagerduty", 2).await;
    assert!(
        o.iter().all(|x| x.status == DeliveryStatus::Delivered),
        "{o:#?}"
    );
    let hits = r.hits("/v2/enqueue");
    let statuses: Vec<(String, u16)> = hits
        .iter()
        .map(|h| {
            (
                h.json()["event_action"].as_str().unwrap().to_string(),
                h.status,
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("trigger".to_string(), 500),
            ("trigger".to_string(), 429),
            ("trigger".to_string(), 202),
            ("resolve".to_string(), 202),
        ],
        "retried until accepted, once; the resolve only after"
    );
    // Every attempt is the same event: a repeat would join the open alert, never open another.
    let triggers: BTreeSet<String> = hits[..3]
        .iter()
        .map(|h| String::from_utf8(h.body.clone()).unwrap())
        .collect();
    assert_eq!(triggers.len(), 1);
    // The 429 asked for a second: the next attempt waited at least that long.
    let trigger_row = o.iter().min_by_key(|x| x.id).unwrap();
    assert_eq!(trigger_row.attempts, 3);

    // A 400 (the JSON was refused) is given up at once: one attempt, the reason kept, the
    // routing key never in it.
    r.script(&[("POST", "/v2/enqueue", 400, None)]);
    set(&s, SwitchState::Paused, "bad").await;
    let o = settled(&s, "pagerduty", 3).await;
    let failed = o.iter().max_by_key(|x| x.id).unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed, "{failed:#?}");
    assert_eq!(failed.attempts, 1);
    let err = failed.last_error.as_deref().unwrap();
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(!err.contains(ROUTING_KEY), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_draws_a_region_from_pause_to_resume() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        configure(&r, None)(c);
        c.notify.pagerduty = None;
    })
    .await;
    let paused = set(&s, SwitchState::Paused, "db on fire").await;
    settled(&s, "grafana", 1).await;
    // A restart between the pause and the resume: the id is found again by the pause's tag.
    s.stop().await;
    let s = InProcess::start(dir.path(), |c| {
        configure(&r, None)(c);
        c.notify.pagerduty = None;
    })
    .await;
    let resumed = set(&s, SwitchState::Running, "recovered").await;
    let o = settled(&s, "grafana", 2).await;
    assert!(
        o.iter().all(|x| x.status == DeliveryStatus::Delivered),
        "{o:#?}"
    );

    let hits = r.hits("/api/annotations");
    for h in &hits {
        assert_eq!(
            h.headers["authorization"].to_str().unwrap(),
            format!("Bearer {GRAFANA_TOKEN}"),
            "{} {}",
            h.method,
            h.path
        );
    }
    let creates: Vec<&Hit> = hits.iter().filter(|h| h.method == "POST").collect();
    assert_eq!(creates.len(), 1, "{hits:#?}");
    let create = creates[0].json();
    assert_eq!(creates[0].headers["content-type"], "application/json");
    assert_eq!(keys(&create), set_of(&["time", "tags", "text"]));
    let pause_ms = paused.changed_at.timestamp_millis();
    assert!(create["time"].is_i64(), "epoch ms as an integer: {create}");
    assert_eq!(create["time"], pause_ms);
    let tag = format!("brb-pause-workers-{pause_ms}");
    assert_eq!(create["tags"], json!(["brb", "production", tag]));
    assert!(create["text"].as_str().unwrap().contains("db on fire"));
    // The resume looked the annotation up by its tag, then patched that id's end.
    let finds: Vec<&Hit> = hits.iter().filter(|h| h.method == "GET").collect();
    assert!(
        finds
            .iter()
            .all(|h| h.query.contains(&format!("tags={tag}"))),
        "{finds:#?}"
    );
    let patches: Vec<&Hit> = hits.iter().filter(|h| h.method == "PATCH").collect();
    assert_eq!(patches.len(), 1, "{hits:#?}");
    assert_eq!(patches[0].path, "/api/annotations/1");
    let patch = patches[0].json();
    assert_eq!(keys(&patch), set_of(&["timeEnd", "text"]));
    assert_eq!(patch["timeEnd"], resumed.changed_at.timestamp_millis());
    let a = r.annotations();
    assert_eq!(a.len(), 1, "one region: {a:#?}");
    assert_eq!(
        (a[0].time, a[0].time_end),
        (pause_ms, Some(resumed.changed_at.timestamp_millis()))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_lost_answers_make_no_duplicate_and_refused_tokens_give_up() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        configure(&r, None)(c);
        c.notify.pagerduty = None;
    })
    .await;
    // Grafana creates the annotation but the answer is a 502: the retry finds it by its tag
    // and does not create a second.
    {
        let mut g = r.inner.lock().unwrap();
        g.lose_create_answer = true;
    }
    r.script(&[("POST", "/api/annotations", 502, None)]);
    set(&s, SwitchState::Paused, "slow").await;
    set(&s, SwitchState::Running, "ok").await;
    let o = settled(&s, "grafana", 2).await;
    assert!(
        o.iter().all(|x| x.status == DeliveryStatus::Delivered),
        "{o:#?}"
    );
    let a = r.annotations();
    assert_eq!(a.len(), 1, "no duplicate after a lost answer: {a:#?}");
    assert!(a[0].time_end.is_some(), "the region was closed");
    assert_eq!(
        r.hits("/api/annotations")
            .iter()
            .filter(|h| h.method == "POST")
            .count(),
        1,
        "the retry created nothing"
    );

    // A refused token is given up at once, and the token never shows in the error.
    r.script(&[("GET", "/api/annotations", 401, None)]);
    set(&s, SwitchState::Paused, "again").await;
    let o = settled(&s, "grafana", 3).await;
    let failed = o.iter().max_by_key(|x| x.id).unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed, "{failed:#?}");
    assert_eq!(failed.attempts, 1);
    let err = failed.last_error.as_deref().unwrap();
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(!err.contains(GRAFANA_TOKEN), "{err}");
    // ...and its resume still draws the whole region (nothing to patch).
    set(&s, SwitchState::Running, "ok again").await;
    let o = settled(&s, "grafana", 4).await;
    assert_eq!(
        o.iter().max_by_key(|x| x.id).unwrap().status,
        DeliveryStatus::Delivered
    );
    let a = r.annotations();
    assert_eq!(a.len(), 2, "{a:#?}");
    assert!(a[1].time_end.unwrap() > a[1].time);
    s.stop().await;
}

/// The real binary, configured by a TOML file (and the Grafana token from the environment):
/// a pause reaches Slack (with its Resume… button), PagerDuty and Grafana; a signed press on
/// the button resumes gradually; the resume resolves the alert and closes the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_wires_pagerduty_grafana_and_the_slack_button_from_its_config_file() {
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("brb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
public_url = "https://brb.example.test"

[environment]
name = "production"

[notify]
retry_max_secs = 1

[notify.slack]
webhook_url = "{slack}"
signing_secret = "e2e-signing-secret"

[notify.slack.operators]
U0ALICE = "alice"

[notify.pagerduty]
routing_key = "{key}"
url = "{pd}"
severity = "error"

[notify.grafana]
url = "{grafana}"
tags = ["brb"]
"#,
            slack = r.url("/slack"),
            key = ROUTING_KEY,
            pd = r.url("/v2/enqueue"),
            grafana = r.url(""),
        ),
    )
    .unwrap();
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            ("BRB_CONFIG", config.to_str().unwrap()),
            ("BRB_GRAFANA_TOKEN", GRAFANA_TOKEN),
        ],
    );
    let c = server.client();
    let paused = set_workers_via(&c, SwitchState::Paused, "db on fire", Source::Cli).await;
    let value = wait_for(Duration::from_secs(20), "the pause everywhere", || async {
        let slack = r.hits("/slack");
        let button = slack.iter().find_map(|h| {
            h.json()["attachments"][0]["blocks"]
                .as_array()?
                .iter()
                .find(|b| b["type"] == "actions")?["elements"]
                .as_array()?
                .iter()
                .find(|e| e["action_id"] == "brb_resume")
                .and_then(|e| e["value"].as_str().map(str::to_string))
        })?;
        let triggered = r.hits("/v2/enqueue").iter().any(|h| h.status == 202);
        let annotated = !r.annotations().is_empty();
        (triggered && annotated).then_some(button)
    })
    .await;
    let trigger = r.hits("/v2/enqueue")[0].json();
    assert_eq!(trigger["payload"]["severity"], "error");
    assert_eq!(
        trigger["dedup_key"],
        format!(
            "brb:production:workers:{}",
            paused.changed_at.timestamp_millis()
        )
    );

    // alice presses Resume… (Slack signs the press).
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U0ALICE", "username": "alice"},
        "response_url": r.url("/response"),
        "actions": [{"action_id": "brb_resume", "type": "button", "value": value}],
    });
    let body = slack_payload_form(&payload);
    let ts = chrono::Utc::now().timestamp();
    let res = slack_signed(
        &server.url,
        "/api/v1/slack/interactions",
        &body,
        "e2e-signing-secret",
        ts,
    )
    .await;
    assert_eq!(res.status(), 200);
    let resumed = c
        .wait_switch("workers", paused.version, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(resumed.state, SwitchState::Running);
    assert!(resumed.ramp.is_some(), "gradually");
    assert_eq!(
        (resumed.changed_by.as_str(), resumed.source),
        ("alice", Source::Slack)
    );
    wait_for(
        Duration::from_secs(20),
        "the resolve and the region",
        || async {
            let resolved = r
                .hits("/v2/enqueue")
                .iter()
                .any(|h| h.json()["event_action"] == "resolve" && h.status == 202);
            let closed = r
                .annotations()
                .first()
                .is_some_and(|a| a.time_end.is_some());
            let replaced = r
                .hits("/response")
                .iter()
                .any(|h| h.json()["replace_original"] == true);
            (resolved && closed && replaced).then_some(())
        },
    )
    .await;
    let a = r.annotations();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].time, a[0].time_end),
        (
            paused.changed_at.timestamp_millis(),
            Some(resumed.changed_at.timestamp_millis())
        )
    );
}
