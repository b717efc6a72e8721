//! OpenFeature Remote Evaluation Protocol (OFREP): every switch as a boolean feature flag, for
//! applications that already speak OpenFeature and will not embed our SDK.
//!
//! The rules are pure functions of a switch and the time ([`evaluate`], [`bulk`], [`etag`],
//! [`etag_matches`], [`parse_request`], [`failure`], [`notify_key`], [`next_variant_change`]);
//! the handlers authenticate, read the hub's image (never the database) and write the answer.
//!
//! The kill-switch convention of feature-flag tools: the flag's value says whether work is
//! allowed. `true` while running, and during a ramp as long as it admits some work (every ramp
//! admits more than nothing from its first instant); `false` while paused. The variant names
//! the situation (`running`, `paused`, `ramping`) and the metadata carries the facts
//! (version, who changed it, the admitted fraction), so an application can apply a ramp
//! itself. The reason is always `STATIC`: the value is the same whatever the evaluation
//! context. It is never `DISABLED`, which makes providers serve the code default.
//!
//! OFREP readers send no acknowledgement, so they never count toward "N/N workers paused".
//! They are counted apart ([`Readers`]) as what they are: distinct (token, address,
//! `User-Agent`) triples that evaluated a switch lately, and which version they were last told.
//!
//! The protocol's event-stream extension (ADR-0008) is for providers that cache the bulk
//! answer: the bulk answer names a notify-only SSE stream (`eventStreams`), and each
//! `refetchEvaluation` event on it tells the provider to fetch the bulk answer again. Those
//! providers open it with a browser `EventSource`, which sends no header, so the stream is
//! authenticated by a channel in its URL ([`crate::auth::TokenBook::event_channel`]): derived
//! from the token, opening nothing but this stream, dead with the token. The stream notifies
//! when a flag the token sees changes value, variant or version (a ramp's end included), not
//! at each step of a ramp; and once when it opens, since the server cannot know what the
//! provider fetched before connecting (with `If-None-Match` that costs a 304). The server-side
//! providers evaluate on every call and never use it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use brb_api::ofrep::{
    EVENTS_PATH, OfrepBulkEvaluation, OfrepEndpoint, OfrepError, OfrepErrorCode, OfrepEvaluation,
    OfrepEventStream, OfrepFlagMetadata, OfrepReason, OfrepRequest, OfrepSetMetadata, OfrepVariant,
    REFETCH_EVALUATION,
};
use brb_api::{ErrorCode, Switch, SwitchState, UnacknowledgedReaders};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::{AppState, Caller, auth};

/// How long an OFREP reader counts after its last evaluation.
pub const READER_WINDOW_SECS: u64 = 60;

/// Readers remembered per switch; beyond that new ones are not counted (memory stays bounded
/// whatever tokens, addresses and user agents clients present).
pub const MAX_READERS_PER_SWITCH: usize = 10_000;

/// The answer to one switch.
pub fn evaluate(sw: &Switch, now: DateTime<Utc>) -> OfrepEvaluation {
    let fraction = sw.admitted_fraction(now);
    let ramp = sw
        .ramp
        .as_ref()
        .filter(|r| sw.state == SwitchState::Running && !r.is_over(now));
    let variant = match (sw.state, ramp) {
        (SwitchState::Paused, _) => OfrepVariant::Paused,
        (SwitchState::Running, Some(_)) => OfrepVariant::Ramping,
        (SwitchState::Running, None) => OfrepVariant::Running,
    };
    OfrepEvaluation {
        key: sw.name.clone(),
        value: fraction > 0.0,
        reason: OfrepReason::Static,
        variant,
        metadata: OfrepFlagMetadata {
            version: sw.version,
            state: sw.state,
            ramp_fraction: fraction,
            ramp_ends_at: ramp.map(|r| r.ends_at()),
            changed_at: sw.changed_at,
            changed_by: sw.changed_by.clone(),
            source: sw.source,
            change_reason: sw.reason.clone(),
            primary: sw.primary,
        },
    }
}

