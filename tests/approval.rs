//! The emergency stop and the second person: a pause is never refused (rate limits, approval
//! requirements), and a resume of a switch configured with `[switches.approval]` needs a second
//! operator. Everything over the real HTTP API of the real `brb` binary.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use brb_e2e::calls::{
    create_switch, error_code as code, get_switch as get, mint_token as token, state_of,
};
use brb_e2e::{Api, ServerProc, cli, wait_for};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_never_rate_limited_from_any_entry_point() {
    let dir = tempfile::tempdir().unwrap();
    // One state change per token and per address, refilled once in ~17 minutes: after the
    // first resume, every other change from loopback is over its budget for this whole test.
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[("BRB_CHANGES_PER_SEC", "0.001"), ("BRB_CHANGES_BURST", "1")],
    );
    let api = Api::new(&server);
    let admin = server.admin_token();
    let op = token(&api, &admin, "op-alice", "operator", None).await;
    let sources = ["api", "cli", "web", "desktop", "tray", "button"];
    for s in sources {
        create_switch(&api, &admin, &format!("by-{s}")).await;
    }
    create_switch(&api, &admin, "office").await;
    create_switch(&api, &admin, "by-brb-cli").await;
    let button = token(
        &api,
        &admin,
        "office-button",
        "operator",
        Some(json!({ "switches": ["office"], "pause_only": true })),
    )
    .await;

    // A pause, then a gradual release that spends the whole budget.
    let put = |to: &'static str| json!({ "state": to });
    let (s, v) = api
        .call("PUT", "/switches/workers/state", &op, Some(put("paused")))
        .await;
    assert_eq!(s, 200, "the first pause: {v}");
    let (s, v) = api
        .call(
            "PUT",
            "/switches/workers/state",
            &op,
            Some(json!({ "state": "running", "ramp": { "kind": "steps", "fractions": [0.1, 0.5, 1.0], "duration_secs": 600 } })),
        )
        .await;
    assert_eq!(s, 200, "the one resume the budget allows: {v}");
    // The limit is on: another resume, or a ramp extension, is refused.
    let (s, v) = api
        .call("PUT", "/switches/by-api/state", &op, Some(put("running")))
        .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/switches/workers/ramp",
            &op,
            Some(json!({ "action": "extend", "by_secs": 60 })),
        )
        .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");

    // Every way to pause still works, at once.
    let (s, v) = api
        .call(
            "POST",
            "/switches/workers/ramp",
            &op,
            Some(json!({ "action": "abort", "reason": "relapse" })),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("paused")),
        "abort: {v}"
    );
    for src in sources {
        let (s, v) = api
            .call(
                "PUT",
                &format!("/switches/by-{src}/state"),
                &op,
                Some(json!({ "state": "paused", "source": src, "reason": "db on fire" })),
            )
            .await;
        assert_eq!(s, 200, "pause from {src}: {v}");
        assert_eq!(v["source"], src, "{v}");
        assert_eq!(v["state"], "paused", "{v}");
    }
    let (s, v) = api
        .call(
            "PUT",
            "/switches/office/state",
            &button,
            Some(json!({ "state": "paused", "source": "button" })),
        )
        .await;
    assert_eq!(s, 200, "the pause-only button token: {v}");
    // Pausing a paused switch again is fine too (and writes nothing).
    for _ in 0..20 {
        let (s, v) = api
            .call(
                "PUT",
                "/switches/office/state",
                &button,
                Some(put("paused")),
            )
            .await;
        assert_eq!(s, 200, "a repeated pause: {v}");
    }
    // The CLI, a separate process with its own connection.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let o = cli(
        &home,
        &[("BRB_URL", server.url.as_str()), ("BRB_TOKEN", op.as_str())],
        &[
            "pause",
            "by-brb-cli",
            "--wait",
            "0",
            "--reason",
            "from a terminal",
        ],
    );
    assert!(
        o.status.success(),
        "brb pause: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(state_of(&api, &admin, "by-brb-cli").await, "paused");
    // And resumes are still limited afterwards: the exemption is for the brake only.
    let (s, v) = api
        .call(
            "PUT",
            "/switches/by-api/state",
            &admin,
            Some(put("running")),
        )
        .await;
    assert_eq!((s, code(&v)), (429, "rate_limited"), "{v}");
    assert_eq!(state_of(&api, &admin, "by-api").await, "paused");
}

const CONFIG: &str = r#"
[primary.approval]
resume = 1

[[switches]]
name = "quick"
[switches.approval]
resume = 1
expire = "2s"

[[switches]]
name = "free"
"#;

