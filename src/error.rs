//! The one error type of the HTTP API: every failure becomes `{"error": {"code", "message", ...}}`
//! with the right status. Codes are stable (clients match on them); messages are for people.
//! Internal failures are logged with their detail and answered without it.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::store::StoreError;
use crate::write::{RebuildError, WriteError};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields of the error object (`current_version`, ...).
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The generic error for a status whose response had no JSON body (axum's own 405, a timeout, ...).
    pub fn from_status(status: StatusCode) -> ApiError {
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        };
        let message = status.canonical_reason().unwrap_or("error").to_string();
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.code == "internal" {
            tracing::error!(message = %self.message, "internal error");
        }
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.extend(self.details);
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Write(w) => w.into(),
            StoreError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                e.to_string(),
            ),
            StoreError::Compacted { version, oldest } => {
                ApiError::new(StatusCode::GONE, "history_compacted", e.to_string())
                    .with("version", version)
                    .with("oldest_version", oldest)
            }
            StoreError::Overloaded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many writes are queued; retry shortly",
            ),
            StoreError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
            StoreError::Backend(detail) => {
                tracing::error!(%detail, "store failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
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
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
                    .with("current_version", current_version)
            }
            WriteError::VersionConflict {
                expected,
                current_version,
            } => ApiError::new(StatusCode::CONFLICT, "version_conflict", message)
                .with("expected_version", expected)
                .with("current_version", current_version),
            WriteError::PatchFailed { operation, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "patch_failed", message)
                    .with("operation", operation)
            }
            WriteError::NotAnObject { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_an_object", message)
            }
            WriteError::TooLarge { limit, .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "document_too_large", message)
                    .with("limit", limit)
            }
            WriteError::TooManyOperations { limit, .. } => {
                ApiError::bad_request("invalid_patch", message).with("limit", limit)
            }
            WriteError::TooExpensive => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "patch_too_expensive", message)
            }
            WriteError::TooDeep { limit, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "too_deep", message).with("limit", limit)
            }
        }
    }
}

impl From<RebuildError> for ApiError {
    fn from(e: RebuildError) -> ApiError {
        match e {
            // Compaction moved the history while we read it.
            RebuildError::Gap(_) => ApiError::new(StatusCode::GONE, "history_compacted", e.to_string()),
            RebuildError::Corrupt { .. } => StoreError::Backend(e.to_string()).into(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                "the request body is larger than the limit",
            )
        } else {
            ApiError::new(status, "bad_body", r.body_text())
        }
    }
}
