//! Resume approval: a switch configured with `[switches.approval] resume = 1` resumes only when
//! a second operator approves a recorded request. Pausing never needs anyone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{GuardSpec, RampSpec, Source, claimed_source, claimed_source_schema};

/// Most guards a request may carry (as many as a resume).
pub const MAX_REQUEST_GUARDS: usize = crate::MAX_GUARDS;

/// A resume waiting for a second operator, carried by the paused switch until it is approved,
/// rejected, replaced, or lapses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResumeRequest {
    /// The switch version that recorded the request; approve and reject name it.
    pub id: u64,
    /// Token name of the operator who asked.
    pub requested_by: String,
    pub source: Source,
    pub requested_at: DateTime<Utc>,
    /// After this instant the request can no longer be approved (and is cleared).
    pub expires_at: DateTime<Utc>,
    /// Why the requester wants to resume.
    pub reason: String,
    /// The release the resume will use when approved (none: all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampSpec>,
    /// Health guards for the release, applied with it when approved (a guarded release).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<GuardSpec>,
}

/// `POST /api/v1/switches/{name}/resume-requests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateResumeRequest {
    /// Why (1 to 1000 characters): required, the approver decides on it.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    /// Release gradually once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampSpec>,
    /// At most 4 health guards for the release (they need a stepped ramp), as on a resume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 4)]
    pub guards: Vec<GuardSpec>,
    /// Defaults to `api`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
}

/// `POST /api/v1/switches/{name}/resume-requests/{id}/approve` and `…/reject`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideResumeRequest {
    /// Optional words of the approver (at most 1000 characters), kept in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
    /// Defaults to `api`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
}

/// `POST /api/v1/switches/{name}/break-glass`: an admin resumes a switch that needs approval,
/// without it. Recorded loudly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    /// Why (1 to 1000 characters): required.
    #[schema(min_length = 1, max_length = 1000)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampSpec>,
    /// Defaults to `api`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claimed_source"
    )]
    #[schema(schema_with = claimed_source_schema)]
    pub source: Option<Source>,
}

/// `GET /api/v1/resume-requests`: the open requests the caller may see, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResumeRequestList {
    pub requests: Vec<PendingResume>,
}

/// One open request and its switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingResume {
    pub switch: String,
    /// The switch's version (pass as `expected_version` if you act on it elsewhere).
    pub version: u64,
    pub request: ResumeRequest,
}

/// A switch whose resumes need a second operator, as `GET /api/v1/info` lists it: the console
/// says so in its resume dialog, before anyone presses, and files a request instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalRule {
    pub switch: String,
    /// How long a resume request stays open (`expire`), in seconds.
    pub request_secs: u64,
}
