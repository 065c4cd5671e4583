//! Writes over the REST API (the SSE transport's way to write), answered as a [`ResultMessage`]
//! like a WebSocket `write`.
//!
//! | op | request |
//! |---|---|
//! | create | `POST /api/{collection}` with `data` (plus `"id"` when given) |
//! | replace | `PUT /api/{collection}/{id}` with `data` |
//! | patch | `PATCH /api/{collection}/{id}`, `application/json-patch+json` |
//! | merge | `PATCH /api/{collection}/{id}`, `application/merge-patch+json` |
//! | delete | `DELETE /api/{collection}/{id}` |
//!
//! Every request carries `Idempotency-Key: <op_id>` and `X-Client-Id`, and `If-Match: "<v>"` for an
//! `expected_version`; so a request that failed in transit is retried (until the timeout) without
//! risk of applying twice.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use eventsync_protocol::{ErrorBody, ErrorCode};

use super::{endpoint, ClientError, Shared};
use eventsync_protocol::messages::{ResultMessage, WriteMessage, WriteOp};

pub(crate) async fn write(
    http: &reqwest::Client,
    shared: &Shared,
    client_id: &str,
    w: &WriteMessage,
    timeout: Duration,
) -> Result<ResultMessage, ClientError> {
    let deadline = Instant::now() + timeout;
    let max = shared.options.max_message_bytes;
    let mut attempt = 0;
    loop {
        let request = build(http, shared, client_id, w)?;
        let outcome = tokio::time::timeout_at(deadline, send(request, max)).await;
        let error = match outcome {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Ok((status, replayed, body))) => return Ok(to_result(w, status, replayed, &body)),
            Ok(Err(Failure::Fatal(e))) => return Err(ClientError::Transport(e)),
            Ok(Err(Failure::Retry(e))) => e,
        };
        // In transit: the write may or may not have committed; the same Idempotency-Key makes the
        // retry safe either way.
        let delay = shared.options.reconnect.delay(attempt);
        attempt += 1;
        if Instant::now() + delay >= deadline {
            return Err(ClientError::Transport(error));
        }
        tracing::debug!(op_id = %w.op_id, %error, ?delay, "REST write failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

fn build(
    http: &reqwest::Client,
    shared: &Shared,
    client_id: &str,
    w: &WriteMessage,
) -> Result<reqwest::RequestBuilder, ClientError> {
    let id = w.id.as_deref();
    let need_id = || id.ok_or_else(|| ClientError::InvalidWrite("an id is needed for all but create".into()));
    let data = || Value::Object(w.data.clone().unwrap_or_default());
    let (method, url, body, content_type) = match w.op {
        WriteOp::Create => {
            let mut body = w.data.clone().unwrap_or_default();
            if let Some(id) = id {
                body.insert("id".into(), Value::String(id.to_string()));
            }
            let url = endpoint(&shared.base, &["api", &w.collection]);
            (Method::POST, url, Some(Value::Object(body)), "application/json")
        }
        WriteOp::Replace => {
            let url = endpoint(&shared.base, &["api", &w.collection, need_id()?]);
            (Method::PUT, url, Some(data()), "application/json")
        }
        WriteOp::Patch | WriteOp::Merge => {
            let url = endpoint(&shared.base, &["api", &w.collection, need_id()?]);
            let content_type = if w.op == WriteOp::Patch {
                "application/json-patch+json"
            } else {
                "application/merge-patch+json"
            };
            (
                Method::PATCH,
                url,
                Some(w.patch.clone().unwrap_or(Value::Null)),
                content_type,
            )
        }
        WriteOp::Delete => {
            let url = endpoint(&shared.base, &["api", &w.collection, need_id()?]);
            (Method::DELETE, url, None, "application/json")
        }
    };
    let mut request = http
        .request(method, url)
        .header("Idempotency-Key", &w.op_id)
        .header("X-Client-Id", client_id);
    if let Some(v) = w.expected_version {
        request = request.header(IF_MATCH, format!("\"{v}\""));
    }
    if let Some(token) = shared.token() {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        let bytes = serde_json::to_vec(&body).map_err(|e| ClientError::InvalidWrite(e.to_string()))?;
        request = request.header(CONTENT_TYPE, content_type).body(bytes);
    }
    Ok(request)
}

enum Failure {
    /// The request may not have reached the server, or its answer was lost: worth a retry.
    Retry(String),
    Fatal(String),
}

/// Sends and reads the answer (at most `max` bytes).
async fn send(request: reqwest::RequestBuilder, max: usize) -> Result<(StatusCode, bool, Vec<u8>), Failure> {
    let mut response = request.send().await.map_err(|e| {
        if e.is_builder() {
            Failure::Fatal(e.to_string())
        } else {
            Failure::Retry(e.to_string())
        }
    })?;
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?
    {
        if body.len() + chunk.len() > max {
            return Err(Failure::Fatal(format!("an answer larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, replayed, body))
}

/// Maps a REST answer to what a WebSocket `result` would say. A refusal's `error` is the API's
/// error object (`code`, `message`, details) plus its HTTP `status`.
fn to_result(w: &WriteMessage, status: StatusCode, replayed: bool, body: &[u8]) -> ResultMessage {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut result = ResultMessage {
        op_id: w.op_id.clone(),
        ok: status.is_success(),
        id: None,
        version: None,
        seq: None,
        replayed,
        error: None,
    };
    if status.is_success() {
        let document = value.get("document").filter(|d| d.is_object());
        let event = value.get("event").filter(|e| e.is_object());
        let field = |name: &str| {
            document
                .and_then(|d| d.get(name))
                .or_else(|| event.and_then(|e| e.get(name)))
        };
        result.id = field("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| w.id.clone());
        result.version = field("version").and_then(Value::as_u64);
        result.seq = event.and_then(|e| e.get("seq")).and_then(Value::as_u64);
    } else {
        let mut error = error_of(&value).unwrap_or_else(|| {
            let reason = status.canonical_reason().unwrap_or("error");
            ErrorBody::new(ErrorCode::HttpError, reason)
        });
        error
            .details
            .entry("status")
            .or_insert_with(|| Value::from(status.as_u16()));
        result.error = Some(error);
    }
    result
}

/// The `error` member of an HTTP error body (`{"error": {"code", "message", ...}}`), if it is one.
pub(crate) fn error_of(body: &Value) -> Option<ErrorBody> {
    serde::Deserialize::deserialize(body.get("error")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(op: WriteOp) -> WriteMessage {
        WriteMessage {
            op_id: "op-1".into(),
            op,
            collection: "games".into(),
            id: Some("g1".into()),
            data: None,
            patch: None,
            expected_version: None,
        }
    }

    #[test]
    fn successes_map_to_ok_results() {
        let body = json!({
            "document": {"collection": "games", "id": "g1", "version": 4, "data": {}},
            "event": {"seq": 42, "id": "g1", "version": 4}
        });
        let r = to_result(
            &write(WriteOp::Patch),
            StatusCode::OK,
            true,
            body.to_string().as_bytes(),
        );
        assert!(r.ok && r.replayed);
        assert_eq!(
            (r.id.as_deref(), r.version, r.seq),
            (Some("g1"), Some(4), Some(42))
        );
        assert_eq!(r.error, None);
        // A delete: no document, the event says where.
        let body = json!({"document": null, "event": {"seq": 43, "id": "g1", "version": 5}});
        let r = to_result(
            &write(WriteOp::Delete),
            StatusCode::OK,
            false,
            body.to_string().as_bytes(),
        );
        assert_eq!((r.version, r.seq), (Some(5), Some(43)));
        // Nothing changed: no event, no seq.
        let body = json!({"document": {"id": "g1", "version": 5}, "event": null});
        let r = to_result(
            &write(WriteOp::Replace),
            StatusCode::OK,
            false,
            body.to_string().as_bytes(),
        );
        assert_eq!((r.version, r.seq), (Some(5), None));
        // A created document with a generated id.
        let body = json!({"document": {"id": "gen-1", "version": 1}, "event": {"seq": 1}});
        let mut create = write(WriteOp::Create);
        create.id = None;
        let r = to_result(&create, StatusCode::CREATED, false, body.to_string().as_bytes());
        assert_eq!(r.id.as_deref(), Some("gen-1"));
    }

    #[test]
    fn refusals_carry_the_api_error() {
        let body = json!({"error": {"code": "version_conflict", "message": "m", "current_version": 7}});
        let r = to_result(
            &write(WriteOp::Patch),
            StatusCode::CONFLICT,
            false,
            body.to_string().as_bytes(),
        );
        assert!(!r.ok);
        let e = r.error.unwrap();
        assert_eq!(e["code"], "version_conflict");
        assert_eq!(e["current_version"], 7);
        assert_eq!(e["status"], 409);
        let r = to_result(&write(WriteOp::Patch), StatusCode::BAD_GATEWAY, false, b"<html>");
        assert_eq!(r.error.unwrap()["code"], "http_error");
    }
}