/// The answer to the bulk endpoint: every switch `visible` lets through, in the hub's order
/// (primary first, then by name).
pub fn bulk<'a>(
    switches: impl IntoIterator<Item = &'a Switch>,
    visible: impl Fn(&str) -> bool,
    environment: &str,
    channel: Option<&str>,
    now: DateTime<Utc>,
) -> OfrepBulkEvaluation {
    OfrepBulkEvaluation {
        flags: switches
            .into_iter()
            .filter(|s| visible(&s.name))
            .map(|s| evaluate(s, now))
            .collect(),
        metadata: OfrepSetMetadata {
            environment: environment.to_string(),
        },
        event_streams: channel
            .map(|c| OfrepEventStream {
                kind: "sse".into(),
                endpoint: OfrepEndpoint {
                    request_uri: format!("{EVENTS_PATH}?channel={c}"),
                },
            })
            .into_iter()
            .collect(),
    }
}

/// What a cached bulk answer must not miss: each flag's key, version and variant (the value
/// follows the variant). A stream notifies when this changes.
pub fn notify_key(answer: &OfrepBulkEvaluation) -> Vec<(String, u64, OfrepVariant)> {
    answer
        .flags
        .iter()
        .map(|f| (f.key.clone(), f.metadata.version, f.variant))
        .collect()
}

/// The next instant after `now` at which a flag's variant changes with no new version: the end
/// of a running ramp.
pub fn next_variant_change<'a>(
    switches: impl IntoIterator<Item = &'a Switch>,
    visible: impl Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    switches
        .into_iter()
        .filter(|s| s.state == SwitchState::Running && visible(&s.name))
        .filter_map(|s| s.ramp.as_ref())
        .map(|r| r.ends_at())
        .filter(|t| *t > now)
        .min()
}

/// One `refetchEvaluation` event, as SSE bytes.
pub fn refetch_frame(etag: &str) -> String {
    let data = serde_json::json!({"type": REFETCH_EVALUATION, "etag": etag});
    format!("event: message\ndata: {data}\n\n")
}

/// A strong entity tag for an answer's exact bytes. Derived from the body rather than from
/// versions because a ramp moves the variant and the admitted fraction without a new version.
pub fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// Whether an `If-None-Match` header value names `etag` (RFC 9110 §13.1.2: weak comparison,
/// a list of tags, or `*`).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = bare(etag);
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || (!t.is_empty() && bare(t) == want))
}

