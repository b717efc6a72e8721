//! HTTP handlers. Each one authenticates (except health and the OpenAPI document), checks the
//! role, and delegates: reads to the hub, writes to [`AppState`]'s single write path.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::{Extension, Json};
use brb_api::{
    AuditPage, Caller as ApiCaller, CreateSwitchRequest, CreateTokenRequest, CreatedToken,
    ErrorCode, Health, Role, ServerInfo, SetStateRequest, Switch, SwitchList, TokenList,
    UpdateSwitchRequest,
};
use brb_store::{AuditQuery, StateChange};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::commit::{
    CreateSwitch, CreateToken, DeleteSwitch, RecordAdapterAction, RevokeToken, RotateToken,
    SetState, UpdateDescription,
};
use crate::error::{ApiError, ApiResult};
use crate::sse::{self, Scope};
use crate::{AppState, Caller, actor, auth};

pub fn router(state: AppState) -> axum::Router {
    let max_body = state.config().limits.max_body_bytes;
    let api = axum::Router::new()
        .route("/info", get(info))
        .route("/switches", get(list_switches).post(create_switch))
        .route(
            "/switches/{name}",
            get(get_switch).patch(update_switch).delete(delete_switch),
        )
        .route("/switches/{name}/state", put(set_state))
        .merge(crate::approval::routes())
        .merge(crate::drill::routes())
        .route("/switches/{name}/ramp", axum::routing::post(ramp_control))
        .route("/switches/{name}/events", get(switch_events))
        .route("/switches/{name}/workers", get(switch_workers))
        .route("/switches/{name}/guard", get(switch_guard))
        .route("/workers/report", axum::routing::post(worker_report))
        .route("/adapters/actions", axum::routing::post(adapter_action))
        .route("/metrics", axum::routing::post(post_samples))
        .route("/metrics/series", get(get_series))
        .route("/notifications", get(notifications))
        .route(
            "/slack/commands",
            axum::routing::post(crate::slack::command),
        )
        .route(
            "/slack/interactions",
            axum::routing::post(crate::slack::interaction),
        )
        .route("/events", get(all_events))
        .route("/audit", get(audit))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
        .route("/tokens/{id}/rotate", axum::routing::post(rotate_token))
        .route("/openapi.json", get(openapi));
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest(brb_api::API_PREFIX, api)
        // OpenFeature's remote evaluation protocol, where its providers look for it.
        .route(
            "/ofrep/v1/evaluate/flags",
            axum::routing::post(crate::ofrep::evaluate_flags),
        )
        .route(
            "/ofrep/v1/evaluate/flags/{key}",
            axum::routing::post(crate::ofrep::evaluate_flag),
        )
        .route("/ofrep/v1/events", get(crate::ofrep::events))
        .route("/", get(console))
        .route("/{*path}", get(console))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// JSON bodies are parsed by hand so that every failure maps onto our error codes: syntax
/// errors are 400 `malformed_json`, well-formed JSON with wrong values is 422 `invalid_value`,
/// an oversized body is 413. The Content-Type is not required: curl users forget it.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MalformedJson,
            "request body is empty; expected JSON",
        ));
    }
    // Every request body is an object; serde would also fill a struct from an array
    // (`[null, null]` for a body whose fields are all optional), which the schema forbids.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
    {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| {
        // serde_json reports some type errors (a number where an enum goes) as syntax errors;
        // when the body is valid JSON, the value is what is wrong.
        if e.is_syntax() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            ApiError::invalid(e.to_string())
        } else {
            ApiError::from(e)
        }
    })
}

pub(crate) type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn body(b: Body) -> ApiResult<Bytes> {
    b.map_err(ApiError::from)
}

/// A request body as JSON of `T`.
pub(crate) fn read_json<T: DeserializeOwned>(b: Body) -> ApiResult<T> {
    parse_json(&body(b)?)
}

type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// A path segment (`{name}`, `{id}`); a segment that is not valid UTF-8 is a JSON 400 like
/// every other error, not axum's plain-text rejection.
pub(crate) struct PathParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
    }
}

fn query<T>(q: Q<T>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(ApiError::from)
}

