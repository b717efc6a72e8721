//! The one error body every endpoint answers with: `{"error": {"code", "message"}}`.
//!
//! Codes, not strings, are what clients branch on (the UI maps them to its own words), so the
//! code set is a closed enum with a fixed HTTP status each.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Switch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not JSON, or the query string or path cannot be parsed.
    MalformedJson,
    /// A query parameter or path segment could not be parsed.
    BadRequest,
    /// No token, or a token that is unknown, revoked or malformed.
    Unauthorized,
    /// The token's expiry date has passed (or its rotation grace period ended).
    TokenExpired,
    /// The token's role is too low for this endpoint.
    Forbidden,
    /// The token is limited to other switches, or to pausing only.
    OutOfScope,
    NotFound,
    MethodNotAllowed,
    /// `expected_version` did not match; the body carries the current switch.
    VersionConflict,
    /// The thing already exists (switch or token name).
    AlreadyExists,
    /// The primary switch cannot be deleted.
    Protected,
    /// A hold, extend or abort asked of a switch with no release in progress.
    NoRamp,
    /// A plain resume of a switch whose resumes need a second operator: file a resume request.
    ApprovalRequired,
    /// Another operator's resume request is open on this switch.
    RequestPending,
    /// No open resume request with that id (approved, rejected, lapsed or replaced), or none
    /// needed: the switch needs no approval, or is not paused.
    NoRequest,
    /// The resume request lapsed before it was approved.
    RequestExpired,
    /// The requester cannot approve their own resume request.
    SelfApproval,
    PayloadTooLarge,
    /// The request head (request line and headers) is larger than the server accepts.
    HeaderTooLarge,
    /// The request target is longer than the server accepts.
    UriTooLong,
    /// Well-formed JSON with a value that is not allowed (wrong type, unknown state, too long).
    InvalidValue,
    UnsupportedMediaType,
    RateLimited,
    /// The token already holds as many event streams as it may.
    TooManyStreams,
    /// The store cannot take writes right now (database down, disk full, read-only).
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is always sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden | ErrorCode::OutOfScope | ErrorCode::SelfApproval => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::VersionConflict
            | ErrorCode::AlreadyExists
            | ErrorCode::Protected
            | ErrorCode::NoRamp
            | ErrorCode::ApprovalRequired
            | ErrorCode::RequestPending
            | ErrorCode::NoRequest
            | ErrorCode::RequestExpired => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UriTooLong => 414,
            ErrorCode::HeaderTooLarge => 431,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidValue => 422,
            ErrorCode::RateLimited | ErrorCode::TooManyStreams => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::OutOfScope => "out_of_scope",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Protected => "protected",
            ErrorCode::NoRamp => "no_ramp",
            ErrorCode::ApprovalRequired => "approval_required",
            ErrorCode::RequestPending => "request_pending",
            ErrorCode::NoRequest => "no_request",
            ErrorCode::RequestExpired => "request_expired",
            ErrorCode::SelfApproval => "self_approval",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeaderTooLarge => "header_too_large",
            ErrorCode::UriTooLong => "uri_too_long",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; never contains a token secret.
    pub message: String,
    /// With `version_conflict`: the switch as it is now, so the caller can decide again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Box<Switch>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    pub error: ErrorDetail,
}

impl ApiErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                current: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_shape() {
        let b = ApiErrorBody::new(ErrorCode::NotFound, "no switch named x");
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no switch named x");
        assert!(v["error"].get("current").is_none());
    }

    #[test]
    fn code_names_match_serde() {
        for c in [
            ErrorCode::MalformedJson,
            ErrorCode::VersionConflict,
            ErrorCode::NoRamp,
            ErrorCode::ApprovalRequired,
            ErrorCode::RequestPending,
            ErrorCode::NoRequest,
            ErrorCode::RequestExpired,
            ErrorCode::SelfApproval,
            ErrorCode::PayloadTooLarge,
            ErrorCode::HeaderTooLarge,
            ErrorCode::UriTooLong,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
    }
}