/// Reads a request body. It must be a JSON object; `context`, when present, an object whose
/// `targetingKey`, when present, is a string.
pub fn parse_request(body: &[u8]) -> Result<OfrepRequest, (OfrepErrorCode, String)> {
    if body.is_empty() {
        return Err((
            OfrepErrorCode::ParseError,
            "request body is empty; expected a JSON object such as {\"context\": {}}".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| (OfrepErrorCode::ParseError, format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err((
            OfrepErrorCode::ParseError,
            "the body must be a JSON object such as {\"context\": {}}".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        (
            OfrepErrorCode::InvalidContext,
            format!("context must be an object, and its targetingKey a string: {e}"),
        )
    })
}

/// How an error of the rest of the API reads in OFREP: the status the protocol lists for it and
/// an OpenFeature error code.
pub fn failure(code: ErrorCode) -> (StatusCode, OfrepErrorCode) {
    match code {
        ErrorCode::Unauthorized | ErrorCode::TokenExpired => {
            (StatusCode::UNAUTHORIZED, OfrepErrorCode::General)
        }
        ErrorCode::Forbidden | ErrorCode::OutOfScope => {
            (StatusCode::FORBIDDEN, OfrepErrorCode::General)
        }
        ErrorCode::RateLimited | ErrorCode::TooManyStreams => {
            (StatusCode::TOO_MANY_REQUESTS, OfrepErrorCode::General)
        }
        ErrorCode::NotFound => (StatusCode::NOT_FOUND, OfrepErrorCode::FlagNotFound),
        // OFREP lists 400 for every unreadable request; a body over the limit is one.
        ErrorCode::BadRequest | ErrorCode::MalformedJson | ErrorCode::PayloadTooLarge => {
            (StatusCode::BAD_REQUEST, OfrepErrorCode::ParseError)
        }
        ErrorCode::InvalidValue => (StatusCode::BAD_REQUEST, OfrepErrorCode::InvalidContext),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, OfrepErrorCode::General),
    }
}

/// One OFREP reader: a digest of (token, client address, `User-Agent`), fixed size whatever
/// the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReaderId([u8; 16]);

impl ReaderId {
    pub fn new(token: &str, addr: Option<IpAddr>, user_agent: Option<&[u8]>) -> ReaderId {
        let mut h = Sha256::new();
        h.update(token.as_bytes());
        h.update([0]);
        h.update(addr.map(|a| a.to_string()).unwrap_or_default().as_bytes());
        h.update([0]);
        h.update(user_agent.unwrap_or_default());
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        ReaderId(id)
    }
}

struct Seen {
    at: DateTime<Utc>,
    /// The switch version this reader was last answered with.
    version: u64,
}

/// Who read which switch over OFREP lately. No I/O and no clock: the caller passes `now`.
#[derive(Default)]
pub struct Readers {
    by_switch: Mutex<HashMap<String, HashMap<ReaderId, Seen>>>,
}

impl Readers {
    /// Notes that `id` was answered `version` of `switch`. True when the switch's reader
    /// counts changed (a new reader, or one told a different version than before).
    pub fn saw(&self, switch: &str, id: ReaderId, version: u64, now: DateTime<Utc>) -> bool {
        let mut map = self.by_switch.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(switch) {
            map.insert(switch.to_string(), HashMap::new());
        }
        let Some(readers) = map.get_mut(switch) else {
            return false;
        };
        let full = readers.len() >= MAX_READERS_PER_SWITCH;
        match readers.get_mut(&id) {
            Some(seen) => {
                let changed = seen.version != version;
                seen.at = now;
                seen.version = version;
                changed
            }
            None if full => false,
            None => {
                readers.insert(id, Seen { at: now, version });
                true
            }
        }
    }

    /// Forgets readers silent for longer than the window; returns the switches that lost some.
    pub fn sweep(&self, now: DateTime<Utc>) -> Vec<String> {
        let window = chrono::Duration::seconds(READER_WINDOW_SECS as i64);
        let mut map = self.by_switch.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = Vec::new();
        for (name, readers) in map.iter_mut() {
            let before = readers.len();
            readers.retain(|_, s| now - s.at <= window);
            if readers.len() != before {
                changed.push(name.clone());
            }
        }
        map.retain(|_, r| !r.is_empty());
        changed
    }

    /// The readers of `switch` within the window at `now`.
    pub fn counts(&self, switch: &str, current: u64, now: DateTime<Utc>) -> UnacknowledgedReaders {
        let window = chrono::Duration::seconds(READER_WINDOW_SECS as i64);
        let map = self.by_switch.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = UnacknowledgedReaders {
            window_secs: READER_WINDOW_SECS,
            readers: 0,
            served_current: 0,
        };
        for s in map.get(switch).into_iter().flat_map(|r| r.values()) {
            if now - s.at <= window {
                out.readers += 1;
                if s.version >= current {
                    out.served_current += 1;
                }
            }
        }
        out
    }
}

/// The caller of an OFREP endpoint: `Authorization: Bearer` as everywhere, or OFREP's
/// `X-API-Key` carrying the same token (used only when there is no `Authorization` header).
/// Failures are kept, not rejected, so that they are answered in OFREP's shape.
pub(crate) struct OfrepCaller(Result<Caller, ApiError>);

impl FromRequestParts<AppState> for OfrepCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = if parts.headers.contains_key(header::AUTHORIZATION) {
            auth::bearer(parts)
        } else {
            match parts.headers.get(brb_api::ofrep::API_KEY_HEADER) {
                Some(v) => v
                    .to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::unauthorized("X-API-Key header is not ASCII")),
                None => Err(ApiError::unauthorized(
                    "missing Authorization: Bearer <token> (or X-API-Key: <token>) header",
                )),
            }
        };
        Ok(OfrepCaller(Caller::authenticate(parts, state, token)))
    }
}

/// An OFREP error answer.
fn reply_error(key: Option<&str>, e: ApiError) -> Response {
    let (status, code) = failure(e.code);
    let mut res = (
        status,
        axum::Json(OfrepError {
            key: key.map(str::to_string),
            error_code: code,
            error_details: e.message,
        }),
    )
        .into_response();
    if let Some(secs) = e.retry_after {
        res.headers_mut().insert(header::RETRY_AFTER, secs.into());
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"brb\""),
        );
    }
    res
}

fn parse_error(key: Option<&str>, (code, details): (OfrepErrorCode, String)) -> Response {
    let mut e = ApiError::new(ErrorCode::BadRequest, details);
    if code == OfrepErrorCode::InvalidContext {
        e.code = ErrorCode::InvalidValue;
    }
    reply_error(key, e)
}