/// The tokens of the matrix: an admin, two operators, a viewer and an office button.
struct People {
    admin: String,
    alice: String,
    bob: String,
    viewer: String,
    button: String,
}

async fn start(dir: &std::path::Path) -> (ServerProc, Api, People) {
    let cfg = dir.join("brb.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let cfg = cfg.display().to_string();
    let server = ServerProc::start(&dir.join("data"), &[("BRB_CONFIG", cfg.as_str())]);
    let api = Api::new(&server);
    let admin = server.admin_token();
    let people = People {
        alice: token(&api, &admin, "op-alice", "operator", None).await,
        bob: token(&api, &admin, "op-bob", "operator", None).await,
        viewer: token(&api, &admin, "dash", "viewer", None).await,
        button: token(
            &api,
            &admin,
            "office-button",
            "operator",
            Some(json!({ "switches": ["workers", "quick"], "pause_only": true })),
        )
        .await,
        admin,
    };
    (server, api, people)
}

async fn put_state(api: &Api, who: &str, name: &str, to: &str) -> (u16, Value) {
    api.call(
        "PUT",
        &format!("/switches/{name}/state"),
        who,
        Some(json!({ "state": to, "reason": "matrix" })),
    )
    .await
}

async fn request(api: &Api, who: &str, name: &str, body: Value) -> (u16, Value) {
    api.call(
        "POST",
        &format!("/switches/{name}/resume-requests"),
        who,
        Some(body),
    )
    .await
}

async fn decide(api: &Api, who: &str, name: &str, id: u64, verb: &str) -> (u16, Value) {
    api.call(
        "POST",
        &format!("/switches/{name}/resume-requests/{id}/{verb}"),
        who,
        Some(json!({})),
    )
    .await
}

async fn break_glass(api: &Api, who: &str, body: Value) -> (u16, Value) {
    api.call("POST", "/switches/workers/break-glass", who, Some(body))
        .await
}

/// Every token allowed to pause pauses, and the answer is 200 with the switch paused.
async fn everyone_pauses(api: &Api, p: &People, name: &str, when: &str) {
    for (who, t) in [
        ("admin", &p.admin),
        ("alice", &p.alice),
        ("bob", &p.bob),
        ("button", &p.button),
    ] {
        let (s, v) = put_state(api, t, name, "paused").await;
        assert_eq!(s, 200, "{who} pausing {name} {when}: {v}");
        assert_eq!(v["state"], "paused", "{who} {when}: {v}");
    }
    let (s, v) = put_state(api, &p.viewer, name, "paused").await;
    assert_eq!(
        (s, code(&v)),
        (403, "forbidden"),
        "a viewer may not pause: {v}"
    );
}

async fn actions(api: &Api, admin: &str, name: &str) -> Vec<(String, String)> {
    let (s, v) = api
        .call(
            "GET",
            &format!("/audit?switch={name}&limit=100"),
            admin,
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_needs_a_second_operator_and_pause_needs_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api, p) = start(dir.path()).await;

    // Running: every pause passes.
    everyone_pauses(&api, &p, "workers", "while running").await;
    // Paused: a plain resume is refused, by anyone, even an admin.
    for t in [&p.alice, &p.bob, &p.admin] {
        let (s, v) = put_state(&api, t, "workers", "running").await;
        assert_eq!((s, code(&v)), (409, "approval_required"), "{v}");
    }
    everyone_pauses(&api, &p, "workers", "while paused").await;
    // Who may ask: not a viewer, not a pause-only token; and only with a reason.
    let ask = json!({ "reason": "backlog drained", "source": "web",
        "ramp": { "kind": "steps", "fractions": [0.1, 0.5, 1.0], "duration_secs": 600 },
        "guards": [{ "series": "db_load", "below": 80 }] });
    let (s, v) = request(&api, &p.viewer, "workers", ask.clone()).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = request(&api, &p.button, "workers", ask.clone()).await;
    assert_eq!((s, code(&v)), (403, "out_of_scope"), "{v}");
    let (s, v) = request(&api, &p.alice, "workers", json!({ "reason": "  " })).await;
    assert_eq!((s, code(&v)), (422, "invalid_value"), "{v}");
    let (s, v) = request(
        &api,
        &p.alice,
        "workers",
        json!({ "reason": "x", "guards": [1] }),
    )
    .await;
    assert_eq!((s, code(&v)), (422, "invalid_value"), "{v}");
    // Alice asks.
    let (s, v) = request(&api, &p.alice, "workers", ask.clone()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "paused", "a request resumes nothing: {v}");
    let r = &v["resume_request"];
    assert_eq!(r["requested_by"], "op-alice", "{v}");
    assert_eq!(r["reason"], "backlog drained");
    assert_eq!(r["source"], "web");
    assert_eq!(r["guards"][0]["series"], "db_load");
    let first = r["id"].as_u64().unwrap();
    // Everyone sees it, listed.
    let (s, l) = api.call("GET", "/resume-requests", &p.viewer, None).await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["requests"][0]["switch"], "workers", "{l}");
    assert_eq!(l["requests"][0]["request"]["id"], first, "{l}");
    // Paused with a request open: pauses still pass, and leave the request alone.
    everyone_pauses(&api, &p, "workers", "with a request open").await;
    assert_eq!(
        get(&api, &p.viewer, "workers").await["resume_request"]["id"],
        first
    );
    // Bob cannot file over it; Alice cannot approve her own; a viewer and a pause-only token
    // cannot approve at all.
    let (s, v) = request(&api, &p.bob, "workers", json!({ "reason": "me too" })).await;
    assert_eq!((s, code(&v)), (409, "request_pending"), "{v}");
    let (s, v) = decide(&api, &p.alice, "workers", first, "approve").await;
    assert_eq!((s, code(&v)), (403, "self_approval"), "{v}");
    let (s, v) = decide(&api, &p.viewer, "workers", first, "approve").await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = decide(&api, &p.button, "workers", first, "approve").await;
    assert_eq!((s, code(&v)), (403, "out_of_scope"), "{v}");
    assert_eq!(get(&api, &p.viewer, "workers").await["state"], "paused");
    // Alice replaces her request; the old id is gone.
    let (s, v) = request(
        &api,
        &p.alice,
        "workers",
        json!({ "reason": "really drained" }),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let second = v["resume_request"]["id"].as_u64().unwrap();
    assert!(second > first);
    let (s, v) = decide(&api, &p.bob, "workers", first, "approve").await;
    assert_eq!((s, code(&v)), (409, "no_request"), "{v}");
    // Bob rejects it; approving it afterwards finds nothing.
    let (s, v) = decide(&api, &p.bob, "workers", second, "reject").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "paused");
    assert!(v.get("resume_request").is_none(), "{v}");
    let (s, v) = decide(&api, &p.admin, "workers", second, "approve").await;
    assert_eq!((s, code(&v)), (409, "no_request"), "{v}");
    // Asked again, approved by Bob: running with the ramp Alice asked for.
    let (s, v) = request(&api, &p.alice, "workers", ask.clone()).await;
    assert_eq!(s, 201, "{v}");
    let third = v["resume_request"]["id"].as_u64().unwrap();
    let (s, v) = decide(&api, &p.bob, "workers", third, "approve").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["changed_by"], "op-bob");
    // The ramp Alice asked for, guarded by her guard: a guarded release.
    assert_eq!(v["ramp"]["guard"]["steps"], json!([0.1, 0.5, 1.0]), "{v}");
    assert_eq!(v["ramp"]["guard"]["guards"][0]["series"], "db_load", "{v}");
    assert!(v.get("resume_request").is_none(), "{v}");
    // Ramping: every pause passes.
    everyone_pauses(&api, &p, "workers", "while ramping").await;

    // Break glass: admins only, with a reason.
    let glass = |reason: &str| json!({ "reason": reason, "source": "cli" });
    let (s, v) = break_glass(&api, &p.alice, glass("now")).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = break_glass(&api, &p.admin, glass(" ")).await;
    assert_eq!((s, code(&v)), (422, "invalid_value"), "{v}");
    let (s, v) = break_glass(&api, &p.admin, json!({})).await;
    assert_eq!((s, code(&v)), (422, "invalid_value"), "{v}");
    let (s, v) = break_glass(&api, &p.admin, glass("checkout is down")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "running");
    assert!(
        v["reason"].as_str().unwrap().starts_with("BREAK GLASS by "),
        "{v}"
    );

    // The audit tells the whole story, with both names on the approval.
    let log = actions(&api, &p.admin, "workers").await;
    let kinds: Vec<&str> = log.iter().map(|(a, _)| a.as_str()).collect();
    let tail = &kinds[kinds.len() - 7..];
    assert_eq!(
        tail,
        [
            "resume_requested",
            "resume_requested",
            "resume_rejected",
            "resume_requested",
            "state_changed", // the approval
            "state_changed", // a pause while ramping
            "state_changed", // break glass
        ],
        "{log:?}"
    );
    assert!(
        log.iter().any(|(a, r)| a == "state_changed"
            && r.starts_with("approved by op-bob; requested by op-alice: backlog drained")),
        "{log:?}"
    );

    // A switch without approval resumes as before, and has nothing to request.
    let (s, _) = put_state(&api, &p.alice, "free", "paused").await;
    assert_eq!(s, 200);
    let (s, v) = request(&api, &p.alice, "free", json!({ "reason": "x" })).await;
    assert_eq!((s, code(&v)), (409, "no_request"), "{v}");
    let (s, v) = put_state(&api, &p.alice, "free", "running").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
}

