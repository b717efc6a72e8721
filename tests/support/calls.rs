//! Calls several suites make the same way: a switch, a new token or switch over the JSON API
//! ([`Api`]), a change of `workers` and the outbox of an in-process server ([`InProcess`]), an
//! error body's code. Each asserts that the call succeeded, so a test reads as what it checks.

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
    s.client()
        .set_state(
            "workers",
            &SetStateRequest {
                state,
                reason: Some(reason.into()),
                source: Some(Source::Desktop),
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
