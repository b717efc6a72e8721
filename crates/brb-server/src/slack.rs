//! The Slack slash command (`/bigred`): status and "where is the button" for everyone, pause
//! and resume for the Slack users the config maps to an operator. And the buttons: a press on
//! a pause message's "Resume…" (after Slack's confirmation dialog) arrives at
//! `/api/v1/slack/interactions` and releases gradually, for the same mapped users; where the
//! switch needs approval it files a resume request instead, and "Approve resume" / "Reject"
//! (on the pause message and on the request's announcement) decide the open request through
//! the same path as the API (`approval::decide_request`): the requester cannot approve their
//! own.
//!
//! Slack signs each request (v0: HMAC-SHA256 over `v0:{timestamp}:{raw body}` with the app's
//! signing secret); a request with a missing or wrong signature, or a timestamp more than five
//! minutes away (a replay), is refused with 401 before anything is parsed.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use brb_api::{ErrorCode, Source, SwitchState};
use brb_store::{Actor, StateChange};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::notify::ctx;
use crate::templates;

/// Slack's replay window.
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Deserialize)]
struct Command {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    user_name: String,
    #[serde(default)]
    text: String,
    /// Where Slack takes delayed answers to this command (JSON POSTs, up to five within 30
    /// minutes): used for the follow-up with the fleet's acknowledgement.
    #[serde(default)]
    response_url: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Request-Timestamp or X-Slack-Signature")]
    Missing,
    #[error("the request timestamp is more than five minutes away: a replay?")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// Verifies Slack's v0 request signature in constant time.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts_num: i64 = ts.trim().parse().map_err(|_| SignatureError::Missing)?;
    if (now - ts_num).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    let Some(hex_sig) = sig.trim().strip_prefix("v0=") else {
        return Err(SignatureError::Mismatch);
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return Err(SignatureError::Mismatch);
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(b"v0:");
    mac.update(ts.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

/// Refuses (401) a request whose v0 signature is missing, wrong or stale.
fn check_signature(
    state: &AppState,
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> ApiResult<()> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Err(e) = verify(
        secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        body,
        chrono::Utc::now().timestamp(),
    ) {
        state.metrics().auth_failure();
        tracing::warn!(reason = %e, request = what, source = "slack", "Slack request refused");
        return Err(ApiError::unauthorized(format!("Slack signature: {e}")));
    }
    Ok(())
}

/// Signs like Slack does (for tests and for people wiring up their own tooling).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[utoipa::path(post, path = "/api/v1/slack/commands", tag = "slack",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "Slack's slash-command payload"),
    responses(
        (status = 200, description = "A Slack message (response_type, text, blocks)"),
        (status = 401, body = brb_api::ApiErrorBody, description = "Bad, missing or stale signature"),
        (status = 404, body = brb_api::ApiErrorBody, description = "Slack is not configured")))]
pub(crate) async fn command(
    State(state): State<AppState>,
    crate::auth::RemoteAddr(remote): crate::auth::RemoteAddr,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = body?;
    let Some(secret) = state
        .config()
        .notify
        .slack
        .as_ref()
        .and_then(|s| s.signing_secret.as_ref())
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the Slack command is not configured (no signing secret)",
        ));
    };
    check_signature(&state, secret.expose(), &headers, &body, "command")?;
    let cmd: Command = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad Slack payload: {e}")))?;
    let ctx = ctx(&state);
    let text = cmd.text.trim();
    let (verb, rest) = text
        .split_once(char::is_whitespace)
        .map(|(v, r)| (v, r.trim()))
        .unwrap_or((text, ""));
    let primary = state.config().primary.name.clone();
    match verb.to_ascii_lowercase().as_str() {
        "" | "status" | "where" => {
            let switches: Vec<_> = state.hub().list().iter().map(|s| (**s).clone()).collect();
            let counts = match state.hub().get(&primary) {
                Some(p) => state.workers().counts(&p, false),
                None => return Err(ApiError::switch_not_found(&primary)),
            };
            Ok(Json(templates::slash_status(
                &switches,
                &counts,
                &ctx,
                chrono::Utc::now(),
            )))
        }
        "pause" | "resume" => {
            let operators = state.config().notify.slack.as_ref().map(|s| &s.operators);
            let Some(name) = operators.and_then(|o| o.get(&cmd.user_id)) else {
                tracing::warn!(slack_user = %cmd.user_id, slack_name = %cmd.user_name,
                    "Slack user not mapped to an operator; refused");
                return Ok(Json(templates::slash_refusal(&cmd.user_name, &ctx)));
            };
            // `resume steps:10m --guard db_load < 80`: the guards follow the ramp.
            let (rest, guards) = if verb.eq_ignore_ascii_case("resume") {
                match split_guards(rest) {
                    Ok(split) => split,
                    Err(e) => return Ok(Json(templates::slash_error(&e.to_string()))),
                }
            } else {
                (rest, Vec::new())
            };
            let (to, reason, ramp) = if verb.eq_ignore_ascii_case("pause") {
                let reason = if rest.is_empty() {
                    format!("paused from Slack by @{}", cmd.user_name)
                } else {
                    rest.to_string()
                };
                (SwitchState::Paused, Some(reason), None)
            } else if rest.is_empty() {
                // A one-word resume from a phone is the quickest way to bring the spike back:
                // it releases gradually unless `now` is said.
                (
                    SwitchState::Running,
                    None,
                    Some(brb_api::RampSpec::default_release()),
                )
            } else if rest.eq_ignore_ascii_case("now") {
                (SwitchState::Running, None, None)
            } else {
                match brb_api::RampSpec::parse(rest) {
                    Ok(r) => (SwitchState::Running, None, Some(r)),
                    Err(e) => return Ok(Json(templates::slash_error(&e.to_string()))),
                }
            };
            let actor = Actor {
                name: name.clone(),
                source: Source::Slack,
                remote_addr: remote.map(|a| a.ip().to_string()),
            };
            if to == SwitchState::Running && state.config().approval_secs(&primary).is_some() {
                // A second operator must agree: the command files the request it describes
                // (ramp and guards as typed), as `brb resume` does, rather than failing.
                let why = format!("requested from Slack by @{}", cmd.user_name);
                return match crate::approval::file_request(
                    &state, primary, actor, why, ramp, guards,
                )
                .await
                {
                    Ok(s) => {
                        let (id, until) = s.resume_request.as_ref().map_or_else(
                            || (0, String::new()),
                            |r| (r.id, r.expires_at.format("%H:%M:%S UTC").to_string()),
                        );
                        tracing::info!(switch = %s.name, actor = %name, source = "slack",
                            request = id, "resume requested from the Slack command");
                        Ok(Json(templates::slack_ephemeral(format!(
                            "Resuming `{}` needs another operator's approval: your request {id} \
                             is filed. It is applied once someone else approves it, before {until}.",
                            s.name
                        ))))
                    }
                    Err(e) => Ok(Json(templates::slash_error(&e.message))),
                };
            }
            let change = StateChange {
                switch: primary,
                to,
                reason,
                expected_version: None,
                ramp,
                control: None,
                guards,
                guard_op: None,
                actor,
                notify: Vec::new(),
                approval_secs: None,
                request: None,
            };
            match state.commit(crate::commit::SetState(change)).await {
                Ok((s, changed)) => {
                    match follow_up_url(&cmd.response_url) {
                        Some(url) => {
                            tokio::spawn(follow_up(state.clone(), s.clone(), url));
                        }
                        None if !cmd.response_url.is_empty() => {
                            tracing::warn!(switch = %s.name, actor = %name, source = "slack",
                                "Slack response_url is neither https nor loopback; no follow-up");
                        }
                        None => {}
                    }
                    Ok(Json(templates::slash_changed(&s, changed, &ctx)))
                }
                Err(e) => Ok(Json(templates::slash_error(&e.message))),
            }
        }
        _ => Ok(Json(templates::slash_help(&ctx))),
    }
}