/// The refusal a token allowed only to pause gets on the resume side: 403 `out_of_scope`, and a
/// message saying the token may only pause.
fn only_pauses(s: u16, v: &Value, what: &str) {
    assert_eq!((s, code(v)), (403, "out_of_scope"), "{what}: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("may only pause"), "{what} says why: {v}");
}

/// Issue #17, part 3, for a token allowed only to pause (the office button's kind): its pause
/// goes through at once whatever is going on (running, a request open, a release ramping),
/// and every way to resume is refused with a clear error, whatever its role: filing a request,
/// approving one, breaking the glass. The scope refuses, not the role: the token here is an
/// admin's. Rejecting a request keeps the switch paused, so such a token may reject
/// (`approval::reject`); that, too, is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_only_token_pauses_at_once_and_is_refused_every_way_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api, p) = start(dir.path()).await;
    let brake = token(
        &api,
        &p.admin,
        "admin-brake",
        "admin",
        Some(json!({ "switches": ["workers"], "pause_only": true })),
    )
    .await;

    // Running: the pause is immediate, nobody is asked.
    let (s, v) = put_state(&api, &brake, "workers", "paused").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    assert_eq!(v["changed_by"], "admin-brake", "{v}");
    let paused_version = v["version"].as_u64().unwrap();

    // Filing a request to resume.
    let ask = json!({ "reason": "backlog drained" });
    for (who, t) in [("admin-brake", &brake), ("office-button", &p.button)] {
        let (s, v) = request(&api, t, "workers", ask.clone()).await;
        only_pauses(s, &v, &format!("{who} filing a request"));
    }
    // Alice files one; approving it.
    let (s, v) = request(&api, &p.alice, "workers", ask.clone()).await;
    assert_eq!(s, 201, "{v}");
    let id = v["resume_request"]["id"].as_u64().unwrap();
    let filed_version = v["version"].as_u64().unwrap();
    for (who, t) in [("admin-brake", &brake), ("office-button", &p.button)] {
        let (s, v) = decide(&api, t, "workers", id, "approve").await;
        only_pauses(s, &v, &format!("{who} approving"));
    }
    // Breaking the glass (an admin's action: the admin-brake token has the role).
    let (s, v) = break_glass(&api, &brake, json!({ "reason": "customers down" })).await;
    only_pauses(s, &v, "admin-brake breaking the glass");
    // None of it changed anything: paused, Alice's request open, no new version.
    let sw = get(&api, &p.viewer, "workers").await;
    assert_eq!(sw["state"], "paused", "{sw}");
    assert_eq!(sw["version"], filed_version, "{sw}");
    assert_eq!(sw["resume_request"]["id"], id, "{sw}");
    assert!(filed_version > paused_version);

    // With a request open, its pause still passes at once and leaves the request alone.
    let (s, v) = put_state(&api, &brake, "workers", "paused").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    assert_eq!(v["resume_request"]["id"], id, "{v}");
    // Rejecting keeps the switch paused: allowed.
    let (s, v) = decide(&api, &brake, "workers", id, "reject").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    assert!(v.get("resume_request").is_none(), "{v}");

    // A release approved by two operators is ramping: the pause stops it at once.
    let (s, v) = request(
        &api,
        &p.alice,
        "workers",
        json!({ "reason": "really drained",
            "ramp": { "kind": "steps", "fractions": [0.1, 0.5, 1.0], "duration_secs": 600 } }),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["resume_request"]["id"].as_u64().unwrap();
    let (s, v) = decide(&api, &p.bob, "workers", id, "approve").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
    assert!(v["ramp"].is_object(), "ramping: {v}");
    let (s, v) = put_state(&api, &brake, "workers", "paused").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("paused")), "{v}");
    assert!(v["ramp"].is_null(), "the release is stopped: {v}");
    // And it still cannot resume by itself.
    let (s, v) = put_state(&api, &brake, "workers", "running").await;
    only_pauses(s, &v, "admin-brake resuming");

    // The audit names it on its pauses and its rejection, on nothing else.
    let (s, v) = api
        .call("GET", "/audit?switch=workers&limit=100", &p.admin, None)
        .await;
    assert_eq!(s, 200, "{v}");
    let mine: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["actor"] == "admin-brake")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        mine,
        ["state_changed", "resume_rejected", "state_changed"],
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_request_lapses_and_cannot_be_approved_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api, p) = start(dir.path()).await;
    let (s, _) = put_state(&api, &p.alice, "quick", "paused").await;
    assert_eq!(s, 200);
    let (s, v) = request(&api, &p.alice, "quick", json!({ "reason": "try" })).await;
    assert_eq!(s, 201, "{v}");
    let id = v["resume_request"]["id"].as_u64().unwrap();
    let expires = v["resume_request"]["expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    // The request stays open about 2 s, then the sweeper clears it.
    wait_for(Duration::from_secs(15), "the request lapses", || async {
        get(&api, &p.viewer, "quick")
            .await
            .get("resume_request")
            .is_none()
            .then_some(())
    })
    .await;
    let now = chrono::Utc::now();
    let expires = chrono::DateTime::parse_from_rfc3339(&expires).unwrap();
    assert!(
        now >= expires,
        "cleared before its deadline ({now} < {expires})"
    );
    let (s, v) = decide(&api, &p.bob, "quick", id, "approve").await;
    assert_eq!((s, code(&v)), (409, "no_request"), "{v}");
    assert_eq!(get(&api, &p.viewer, "quick").await["state"], "paused");
    let log = actions(&api, &p.admin, "quick").await;
    let (action, reason) = log.last().unwrap();
    assert_eq!(action, "resume_expired", "{log:?}");
    assert!(reason.contains("by op-alice lapsed unapproved"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_files_the_request_another_operator_approves_and_it_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api, p) = start(dir.path()).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let url = server.url.clone();
    let run = |tok: &str, args: &[&str]| {
        let o = cli(
            &home,
            &[("BRB_URL", url.as_str()), ("BRB_TOKEN", tok)],
            args,
        );
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(
        &p.alice,
        &["pause", "--wait", "0", "--reason", "db on fire"],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(
        &p.alice,
        &[
            "resume",
            "--ramp",
            "steps:10m",
            "--reason",
            "queue is empty",
            "--wait",
            "0",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("needs another operator's approval to resume")
            && out.contains("brb approve workers"),
        "{out}"
    );
    let sw = get(&api, &p.viewer, "workers").await;
    assert_eq!(sw["state"], "paused");
    assert_eq!(sw["resume_request"]["reason"], "queue is empty", "{sw}");
    assert_eq!(sw["resume_request"]["ramp"]["duration_secs"], 600, "{sw}");
    let (ok, out, err) = run(&p.viewer, &["requests"]);
    assert!(
        ok && out.contains("workers") && out.contains("op-alice"),
        "{out}{err}"
    );

    // kill -9 and restart: the request is still there.
    let data = server.data_dir.clone();
    server.kill9();
    let cfg = dir.path().join("brb.toml").display().to_string();
    let server = ServerProc::start(&data, &[("BRB_CONFIG", cfg.as_str())]);
    let api = Api::new(&server);
    let url = server.url.clone();
    let run = |tok: &str, args: &[&str]| {
        let o = cli(
            &home,
            &[("BRB_URL", url.as_str()), ("BRB_TOKEN", tok)],
            args,
        );
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert_eq!(
        get(&api, &p.viewer, "workers").await["resume_request"],
        sw["resume_request"],
        "the request after a restart"
    );
    let (ok, out, err) = run(&p.alice, &["approve"]);
    assert!(!ok, "alice approved her own request: {out}");
    assert!(err.contains("cannot approve their own"), "{err}");
    let (ok, out, err) = run(&p.bob, &["approve", "--reason", "checked the graphs"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("workers is running"), "{out}");
    let sw = get(&api, &p.viewer, "workers").await;
    assert_eq!(sw["state"], "running");
    assert!(
        sw["reason"]
            .as_str()
            .unwrap()
            .contains("approved by op-bob"),
        "{sw}"
    );
    // Break glass from the CLI: admins only, reason required, said loudly.
    let (ok, _, _) = run(&p.alice, &["pause", "--wait", "0"]);
    assert!(ok);
    let (ok, _, err) = run(&p.admin, &["resume", "--break-glass", "--wait", "0"]);
    assert!(!ok && err.contains("--break-glass needs --reason"), "{err}");
    let (ok, out, err) = run(
        &p.admin,
        &[
            "resume",
            "--break-glass",
            "--reason",
            "payments down",
            "--wait",
            "0",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(err.contains("BREAK GLASS"), "{err}");
    assert_eq!(get(&api, &p.viewer, "workers").await["state"], "running");
}
