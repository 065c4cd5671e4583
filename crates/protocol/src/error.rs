//! Error codes: one enum for every refusal the server can give — HTTP error bodies, WebSocket
//! `error` messages, `result` messages of refused writes — serialized as the stable `snake_case`
//! strings clients match on. Each code has the HTTP status it is answered with over REST
//! ([`ErrorCode::status`]); the table in `docs/PROTOCOL.md` §8.6 and the JavaScript client's list of
//! retryable codes are checked against this enum by a test (`tests/error_codes.rs`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $status:literal; )*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version does not know (sent by a newer server). Never sent.
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every code the server may send, in the order they are declared.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// The HTTP status this code is answered with. Two codes have a second one: `too_deep`
            /// and `not_an_object` are 400 when the request body itself is at fault, 422 when a
            /// patch's result would be.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Unknown => 500,
                }
            }
        }
    };
}

codes! {
    // --- Requests that are not well-formed ------------------------------------------------------
    /// A request the HTTP layer refused without a more precise code (an oversized URI, ...).
    BadRequest = "bad_request", 400;
    /// The body could not be read.
    BadBody = "bad_body", 400;
    /// The text is not JSON.
    InvalidJson = "invalid_json", 400;
    /// JSON, but not a valid message (unknown `type`, missing or unknown field, wrong type), or a
    /// write lacking what its op needs.
    InvalidMessage = "invalid_message", 400;
    /// A query string parameter is unknown or malformed.
    InvalidQuery = "invalid_query", 400;
    /// A path segment could not be parsed.
    InvalidPath = "invalid_path", 400;
    /// A pagination cursor this server did not hand out.
    InvalidCursor = "invalid_cursor", 400;
    /// A collection name that is malformed or reserved.
    InvalidCollection = "invalid_collection", 400;
    /// A document id that is malformed.
    InvalidId = "invalid_id", 400;
    /// A body's `"id"` differs from the one the URL or message names.
    IdMismatch = "id_mismatch", 400;
    /// `If-Match` is not a document version.
    InvalidIfMatch = "invalid_if_match", 400;
    /// A client id (`X-Client-Id`, `hello.client_id`) that is malformed.
    InvalidClientId = "invalid_client_id", 400;
    /// An `Idempotency-Key` that is not 1-255 visible ASCII characters.
    InvalidIdempotencyKey = "invalid_idempotency_key", 400;
    /// An `op_id` that is not 1-255 visible ASCII characters.
    InvalidOpId = "invalid_op_id", 400;
    /// A subscription that is malformed, reserved, or one too many.
    InvalidSubscription = "invalid_subscription", 400;
    /// A state vector naming a malformed collection or document id.
    InvalidStateVector = "invalid_state_vector", 400;
    /// An SSE `Last-Event-ID` that is not a sequence number.
    InvalidLastEventId = "invalid_last_event_id", 400;
    /// A JSON Patch that is not an array of operations, or has too many.
    InvalidPatch = "invalid_patch", 400;
    /// The request body, or a patch's result, is not a JSON object (400 for the body, 422 for a
    /// result).
    NotAnObject = "not_an_object", 422;
    /// JSON nesting deeper than the limit (400 for the body, 422 for a patch's result).
    TooDeep = "too_deep", 422;
    /// The body is larger than `--max-body-bytes`.
    BodyTooLarge = "body_too_large", 413;
    /// The request body did not arrive within `--body-timeout`.
    BodyTimeout = "body_timeout", 408;
    /// The request's URI is longer than the server reads (64 KiB).
    UriTooLong = "uri_too_long", 414;
    /// The request's head has more headers, or more bytes of them, than the server reads.
    HeadersTooLarge = "headers_too_large", 431;
    /// The body's media type is not one the route takes.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// No such route.
    MethodNotAllowed = "method_not_allowed", 405;

    // --- The sync protocol's own ------------------------------------------------------------------
    /// A message other than `hello` before the `hello`.
    HelloRequired = "hello_required", 400;
    /// A second `hello`.
    AlreadyHello = "already_hello", 400;
    /// A binary WebSocket frame.
    BinaryNotSupported = "binary_not_supported", 400;
    /// The connection already has as many writes in flight as allowed.
    TooManyWrites = "too_many_writes", 429;

    // --- Who may do what ---------------------------------------------------------------------------
    /// No token, or one that is malformed, badly signed, expired, not yet valid, or for another
    /// issuer or audience (`--auth jwt`). Get a new token and try again.
    Unauthenticated = "unauthenticated", 401;
    /// The token is valid but does not allow this (a read, a write, a subscription, the admin
    /// surface, another subject's client).
    Forbidden = "forbidden", 403;
    /// A browser request from an origin not in `--cors-origin` (WebSocket and SSE included).
    OriginNotAllowed = "origin_not_allowed", 403;
    /// Over a per-client limit (write rate, open sockets, open streams); retry after the
    /// `Retry-After` header or the error's `retry_after_ms`.
    RateLimited = "rate_limited", 429;

    // --- Refusals of a write by the rules ---------------------------------------------------------
    /// No such document (or version, or route).
    NotFound = "not_found", 404;
    /// A create of a live document.
    AlreadyExists = "already_exists", 409;
    /// The expected version differs from the current one.
    VersionConflict = "version_conflict", 409;
    /// A patch operation failed.
    PatchFailed = "patch_failed", 422;
    /// The patch copies more than the limits allow to check.
    PatchTooExpensive = "patch_too_expensive", 422;
    /// The result would exceed `--max-document-bytes`.
    DocumentTooLarge = "document_too_large", 413;
    /// An idempotency key (or `op_id`) reused for a different write.
    IdempotencyKeyReused = "idempotency_key_reused", 422;
    /// The version asked for was compacted away.
    HistoryCompacted = "history_compacted", 410;

    // --- The server's state -----------------------------------------------------------------------
    /// The write queue is full; retry shortly (the same idempotency key or `op_id`).
    Overloaded = "overloaded", 503;
    /// The server is shutting down; retry elsewhere or later.
    ShuttingDown = "shutting_down", 503;
    /// The request did not finish in time (`--request-timeout`), or the server is unavailable.
    Unavailable = "unavailable", 503;
    /// A gateway or client timeout.
    Timeout = "timeout", 504;
    /// A failure of the server (logged there, never detailed to the client).
    Internal = "internal", 500;

    // --- Made by clients, never sent by the server ------------------------------------------------
    /// A client's own: the server answered with an HTTP error that carried no JSON error body.
    HttpError = "http_error", 502;
}

