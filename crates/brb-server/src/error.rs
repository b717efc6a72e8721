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
            StoreError::NoRamp(name) => ApiError::new(
                ErrorCode::NoRamp,
                format!("switch {name:?} has no release in progress to hold, extend or abort"),
            ),
            StoreError::Invalid(msg) => ApiError::invalid(msg),
            e @ StoreError::ApprovalRequired(_) => {
                ApiError::new(ErrorCode::ApprovalRequired, e.to_string())
            }
            e @ StoreError::RequestPending { .. } => {
                ApiError::new(ErrorCode::RequestPending, e.to_string())
            }
            StoreError::NoRequest(msg) => ApiError::new(ErrorCode::NoRequest, msg),
            e @ StoreError::RequestExpired { .. } => {
                ApiError::new(ErrorCode::RequestExpired, e.to_string())
            }
            e @ StoreError::SelfApproval(_) => {
                ApiError::new(ErrorCode::SelfApproval, e.to_string())
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

/// The bytes of a complete JSON error answer written straight to a connection, for the few
/// errors answered before any request reaches the router (a request head that cannot be read),
/// after which the connection closes.
pub(crate) fn raw_error_response(code: ErrorCode, message: &str, date: Option<&[u8]>) -> Vec<u8> {
    let body = serde_json::to_vec(&ApiErrorBody::new(code, message)).unwrap_or_else(|_| {
        br#"{"error":{"code":"internal","message":"cannot encode an error"}}"#.to_vec()
    });
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut out = Vec::with_capacity(192 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n");
    if let Some(d) = date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(d);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// The JSON answer to put in place of `head` when `head` is one of hyper's own answers to a
/// request head it could not parse: status 400, 414 or 431 with an empty body and no
/// `content-type`. Every answer of the router carries a `content-type`, so none is mistaken
/// for one of these.
fn replace_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    if !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 4];
    let mut res = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = res.parse(head).ok()? else {
        return None;
    };
    if len != head.len() {
        return None;
    }
    let (code, message) = match res.code? {
        400 => (
            ErrorCode::BadRequest,
            "the request head cannot be parsed (request line or a header is malformed)",
        ),
        414 => (ErrorCode::UriTooLong, "the request target is too long"),
        431 => (
            ErrorCode::HeaderTooLarge,
            "the request head (request line and headers) is larger than this server accepts",
        ),
        _ => return None,
    };
    let mut date = None;
    let mut empty = false;
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            empty = h.value == b"0";
        } else if h.name.eq_ignore_ascii_case("date") {
            date = Some(h.value);
        } else if !h.name.eq_ignore_ascii_case("connection") {
            return None;
        }
    }
    empty.then(|| raw_error_response(code, message, date))
}

/// A connection as hyper sees it, with hyper's own answers to unreadable request heads (empty
/// 400, 414 and 431, which never reach the router) rewritten into JSON errors like every
/// other, so that clients can rely on `{"error": {"code", "message"}}` whatever went wrong.
/// hyper writes such an answer as one head-only write and then closes the connection, so the
/// rewrite only ever replaces a whole write.
pub(crate) struct JsonHeadErrors<IO> {
    inner: IO,
    /// A replacement being written, and the length of the write it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<IO> JsonHeadErrors<IO> {
    pub(crate) fn new(inner: IO) -> Self {
        JsonHeadErrors {
            inner,
            pending: None,
        }
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> JsonHeadErrors<IO> {
    /// Writes the pending replacement; done when it is all out, answering for the write it
    /// replaced.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        while let Some((bytes, written, replaces)) = self.pending.as_mut() {
            if *written == bytes.len() {
                let n = *replaces;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonHeadErrors<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonHeadErrors<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.pending.is_none() {
            match replace_parse_error(buf) {
                Some(json) => self.pending = Some((json, 0, buf.len())),
                None => return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_pending(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.pending.is_none() {
            let first = bufs.iter().find(|b| !b.is_empty());
            match first.and_then(|b| replace_parse_error(b).map(|j| (j, b.len()))) {
                Some((json, len)) => self.pending = Some((json, 0, len)),
                None => return std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        self.poll_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