fn reader(caller: &Caller, headers: &HeaderMap) -> ReaderId {
    let token = caller.token_id.as_deref().unwrap_or(&caller.name);
    let ua = headers.get(header::USER_AGENT).map(|v| v.as_bytes());
    ReaderId::new(token, caller.remote_addr.map(|a| a.ip()), ua)
}

type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// The bulk answer for `caller` from the hub's image.
fn answer_for(state: &AppState, caller: &Caller, now: DateTime<Utc>) -> OfrepBulkEvaluation {
    let switches = state.hub().list();
    let channel = caller
        .token_id
        .as_deref()
        .and_then(|id| state.tokens().event_channel(id));
    bulk(
        switches.iter().map(|s| &**s),
        |name| caller.check_switch(name).is_ok(),
        &state.config().environment.name,
        channel.as_deref(),
        now,
    )
}

/// An answer's bytes and entity tag.
fn encode(answer: &OfrepBulkEvaluation) -> Result<(Vec<u8>, String), ApiError> {
    let json = serde_json::to_vec(answer).map_err(|e| {
        tracing::error!(error = %e, "encoding an OFREP answer");
        ApiError::new(ErrorCode::Internal, "cannot encode the answer")
    })?;
    let tag = etag(&json);
    Ok((json, tag))
}

#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags/{key}", tag = "openfeature",
    params(("key" = String, Path, description = "The flag key: a switch's name")),
    request_body = OfrepRequest,
    responses(
        (status = 200, body = OfrepEvaluation, description = "`value` is true while work is allowed (running, or a ramp admits some), false while paused"),
        (status = 400, body = OfrepError, description = "`PARSE_ERROR`: the body is not a JSON object; `INVALID_CONTEXT`: `context` or its `targetingKey` has the wrong type"),
        (status = 401, body = OfrepError, description = "No token, or an unknown, revoked or expired one"),
        (status = 403, body = OfrepError, description = "A scoped token asked for a switch outside its scope"),
        (status = 404, body = OfrepError, description = "`FLAG_NOT_FOUND`: no switch has this name"),
        (status = 429, body = OfrepError, description = "Too many failed authentications from this address",
            headers(("Retry-After" = u64, description = "Seconds to wait")))),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn evaluate_flag(
    State(state): State<AppState>,
    OfrepCaller(caller): OfrepCaller,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match key {
        Ok(Path(k)) => k,
        Err(e) => return reply_error(None, ApiError::new(ErrorCode::BadRequest, e.body_text())),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return reply_error(Some(&key), e),
    };
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return reply_error(Some(&key), e.into()),
    };
    if let Err(e) = parse_request(&bytes) {
        return parse_error(Some(&key), e);
    }
    if let Err(e) = caller.check_switch(&key) {
        return reply_error(Some(&key), e);
    }
    let Some(sw) = state.hub().get(&key) else {
        return reply_error(Some(&key), ApiError::switch_not_found(&key));
    };
    let now = Utc::now();
    let answer = evaluate(&sw, now);
    state
        .workers()
        .ofrep_read(&sw.name, reader(&caller, &headers), sw.version, now);
    tracing::debug!(switch = %sw.name, actor = %caller.name, source = "ofrep",
        value = answer.value, version = sw.version, "ofrep evaluation");
    axum::Json(answer).into_response()
}

