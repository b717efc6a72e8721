//! The one error type of the HTTP layer. Every failure, including extractor rejections, unknown
//! routes and panics, becomes `{"error": {"code", "message"}}` with the code's fixed status:
//! clients never see an HTML page or a bare text body.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use brb_api::{ApiErrorBody, ErrorCode, ErrorDetail, Switch};
use brb_store::{Outage, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub current: Option<Box<Switch>>,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            current: None,
            retry_after: None,
        }
    }

    pub fn rate_limited(code: ErrorCode, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(code, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, message)
    }

    pub fn switch_not_found(name: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no switch named {name:?}"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SwitchNotFound(name) => ApiError::switch_not_found(&name),
            StoreError::TokenNotFound(id) => {
                ApiError::new(ErrorCode::NotFound, format!("no token with id {id:?}"))
            }
            StoreError::Conflict { current } => ApiError {
                code: ErrorCode::VersionConflict,
                message: format!(
                    "the switch is at version {}, not the expected one",
                    current.version
                ),
                current: Some(current),
                retry_after: None,
            },
            StoreError::AlreadyExists(what) => {
                ApiError::new(ErrorCode::AlreadyExists, format!("{what} already exists"))
            }
            StoreError::Protected => {
                ApiError::new(ErrorCode::Protected, "the primary switch cannot be deleted")
            }
            StoreError::Unavailable { outage, detail } => {
                tracing::error!(%outage, error = %detail, "store unavailable");
                // Name the cause when it is one an operator can fix on the spot; never pass
                // the driver's text through (it may name hosts or paths).
                let cause = match outage {
                    Outage::DiskFull => "the disk holding the database is full",
                    Outage::ReadOnly => "the database is on a read-only file system",
                    Outage::DiskFailing => {
                        "the disk holding the database refuses writes (read-only or I/O error)"
                    }
                    Outage::Busy | Outage::Unreachable => "the store cannot take writes right now",
                };
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("{cause}; nothing was changed (reads keep working)"),
                )
            }
            StoreError::Internal(msg) => {
                tracing::error!(error = %msg, "store error");
                ApiError::new(
                    ErrorCode::Internal,
                    "internal store error; nothing was changed",
                )
            }
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        } else {
            ApiError::new(ErrorCode::BadRequest, format!("cannot read body: {r}"))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(ErrorCode::BadRequest, r.body_text())
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::invalid(e.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ApiErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                current: self.current,
            },
        };
        let mut res = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if matches!(self.code, ErrorCode::Unauthorized | ErrorCode::TokenExpired) {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"brb\""),
            );
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