impl ErrorCode {
    /// Whether a write refused with this code may simply be retried later (with the same
    /// idempotency key or `op_id`): the refusal was about the server's load, not the write.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyWrites
                | ErrorCode::RateLimited
                | ErrorCode::Unavailable
        )
    }

    /// Whether the server itself may send this code (the [`ErrorCode::HttpError`] is a client's).
    pub fn is_sent_by_server(self) -> bool {
        !matches!(self, ErrorCode::HttpError | ErrorCode::Unknown)
    }
}

/// `code == "version_conflict"`: a code equals its wire string.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as clients receive it: `{"code", "message", ...details}` — the `error` member of an
/// HTTP error body, and of a refused write's `result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Extra members (`current_version`, `limit`, ...).
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a detail member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ErrorBody {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// The body as the JSON object clients receive.
impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

/// `body["code"]`, `body["current_version"]`: the code or a detail member as JSON, `null` when
/// absent — as indexing the JSON object would give (`message` is a field: read it as one).
impl std::ops::Index<&str> for ErrorBody {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        static CODES: std::sync::OnceLock<Vec<(ErrorCode, Value)>> = std::sync::OnceLock::new();
        if key == "code" {
            let codes = CODES.get_or_init(|| {
                ErrorCode::ALL
                    .iter()
                    .chain([ErrorCode::Unknown].iter())
                    .map(|c| (*c, Value::from(c.as_str())))
                    .collect()
            });
            return codes
                .iter()
                .find(|(c, _)| *c == self.code)
                .map_or(&NULL, |(_, v)| v);
        }
        self.details.get(key).unwrap_or(&NULL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_serialize_as_their_strings_and_unknown_ones_parse() {
        for code in ErrorCode::ALL {
            let text = serde_json::to_value(code).unwrap();
            assert_eq!(text, json!(code.as_str()));
            assert_eq!(serde_json::from_value::<ErrorCode>(text).unwrap(), *code);
            assert!((400..600).contains(&code.status()), "{code}");
        }
        assert_eq!(
            serde_json::from_value::<ErrorCode>(json!("from_the_future")).unwrap(),
            ErrorCode::Unknown
        );
    }

    #[test]
    fn an_error_body_keeps_its_details_flat() {
        let body = ErrorBody::new(ErrorCode::VersionConflict, "no").with("current_version", 2);
        let value = serde_json::to_value(&body).unwrap();
        assert_eq!(
            value,
            json!({"code": "version_conflict", "message": "no", "current_version": 2})
        );
        let back: ErrorBody = serde_json::from_value(value).unwrap();
        assert_eq!(back, body);
        assert_eq!(back["current_version"], 2);
        assert_eq!(back["code"], "version_conflict");
        assert_eq!(back["absent"], Value::Null);
    }
}
