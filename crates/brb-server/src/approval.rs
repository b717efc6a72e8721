//! Resume approval over HTTP: filing, approving and rejecting resume requests, breaking the
//! glass, and the list of open requests. The rules live in `brb-store`'s `rules.rs`
//! (`resume_request`); the sweeper that lapses requests is [`sweep`]. A pause never comes here:
//! it needs no one.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use brb_api::{
    BreakGlassRequest, CreateResumeRequest, DecideResumeRequest, ErrorCode, PendingResume,
    ResumeRequestList, Role, Switch, SwitchState,
};
use brb_store::{StateChange, SwitchOp};

use crate::commit::SetState;
use crate::error::{ApiError, ApiResult};
use crate::routes::{Body, change_allowed, clean_reason, read_json};
use crate::{AppState, Caller, actor};

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/resume-requests", get(list_requests))
        .route("/switches/{name}/resume-requests", post(request_resume))
        .route(
            "/switches/{name}/resume-requests/{id}/approve",
            post(approve),
        )
        .route("/switches/{name}/resume-requests/{id}/reject", post(reject))
        .route("/switches/{name}/break-glass", post(break_glass))
}

/// `{name}` and `{id}` of a request's path, as JSON 400s when unreadable.
async fn name_and_id(
    p: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> ApiResult<(String, u64)> {
    let Path((name, id)) = p.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let id = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("request id {id:?}: not a number"),
        )
    })?;
    Ok((name, id))
}

fn change(name: String, actor: brb_store::Actor) -> StateChange {
    StateChange {
        switch: name,
        to: SwitchState::Running,
        reason: None,
        expected_version: None,
        ramp: None,
        control: None,
        actor,
        notify: Vec::new(),
        approval_secs: None,
        request: None,
        guards: Vec::new(),
        guard_op: None,
    }
}