/// An interaction request: form-encoded, one field `payload` holding JSON.
#[derive(Debug, Deserialize)]
struct InteractionForm {
    payload: String,
}

#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<Action>,
    #[serde(default)]
    response_url: String,
}

#[derive(Debug, Deserialize)]
struct SlackUser {
    id: String,
    #[serde(default)]
    username: String,
}

#[derive(Debug, Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

#[utoipa::path(post, path = "/api/v1/slack/interactions", tag = "slack",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "Slack's interaction payload (`payload=` JSON, a `block_actions` press)"),
    responses(
        (status = 200, description = "Received; the outcome follows through the payload's response_url"),
        (status = 400, body = brb_api::ApiErrorBody, description = "Not an interaction payload"),
        (status = 401, body = brb_api::ApiErrorBody, description = "Bad, missing or stale signature"),
        (status = 404, body = brb_api::ApiErrorBody, description = "Slack is not configured")))]
pub(crate) async fn interaction(
    State(state): State<AppState>,
    crate::auth::RemoteAddr(remote): crate::auth::RemoteAddr,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<axum::http::StatusCode> {
    let body = body?;
    let Some(secret) = state
        .config()
        .notify
        .slack
        .as_ref()
        .and_then(|s| s.signing_secret.clone())
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "Slack interactivity is not configured (no signing secret)",
        ));
    };
    // Nothing is read from the body before its signature holds.
    check_signature(&state, secret.expose(), &headers, &body, "interaction")?;
    let form: InteractionForm = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad Slack interaction: {e}")))?;
    let it: Interaction = serde_json::from_str(&form.payload).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad Slack interaction payload: {e}"),
        )
    })?;
    let ok = axum::http::StatusCode::OK;
    if it.kind != "block_actions" {
        // Shortcuts, modals: nothing of ours.
        return Ok(ok);
    }
    let url = follow_up_url(&it.response_url);
    if url.is_none() {
        tracing::warn!(slack_user = %it.user.id, source = "slack",
            "Slack interaction without a usable response_url (https or loopback): the outcome \
             cannot be shown in Slack");
    }
    let Some(action) = it.actions.first() else {
        return Ok(ok);
    };
    let operators = state
        .config()
        .notify
        .slack
        .as_ref()
        .map(|s| s.operators.clone());
    let ctx = ctx(&state);
    let Some(name) = operators.and_then(|o| o.get(&it.user.id).cloned()) else {
        tracing::warn!(slack_user = %it.user.id, slack_name = %it.user.username,
            action = %action.action_id, source = "slack",
            "Slack user not mapped to an operator; press refused");
        if let Some(url) = url {
            let mut refusal = templates::slash_refusal(&it.user.username, &ctx);
            refusal["replace_original"] = serde_json::json!(false);
            tokio::spawn(respond(url, refusal));
        }
        return Ok(ok);
    };
    let actor = Actor {
        name,
        source: Source::Slack,
        remote_addr: remote.map(|a| a.ip().to_string()),
    };
    match action.action_id.as_str() {
        templates::ACTION_RESUME => {
            // Slack wants an answer within 3 s and a commit can take longer (a slow database):
            // answer now, report the outcome through response_url.
            tokio::spawn(press_resume(
                state.clone(),
                actor,
                action.value.clone(),
                url,
            ));
        }
        templates::ACTION_APPROVE | templates::ACTION_REJECT => {
            let approve = action.action_id == templates::ACTION_APPROVE;
            tokio::spawn(press_decide(
                state.clone(),
                actor,
                action.value.clone(),
                approve,
                url,
            ));
        }
        other => {
            tracing::warn!(action = %other, actor = %actor.name, source = "slack",
                "unknown Slack button");
            if let Some(url) = url {
                tokio::spawn(respond(
                    url,
                    templates::slack_ephemeral(format!(
                        "This button ({other}) means nothing to Big Red Button. Nothing was changed."
                    )),
                ));
            }
        }
    }
    Ok(ok)
}