#[utoipa::path(post, path = "/ofrep/v1/evaluate/flags", tag = "openfeature",
    params(("If-None-Match" = Option<String>, Header,
        description = "The `ETag` of an earlier answer: 304 when nothing changed since")),
    request_body = OfrepRequest,
    responses(
        (status = 200, body = OfrepBulkEvaluation, description = "Every switch the token may read (a scoped token's others are left out)",
            headers(("ETag" = String, description = "Changes whenever any flag's answer does"))),
        (status = 304, description = "Nothing changed since the answer with this `If-None-Match` tag",
            headers(("ETag" = String))),
        (status = 400, body = OfrepError, description = "`PARSE_ERROR` or `INVALID_CONTEXT`, as for one flag"),
        (status = 401, body = OfrepError, description = "No token, or an unknown, revoked or expired one"),
        (status = 429, body = OfrepError, description = "Too many failed authentications from this address",
            headers(("Retry-After" = u64, description = "Seconds to wait")))),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn evaluate_flags(
    State(state): State<AppState>,
    OfrepCaller(caller): OfrepCaller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return reply_error(None, e),
    };
    let bytes = match body {
        Ok(b) => b,
        Err(e) => return reply_error(None, e.into()),
    };
    if let Err(e) = parse_request(&bytes) {
        return parse_error(None, e);
    }
    let now = Utc::now();
    let answer = answer_for(&state, &caller, now);
    let (json, tag) = match encode(&answer) {
        Ok(a) => a,
        Err(e) => return reply_error(None, e),
    };
    let id = reader(&caller, &headers);
    for f in &answer.flags {
        state
            .workers()
            .ofrep_read(&f.key, id, f.metadata.version, now);
    }
    let Ok(tag_value) = HeaderValue::from_str(&tag) else {
        return reply_error(None, ApiError::new(ErrorCode::Internal, "bad entity tag"));
    };
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| etag_matches(v, &tag));
    tracing::debug!(actor = %caller.name, source = "ofrep", flags = answer.flags.len(),
        unchanged, "ofrep bulk evaluation");
    if unchanged {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag_value)]).into_response();
    }
    (
        [
            (header::ETAG, tag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        json,
    )
        .into_response()
}

/// The caller of the event stream, authenticated by the `channel` of its URL.
pub(crate) struct ChannelCaller(Result<Caller, ApiError>);

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChannelQuery {
    /// From `eventStreams[0].endpoint.requestUri` of a bulk answer.
    channel: String,
}

impl FromRequestParts<AppState> for ChannelCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let q = serde_urlencoded::from_str::<ChannelQuery>(parts.uri.query().unwrap_or(""))
            .map_err(|_| ApiError::unauthorized("missing ?channel= (from the bulk answer)"));
        let verified = q.and_then(|q| state.tokens().verify_channel(&q.channel));
        Ok(ChannelCaller(Caller::from_verified(parts, state, verified)))
    }
}

/// What one open event stream keeps between two events.
struct Stream {
    state: AppState,
    caller: Caller,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::subscription::Frame>>,
    lease: auth::StreamLease,
    shutdown: tokio::sync::watch::Receiver<bool>,
    last: Option<Vec<(String, u64, OfrepVariant)>>,
    keepalive: std::time::Duration,
    _gauge: crate::metrics::GaugeGuard,
}

impl Stream {
    /// The next bytes to send, or None when the stream ends (token gone, shutdown).
    async fn next(&mut self) -> Option<String> {
        // A comment after `keepalive` of silence (each call starts after a send).
        let ping = tokio::time::Instant::now() + self.keepalive;
        loop {
            let now = Utc::now();
            // Every frame of the hub (any switch, worker counts, samples) wakes the stream:
            // the key is cheap, the bytes are encoded only when it changed.
            let answer = answer_for(&self.state, &self.caller, now);
            let key = notify_key(&answer);
            if self.last.as_ref() != Some(&key) {
                self.last = Some(key);
                let (_, tag) = encode(&answer).ok()?;
                return Some(refetch_frame(&tag));
            }
            let switches = self.state.hub().list();
            let ramp_end = next_variant_change(
                switches.iter().map(|s| &**s),
                |n| self.caller.check_switch(n).is_ok(),
                now,
            )
            .map(|t| {
                let left = (t - now).to_std().unwrap_or_default();
                // A hair after the end, so that the ramp is over when evaluated.
                tokio::time::Instant::now() + left + std::time::Duration::from_millis(5)
            });
            tokio::select! {
                r = self.rx.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                        return None;
                    }
                }
                _ = async {
                    match ramp_end {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(ping) => return Some(": keep-alive\n\n".to_string()),
                _ = self.lease.ended() => return None,
                _ = self.shutdown.changed() => return None,
            }
            if *self.shutdown.borrow() {
                return None;
            }
        }
    }
}

#[utoipa::path(get, path = "/ofrep/v1/events", tag = "openfeature", params(ChannelQuery),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "Server-sent events, each `event: message` with an `OfrepStreamEvent` as data: at once, then whenever a flag the token sees changes value, variant or version. Notify-only: fetch the bulk answer again"),
        (status = 401, body = OfrepError, description = "A missing, unknown or outdated channel, or its token revoked or expired"),
        (status = 429, body = OfrepError, description = "The token holds as many event streams as it may, or too many failed authentications from this address",
            headers(("Retry-After" = u64, description = "Seconds to wait")))))]