/// The web console: the embedded UI, with headers that keep it from being framed (no
/// click-jacking of the giant button) or running anything but its own scripts.
async fn console(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") {
        return ApiError::new(ErrorCode::NotFound, "no such endpoint").into_response();
    }
    let Some((bytes, content_type)) = brb_console::get(path) else {
        return ApiError::new(ErrorCode::NotFound, "no such file").into_response();
    };
    let cache = if path.starts_with("/assets/") {
        // Vite puts a content hash in asset names.
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                 frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        bytes,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health, description = "The process is up")))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = Health, description = "Ready to serve: the store answers"),
        (status = 503, body = Health, description = "Not ready (store down or shutting down)")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "shutting down".into(),
            }),
        )
            .into_response();
    }
    match state.reads().ping().await {
        Ok(()) => Json(Health {
            status: "ok".into(),
        })
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: format!("store: {e}"),
            }),
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text format")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This document")))]
pub(crate) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/info", tag = "switches",
    responses((status = 200, body = ServerInfo), (status = 401, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn info(State(state): State<AppState>, caller: Caller) -> Json<ServerInfo> {
    let cfg = state.config();
    // Said before a resume, so nobody learns it from a refusal.
    let approvals = std::iter::once(cfg.primary.name.as_str())
        .chain(cfg.switches.iter().map(|s| s.name.as_str()))
        .filter(|name| caller.check_switch(name).is_ok())
        .filter_map(|name| {
            cfg.approval_secs(name)
                .map(|request_secs| brb_api::ApprovalRule {
                    switch: name.to_string(),
                    request_secs,
                })
        })
        .collect();
    Json(ServerInfo {
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        environment: brb_api::Environment {
            name: cfg.environment.name.clone(),
            color: cfg.environment.color.clone(),
        },
        primary_switch: cfg.primary.name.clone(),
        caller: ApiCaller {
            name: caller.name,
            role: caller.role,
        },
        backlog_series: cfg.primary.backlog_series.clone(),
        approvals,
    })
}

#[utoipa::path(get, path = "/api/v1/switches", tag = "switches",
    responses((status = 200, body = SwitchList), (status = 401, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_switches(State(state): State<AppState>, c: Caller) -> Json<SwitchList> {
    Json(SwitchList {
        switches: state
            .hub()
            .list()
            .iter()
            .filter(|s| c.check_switch(&s.name).is_ok())
            .map(|s| (**s).clone())
            .collect(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LongPoll {
    /// Answer as soon as the switch's version is greater than this.
    #[serde(default, deserialize_with = "brb_api::ints::opt_u64")]
    after_version: Option<u64>,
    /// Seconds to wait for that (default 30, capped by the server's limit).
    #[serde(default, deserialize_with = "brb_api::ints::opt_u64")]
    wait: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/switches/{name}", tag = "switches",
    params(("name" = String, Path, description = "Switch name"), LongPoll),
    responses(
        (status = 200, body = Switch, description = "The switch (after a change, or at timeout)"),
        (status = 400, body = brb_api::ApiErrorBody, description = "An unknown or unreadable query parameter"),
        (status = 401, body = brb_api::ApiErrorBody),
        (status = 404, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`too_many_streams`: the token holds as many event streams and long-polls as it may; or `rate_limited`: too many failed authentications from this address (with `Retry-After`)")),
    security(("bearer" = [])))]
pub(crate) async fn get_switch(
    State(state): State<AppState>,
    c: Caller,
    PathParam(name): PathParam,
    q: Q<LongPoll>,
) -> ApiResult<Json<Switch>> {
    let q = query(q)?;
    c.check_switch(&name)?;
    let Some(after) = q.after_version else {
        let s = state
            .hub()
            .get(&name)
            .ok_or_else(|| ApiError::switch_not_found(&name))?;
        return Ok(Json((*s).clone()));
    };
    let mut rx = state
        .hub()
        .watch(&name)
        .ok_or_else(|| ApiError::switch_not_found(&name))?;
    let mut lease = auth::StreamLease::acquire(&state, &c)?;
    let limit = state.config().limits.max_long_poll_secs;
    let wait = Duration::from_secs(q.wait.unwrap_or(30).min(limit));
    let _gauge = state.metrics().long_poll();
    let mut shutdown = state.shutdown_signal();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = rx.borrow_and_update().clone();
        let Some(s) = current else {
            return Err(ApiError::switch_not_found(&name));
        };
        if s.version > after || *shutdown.borrow() {
            return Ok(Json((*s).clone()));
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(Json((*s).clone())) },
            _ = tokio::time::sleep_until(deadline) => return Ok(Json((*s).clone())),
            _ = shutdown.changed() => return Ok(Json((*s).clone())),
            _ = lease.ended() => return Err(ApiError::unauthorized(
                "this token was revoked or expired while waiting")),
        }
    }
}

/// The rate limit of state changes (per token, and per address), shared by every handler that
/// changes a switch's state.
pub(crate) fn change_allowed(state: &AppState, caller: &Caller, name: &str) -> ApiResult<()> {
    let who = caller.token_id.as_deref().unwrap_or(&caller.name);
    if let Some(wait) = state
        .limits()
        .change(who, caller.remote_addr.map(|a| a.ip()))
    {
        tracing::warn!(switch = %name, actor = %caller.name, "state change rate limit hit");
        return Err(ApiError::rate_limited(
            ErrorCode::RateLimited,
            format!("too many state changes from this token or address; retry in {wait} s"),
            wait,
        ));
    }
    Ok(())
}

/// A reason as recorded: trimmed, and none rather than an empty one.
pub(crate) fn clean_reason(reason: Option<String>) -> Option<String> {
    reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
}

#[utoipa::path(put, path = "/api/v1/switches/{name}/state", tag = "switches",
    params(("name" = String, Path, description = "Switch name")),
    request_body = SetStateRequest,
    responses(
        (status = 200, body = Switch, description = "Committed (or already in that state)"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 409, body = brb_api::ApiErrorBody, description = "expected_version is stale; carries the current switch"),
        (status = 413, body = brb_api::ApiErrorBody), (status = 422, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: too many state changes from this token or address, or too many failed authentications from this address (with `Retry-After`). A pause is never limited"),
        (status = 503, body = brb_api::ApiErrorBody, description = "The store cannot write; nothing changed")),
    security(("bearer" = [])))]
pub(crate) async fn set_state(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
    b: Body,
) -> ApiResult<Json<Switch>> {
    caller.require(Role::Operator)?;
    let req: SetStateRequest = parse_json(&body(b)?)?;
    caller.check_change(&name, req.state)?;
    // A pause is the emergency stop: it must never wait (ISO 13850's "always available, takes
    // priority"). Pausing a paused switch writes nothing, so an exempt pause cannot flood the
    // audit log; resumes stay limited, so neither can a pause/resume flap.
    if req.state != brb_api::SwitchState::Paused {
        change_allowed(&state, &caller, &name)?;
    }
    let reason = clean_reason(req.reason);
    // The deliberately broken build of tests/chaos.rs (debug only): a compare-and-set that
    // forgets to compare. Version 0, which no switch has, is still refused.
    let expected_version = match (crate::config::chaos_bug(), req.expected_version) {
        (Some("skip_version_check"), Some(v)) if v > 0 => None,
        (_, e) => e,
    };
    let (switch, _changed) = state
        .commit(SetState(StateChange {
            switch: name,
            to: req.state,
            reason,
            expected_version,
            ramp: req.ramp,
            control: None,
            guards: req.guards,
            guard_op: None,
            actor: actor(&caller, req.source),
            notify: Vec::new(),
            approval_secs: None,
            request: None,
        }))
        .await?;
    Ok(Json(switch))
}

#[utoipa::path(post, path = "/api/v1/switches/{name}/ramp", tag = "switches",
    params(("name" = String, Path, description = "Switch name")),
    request_body = brb_api::RampControlRequest,
    responses(
        (status = 200, body = Switch, description = "Committed (a hold of a held release, or a continue of one that is not held, changes nothing). `hold`: the admitted fraction stays where it is (for at most a day); `continue`: a held release goes on over what was left of it; `extend`: the rest takes `by_secs` longer; `abort`: back to paused, recorded as a state change and announced like a pause"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody, description = "`out_of_scope`: a pause-only token may hold, extend or abort, not continue"),
        (status = 404, body = brb_api::ApiErrorBody),
        (status = 409, body = brb_api::ApiErrorBody, description = "`no_ramp`: no release is in progress; `version_conflict`: expected_version is stale"),
        (status = 413, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody, description = "`invalid_value`: `extend` without `by_secs`, or past a day in all"),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: counted with state changes (`abort` is a pause and never limited)"),
        (status = 503, body = brb_api::ApiErrorBody, description = "The store cannot write; nothing changed")),
    security(("bearer" = [])))]
pub(crate) async fn ramp_control(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
    b: Body,
) -> ApiResult<Json<Switch>> {
    use brb_api::RampAction;
    caller.require(Role::Operator)?;
    let req: brb_api::RampControlRequest = parse_json(&body(b)?)?;
    // Holding, slowing down or aborting a release admits less work, as a pause does, so a
    // pause-only token may do them; continuing admits more, as a resume does.
    let direction = match req.action {
        RampAction::Continue => brb_api::SwitchState::Running,
        RampAction::Hold | RampAction::Extend | RampAction::Abort => brb_api::SwitchState::Paused,
    };
    caller.check_change(&name, direction)?;
    let by_secs = match (req.action, req.by_secs) {
        (RampAction::Extend, Some(by)) if (1..=brb_api::MAX_RAMP_SECS).contains(&by) => by,
        (RampAction::Extend, _) => {
            return Err(ApiError::invalid(format!(
                "extend needs by_secs between 1 and {}",
                brb_api::MAX_RAMP_SECS
            )));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid("by_secs applies only to extend"));
        }
        (_, None) => 0,
    };
    // An abort is a pause (see `set_state`); hold and extend still count.
    if req.action != RampAction::Abort {
        change_allowed(&state, &caller, &name)?;
    }
    let reason = clean_reason(req.reason);
    let (switch, _changed) = state
        .commit(SetState(StateChange {
            switch: name,
            to: direction,
            reason,
            expected_version: req.expected_version,
            ramp: None,
            control: Some(brb_store::RampControl {
                action: req.action,
                by_secs,
            }),
            guards: Vec::new(),
            guard_op: None,
            actor: actor(&caller, req.source),
            notify: Vec::new(),
            approval_secs: None,
            request: None,
        }))
        .await?;
    Ok(Json(switch))
}

fn check_description(d: &str) -> ApiResult<()> {
    if d.chars().count() > brb_api::MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid(format!(
            "description must be at most {} characters",
            brb_api::MAX_DESCRIPTION_CHARS
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/switches", tag = "switches",
    request_body = CreateSwitchRequest,
    responses(
        (status = 201, body = Switch),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 409, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_switch(
    State(state): State<AppState>,
    caller: Caller,
    b: Body,
) -> ApiResult<(StatusCode, Json<Switch>)> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    let req: CreateSwitchRequest = parse_json(&body(b)?)?;
    brb_api::validate_switch_name(&req.name)
        .map_err(|e| ApiError::invalid(format!("switch name {:?}: {e}", req.name)))?;
    check_description(&req.description)?;
    let s = state
        .commit(CreateSwitch {
            name: req.name,
            description: req.description,
            actor: actor(&caller, req.source),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(s)))
}

#[utoipa::path(patch, path = "/api/v1/switches/{name}", tag = "switches",
    params(("name" = String, Path, description = "Switch name")),
    request_body = UpdateSwitchRequest,
    responses(
        (status = 200, body = Switch),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn update_switch(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
    b: Body,
) -> ApiResult<Json<Switch>> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    let req: UpdateSwitchRequest = parse_json(&body(b)?)?;
    check_description(&req.description)?;
    let s = state
        .commit(UpdateDescription {
            name,
            description: req.description,
            actor: actor(&caller, req.source),
        })
        .await?;
    Ok(Json(s))
}

#[utoipa::path(delete, path = "/api/v1/switches/{name}", tag = "switches",
    params(("name" = String, Path, description = "Switch name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = brb_api::ApiErrorBody), (status = 403, body = brb_api::ApiErrorBody),
        (status = 404, body = brb_api::ApiErrorBody),
        (status = 409, body = brb_api::ApiErrorBody, description = "The primary switch cannot be deleted")),
    security(("bearer" = [])))]
pub(crate) async fn delete_switch(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    state
        .commit(DeleteSwitch {
            name,
            actor: actor(&caller, None),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    /// Resume after this event id, for clients that cannot send the `Last-Event-ID` header.
    #[serde(default, deserialize_with = "brb_api::ints::opt_u64")]
    last_event_id: Option<u64>,
}

fn last_event_id(headers: &HeaderMap, q: &EventsQuery) -> ApiResult<Option<u64>> {
    if let Some(v) = headers.get("last-event-id") {
        let s = v
            .to_str()
            .map_err(|_| ApiError::new(ErrorCode::BadRequest, "Last-Event-ID is not ASCII"))?;
        let s = s.trim();
        if s.is_empty() {
            return Ok(q.last_event_id);
        }
        return s.parse().map(Some).map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                "Last-Event-ID must be a non-negative integer",
            )
        });
    }
    Ok(q.last_event_id)
}

#[utoipa::path(get, path = "/api/v1/switches/{name}/events", tag = "events",
    params(("name" = String, Path, description = "Switch name"), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this version")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "`switch` events (data: Switch, id: version), `deleted` when the switch is deleted, a keep-alive comment at least every 15 s"),
        (status = 400, body = brb_api::ApiErrorBody, description = "An unknown or unreadable query parameter, or a Last-Event-ID that is not a number"),
        (status = 401, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`too_many_streams`: the token holds as many event streams as it may; or `rate_limited`: too many failed authentications from this address (with `Retry-After`)")),
    security(("bearer" = [])))]
pub(crate) async fn switch_events(
    State(state): State<AppState>,
    c: Caller,
    PathParam(name): PathParam,
    headers: HeaderMap,
    direct: Option<Extension<sse::Direct>>,
    q: Q<EventsQuery>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let last = last_event_id(&headers, &q)?;
    c.check_switch(&name)?;
    let lease = auth::StreamLease::acquire(&state, &c)?;
    sse::open(
        state,
        Scope::One(name.into()),
        last,
        lease,
        direct.is_some(),
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this audit id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "`switch` and `deleted` events of every switch; id is the global audit id; without an id: `workers`, `samples` and `guard` (a `GuardStatus` on every check of a guarded release); a keep-alive comment at least every 2 s"),
        (status = 400, body = brb_api::ApiErrorBody, description = "An unknown or unreadable query parameter, or a Last-Event-ID that is not a number"),
        (status = 401, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`too_many_streams`: the token holds as many event streams as it may; or `rate_limited`: too many failed authentications from this address (with `Retry-After`)")),
    security(("bearer" = [])))]
pub(crate) async fn all_events(
    State(state): State<AppState>,
    c: Caller,
    headers: HeaderMap,
    direct: Option<Extension<sse::Direct>>,
    q: Q<EventsQuery>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let last = last_event_id(&headers, &q)?;
    c.require_unscoped()?;
    let lease = auth::StreamLease::acquire(&state, &c)?;
    sse::open(state, Scope::All, last, lease, direct.is_some()).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    /// Only this switch's entries.
    switch: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Only entries older than this id (from `next_before`).
    #[serde(default, deserialize_with = "brb_api::ints::opt_u64")]
    before: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses(
        (status = 200, body = AuditPage, description = "Newest first"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn audit(
    State(state): State<AppState>,
    c: Caller,
    q: Q<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let q = query(q)?;
    // A scoped token reads the history of its own switches, one at a time.
    match &q.switch {
        Some(name) => c.check_switch(name)?,
        None => c.require_unscoped()?,
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 500"));
    }
    let entries = state
        .reads()
        .audit(AuditQuery {
            switch: q.switch,
            before: q.before,
            limit,
        })
        .await?;
    let next_before = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before,
    }))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses(
        (status = 201, body = CreatedToken, description = "The secret is shown this once"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 409, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    b: Body,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    let req: CreateTokenRequest = parse_json(&body(b)?)?;
    brb_api::validate_token_name(&req.name)
        .map_err(|e| ApiError::invalid(format!("token name {:?}: {e}", req.name)))?;
    let mut new = auth::mint(&req.name, req.role);
    if let Some(exp) = req.expires_at
        && exp <= chrono::Utc::now()
    {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    if let Some(sc) = &req.scope {
        if sc.switches.is_empty() {
            return Err(ApiError::invalid(
                "scope.switches must name at least one switch",
            ));
        }
        for n in &sc.switches {
            brb_api::validate_switch_name(n)
                .map_err(|e| ApiError::invalid(format!("scope switch {n:?}: {e}")))?;
        }
    }
    new.record.policy.expires_at = req.expires_at;
    new.record.policy.scope = req.scope.clone();
    state
        .commit(CreateToken {
            record: new.record.clone(),
            actor: actor(&caller, None),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: new.record.info(),
            secret: new.secret,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses(
        (status = 200, body = TokenList, description = "Never with secrets"),
        (status = 401, body = brb_api::ApiErrorBody), (status = 403, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<TokenList>> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    // Fresh last-use figures, not those of up to 5 s ago.
    state.flush_token_uses().await;
    let tokens = state.reads().list_tokens().await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(|t| t.info()).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, body = brb_api::TokenInfo, description = "Revoked (at once)"),
        (status = 401, body = brb_api::ApiErrorBody), (status = 403, body = brb_api::ApiErrorBody),
        (status = 404, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> ApiResult<Json<brb_api::TokenInfo>> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    let rec = state
        .commit(RevokeToken {
            id,
            actor: actor(&caller, None),
        })
        .await?;
    Ok(Json(rec.info()))
}

#[utoipa::path(post, path = "/api/v1/tokens/{id}/rotate", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    request_body = brb_api::RotateTokenRequest,
    responses(
        (status = 200, body = CreatedToken, description = "The new secret, shown this once; the old one works until the grace period ends"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rotate_token(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
    b: Body,
) -> ApiResult<Json<CreatedToken>> {
    caller.require(Role::Admin)?;
    caller.require_unscoped()?;
    let bytes = body(b)?;
    let req: brb_api::RotateTokenRequest = if bytes.is_empty() {
        parse_json(&bytes::Bytes::from_static(b"{}"))?
    } else {
        parse_json(&bytes)?
    };
    if req.grace_secs > brb_api::MAX_GRACE_SECS {
        return Err(ApiError::invalid(format!(
            "grace_secs must be at most {} (a week)",
            brb_api::MAX_GRACE_SECS
        )));
    }
    let (secret, hash) = auth::mint_secret(&id);
    let grace_until = chrono::Utc::now() + chrono::Duration::seconds(req.grace_secs as i64);
    let rec = state
        .commit(RotateToken {
            id,
            secret_hash: hash,
            grace_until,
            actor: actor(&caller, None),
        })
        .await?;
    Ok(Json(CreatedToken {
        token: rec.info(),
        secret,
    }))
}

#[utoipa::path(post, path = "/api/v1/workers/report", tag = "workers",
    request_body = brb_api::WorkerReport,
    responses(
        (status = 200, body = Switch, description = "Recorded; the answer is the switch as it is now"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 404, body = brb_api::ApiErrorBody), (status = 422, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn worker_report(
    State(state): State<AppState>,
    caller: Caller,
    b: Body,
) -> ApiResult<Json<Switch>> {
    let r: brb_api::WorkerReport = parse_json(&body(b)?)?;
    let id_ok = !r.worker_id.is_empty()
        && r.worker_id.chars().count() <= brb_api::MAX_WORKER_ID
        && !r.worker_id.chars().any(char::is_control);
    if !id_ok {
        return Err(ApiError::invalid(format!(
            "worker_id must be 1 to {} printable characters",
            brb_api::MAX_WORKER_ID
        )));
    }
    if r.error
        .as_ref()
        .is_some_and(|e| e.chars().count() > brb_api::MAX_ADAPTER_DETAIL)
    {
        return Err(ApiError::invalid(format!(
            "error must be at most {} characters",
            brb_api::MAX_ADAPTER_DETAIL
        )));
    }
    let sw = observed_switch(&state, &caller, &r.switch, r.observed_version)?;
    tracing::debug!(switch = %r.switch, worker = %r.worker_id, actor = %caller.name,
        status = r.status.as_str(), version = r.observed_version, "worker report");
    state.workers().report(
        r,
        caller.remote_addr.map(|a| a.ip().to_string()),
        chrono::Utc::now(),
    );
    Ok(Json((*sw).clone()))
}

/// The switch a worker or an adapter says it observed: in the caller's scope, existing, and
/// not ahead of what this replica holds (a version from the future is a bug or a forgery).
fn observed_switch(
    state: &AppState,
    caller: &Caller,
    name: &str,
    observed_version: u64,
) -> ApiResult<std::sync::Arc<Switch>> {
    caller.check_switch(name)?;
    let sw = state
        .hub()
        .get(name)
        .ok_or_else(|| ApiError::switch_not_found(name))?;
    if observed_version > sw.version {
        return Err(ApiError::invalid(format!(
            "observed_version {observed_version} is ahead of the switch (version {})",
            sw.version
        )));
    }
    Ok(sw)
}

#[utoipa::path(post, path = "/api/v1/adapters/actions", tag = "workers",
    request_body = brb_api::AdapterAction,
    responses(
        (status = 201, body = brb_api::AuditEntry, description = "Recorded in the audit log (source `adapter`); no switch changed"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 413, body = brb_api::ApiErrorBody), (status = 422, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: too many records from this token (the state-change rate, in a bucket of their own; with `Retry-After`)"),
        (status = 503, body = brb_api::ApiErrorBody, description = "The store cannot write; nothing was recorded")),
    security(("bearer" = [])))]
/// A broker adapter records what it applied. Any role may (an adapter holds a read + report
/// token); what is recorded is always the caller's token name with source `adapter`, about a
/// switch in the token's scope, and it changes no switch, so the entry cannot pass for a press.
pub(crate) async fn adapter_action(
    State(state): State<AppState>,
    caller: Caller,
    b: Body,
) -> ApiResult<(StatusCode, Json<brb_api::AuditEntry>)> {
    let a: brb_api::AdapterAction = parse_json(&body(b)?)?;
    let printable = |t: &str| !t.chars().any(char::is_control);
    if a.adapter_id.is_empty()
        || a.adapter_id.chars().count() > brb_api::MAX_WORKER_ID
        || !printable(&a.adapter_id)
    {
        return Err(ApiError::invalid(format!(
            "adapter_id must be 1 to {} printable characters",
            brb_api::MAX_WORKER_ID
        )));
    }
    let detail = a.detail.trim();
    if detail.is_empty() || detail.chars().count() > brb_api::MAX_ADAPTER_DETAIL {
        return Err(ApiError::invalid(format!(
            "detail must be 1 to {} characters",
            brb_api::MAX_ADAPTER_DETAIL
        )));
    }
    observed_switch(&state, &caller, &a.switch, a.observed_version)?;
    // The audit log is durable: adapters write to it at the pace of state changes, not more.
    // Their own bucket per token, and none per address: an adapter running on an operator's
    // host must never spend the budget of that operator's presses.
    let who = caller.token_id.as_deref().unwrap_or(&caller.name);
    if let Some(wait) = state.limits().change(&format!("adapter:{who}"), None) {
        tracing::warn!(switch = %a.switch, actor = %caller.name, "adapter record rate limit hit");
        return Err(ApiError::rate_limited(
            ErrorCode::RateLimited,
            format!("too many records from this token or address; retry in {wait} s"),
            wait,
        ));
    }
    let entry = state
        .commit(RecordAdapterAction(brb_store::AdapterRecord {
            reason: format!(
                "{}: {} (switch version {})",
                a.adapter_id, detail, a.observed_version
            ),
            switch: a.switch,
            applied: a.applied,
            actor: actor(&caller, Some(brb_api::Source::Adapter)),
        }))
        .await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[utoipa::path(get, path = "/api/v1/switches/{name}/workers", tag = "workers",
    params(("name" = String, Path, description = "Switch name")),
    responses(
        (status = 200, body = brb_api::WorkerCounts),
        (status = 401, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn switch_workers(
    State(state): State<AppState>,
    c: Caller,
    PathParam(name): PathParam,
) -> ApiResult<Json<brb_api::WorkerCounts>> {
    c.check_switch(&name)?;
    let sw = state
        .hub()
        .get(&name)
        .ok_or_else(|| ApiError::switch_not_found(&name))?;
    Ok(Json(state.workers().counts(&sw, true)))
}

#[utoipa::path(get, path = "/api/v1/switches/{name}/guard", tag = "switches",
    params(("name" = String, Path, description = "Switch name")),
    responses(
        (status = 200, body = brb_api::GuardStatus,
            description = "The guarded release in progress (or the last one, when its guard \
                finished it or paused the switch again), as this replica's evaluator sees it"),
        (status = 401, body = brb_api::ApiErrorBody),
        (status = 404, body = brb_api::ApiErrorBody,
            description = "`switch_not_found`, or `not_found`: no guarded release")),
    security(("bearer" = [])))]
pub(crate) async fn switch_guard(
    State(state): State<AppState>,
    c: Caller,
    PathParam(name): PathParam,
) -> ApiResult<Json<brb_api::GuardStatus>> {
    c.check_switch(&name)?;
    state
        .hub()
        .get(&name)
        .ok_or_else(|| ApiError::switch_not_found(&name))?;
    state.guard_statuses().get(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            brb_api::ErrorCode::NotFound,
            format!("switch {name:?} has no guarded release"),
        )
    })
}

fn check_series_name(what: &str, s: &str, max: usize) -> ApiResult<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_:.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{what} {s:?} must be 1 to {max} characters of [A-Za-z0-9_:.-]"
        )))
    }
}

#[utoipa::path(post, path = "/api/v1/metrics", tag = "metrics",
    request_body = brb_api::SampleBatch,
    responses(
        (status = 200, body = brb_api::Accepted),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 413, body = brb_api::ApiErrorBody),
        (status = 422, body = brb_api::ApiErrorBody, description = "A bad sample: nothing of the batch was recorded")),
    security(("bearer" = [])))]
pub(crate) async fn post_samples(
    State(state): State<AppState>,
    _c: Caller,
    b: Body,
) -> ApiResult<Json<brb_api::Accepted>> {
    let batch: brb_api::SampleBatch = parse_json(&body(b)?)?;
    if batch.samples.len() > brb_api::MAX_SAMPLES_PER_POST {
        return Err(ApiError::invalid(format!(
            "at most {} samples per request",
            brb_api::MAX_SAMPLES_PER_POST
        )));
    }
    let now = chrono::Utc::now().timestamp();
    let retention = crate::series::RETENTION_SECS;
    let mut rows = Vec::with_capacity(batch.samples.len());
    for (i, smp) in batch.samples.into_iter().enumerate() {
        let at = |e: ApiError| ApiError::invalid(format!("sample {i}: {}", e.message));
        check_series_name("name", &smp.name, brb_api::MAX_SERIES_NAME).map_err(at)?;
        if smp.labels.len() > 8 {
            return Err(ApiError::invalid(format!("sample {i}: at most 8 labels")));
        }
        for (k, v) in &smp.labels {
            check_series_name("label", k, 64).map_err(at)?;
            if v.chars().count() > 128 || v.chars().any(char::is_control) {
                return Err(ApiError::invalid(format!(
                    "sample {i}: label values are at most 128 printable characters"
                )));
            }
        }
        if !smp.value.is_finite() {
            return Err(ApiError::invalid(format!(
                "sample {i}: value must be finite"
            )));
        }
        let sec = match smp.ts {
            None => now,
            Some(ts) if ts.is_finite() => ts.floor() as i64,
            Some(_) => return Err(ApiError::invalid(format!("sample {i}: bad ts"))),
        };
        if sec < now - retention + 1 || sec > now + 60 {
            return Err(ApiError::invalid(format!(
                "sample {i}: ts must be within the last hour and at most a minute ahead"
            )));
        }
        rows.push((smp.name, smp.labels, smp.kind, sec, smp.value));
    }
    let n = rows.len();
    state
        .series()
        .record_all(rows)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(brb_api::Accepted { accepted: n }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeriesParams {
    /// Only series with this name (all label sets); default: every series.
    name: Option<String>,
    /// Unix seconds; default: an hour ago.
    since: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/metrics/series", tag = "metrics", params(SeriesParams),
    responses(
        (status = 200, body = brb_api::SeriesList),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_series(
    State(state): State<AppState>,
    _c: Caller,
    q: Q<SeriesParams>,
) -> ApiResult<Json<brb_api::SeriesList>> {
    let q = query(q)?;
    let now = chrono::Utc::now().timestamp();
    let since = q.since.unwrap_or(now - crate::series::RETENTION_SECS);
    Ok(Json(brb_api::SeriesList {
        series: state.series().query(q.name.as_deref(), since, now),
        retention_secs: crate::series::RETENTION_SECS as u64,
    }))
}

#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications",
    responses(
        (status = 200, body = brb_api::NotificationList, description = "The 100 most recent, newest first"),
        (status = 401, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn notifications(
    State(state): State<AppState>,
    c: Caller,
) -> ApiResult<Json<brb_api::NotificationList>> {
    c.require_unscoped()?;
    let items = state.reads().outbox_recent(100).await?;
    Ok(Json(brb_api::NotificationList {
        notifications: items
            .into_iter()
            .map(|i| brb_api::Notification {
                id: i.id,
                status: if i.delivered_at.is_some() {
                    brb_api::DeliveryStatus::Delivered
                } else if i.failed {
                    brb_api::DeliveryStatus::Failed
                } else {
                    brb_api::DeliveryStatus::Pending
                },
                channel: i.channel.to_string(),
                kind: i.kind.to_string(),
                switch: i.event.name,
                version: i.event.version,
                created_at: i.created_at,
                attempts: i.attempts,
                last_attempt_at: i.last_attempt_at,
                delivered_at: i.delivered_at,
                last_error: i.last_error,
            })
            .collect(),
    }))
}