/// What the buttons of a pause message say about the pause they belong to.
trait PauseButton: serde::de::DeserializeOwned {
    /// The switch and the pause instant (`changed_at` while paused).
    fn pause(&self) -> (&str, i64);
}

impl PauseButton for templates::ResumeButton {
    fn pause(&self) -> (&str, i64) {
        (&self.switch, self.paused_at_ms)
    }
}

impl PauseButton for templates::DecideButton {
    fn pause(&self) -> (&str, i64) {
        (&self.switch, self.paused_at_ms)
    }
}

/// Answers a press through its `response_url` (when Slack gave one) without waiting: the
/// press has been acknowledged already, Slack takes delayed answers there.
fn answerer(url: Option<reqwest::Url>) -> impl Fn(Value) {
    move |body: Value| {
        if let Some(u) = url.clone() {
            tokio::spawn(respond(u, body));
        }
    }
}

/// What every press on a pause message's buttons checks first: the button's value can be
/// read, its switch still exists, and the pause it belongs to is still on (a press on an old
/// message never acts on a later pause). `Err` is the answer for the presser: nothing changed.
fn pressed_pause<B: PauseButton>(
    state: &AppState,
    actor: &Actor,
    what: &str,
    value: &str,
) -> Result<(B, std::sync::Arc<brb_api::Switch>), Value> {
    let Ok(button) = serde_json::from_str::<B>(value) else {
        tracing::warn!(actor = %actor.name, source = "slack", "unreadable {what} button value");
        return Err(templates::slack_ephemeral(
            "That button could not be read. Nothing was changed.".into(),
        ));
    };
    let (switch, paused_at_ms) = button.pause();
    let Some(cur) = state.hub().get(switch) else {
        return Err(templates::slack_ephemeral(format!(
            "Switch `{switch}` does not exist any more. Nothing was changed."
        )));
    };
    if cur.state != SwitchState::Paused || cur.changed_at.timestamp_millis() != paused_at_ms {
        tracing::info!(switch = %cur.name, actor = %actor.name, source = "slack",
            "{what} pressed on a pause that is over; nothing changed");
        return Err(templates::slack_ephemeral(format!(
            "This pause is over: `{}` is {} since {} ({} from {}). Nothing was changed.",
            cur.name,
            cur.state,
            cur.changed_at.format("%H:%M:%S UTC"),
            cur.changed_by,
            templates::source_label(cur.source)
        )));
    }
    Ok((button, cur))
}

