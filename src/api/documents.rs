//! `/api/{collection}` and `/api/{collection}/{id}`: create, list, read, replace, patch, delete.
//! Handlers only translate HTTP to a [`WriteSpec`] (path, headers, content type and the body's JSON
//! kind) and the committed write back; [`crate::write::wire`] turns the spec into the store's write
//! (as it does a protocol `write` message), [`crate::write`] decides what it means, the store makes it
//! atomic.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{BodyKind, JsonBody, Path, Query, WriteHeaders};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::model::{Data, Document};
use crate::protocol::WriteOp;
use crate::store::Committed;
use crate::write::kind_of;
use crate::write::wire::{self, Named, Target, WireError, WriteSpec};

pub fn check_collection(c: &str) -> Result<(), ApiError> {
    wire::check_names(c, None).map_err(refused)
}

pub fn check_names(c: &str, id: &str) -> Result<(), ApiError> {
    wire::check_names(c, Some(id)).map_err(refused)
}

/// A write refused before the store: always 400, whatever its code's usual status.
fn refused(e: WireError) -> ApiError {
    ApiError::bad_request(e.code, e.message)
}

/// `"3"`: a document's ETag is its version.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

/// An opaque pagination cursor.
pub fn encode_cursor(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

pub fn decode_cursor(s: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidCursor, "cursor is not one this server returned")
        })
}

/// Checks a `limit` parameter against the configured page size.
pub fn page_limit(limit: Option<usize>, state: &AppState) -> Result<usize, ApiError> {
    let max = state.config.limits.max_page;
    match limit {
        None => Ok(100.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("limit must be between 1 and {max}"),
        )),
    }
}

/// A whole document body (POST, PUT): `application/json` holding an object.
fn object(body: JsonBody) -> Result<Data, ApiError> {
    if body.kind != BodyKind::Json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a document body is application/json; the patch media types are for PATCH",
        ));
    }
    match body.value {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(
            ErrorCode::NotAnObject,
            format!("a document must be a JSON object, not {}", kind_of(&other)),
        )),
    }
}

/// A REST write: the target from the path, the op and its payload from the method and body, the
/// rest from the headers.
fn spec(target: Target, op: WriteOp, payload: Payload, headers: WriteHeaders) -> WriteSpec {
    let (data, patch) = match payload {
        Payload::None => (None, None),
        Payload::Document(d) => (Some(d), None),
        Payload::Patch(p) => (None, Some(p)),
    };
    WriteSpec {
        op,
        target,
        data,
        patch,
        expected_version: headers.expected_version,
        client_id: headers.client_id,
        idempotency_key: headers.idempotency_key,
    }
}

/// What a request's body brings to its write.
enum Payload {
    None,
    Document(Data),
    Patch(Value),
}

async fn commit(state: &AppState, spec: WriteSpec) -> Result<Response, ApiError> {
    let write = spec.into_write().map_err(refused)?;
    let committed = state.store.commit(write).await?;
    Ok(write_response(committed))
}

fn write_response(c: Committed) -> Response {
    let status = if c.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut headers = HeaderMap::new();
    if let Some(doc) = &c.document {
        headers.insert(header::ETAG, etag(doc.version));
        if c.created {
            let location = format!("/api/{}/{}", doc.collection, doc.id);
            if let Ok(v) = HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, v);
            }
        }
    }
    if c.replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    (
        status,
        headers,
        Json(json!({ "document": c.document, "event": c.event })),
    )
        .into_response()
}

pub async fn create(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, None, Named::Url).map_err(refused)?;
    let data = object(body)?;
    commit(
        &state,
        spec(target, WriteOp::Create, Payload::Document(data), headers),
    )
    .await
}

pub async fn replace(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, Some(id), Named::Url).map_err(refused)?;
    let data = object(body)?;
    commit(
        &state,
        spec(target, WriteOp::Replace, Payload::Document(data), headers),
    )
    .await
}

/// PATCH takes RFC 6902 (`application/json-patch+json`) or RFC 7396 (`application/merge-patch+json`).
/// Plain `application/json` is accepted too: an array is a JSON Patch, an object a merge patch.
pub async fn patch(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, Some(id), Named::Url).map_err(refused)?;
    let op = match (body.kind, &body.value) {
        (BodyKind::JsonPatch, _) | (BodyKind::Json, Value::Array(_)) => WriteOp::Patch,
        (BodyKind::MergePatch, _) | (BodyKind::Json, Value::Object(_)) => WriteOp::Merge,
        (BodyKind::Json, other) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidPatch,
                format!(
                    "a patch must be a JSON Patch array or a merge-patch object, not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    commit(&state, spec(target, op, Payload::Patch(body.value), headers)).await
}

pub async fn delete(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, Some(id), Named::Url).map_err(refused)?;
    commit(&state, spec(target, WriteOp::Delete, Payload::None, headers)).await
}

pub async fn get(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_names(&collection, &id)?;
    let doc = live(&state, &collection, &id).await?;
    Ok(([(header::ETAG, etag(doc.version))], Json(doc)).into_response())
}

async fn live(state: &AppState, collection: &str, id: &str) -> Result<Document, ApiError> {
    state
        .store
        .get(collection, id)
        .await?
        .and_then(|s| s.live())
        .ok_or_else(|| ApiError::not_found(format!("no document '{id}' in '{collection}'")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    check_collection(&collection)?;
    let limit = page_limit(q.limit, &state)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let items = state.store.list(&collection, after.as_deref(), limit).await?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|d| encode_cursor(&d.id)))
        .flatten();
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}
