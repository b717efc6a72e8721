//! The OpenFeature Remote Evaluation Protocol (OFREP) as the control plane serves it: each
//! switch is a boolean flag whose key is the switch's name.
//!
//! Field names follow the protocol's OpenAPI document (`service/openapi.yaml` of the
//! open-feature/protocol repository, version 0.3.0, and its ADR-0008 on event streams), which
//! is why they are camelCase here and nowhere else in this crate. The server answers only what
//! is listed here: a boolean value, one reason (`STATIC`), three variants, primitive metadata,
//! and one `sse` event stream carrying `refetchEvaluation` notifications.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Source, SwitchState};

/// Where the protocol lives, as its providers build it from their base URL.
pub const OFREP_PREFIX: &str = "/ofrep/v1";

/// The header OFREP's `ApiKeyAuth` scheme names; it carries the same `brb_…` token as
/// `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// `POST /ofrep/v1/evaluate/flags[/{key}]`. The protocol makes `context` required, but
/// OpenFeature's Python provider sends `{}` when it is given no context, and a switch's value
/// depends on no context: the server accepts a missing one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepRequest {
    #[serde(default)]
    pub context: Option<OfrepContext>,
}

/// The evaluation context. Read and checked, never used: a kill switch answers the same for
/// every user, host and request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepContext {
    /// OpenFeature's targeting key. Optional here (nothing is targeted), a string when given.
    #[serde(
        rename = "targetingKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub targeting_key: Option<String>,
    /// Any other attribute.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// Why a flag has its value. Always `STATIC`: the value is the same whatever the evaluation
/// context (no targeting rule, no percentage split), though it changes when the switch does.
/// Never `DISABLED`: in OFREP a disabled flag makes providers fall back to the code default,
/// which could turn a pressed brake into "allowed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum OfrepReason {
    #[serde(rename = "STATIC")]
    Static,
}

/// Which of the switch's three situations the value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OfrepVariant {
    /// Work is allowed in full: value `true`.
    Running,
    /// The brake is pulled: value `false`.
    Paused,
    /// A gradual release runs: value `true` (some work is admitted); `ramp_fraction` in the
    /// metadata says how much.
    Ramping,
}

impl OfrepVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            OfrepVariant::Running => "running",
            OfrepVariant::Paused => "paused",
            OfrepVariant::Ramping => "ramping",
        }
    }
}

/// Flag metadata. OFREP allows only strings, numbers and booleans as values, so times are
/// RFC 3339 strings and absent facts are left out rather than `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepFlagMetadata {
    /// The switch's version: one more per change.
    pub version: u64,
    pub state: SwitchState,
    /// The share of normal work admitted now: 0 paused, 1 running, in between during a ramp.
    #[schema(minimum = 0, maximum = 1)]
    pub ramp_fraction: f64,
    /// When the running ramp reaches 1 (only while one runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_ends_at: Option<DateTime<Utc>>,
    pub changed_at: DateTime<Utc>,
    /// The token name that made the last change.
    pub changed_by: String,
    pub source: Source,
    /// The reason given with the last change, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_reason: Option<String>,
    /// The Big Red Button itself.
    pub primary: bool,
}

/// One flag's successful evaluation (`evaluationSuccess` with a `booleanFlag` value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepEvaluation {
    /// The switch's name.
    pub key: String,
    /// `true` while work is allowed (running, or a ramp admits some), `false` while paused.
    pub value: bool,
    pub reason: OfrepReason,
    pub variant: OfrepVariant,
    pub metadata: OfrepFlagMetadata,
}

/// OpenFeature error codes the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OfrepErrorCode {
    /// The body is not JSON, or not an object.
    ParseError,
    /// `context` (or its `targetingKey`) has the wrong type.
    InvalidContext,
    /// No switch has this name.
    FlagNotFound,
    /// Anything else: authentication, scope, rate limit.
    General,
}

/// A failed evaluation (`evaluationFailure`, `flagNotFound`, and the bodies of 401, 403 and
/// 429). `key` is the flag asked for; the bulk endpoint's failures have none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(rename = "errorCode")]
    pub error_code: OfrepErrorCode,
    /// For people and logs; never repeats a token.
    #[serde(rename = "errorDetails")]
    pub error_details: String,
}

/// Metadata of the whole flag set in a bulk answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepSetMetadata {
    /// The environment's name (`[environment] name`), as the console shows it.
    pub environment: String,
}

/// `POST /ofrep/v1/evaluate/flags`: every switch the token may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepBulkEvaluation {
    pub flags: Vec<OfrepEvaluation>,
    pub metadata: OfrepSetMetadata,
    /// Where to be told that the answer changed (ADR-0008). Absent for the `BRB_ADMIN_TOKEN`
    /// token, which has no event channel.
    #[serde(
        rename = "eventStreams",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub event_streams: Vec<OfrepEventStream>,
}

/// The OFREP event stream's path, as the `endpoint.requestUri` of an [`OfrepEventStream`].
pub const EVENTS_PATH: &str = "/ofrep/v1/events";

/// An event stream the provider connects to (`eventStream` with an `endpoint`): the provider
/// joins `requestUri` to the origin of the base URL it was configured with, so the answer works
/// through any load balancer or replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepEventStream {
    /// Always `sse`.
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint: OfrepEndpoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepEndpoint {
    /// `/ofrep/v1/events?channel=…`. The channel opens only this notify-only stream; treat it
    /// as sensitive all the same (do not log it).
    #[serde(rename = "requestUri")]
    #[schema(pattern = "^/")]
    pub request_uri: String,
}

/// The data of each event on the stream (`event: message`): the answer of the bulk endpoint
/// changed; fetch it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OfrepStreamEvent {
    /// Always `refetchEvaluation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The bulk answer's `ETag` now.
    pub etag: String,
}

/// The one event type the stream sends.
pub const REFETCH_EVALUATION: &str = "refetchEvaluation";