pub(crate) async fn events(
    State(state): State<AppState>,
    ChannelCaller(caller): ChannelCaller,
) -> Response {
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return reply_error(None, e),
    };
    let lease = match auth::StreamLease::acquire(&state, &caller) {
        Ok(l) => l,
        Err(e) => return reply_error(None, e),
    };
    tracing::debug!(actor = %caller.name, source = "ofrep", "ofrep event stream opened");
    let stream = Stream {
        rx: state.hub().subscribe(),
        shutdown: state.shutdown_signal(),
        keepalive: std::time::Duration::from_secs(state.config().limits.keepalive_secs.max(1)),
        _gauge: state.metrics().sse_watcher(),
        lease,
        caller,
        last: None,
        state,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(bytes)), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use brb_api::{Ramp, RampShape, Source};
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn switch(name: &str, state: SwitchState, ramp: Option<Ramp>) -> Switch {
        Switch {
            name: name.into(),
            description: String::new(),
            primary: name == "workers",
            state,
            version: 7,
            changed_at: at(0),
            changed_by: "alice".into(),
            source: Source::Cli,
            reason: Some("db at 100%".into()),
            ramp,
            resume_request: None,
        }
    }

    fn steps(from: i64) -> Ramp {
        Ramp {
            started_at: at(from),
            duration_secs: 90,
            shape: RampShape::Steps {
                fractions: vec![0.1, 0.5, 1.0],
            },
            held: None,
            guard: None,
        }
    }

    #[test]
    fn running_is_true_paused_is_false() {
        let r = evaluate(&switch("workers", SwitchState::Running, None), at(5));
        assert!(r.value);
        assert_eq!(r.variant, OfrepVariant::Running);
        assert_eq!(r.reason, OfrepReason::Static);
        assert_eq!(r.metadata.ramp_fraction, 1.0);
        assert_eq!(r.metadata.ramp_ends_at, None);

        let p = evaluate(&switch("workers", SwitchState::Paused, None), at(5));
        assert!(!p.value);
        assert_eq!(p.variant, OfrepVariant::Paused);
        assert_eq!(p.metadata.ramp_fraction, 0.0);
        assert_eq!(
            (p.metadata.version, p.metadata.changed_by.as_str()),
            (7, "alice")
        );
        assert_eq!(p.metadata.change_reason.as_deref(), Some("db at 100%"));
    }

    #[test]
    fn a_ramp_is_true_from_its_first_instant_and_running_once_over() {
        let sw = switch("workers", SwitchState::Running, Some(steps(0)));
        let first = evaluate(&sw, at(0));
        assert!(first.value, "a ramp admits 10% at once: work is allowed");
        assert_eq!(first.variant, OfrepVariant::Ramping);
        assert!((first.metadata.ramp_fraction - 0.1).abs() < 1e-9);
        assert_eq!(first.metadata.ramp_ends_at, Some(at(90)));
        let mid = evaluate(&sw, at(50));
        assert!((mid.metadata.ramp_fraction - 0.5).abs() < 1e-9);
        let done = evaluate(&sw, at(91));
        assert_eq!(done.variant, OfrepVariant::Running);
        assert_eq!(done.metadata.ramp_fraction, 1.0);
        assert_eq!(done.metadata.ramp_ends_at, None);
        // A paused switch that still carries an old ramp is paused, nothing else.
        let p = evaluate(
            &switch("workers", SwitchState::Paused, Some(steps(0))),
            at(10),
        );
        assert_eq!((p.value, p.variant), (false, OfrepVariant::Paused));
    }

    #[test]
    fn metadata_holds_only_primitives_and_leaves_absent_facts_out() {
        let mut sw = switch("emails", SwitchState::Running, None);
        sw.reason = None;
        let v = serde_json::to_value(evaluate(&sw, at(1))).unwrap();
        assert_eq!(v["key"], "emails");
        assert_eq!(v["reason"], "STATIC");
        assert_eq!(v["variant"], "running");
        let meta = v["metadata"].as_object().unwrap();
        assert!(!meta.contains_key("change_reason"));
        assert!(!meta.contains_key("ramp_ends_at"));
        for (k, val) in meta {
            assert!(
                val.is_string() || val.is_number() || val.is_boolean(),
                "{k} = {val}"
            );
        }
    }

    #[test]
    fn bulk_keeps_only_visible_switches_in_order() {
        let a = switch("workers", SwitchState::Paused, None);
        let b = switch("emails", SwitchState::Running, None);
        let all = bulk([&a, &b], |_| true, "prod", None, at(1));
        let keys: Vec<_> = all.flags.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["workers", "emails"]);
        assert_eq!(all.metadata.environment, "prod");
        let scoped = bulk([&a, &b], |n| n == "emails", "prod", Some("ab.cd"), at(1));
        assert_eq!(scoped.flags.len(), 1);
        assert_eq!(scoped.flags[0].key, "emails");
        // The event stream, origin-relative so that it works through any replica.
        assert!(all.event_streams.is_empty());
        let v = serde_json::to_value(&scoped).unwrap();
        assert_eq!(
            v["eventStreams"],
            serde_json::json!([{"type": "sse",
                "endpoint": {"requestUri": "/ofrep/v1/events?channel=ab.cd"}}])
        );
        assert!(
            serde_json::to_value(&all)
                .unwrap()
                .get("eventStreams")
                .is_none()
        );
    }

    #[test]
    fn etags_follow_the_bytes_and_match_as_http_says() {
        let t = etag(b"{\"flags\":[]}");
        assert!(t.starts_with('"') && t.ends_with('"') && t.len() == 34);
        assert_eq!(t, etag(b"{\"flags\":[]}"));
        assert_ne!(t, etag(b"{\"flags\":[1]}"));
        assert!(etag_matches(&t, &t));
        assert!(etag_matches(&format!("W/{t}"), &t));
        assert!(etag_matches(&format!("\"other\", {t}"), &t));
        assert!(etag_matches("*", &t));
        assert!(!etag_matches("\"other\"", &t));
        assert!(!etag_matches("", &t));
        assert!(
            !etag_matches(t.trim_matches('"'), &t),
            "quotes are part of the tag"
        );
    }

    #[test]
    fn a_stepped_ramp_changes_the_tag_without_a_new_version() {
        let sw = switch("workers", SwitchState::Running, Some(steps(0)));
        let body = |s| serde_json::to_vec(&bulk([&sw], |_| true, "e", None, at(s))).unwrap();
        assert_eq!(etag(&body(1)), etag(&body(2)), "same step, same tag");
        assert_ne!(etag(&body(1)), etag(&body(50)), "next step, new tag");
    }

    #[test]
    fn streams_notify_on_value_variant_or_version_not_on_a_ramps_steps() {
        let mut sw = switch("workers", SwitchState::Running, Some(steps(0)));
        let key = |sw: &Switch, t| notify_key(&bulk([sw], |_| true, "e", None, at(t)));
        assert_eq!(key(&sw, 1), key(&sw, 50), "a new step: no notification");
        assert_ne!(
            key(&sw, 1),
            key(&sw, 91),
            "the ramp's end: ramping -> running"
        );
        let before = key(&sw, 1);
        sw.version += 1;
        assert_ne!(before, key(&sw, 1), "a new version");
        let hidden = |sw: &Switch| notify_key(&bulk([sw], |n| n != "workers", "e", None, at(1)));
        assert_eq!(
            hidden(&sw),
            hidden(&switch("workers", SwitchState::Paused, None))
        );

        // When to wake for a ramp's end: the earliest visible running ramp still to end.
        let b = switch("emails", SwitchState::Running, Some(steps(30)));
        let p = switch("search", SwitchState::Paused, Some(steps(-100)));
        assert_eq!(
            next_variant_change([&sw, &b, &p], |_| true, at(1)),
            Some(at(90))
        );
        assert_eq!(
            next_variant_change([&sw, &b], |_| true, at(95)),
            Some(at(120))
        );
        assert_eq!(
            next_variant_change([&sw, &b], |n| n == "workers", at(95)),
            None
        );
        assert_eq!(
            next_variant_change([&p], |_| true, at(-150)),
            None,
            "paused"
        );

        let f = refetch_frame("\"abc\"");
        assert_eq!(
            f,
            "event: message\ndata: {\"etag\":\"\\\"abc\\\"\",\"type\":\"refetchEvaluation\"}\n\n"
        );
    }

    #[test]
    fn requests_are_objects_with_an_object_context() {
        assert_eq!(parse_request(b"{}").unwrap().context, None);
        let r = parse_request(br#"{"context":{"targetingKey":"w-1","host":"a","n":[1]}}"#)
            .unwrap()
            .context
            .unwrap();
        assert_eq!(r.targeting_key.as_deref(), Some("w-1"));
        assert_eq!(r.attributes["host"], "a");
        assert!(parse_request(br#"{"context":{},"extra":1}"#).is_ok());
        for (body, code) in [
            (&b""[..], OfrepErrorCode::ParseError),
            (b"{", OfrepErrorCode::ParseError),
            (b"[]", OfrepErrorCode::ParseError),
            (b"\"context\"", OfrepErrorCode::ParseError),
            (br#"{"context":5}"#, OfrepErrorCode::InvalidContext),
            (br#"{"context":[]}"#, OfrepErrorCode::InvalidContext),
            (
                br#"{"context":{"targetingKey":5}}"#,
                OfrepErrorCode::InvalidContext,
            ),
        ] {
            assert_eq!(
                parse_request(body).unwrap_err().0,
                code,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn api_errors_map_to_the_statuses_ofrep_lists() {
        use OfrepErrorCode as O;
        for (code, status, ofrep) in [
            (ErrorCode::Unauthorized, 401, O::General),
            (ErrorCode::TokenExpired, 401, O::General),
            (ErrorCode::OutOfScope, 403, O::General),
            (ErrorCode::NotFound, 404, O::FlagNotFound),
            (ErrorCode::RateLimited, 429, O::General),
            (ErrorCode::PayloadTooLarge, 400, O::ParseError),
            (ErrorCode::MalformedJson, 400, O::ParseError),
            (ErrorCode::InvalidValue, 400, O::InvalidContext),
        ] {
            assert_eq!(
                failure(code),
                (StatusCode::from_u16(status).unwrap(), ofrep)
            );
        }
    }

    #[test]
    fn readers_are_counted_in_their_window_with_the_version_they_were_told() {
        let r = Readers::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = ReaderId::new("tok", Some(ip), Some(b"python-requests/2.34"));
        let b = ReaderId::new("tok", Some(ip), Some(b"node"));
        let c = ReaderId::new("tok2", Some(ip), Some(b"node"));
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(
            a,
            ReaderId::new("tok", Some(ip), Some(b"python-requests/2.34"))
        );
        assert!(
            r.saw("workers", a, 7, at(0)),
            "a new reader changes the counts"
        );
        assert!(
            !r.saw("workers", a, 7, at(1)),
            "the same answer again does not"
        );
        assert!(r.saw("workers", b, 7, at(2)));
        let c0 = r.counts("workers", 8, at(3));
        assert_eq!(
            (c0.window_secs, c0.readers, c0.served_current),
            (READER_WINDOW_SECS, 2, 0)
        );
        assert!(r.saw("workers", a, 8, at(4)), "told a new version");
        let c1 = r.counts("workers", 8, at(5));
        assert_eq!((c1.readers, c1.served_current), (2, 1));
        assert_eq!(r.counts("emails", 1, at(5)).readers, 0);
        // b was last seen at 2: it leaves the window at 2 + 60.
        let w = READER_WINDOW_SECS as i64;
        assert_eq!(r.counts("workers", 8, at(2 + w + 1)).readers, 1);
        assert!(r.sweep(at(2 + w)).is_empty(), "still inside at the edge");
        assert_eq!(r.sweep(at(2 + w + 1)), vec!["workers".to_string()]);
        assert_eq!(r.sweep(at(4 + w + 1)), vec!["workers".to_string()]);
        assert!(r.sweep(at(4 + w + 2)).is_empty());
        assert_eq!(r.counts("workers", 8, at(4 + w + 2)).readers, 0);
        assert!(r.saw("workers", c, 8, at(200)));
    }

    #[test]
    fn readers_stay_bounded_per_switch() {
        let r = Readers::default();
        for i in 0..MAX_READERS_PER_SWITCH + 5 {
            r.saw(
                "workers",
                ReaderId::new(&i.to_string(), None, None),
                1,
                at(0),
            );
        }
        assert_eq!(
            r.counts("workers", 1, at(0)).readers as usize,
            MAX_READERS_PER_SWITCH
        );
        assert!(r.saw("emails", ReaderId::new("x", None, None), 1, at(0)));
    }
}