/// A press on "Resume…": releases the pause the message was about with the default gradual
/// ramp (never at once), unless that pause is over; reports to the message either way.
async fn press_resume(state: AppState, actor: Actor, value: String, url: Option<reqwest::Url>) {
    let ctx = ctx(&state);
    let answer = answerer(url.clone());
    let (_, cur) = match pressed_pause::<templates::ResumeButton>(&state, &actor, "Resume…", &value)
    {
        Ok(pressed) => pressed,
        Err(body) => return answer(body),
    };
    if state.config().approval_secs(&cur.name).is_some() {
        // A second operator must agree: the press asks for the same gradual release.
        let filed = crate::approval::file_request(
            &state,
            cur.name.clone(),
            actor.clone(),
            "requested from Slack (the Resume… button)".into(),
            Some(brb_api::RampSpec::default_release()),
            Vec::new(),
        )
        .await;
        match filed {
            Ok(s) => {
                let id = s.resume_request.as_ref().map_or(0, |r| r.id);
                let until = s
                    .resume_request
                    .as_ref()
                    .map(|r| r.expires_at.format("%H:%M:%S UTC").to_string())
                    .unwrap_or_default();
                tracing::info!(switch = %s.name, actor = %actor.name, source = "slack",
                    request = id, "resume requested from a Slack button");
                answer(templates::slack_ephemeral(format!(
                    "Resuming `{}` needs another operator's approval: your request {id} is \
                     filed. It resumes gradually once someone else approves it, before {until}.",
                    s.name
                )));
            }
            Err(e) => {
                tracing::warn!(switch = %cur.name, actor = %actor.name, source = "slack",
                    error = %e.message, "resume request from Slack not filed");
                answer(templates::slash_error(&e.message));
            }
        }
        return;
    }
    let change = StateChange {
        switch: cur.name.clone(),
        to: SwitchState::Running,
        reason: None,
        // The pause this message is about, and nothing that came after it.
        expected_version: Some(cur.version),
        ramp: Some(brb_api::RampSpec::default_release()),
        guards: Vec::new(),
        control: None,
        guard_op: None,
        actor: actor.clone(),
        notify: Vec::new(),
        approval_secs: None,
        request: None,
    };
    match state.commit(crate::commit::SetState(change)).await {
        Ok((s, changed)) => {
            tracing::info!(switch = %s.name, actor = %actor.name, source = "slack",
                version = s.version, "resumed gradually from a Slack button");
            answer(templates::slack_pressed(&s, changed, &ctx));
            if let Some(u) = url.clone() {
                tokio::spawn(follow_up(state.clone(), s, u));
            }
        }
        Err(e) => {
            tracing::warn!(switch = %cur.name, actor = %actor.name, source = "slack",
                error = %e.message, "Resume… press not applied");
            answer(templates::slash_error(&e.message));
        }
    }
}

