//! The one error type of the HTTP API: every failure becomes `{"error": {"code", "message", ...}}`
//! with the right status. Codes are the protocol crate's [`ErrorCode`] (clients match on them), each
//! with its status; messages are for people. Internal failures are logged with their detail (and
//! their source) and answered without it.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

pub use eventsync_protocol::{ErrorBody, ErrorCode};

use crate::store::StoreError;
use crate::write::{RebuildError, WriteError};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Extra fields of the error object (`current_version`, ...).
    pub details: Map<String, Value>,
}

impl ApiError {
    /// An error answered with its code's status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// An error answered 400, whatever its code's usual status (`too_deep` and `not_an_object`
    /// about the request body itself).
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(code, message).with_status(StatusCode::BAD_REQUEST)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The generic error for a status whose response had no JSON body (axum's own 405, a timeout, ...).
    pub fn from_status(status: StatusCode) -> ApiError {
        let code = match status {
            StatusCode::NOT_FOUND => ErrorCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            StatusCode::REQUEST_TIMEOUT => ErrorCode::BodyTimeout,
            StatusCode::GATEWAY_TIMEOUT => ErrorCode::Timeout,
            StatusCode::URI_TOO_LONG => ErrorCode::UriTooLong,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ErrorCode::HeadersTooLarge,
            StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
            s if s.is_client_error() => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        let message = status.canonical_reason().unwrap_or("error").to_string();
        ApiError::new(code, message).with_status(status)
    }

    /// The error as clients receive it (also inside a refused write's `result`).
    pub fn body(self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message,
            details: self.details,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.code == ErrorCode::Internal {
            tracing::error!(message = %self.message, "internal error");
        }
        crate::metrics::refused(self.code.as_str());
        let status = self.status;
        let retry_after_ms = self.details.get("retry_after_ms").and_then(Value::as_u64);
        let mut response = (status, axum::Json(json!({ "error": self.body() }))).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(ms) = retry_after_ms {
            // Whole seconds, rounded up (RFC 9110 §10.2.3); the body keeps the milliseconds.
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: say which scheme a client should use.
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Write(w) => w.into(),
            StoreError::IdempotencyKeyReused => ApiError::new(ErrorCode::IdempotencyKeyReused, e.to_string()),
            StoreError::Compacted { version, oldest } => {
                ApiError::new(ErrorCode::HistoryCompacted, e.to_string())
                    .with("version", version)
                    .with("oldest_version", oldest)
            }
            StoreError::Overloaded => {
                ApiError::new(ErrorCode::Overloaded, "too many writes are queued; retry shortly")
            }
            StoreError::Closed => ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down"),
            StoreError::Backend(detail) => {
                tracing::error!(error = %detail, "store failure");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        let message = e.to_string();
        match e {
            WriteError::NotFound => ApiError::not_found(message),
            WriteError::AlreadyExists { current_version } => {
                ApiError::new(ErrorCode::AlreadyExists, message).with("current_version", current_version)
            }
            WriteError::VersionConflict {
                expected,
                current_version,
            } => ApiError::new(ErrorCode::VersionConflict, message)
                .with("expected_version", expected)
                .with("current_version", current_version),
            WriteError::PatchFailed { operation, .. } => {
                ApiError::new(ErrorCode::PatchFailed, message).with("operation", operation)
            }
            WriteError::NotAnObject { .. } => ApiError::new(ErrorCode::NotAnObject, message),
            WriteError::TooLarge { limit, .. } => {
                ApiError::new(ErrorCode::DocumentTooLarge, message).with("limit", limit)
            }
            WriteError::TooManyOperations { limit, .. } => {
                ApiError::bad_request(ErrorCode::InvalidPatch, message).with("limit", limit)
            }
            WriteError::TooExpensive => ApiError::new(ErrorCode::PatchTooExpensive, message),
            WriteError::TooDeep { limit, .. } => {
                ApiError::new(ErrorCode::TooDeep, message).with("limit", limit)
            }
        }
    }
}

impl From<RebuildError> for ApiError {
    fn from(e: RebuildError) -> ApiError {
        match e {
            // Compaction moved the history while we read it.
            RebuildError::Gap(_) => ApiError::new(ErrorCode::HistoryCompacted, e.to_string()),
            RebuildError::Corrupt { .. } => StoreError::backend_source("rebuilding a version", e).into(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(ErrorCode::InvalidQuery, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(ErrorCode::InvalidPath, r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::BodyTooLarge,
                "the request body is larger than the limit",
            )
        } else {
            ApiError::new(ErrorCode::BadBody, r.body_text()).with_status(status)
        }
    }
}
