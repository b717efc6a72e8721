//! Proof and deliberate releases on the quick paths, against real HTTP on loopback:
//! - Slack: the answer to `/bigred pause` is followed up through Slack's `response_url` once
//!   the fleet acknowledged ("3/3 workers paused"), or with the stragglers after the wait; a
//!   plain `/bigred resume` releases gradually (`resume now` at once). The Slack fake is a
//!   local receiver that checks the request shape Slack documents for `response_url` (a JSON
//!   POST with `text`, `response_type`, `replace_original`).
//! - The desktop tray's quick toggle (the function the tray menu calls): pauses at once, but a
//!   paused switch is not released; it asks for the resume dialog.
//! - `brb pause --wait-drained` with the real binary: waits until no job is in flight, or says
//!   which workers still have jobs and fails.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brb_api::{SwitchState, WorkerReport, WorkerStatus};
use brb_e2e::calls::slack_signed;
use brb_e2e::{InProcess, ServerProc, cli, eventually};
use brb_server::config::{Secret, SlackConfig};
use serde_json::Value;

/// A local stand-in for Slack's `response_url`: records each follow-up, and refuses (400) a
/// request that is not what Slack accepts there.
#[derive(Clone, Default)]
struct SlackFake {
    got: Arc<Mutex<Vec<Value>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl SlackFake {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/commands/{team}/{id}/{secret}",
            axum::routing::any(move |req: axum::extract::Request| {
                let me = me.clone();
                async move {
                    let method = req.method().clone();
                    let ctype = req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    let problem = if method != axum::http::Method::POST {
                        Some(format!("method {method}"))
                    } else if !ctype.starts_with("application/json") {
                        Some(format!("content-type {ctype:?}"))
                    } else {
                        match serde_json::from_slice::<Value>(&body) {
                            Err(e) => Some(format!("not JSON: {e}")),
                            Ok(v) if !v["text"].is_string() => Some(format!("no text: {v}")),
                            Ok(v)
                                if !matches!(
                                    v["response_type"].as_str(),
                                    Some("in_channel" | "ephemeral")
                                ) =>
                            {
                                Some(format!("response_type: {v}"))
                            }
                            Ok(v) if !v["replace_original"].is_boolean() => {
                                Some(format!("replace_original: {v}"))
                            }
                            Ok(v) => {
                                me.got.lock().unwrap().push(v);
                                None
                            }
                        }
                    };
                    match problem {
                        Some(p) => {
                            me.refused.lock().unwrap().push(p);
                            (axum::http::StatusCode::BAD_REQUEST, "invalid_payload")
                        }
                        None => (axum::http::StatusCode::OK, "ok"),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN")
    }

    fn texts(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|v| v["text"].as_str().unwrap().to_string())
            .collect()
    }
}

const SECRET: &str = "slack-signing-secret";

async fn slash(s: &InProcess, text: &str, response_url: &str) -> Value {
    let body = format!(
        "token=x&team_id=T1&user_id=U0ALICE&user_name=alice&command=%2Fbigred&text={}&response_url={}",
        text.replace(' ', "+"),
        urlencode(response_url)
    );
    let ts = chrono::Utc::now().timestamp();
    let r = slack_signed(&s.url, "/api/v1/slack/commands", &body, SECRET, ts).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn report(
    c: &brb_client::Client,
    id: &str,
    version: u64,
    status: WorkerStatus,
    in_flight: u32,
) {
    c.report(&WorkerReport {
        worker_id: id.into(),
        switch: "workers".into(),
        observed_version: version,
        status,
        in_flight,
        processed_total: 0,
        error: None,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_follows_up_with_the_fleets_acknowledgement_or_the_stragglers() {
    let fake = SlackFake::default();
    let response_url = fake.start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        c.notify.slack = Some(SlackConfig {
            signing_secret: Some(Secret(SECRET.into())),
            operators: [("U0ALICE".to_string(), "alice".to_string())].into(),
            command: Some("/bigred".into()),
            follow_up_secs: Some(4),
            ..SlackConfig::default()
        });
    })
    .await;
    let c = s.client();
    for w in ["w1", "w2", "w3"] {
        report(&c, w, 1, WorkerStatus::Running, 1).await;
    }

    // Pause: the immediate answer, then the proof once all three acknowledged.
    let v = slash(&s, "pause db on fire", &response_url).await;
    assert!(v["text"].as_str().unwrap().contains("PAUSED"), "{v}");
    assert!(
        fake.texts().is_empty(),
        "no follow-up before the fleet acknowledged"
    );
    for w in ["w1", "w2", "w3"] {
        report(&c, w, 2, WorkerStatus::Paused, 0).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || fake.texts().len() == 1).await,
        "follow-up: {:?}, refused: {:?}",
        fake.texts(),
        fake.refused.lock().unwrap()
    );
    let t = &fake.texts()[0];
    assert!(t.contains("3/3 workers paused in"), "{t}");
    assert_eq!(fake.got.lock().unwrap()[0]["response_type"], "in_channel");

    // A plain resume from Slack releases gradually (the default ramp), and w3 never follows:
    // after the wait the follow-up names it.
    let v = slash(&s, "resume", &response_url).await;
    assert!(
        v["text"].as_str().unwrap().contains("resuming gradually"),
        "{v}"
    );
    let sw = c.switch("workers").await.unwrap();
    assert_eq!(sw.state, SwitchState::Running);
    assert_eq!(sw.ramp.as_ref().map(|r| r.duration_secs), Some(600));
    report(&c, "w1", 3, WorkerStatus::Running, 0).await;
    report(&c, "w2", 3, WorkerStatus::Running, 0).await;
    assert!(eventually(Duration::from_secs(10), || fake.texts().len() == 2).await);
    let t = &fake.texts()[1];
    assert!(
        t.contains("after 4 s only 2/3 workers resuming gradually"),
        "{t}"
    );
    assert!(t.contains("`w3` (still paused, v2)"), "{t}");
    assert!(!t.contains("`w1`"), "{t}");

    // `resume now` is the explicit way to release at once.
    slash(&s, "pause again", &response_url).await;
    slash(&s, "resume now", &response_url).await;
    let sw = c.switch("workers").await.unwrap();
    assert_eq!((sw.state, sw.ramp), (SwitchState::Running, None));
    assert!(fake.refused.lock().unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tray_pauses_at_once_but_never_releases_in_one_click() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |_| {}).await;
    let c = s.client();
    let first = brb_desktop::quick_toggle(&c, "workers").await.unwrap();
    let brb_desktop::QuickToggle::Paused { switch } = first else {
        panic!("running: the tray pauses, got {first:?}")
    };
    assert_eq!(
        (switch.state, switch.source),
        (SwitchState::Paused, brb_api::Source::Tray)
    );
    let second = brb_desktop::quick_toggle(&c, "workers").await.unwrap();
    let brb_desktop::QuickToggle::AskResume { switch } = second.clone() else {
        panic!("paused: the tray must ask for the resume dialog, got {second:?}")
    };
    let now = c.switch("workers").await.unwrap();
    assert_eq!(now.state, SwitchState::Paused, "nothing was released");
    assert_eq!(now.version, switch.version, "nothing was written");
    // What the webview receives from `brb_tray_toggle`.
    let wire = serde_json::to_value(&second).unwrap();
    assert_eq!(wire["action"], "ask_resume");
    assert_eq!(wire["switch"]["state"], "paused");
    s.stop().await;
}

#[test]
fn pause_wait_drained_waits_for_in_flight_to_reach_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let tf = dir.path().join("data/admin-token");
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN_FILE", tf.to_str().unwrap()),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = server.client();
    rt.block_on(async {
        report(&c, "w1", 1, WorkerStatus::Running, 2).await;
        report(&c, "w2", 1, WorkerStatus::Running, 1).await;
    });

    // w1 finishes its jobs while the CLI waits; w2 already had none left.
    let home2 = home.clone();
    let env2: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pause = std::thread::spawn(move || {
        let env: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli(
            &home2,
            &env,
            &[
                "pause",
                "--reason",
                "drain",
                "--wait",
                "0",
                "--wait-drained=60s",
            ],
        )
    });
    rt.block_on(async {
        assert!(
            brb_e2e::wait_for(Duration::from_secs(20), "the pause", || async {
                c.switch("workers").await.ok().filter(|s| s.version == 2)
            })
            .await
            .state
                == SwitchState::Paused
        );
        report(&c, "w2", 2, WorkerStatus::Paused, 0).await;
        report(&c, "w1", 2, WorkerStatus::Draining, 1).await;
        report(&c, "w1", 2, WorkerStatus::Paused, 0).await;
    });
    let o = pause.join().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("drained · 0 jobs in flight on 2 live workers"),
        "{out}"
    );

    // A worker that keeps a job: the CLI says so after the timeout and fails.
    rt.block_on(async {
        c.set_state(
            "workers",
            &brb_api::SetStateRequest {
                state: SwitchState::Running,
                reason: None,
                source: None,
                expected_version: None,
                ramp: None,
                guards: Vec::new(),
            },
        )
        .await
        .unwrap();
        report(&c, "w1", 3, WorkerStatus::Running, 0).await;
        report(&c, "w2", 3, WorkerStatus::Running, 3).await;
    });
    let started = std::time::Instant::now();
    let pause = std::thread::spawn({
        let home = home.clone();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            cli(&home, &env, &["pause", "--wait", "0", "--wait-drained=2s"])
        }
    });
    rt.block_on(async {
        brb_e2e::wait_for(Duration::from_secs(20), "the second pause", || async {
            c.switch("workers").await.ok().filter(|s| s.version == 4)
        })
        .await;
        report(&c, "w1", 4, WorkerStatus::Paused, 0).await;
        report(&c, "w2", 4, WorkerStatus::Draining, 3).await;
    });
    let o = pause.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "not drained must fail");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        err.contains("not drained after 2 s: 3 jobs in flight on 1 of 2 workers: w2 (3 in flight)"),
        "{err}"
    );
    // --wait-drained is for pauses only: a clear refusal, nothing changed.
    let o = cli(&home, &env, &["resume", "--wait-drained"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--wait-drained applies to pause only"));
}

#[test]
fn brb_ramp_holds_continues_extends_and_aborts_a_release() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let tf = dir.path().join("data/admin-token");
    let env = [
        ("BRB_URL", server.url.as_str()),
        ("BRB_TOKEN_FILE", tf.to_str().unwrap()),
    ];
    let run = |args: &[&str]| {
        let o = cli(&home, &env, args);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // Nothing to hold yet: a clear refusal.
    let (ok, _, err) = run(&["ramp", "hold"]);
    assert!(!ok);
    assert!(
        err.contains("workers has no gradual release in progress; nothing was done"),
        "{err}"
    );

    assert!(run(&["pause", "--wait", "0"]).0);
    assert!(run(&["resume", "--ramp", "steps:10m", "--wait", "0"]).0);
    let (ok, out, err) = run(&["ramp", "hold", "--reason", "db warming up"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("workers is running, release held at 10% (v4, changed by admin via cli)"),
        "{out}"
    );
    let (_, out, _) = run(&["status"]);
    assert!(out.contains("[release held at 10%"), "{out}");
    let (ok, out, err) = run(&["ramp", "continue"]);
    assert!(ok && out.contains("releasing: 10% now"), "{out}{err}");
    let (ok, out, err) = run(&["ramp", "extend", "5m"]);
    assert!(ok, "{err}");
    let secs: u64 = out
        .split("100% in ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((880..=900).contains(&secs), "five more minutes: {out}");
    let (ok, out, err) = run(&["ramp", "abort", "-r", "db hot again"]);
    assert!(
        ok && out.contains("workers is PAUSED (release aborted)"),
        "{out}{err}"
    );
    let (_, out, _) = run(&["audit", "--limit", "4"]);
    assert!(
        out.contains("release aborted at 10%: db hot again"),
        "{out}"
    );
    assert!(out.contains("ramp changed"), "{out}");
    let (ok, _, err) = run(&["ramp", "extend", "soon"]);
    assert!(
        !ok && err.contains("\"soon\": expected e.g. 0, 30m, 1h or 7d"),
        "{err}"
    );
}

/// On a switch whose resumes need a second operator, a typed `/bigred resume …` files the
/// request it describes (ramp and guard as typed) and says so; nothing resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_resume_on_an_approval_switch_files_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path(), |c| {
        c.primary.approval = brb_server::config::ApprovalConfig {
            resume: 1,
            expire: "15m".into(),
        };
        c.notify.slack = Some(SlackConfig {
            signing_secret: Some(Secret(SECRET.into())),
            operators: [("U0ALICE".to_string(), "alice".to_string())].into(),
            command: Some("/bigred".into()),
            ..SlackConfig::default()
        });
    })
    .await;
    let c = s.client();
    slash(&s, "pause db on fire", "").await;
    let v = slash(&s, "resume steps:5m --guard db_load < 80", "").await;
    let text = v["text"].as_str().unwrap();
    assert!(
        text.contains("needs another operator's approval") && text.contains("is filed"),
        "{v}"
    );
    let sw = c.switch("workers").await.unwrap();
    assert_eq!(
        sw.state,
        SwitchState::Paused,
        "nothing resumes without approval"
    );
    let req = sw.resume_request.expect("the command filed a request");
    assert_eq!(req.requested_by, "alice");
    assert_eq!(req.ramp.as_ref().map(|r| r.duration_secs), Some(300));
    assert_eq!(req.guards.len(), 1, "{:?}", req.guards);
    s.stop().await;
}