/// A press on "Approve resume" or "Reject": decides the request open on the pause the message
/// is about (the one it names, on a request's announcement), as the API would for `actor`.
/// The requester's own approval is refused with a message only they see.
async fn press_decide(
    state: AppState,
    actor: Actor,
    value: String,
    approve: bool,
    url: Option<reqwest::Url>,
) {
    let ctx = ctx(&state);
    let answer = answerer(url.clone());
    let verb = if approve { "approve" } else { "reject" };
    let (button, cur) = match pressed_pause::<templates::DecideButton>(&state, &actor, verb, &value)
    {
        Ok(pressed) => pressed,
        Err(body) => return answer(body),
    };
    let open = cur.resume_request.as_deref().cloned();
    let Some(r) = open.filter(|r| button.request_id.is_none_or(|id| id == r.id)) else {
        answer(templates::slack_ephemeral(format!(
            "There is no open request to resume `{}`{}: it was approved, rejected or replaced, \
             or it lapsed. Nothing was changed.",
            cur.name,
            button
                .request_id
                .map(|id| format!(" with id {id}"))
                .unwrap_or_default()
        )));
        return;
    };
    if approve && r.requested_by == actor.name {
        tracing::warn!(switch = %cur.name, actor = %actor.name, source = "slack", request = r.id,
            "self-approval from Slack refused");
        answer(templates::slack_ephemeral(format!(
            "You ({}) filed this request to resume `{}`: another operator must approve it. \
             Nothing was changed.",
            actor.name, cur.name
        )));
        return;
    }
    let op = if approve {
        brb_store::SwitchOp::Approve { id: r.id }
    } else {
        brb_store::SwitchOp::Reject { id: r.id }
    };
    match crate::approval::decide_request(&state, cur.name.clone(), op, actor.clone(), None).await {
        Ok(s) if approve => {
            tracing::info!(switch = %s.name, actor = %actor.name, source = "slack",
                request = r.id, version = s.version, "resume request approved from Slack");
            answer(templates::slack_decided(&s, &r, true, &ctx));
            if let Some(u) = url.clone() {
                tokio::spawn(follow_up(state.clone(), s, u));
            }
        }
        Ok(s) => {
            tracing::info!(switch = %s.name, actor = %actor.name, source = "slack",
                request = r.id, "resume request rejected from Slack");
            answer(templates::slack_decided(&s, &r, false, &ctx));
        }
        Err(e) => {
            tracing::warn!(switch = %cur.name, actor = %actor.name, source = "slack",
                request = r.id, error = %e.message, "Slack {verb} not applied");
            answer(templates::slash_error(&e.message));
        }
    }
}

fn response_client() -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("brb/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| tracing::warn!(error = %e, "no HTTP client for Slack's response_url"))
        .ok()
}

/// Posts one message to a press's `response_url`.
async fn respond(url: reqwest::Url, body: Value) {
    let Some(http) = response_client() else {
        return;
    };
    match http.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(
            status = r.status().as_u16(),
            source = "slack",
            "Slack refused the interaction answer"
        ),
        Err(e) => tracing::warn!(error = %e, source = "slack", "Slack interaction answer failed"),
    }
}

/// Splits `steps:10m --guard db_load < 80 --guard queue_depth < 500` into the ramp words and
/// the guards (quotes around a guard, straight or curly as phones type them, are dropped).
fn split_guards(rest: &str) -> Result<(&str, Vec<brb_api::GuardSpec>), brb_api::GuardError> {
    let mut parts = rest.split("--guard");
    let ramp = parts.next().unwrap_or_default().trim();
    let guards = parts
        .map(|g| {
            let g = g
                .trim()
                .trim_matches(|c| "'\"\u{2018}\u{2019}\u{201c}\u{201d}".contains(c));
            brb_api::GuardSpec::parse(g)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ramp, guards))
}

