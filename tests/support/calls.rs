//! Calls several suites make the same way: a switch, a new token or switch over the JSON API
//! ([`Api`]), a change of `workers` and the outbox of an in-process server ([`InProcess`]), an
//! error body's code, a request to Slack's endpoints signed like Slack signs it. Each asserts
//! that the call succeeded (the Slack ones that the server answered: their status is what the
//! tests check), so a test reads as what it checks.

use brb_api::{Notification, NotificationList, SetStateRequest, Source, Switch, SwitchState};
use serde_json::{Value, json};

use crate::{Api, InProcess};

/// The `error.code` of an error body, `""` when there is none.
pub fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// `GET /switches/{name}`, which must answer 200.
pub async fn get_switch(api: &Api, token: &str, name: &str) -> Value {
    let (s, v) = api
        .call("GET", &format!("/switches/{name}"), token, None)
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// The state of switch `name` (`"paused"`, `"running"`).
pub async fn state_of(api: &Api, token: &str, name: &str) -> String {
    get_switch(api, token, name).await["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Creates switch `name`, which must answer 201.
pub async fn create_switch(api: &Api, admin: &str, name: &str) {
    let (s, v) = api
        .call("POST", "/switches", admin, Some(json!({ "name": name })))
        .await;
    assert_eq!(s, 201, "{v}");
}

/// A token of `role` named `name`, optionally scoped; returns its secret.
pub async fn mint_token(
    api: &Api,
    admin: &str,
    name: &str,
    role: &str,
    scope: Option<Value>,
) -> String {
    let mut body = json!({ "name": name, "role": role });
    if let Some(s) = scope {
        body["scope"] = s;
    }
    let (s, v) = api.call("POST", "/tokens", admin, Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["secret"].as_str().expect("a secret").to_string()
}

/// Sets `workers` to `state` as the desktop app would, with `reason`.
pub async fn set_workers(s: &InProcess, state: SwitchState, reason: &str) -> Switch {
    set_workers_via(&s.client(), state, reason, Source::Desktop).await
}

/// Sets `workers` to `state` through `client` (of any server: in-process or the binary) as
/// `source` would, with `reason`, no ramp and no version check; the change must be accepted.
pub async fn set_workers_via(
    client: &brb_client::Client,
    state: SwitchState,
    reason: &str,
    source: Source,
) -> Switch {
    client
        .set_state(
            "workers",
            &SetStateRequest {
                state,
                reason: Some(reason.into()),
                source: Some(source),
                expected_version: None,
                ramp: None,
                guards: Vec::new(),
            },
        )
        .await
        .expect("the change is accepted")
}

/// Changes the description of `workers` (a new version; a paused switch stays the same pause).
pub async fn describe_workers(s: &InProcess, description: &str) -> Switch {
    s.client()
        .update_switch(
            "workers",
            &brb_api::UpdateSwitchRequest {
                description: description.into(),
                source: None,
            },
        )
        .await
        .expect("the edit is accepted")
}

/// The outbox as `GET /api/v1/notifications` shows it (newest first).
pub async fn outbox(s: &InProcess) -> Vec<Notification> {
    reqwest::Client::new()
        .get(format!("{}/api/v1/notifications", s.url))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("the server answers")
        .json::<NotificationList>()
        .await
        .expect("a notification list")
        .notifications
}

/// POSTs a form `body` to Slack's endpoint `path` (`/api/v1/slack/commands` or
/// `/api/v1/slack/interactions`) of the server at `base`, with the v0 headers exactly as given
/// (empty ones included), so a test can send a tampered or unsigned request.
pub async fn slack_post(
    base: &str,
    path: &str,
    body: &str,
    ts: &str,
    sig: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .expect("the server answers")
}

/// The same request signed like Slack signs it (v0) with `secret` at unix time `ts`.
pub async fn slack_signed(
    base: &str,
    path: &str,
    body: &str,
    secret: &str,
    ts: i64,
) -> reqwest::Response {
    let sig = brb_server::slack::sign(secret, ts, body.as_bytes());
    slack_post(base, path, body, &ts.to_string(), &sig).await
}

/// The form body Slack sends for an interaction: `payload=` and the JSON, URL-encoded.
pub fn slack_payload_form(payload: &Value) -> String {
    reqwest::Url::parse_with_params("http://x/", &[("payload", payload.to_string())])
        .expect("a URL")
        .query()
        .unwrap_or_default()
        .to_string()
}
