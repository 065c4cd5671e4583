//! `/api/{collection}` and `/api/{collection}/{id}`: create, list, read, replace, patch, delete.
//! Handlers only translate HTTP to a [`Write`] and back; the meaning of a write lives in
//! [`crate::write`], its atomicity in the store.

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
use crate::model::{validate_collection, validate_id, Data, Document};
use crate::store::Committed;
use crate::write::{kind_of, Mutation, Write};

pub fn check_collection(c: &str) -> Result<(), ApiError> {
    validate_collection(c).map_err(|e| ApiError::bad_request(ErrorCode::InvalidCollection, e.to_string()))
}

pub fn check_names(c: &str, id: &str) -> Result<(), ApiError> {
    check_collection(c)?;
    validate_id(id).map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))
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

/// Takes a top-level `"id"` out of a body: it names the document and lives in the envelope.
fn take_id(data: &mut Data) -> Result<Option<String>, ApiError> {
    match data.shift_remove("id") {
        None => Ok(None),
        Some(Value::String(id)) => {
            validate_id(&id).map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))?;
            Ok(Some(id))
        }
        Some(_) => Err(ApiError::bad_request(
            ErrorCode::InvalidId,
            "\"id\" must be a string",
        )),
    }
}

struct WriteRequest {
    collection: String,
    id: Option<String>,
    mutation: Mutation,
    headers: WriteHeaders,
}

async fn commit(state: &AppState, req: WriteRequest) -> Result<Response, ApiError> {
    let write = Write::new(
        req.collection,
        req.id,
        req.mutation,
        req.headers.expected_version,
        req.headers.client_id,
        req.headers.idempotency_key,
    );
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
    check_collection(&collection)?;
    let mut data = object(body)?;
    let id = take_id(&mut data)?;
    let req = WriteRequest {
        collection,
        id,
        mutation: Mutation::Create(data),
        headers,
    };
    commit(&state, req).await
}

pub async fn replace(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    check_names(&collection, &id)?;
    let mut data = object(body)?;
    if take_id(&mut data)?.is_some_and(|body_id| body_id != id) {
        return Err(ApiError::bad_request(
            ErrorCode::IdMismatch,
            "the body's \"id\" differs from the URL's",
        ));
    }
    let req = WriteRequest {
        collection,
        id: Some(id),
        mutation: Mutation::Replace(data),
        headers,
    };
    commit(&state, req).await
}

/// PATCH takes RFC 6902 (`application/json-patch+json`) or RFC 7396 (`application/merge-patch+json`).
/// Plain `application/json` is accepted too: an array is a JSON Patch, an object a merge patch.
pub async fn patch(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    check_names(&collection, &id)?;
    let mutation = match (body.kind, &body.value) {
        (BodyKind::JsonPatch, _) | (BodyKind::Json, Value::Array(_)) => {
            let patch = serde_json::from_value(body.value.clone()).map_err(|e| {
                ApiError::bad_request(ErrorCode::InvalidPatch, format!("invalid JSON Patch: {e}"))
            })?;
            Mutation::Patch(patch)
        }
        (BodyKind::MergePatch, _) | (BodyKind::Json, Value::Object(_)) => Mutation::Merge(body.value.clone()),
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
    let req = WriteRequest {
        collection,
        id: Some(id),
        mutation,
        headers,
    };
    commit(&state, req).await
}

pub async fn delete(
    State(state): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
) -> Result<Response, ApiError> {
    check_names(&collection, &id)?;
    let req = WriteRequest {
        collection,
        id: Some(id),
        mutation: Mutation::Delete,
        headers,
    };
    commit(&state, req).await
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