/// The `response_url` to follow up on: https only (Slack's are), or plain http to a loopback
/// address (a local receiver in tests). It arrives in a signed request, so it came from Slack.
fn follow_up_url(raw: &str) -> Option<reqwest::Url> {
    let url = reqwest::Url::parse(raw).ok()?;
    let loopback = match url.host_str()? {
        "localhost" => true,
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback()),
    };
    (url.scheme() == "https" || (url.scheme() == "http" && loopback)).then_some(url)
}

/// Once every live worker has acknowledged `s`'s version, tells the channel so through Slack's
/// `response_url` ("40/40 workers paused in 85 ms"); if they have not within
/// `notify.slack.follow_up_secs` (10 s), lists the ones that have not. A later change of the
/// switch ends the wait: the follow-up then says it was superseded.
async fn follow_up(state: AppState, s: brb_api::Switch, url: reqwest::Url) {
    let wait = state
        .config()
        .notify
        .slack
        .as_ref()
        .and_then(|c| c.follow_up_secs)
        .unwrap_or(10);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut shutdown = state.shutdown_signal();
    let text = loop {
        let Some(cur) = state.hub().get(&s.name) else {
            return;
        };
        if cur.version != s.version {
            break templates::slash_superseded(&s, &cur);
        }
        let counts = state.workers().counts(&cur, true);
        let ack = counts.current.as_ref().filter(|a| a.version == s.version);
        let done = ack.is_some_and(|a| a.total > 0 && a.acknowledged == a.total);
        if done || tokio::time::Instant::now() >= deadline {
            break templates::slash_follow_up(&s, &counts, done, wait);
        }
        // Acknowledgements arrive as workers report; a tenth of a second is far below what a
        // person reading the channel notices.
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = shutdown.changed() => return,
        }
    };
    let body = serde_json::json!({
        "response_type": "in_channel",
        "replace_original": false,
        "text": text,
    });
    let Some(http) = response_client() else {
        return;
    };
    match http.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(switch = %s.name, version = s.version, source = "slack",
                "Slack follow-up sent");
        }
        Ok(r) => tracing::warn!(switch = %s.name, status = r.status().as_u16(),
            "Slack refused the follow-up"),
        Err(e) => tracing::warn!(switch = %s.name, error = %e, "Slack follow-up failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    #[test]
    fn valid_signature_passes() {
        let body = b"token=x&team_id=T1&user_id=U1&command=%2Fbigred&text=status";
        let sig = sign(SECRET, 1_700_000_000, body);
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), body, 1_700_000_100),
            Ok(())
        );
    }

    #[test]
    fn slacks_documented_example() {
        // The example from Slack's "Verifying requests from Slack" page.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(
            verify(SECRET, Some("1531420618"), Some(sig), body, 1_531_420_618),
            Ok(())
        );
    }

    #[test]
    fn bad_signatures_fail() {
        let body = b"text=pause";
        let sig = sign(SECRET, 1_700_000_000, body);
        let now = 1_700_000_000;
        assert_eq!(
            verify("other", Some("1700000000"), Some(&sig), body, now),
            Err(SignatureError::Mismatch),
            "wrong secret"
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), b"text=resume", now),
            Err(SignatureError::Mismatch),
            "tampered body"
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some(&sig), body, now + 301),
            Err(SignatureError::Stale),
            "replayed later"
        );
        assert_eq!(
            verify(SECRET, None, Some(&sig), body, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("1700000000"), Some("v0=zz"), body, now),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn resume_words_split_into_ramp_and_guards() {
        let (ramp, guards) = split_guards(
            "steps:10m --guard \u{2018}db_load < 80\u{2019} --guard 'q < 5, failures=2'",
        )
        .unwrap();
        assert_eq!(ramp, "steps:10m");
        let text: Vec<String> = guards.iter().map(|g| g.to_string()).collect();
        assert_eq!(text, ["db_load < 80", "q < 5"]);
        assert_eq!(guards[1].failure_limit, 2);
        assert_eq!(split_guards("now").unwrap(), ("now", Vec::new()));
        assert!(split_guards("steps:10m --guard db_load").is_err());
    }
}
