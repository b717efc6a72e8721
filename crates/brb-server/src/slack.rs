//! The Slack slash command (`/bigred`): status and "where is the button" for everyone, pause
//! and resume for the Slack users the config maps to an operator.
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
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Err(e) = verify(
        secret.expose(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        chrono::Utc::now().timestamp(),
    ) {
        state.metrics().auth_failure();
        tracing::warn!(reason = %e, "Slack command refused");
        return Err(ApiError::unauthorized(format!("Slack signature: {e}")));
    }
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
            let change = StateChange {
                switch: primary,
                to,
                reason,
                expected_version: None,
                ramp,
                control: None,
                actor: Actor {
                    name: name.clone(),
                    source: Source::Slack,
                    remote_addr: remote.map(|a| a.ip().to_string()),
                },
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
    let http = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("brb/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(switch = %s.name, error = %e, "no HTTP client for the Slack follow-up");
            return;
        }
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
}