#[utoipa::path(post, path = "/api/v1/switches/{name}/resume-requests", tag = "approval",
    params(("name" = String, Path, description = "Switch name")),
    request_body = CreateResumeRequest,
    responses(
        (status = 201, body = Switch, description = "Recorded: the paused switch carries the request (`resume_request`) until another operator approves it, someone rejects it, or it lapses. The requester's own earlier request is replaced"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody, description = "`forbidden` below operator; `out_of_scope`: another switch, or a pause-only token"),
        (status = 404, body = brb_api::ApiErrorBody),
        (status = 409, body = brb_api::ApiErrorBody, description = "`request_pending`: another operator's request is open; `no_request`: the switch needs no approval, or is not paused"),
        (status = 413, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody, description = "`invalid_value`: no reason, a bad ramp, more than 4 guards, a bad guard, or guards without a stepped ramp"),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: counted with state changes"),
        (status = 503, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn request_resume(
    State(state): State<AppState>,
    caller: Caller,
    crate::routes::PathParam(name): crate::routes::PathParam,
    b: Body,
) -> ApiResult<(StatusCode, Json<Switch>)> {
    caller.require(Role::Operator)?;
    let req: CreateResumeRequest = read_json(b)?;
    caller.check_change(&name, SwitchState::Running)?;
    // The same rules as a resume's guards, checked now: an approver must never approve a
    // release that cannot start.
    brb_api::validate_guards(&req.guards, req.ramp.as_ref())
        .map_err(|e| ApiError::invalid(format!("guards: {e}")))?;
    let reason = clean_reason(Some(req.reason))
        .ok_or_else(|| ApiError::invalid("reason: say why the switch should resume"))?;
    change_allowed(&state, &caller, &name)?;
    let s = file_request(
        &state,
        name,
        actor(&caller, req.source),
        reason,
        req.ramp,
        req.guards,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(s)))
}

/// Files (or replaces) `actor`'s request to resume `name`: the API's and Slack's "Resume…"
/// on a switch that needs approval. The caller checked the role, scope and guards.
pub(crate) async fn file_request(
    state: &AppState,
    name: String,
    actor: brb_store::Actor,
    reason: String,
    ramp: Option<brb_api::RampSpec>,
    guards: Vec<brb_api::GuardSpec>,
) -> ApiResult<Switch> {
    let mut c = change(name, actor);
    c.reason = Some(reason);
    c.ramp = ramp;
    c.request = Some(SwitchOp::Request { guards });
    let (s, _) = state.commit(SetState(c)).await?;
    Ok(s)
}

/// Approves (`SwitchOp::Approve`) or rejects request `id` on `name` as `actor`: the one path
/// for the API and Slack's buttons. The rule refuses the requester's own approval, a lapsed
/// request and a settled one.
pub(crate) async fn decide_request(
    state: &AppState,
    name: String,
    op: SwitchOp,
    actor: brb_store::Actor,
    reason: Option<String>,
) -> ApiResult<Switch> {
    let mut c = change(name, actor);
    c.reason = clean_reason(reason);
    c.request = Some(op);
    let (s, _) = state.commit(SetState(c)).await?;
    Ok(s)
}

#[utoipa::path(post, path = "/api/v1/switches/{name}/resume-requests/{id}/approve", tag = "approval",
    params(("name" = String, Path, description = "Switch name"),
           ("id" = u64, Path, description = "The request's id (`resume_request.id`)")),
    request_body = DecideResumeRequest,
    responses(
        (status = 200, body = Switch, description = "Approved: the switch runs, with the ramp the request asked for; the audit entry names both operators"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody, description = "`self_approval`: the requester cannot approve their own request; `forbidden` below operator; `out_of_scope`"),
        (status = 404, body = brb_api::ApiErrorBody),
        (status = 409, body = brb_api::ApiErrorBody, description = "`no_request`: no open request with that id; `request_expired`: it lapsed"),
        (status = 413, body = brb_api::ApiErrorBody), (status = 422, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: counted with state changes"),
        (status = 503, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    p: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    b: Body,
) -> ApiResult<Json<Switch>> {
    let approve = |id| SwitchOp::Approve { id };
    decide(approve, SwitchState::Running, state, caller, p, b).await
}

#[utoipa::path(post, path = "/api/v1/switches/{name}/resume-requests/{id}/reject", tag = "approval",
    params(("name" = String, Path, description = "Switch name"),
           ("id" = u64, Path, description = "The request's id (`resume_request.id`)")),
    request_body = DecideResumeRequest,
    responses(
        (status = 200, body = Switch, description = "Rejected: the switch stays paused, without a request"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 409, body = brb_api::ApiErrorBody, description = "`no_request`: no open request with that id"),
        (status = 413, body = brb_api::ApiErrorBody), (status = 422, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: counted with state changes"),
        (status = 503, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    p: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    b: Body,
) -> ApiResult<Json<Switch>> {
    // Rejecting keeps the switch paused: a pause-only token may do it.
    let reject = |id| SwitchOp::Reject { id };
    decide(reject, SwitchState::Paused, state, caller, p, b).await
}

/// Approve and reject: the same checks, with the caller's scope checked as a change `to`
/// that state, and one commit of `op(id)`.
async fn decide(
    op: fn(u64) -> SwitchOp,
    to: SwitchState,
    state: AppState,
    caller: Caller,
    p: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    b: Body,
) -> ApiResult<Json<Switch>> {
    let (name, id) = name_and_id(p).await?;
    caller.require(Role::Operator)?;
    let req: DecideResumeRequest = read_json(b)?;
    caller.check_change(&name, to)?;
    change_allowed(&state, &caller, &name)?;
    let s = decide_request(&state, name, op(id), actor(&caller, req.source), req.reason).await?;
    Ok(Json(s))
}

#[utoipa::path(post, path = "/api/v1/switches/{name}/break-glass", tag = "approval",
    params(("name" = String, Path, description = "Switch name")),
    request_body = BreakGlassRequest,
    responses(
        (status = 200, body = Switch, description = "Resumed without approval (any open request is dropped); recorded as a state change whose reason starts with `BREAK GLASS`, and announced like any resume"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody, description = "`forbidden`: admins only; `out_of_scope`"),
        (status = 404, body = brb_api::ApiErrorBody), (status = 413, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody, description = "`invalid_value`: no reason, or a bad ramp"),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: counted with state changes"),
        (status = 503, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn break_glass(
    State(state): State<AppState>,
    caller: Caller,
    crate::routes::PathParam(name): crate::routes::PathParam,
    b: Body,
) -> ApiResult<Json<Switch>> {
    caller.require(Role::Admin)?;
    let req: BreakGlassRequest = read_json(b)?;
    caller.check_change(&name, SwitchState::Running)?;
    let reason = clean_reason(Some(req.reason))
        .ok_or_else(|| ApiError::invalid("reason: breaking the glass must say why"))?;
    change_allowed(&state, &caller, &name)?;
    tracing::warn!(switch = %name, actor = %caller.name, "break glass: resume without approval");
    let mut c = change(name, actor(&caller, req.source));
    c.reason = Some(reason);
    c.ramp = req.ramp;
    c.request = Some(SwitchOp::BreakGlass);
    let (s, _) = state.commit(SetState(c)).await?;
    Ok(Json(s))
}

#[utoipa::path(get, path = "/api/v1/resume-requests", tag = "approval",
    responses(
        (status = 200, body = ResumeRequestList, description = "The open resume requests on the switches this token may see, oldest first (a lapsed one is listed until the sweeper clears it, within a second)"),
        (status = 401, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_requests(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<ResumeRequestList>> {
    let mut requests: Vec<PendingResume> = state
        .hub()
        .list()
        .into_iter()
        .filter(|s| caller.check_switch(&s.name).is_ok())
        .filter_map(|s| {
            s.resume_request.clone().map(|request| PendingResume {
                switch: s.name.clone(),
                version: s.version,
                request: *request,
            })
        })
        .collect();
    requests.sort_by_key(|r| r.request.requested_at);
    Ok(Json(ResumeRequestList { requests }))
}

/// The open requests whose time is up at `now`: `(switch, version, request id)`.
fn lapsed<'a>(
    switches: impl IntoIterator<Item = &'a Switch>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, u64, u64)> {
    switches
        .into_iter()
        .filter_map(|s| {
            let r = s.resume_request.as_ref().filter(|r| now >= r.expires_at)?;
            Some((s.name.clone(), s.version, r.id))
        })
        .collect()
}

/// Lapses requests whose time is up, twice a second. Every replica runs it; each lapse is
/// one write at the version the sweeper read (`expected_version`) that the rule refuses once
/// the request is no longer open, so only one lapse is recorded, and its announcement (written
/// with it, in the outbox) goes out once. Approval checks the deadline itself, so a sweeper
/// that is late never lets a lapsed request through.
pub(crate) async fn sweep(state: AppState) {
    let mut shutdown = state.shutdown_signal();
    loop {
        let switches = state.hub().list();
        for (name, version, id) in lapsed(switches.iter().map(|s| &**s), chrono::Utc::now()) {
            let mut c = change(name.clone(), brb_store::Actor::system());
            c.expected_version = Some(version);
            c.request = Some(SwitchOp::Expire { id });
            match state.commit(SetState(c)).await {
                Ok(_) => tracing::info!(switch = %name, actor = "system", source = "system",
                    request = id, "resume request lapsed"),
                Err(e) => tracing::debug!(switch = %name, error = %e.message,
                    "resume request not lapsed (settled meanwhile, or the store refused)"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn paused(name: &str, version: u64, expires: Option<i64>) -> Switch {
        Switch {
            name: name.into(),
            description: String::new(),
            primary: false,
            state: SwitchState::Paused,
            version,
            changed_at: t(0),
            changed_by: "alice".into(),
            source: brb_api::Source::Api,
            reason: None,
            ramp: None,
            resume_request: expires.map(|e| {
                Box::new(brb_api::ResumeRequest {
                    id: version,
                    requested_by: "alice".into(),
                    source: brb_api::Source::Api,
                    requested_at: t(0),
                    expires_at: t(e),
                    reason: "drained".into(),
                    ramp: None,
                    guards: Vec::new(),
                })
            }),
        }
    }

    /// On a fake clock: a request lapses at its deadline, not a moment before, and only open
    /// requests are swept.
    #[test]
    fn requests_lapse_at_their_deadline() {
        let all = [
            paused("a", 4, Some(900)),
            paused("b", 7, Some(60)),
            paused("c", 2, None),
        ];
        assert!(lapsed(&all, t(59)).is_empty());
        assert_eq!(lapsed(&all, t(60)), vec![("b".to_string(), 7, 7)]);
        assert_eq!(
            lapsed(&all, t(900)),
            vec![("a".to_string(), 4, 4), ("b".to_string(), 7, 7)]
        );
    }
}
