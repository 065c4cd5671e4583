//! Extractors whose rejections speak the API's error format: JSON bodies (content type, size, depth,
//! syntax), the write headers (`If-Match`, `X-Client-Id`, `Idempotency-Key`), query and path.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap};
use bytes::Bytes;
use serde_json::Value;

use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::json::{check_strict, raw_depth};
use crate::model::{validate_id, Version};

/// `Query<T>` with our error format.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `Path<T>` with our error format.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The media types a body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`
    Json,
    /// `application/json-patch+json` (RFC 6902)
    JsonPatch,
    /// `application/merge-patch+json` (RFC 7396)
    MergePatch,
}

impl BodyKind {
    fn from_headers(headers: &HeaderMap) -> Option<BodyKind> {
        let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(BodyKind::Json),
            "application/json-patch+json" => Some(BodyKind::JsonPatch),
            "application/merge-patch+json" => Some(BodyKind::MergePatch),
            _ => None,
        }
    }
}

/// A parsed JSON body with its media type.
pub struct JsonBody {
    pub kind: BodyKind,
    pub value: Value,
    /// The body's length as received, in bytes (what a handler that keeps the value counts).
    pub bytes: usize,
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(kind) = BodyKind::from_headers(req.headers()) else {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send Content-Type: application/json (or, for PATCH, application/json-patch+json or \
                 application/merge-patch+json)",
            ));
        };
        let raw = Bytes::from_request(req, state).await?;
        let max_depth = state.config.limits.max_json_depth;
        if raw_depth(&raw, max_depth) > max_depth {
            return Err(ApiError::bad_request(
                ErrorCode::TooDeep,
                format!("JSON nests deeper than {max_depth} levels"),
            ));
        }
        let value = serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
        // Valid JSON that would be taken in another meaning than it says.
        check_strict(&raw).map_err(|e| ApiError::bad_request(ErrorCode::InvalidJson, e.to_string()))?;
        Ok(JsonBody {
            kind,
            value,
            bytes: raw.len(),
        })
    }
}

/// The headers that qualify a write.
#[derive(Debug, Clone)]
pub struct WriteHeaders {
    pub expected_version: Option<Version>,
    pub client_id: String,
    pub idempotency_key: Option<String>,
}

/// Longest `Idempotency-Key` accepted (the `op_id` bound: both are idempotency keys).
pub const MAX_IDEMPOTENCY_KEY: usize = crate::write::wire::MAX_OP_ID;

impl<S: Send + Sync> FromRequestParts<S> for WriteHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        let text = |name: &str, code: ErrorCode| -> Result<Option<String>, ApiError> {
            h.get(name)
                .map(|v| {
                    v.to_str()
                        .map(|s| s.trim().to_string())
                        .map_err(|_| ApiError::bad_request(code, format!("{name} must be visible ASCII")))
                })
                .transpose()
        };
        let expected_version = match text("if-match", ErrorCode::InvalidIfMatch)? {
            None => None,
            Some(s) if s == "*" => None,
            Some(s) => Some(parse_version_tag(&s).ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::InvalidIfMatch,
                    "If-Match must be a document version, like \"3\" (the ETag) or 3",
                )
            })?),
        };
        let client_id = text("x-client-id", ErrorCode::InvalidClientId)?.unwrap_or_else(|| "server".into());
        validate_id(&client_id).map_err(|e| {
            ApiError::bad_request(
                ErrorCode::InvalidClientId,
                format!(
                    "X-Client-Id: {}",
                    e.to_string().replace("document id", "client id")
                ),
            )
        })?;
        let idempotency_key = text("idempotency-key", ErrorCode::InvalidIdempotencyKey)?;
        if let Some(k) = &idempotency_key {
            if !crate::write::wire::is_idempotency_key(k) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidIdempotencyKey,
                    format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                ));
            }
        }
        Ok(WriteHeaders {
            expected_version,
            client_id,
            idempotency_key,
        })
    }
}

/// `"3"`, `W/"3"` or `3` → 3.
pub fn parse_version_tag(s: &str) -> Option<Version> {
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s);
    // Digits only, as the server writes them: `+1`, `01` or ` 1` are not a version it sent (Rust's
    // integer parser would take the first two).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tags() {
        assert_eq!(parse_version_tag("\"3\""), Some(3));
        assert_eq!(parse_version_tag("W/\"12\""), Some(12));
        assert_eq!(parse_version_tag("7"), Some(7));
        for bad in [
            "",
            "\"\"",
            "abc",
            "0",
            "-1",
            "\"3",
            "1.5",
            "+1",
            "\"+1\"",
            "01",
            "\" 1\"",
            "1e3",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_version_tag(bad), None, "{bad}");
        }
    }
}
