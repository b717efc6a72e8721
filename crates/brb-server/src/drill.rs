//! Fire drills over HTTP: `POST /api/v1/switches/{name}/drill` commits a new version with
//! nothing else changed (rule in `brb-store`'s `rules.rs`, audit `drill_started`), and
//! `GET …/drills/{version}` reports, from the worker registry, who answered and how fast.
//!
//! With replicas, every replica records when its own workers first reported the drill's
//! version (`Workers::on_drill`, started when the replica publishes the drill) and shares
//! those instants in its worker records (`replica_workers`); the report takes the drill's
//! start from its audit entry. So any replica reports every watcher, whichever replica the
//! watcher is connected to and whichever replica started the drill.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use brb_api::{DrillAnswer, DrillReport, DrillRequest, DrillStarted, ErrorCode, Role, SwitchState};
use brb_store::{StateChange, SwitchOp};

use crate::commit::SetState;
use crate::error::{ApiError, ApiResult};
use crate::routes::{Body, PathParam, change_allowed, clean_reason, read_json};
use crate::{AppState, Caller, actor};

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/switches/{name}/drill", post(start))
        .route("/switches/{name}/drills/{version}", get(report))
}

#[utoipa::path(post, path = "/api/v1/switches/{name}/drill", tag = "switches",
    params(("name" = String, Path, description = "Switch name")),
    request_body = DrillRequest,
    responses(
        (status = 201, body = DrillStarted, description = "A new version with the same state, ramp and request: every watcher answers it with a report. Nothing pauses, no one is paged; recorded as `drill_started`"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody), (status = 404, body = brb_api::ApiErrorBody),
        (status = 413, body = brb_api::ApiErrorBody), (status = 422, body = brb_api::ApiErrorBody),
        (status = 429, body = brb_api::ApiErrorBody, description = "`rate_limited`: counted with state changes (a drill is not an emergency)"),
        (status = 503, body = brb_api::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
    b: Body,
) -> ApiResult<(StatusCode, Json<DrillStarted>)> {
    caller.require(Role::Operator)?;
    let req: DrillRequest = read_json(b)?;
    caller.check_switch(&name)?;
    change_allowed(&state, &caller, &name)?;
    let started_at = chrono::Utc::now();
    let change = StateChange {
        switch: name,
        to: SwitchState::Running,
        reason: clean_reason(req.reason),
        expected_version: None,
        ramp: None,
        control: None,
        actor: actor(&caller, req.source),
        notify: Vec::new(),
        approval_secs: None,
        request: Some(SwitchOp::Drill),
        guards: Vec::new(),
        guard_op: None,
    };
    let (s, _) = state.commit(SetState(change)).await?;
    // The start every replica's report uses is the audit entry's; this process's own clock
    // before the commit only if that cannot be read back now.
    let started_at = match state.reads().entry_of_version(&s.name, s.version).await {
        Ok(Some(e)) => e.at,
        _ => started_at,
    };
    state.workers().on_drill(&s, started_at);
    Ok((
        StatusCode::CREATED,
        Json(DrillStarted {
            switch: s.name,
            version: s.version,
            started_at,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/switches/{name}/drills/{version}", tag = "switches",
    params(("name" = String, Path, description = "Switch name"),
           ("version" = u64, Path, description = "The drill's version (from the answer that started it)")),
    responses(
        (status = 200, body = DrillReport, description = "Who answered (with the time from the drill's start to their first report of its version) and the p50/p99/max, who has not (with their last report), who is stale. Ask again until `complete` or your timeout"),
        (status = 400, body = brb_api::ApiErrorBody), (status = 401, body = brb_api::ApiErrorBody),
        (status = 403, body = brb_api::ApiErrorBody),
        (status = 404, body = brb_api::ApiErrorBody, description = "No such switch, or that version is not a drill"),
        (status = 503, body = brb_api::ApiErrorBody, description = "The audit log cannot be read now")),
    security(("bearer" = [])))]
pub(crate) async fn report(
    State(state): State<AppState>,
    caller: Caller,
    p: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<DrillReport>> {
    let Path((name, version)) =
        p.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let version: u64 = version.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("version {version:?}: not a number"),
        )
    })?;
    caller.check_switch(&name)?;
    let sw = state
        .hub()
        .get(&name)
        .ok_or_else(|| ApiError::switch_not_found(&name))?;
    // The drill's start, as recorded by whichever replica started it.
    let entry = state
        .reads()
        .entry_of_version(&name, version)
        .await?
        .filter(|e| e.action == brb_api::AuditAction::DrillStarted)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("version {version} of {name:?} is not a drill"),
            )
        })?;
    let started_at = entry.at;
    let mut acks = state.workers().answers(&name, version);
    let counts = state.workers().counts(&sw, true);
    // A live worker at or past the drill whose first report of it nobody recorded (its replica
    // restarted, or heard of the drill late) did answer: its last report is the latest it can
    // have done so.
    for w in counts.workers.iter().filter(|w| !w.stale) {
        if w.observed_version >= version {
            acks.entry(w.worker_id.clone()).or_insert(w.last_seen);
        }
    }
    let mut answered: Vec<DrillAnswer> = acks
        .into_iter()
        .map(|(worker_id, at)| DrillAnswer {
            worker_id,
            ms: (at - started_at).num_milliseconds().max(0) as u64,
        })
        .collect();
    answered.sort_by(|a, b| a.ms.cmp(&b.ms).then_with(|| a.worker_id.cmp(&b.worker_id)));
    let (stale, live): (Vec<_>, Vec<_>) = counts.workers.into_iter().partition(|w| w.stale);
    let missing: Vec<_> = live
        .into_iter()
        .filter(|w| {
            w.observed_version < version && !answered.iter().any(|a| a.worker_id == w.worker_id)
        })
        .collect();
    let ms: Vec<u64> = answered.iter().map(|a| a.ms).collect();
    Ok(Json(DrillReport {
        switch: name,
        version,
        started_at,
        p50_ms: brb_api::nearest_rank(&ms, 50.0),
        p99_ms: brb_api::nearest_rank(&ms, 99.0),
        max_ms: ms.last().copied(),
        complete: missing.is_empty(),
        answered,
        missing,
        stale,
        unacknowledged: counts.unacknowledged,
    }))
}
