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

use super::auth::Caller;
use super::extract::{BodyKind, JsonBody, Path, Query, WriteHeaders};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::model::{Data, Document};
use crate::protocol::WriteOp;
use crate::store::{Budget, Committed, Paged};
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

/// Every REST write: the input checked (400), then what the caller may write (403), then its
/// write rate (429), then the commit.
async fn commit(state: &AppState, caller: &Caller, spec: WriteSpec) -> Result<Response, ApiError> {
    let mut write = spec.into_write().map_err(refused)?;
    caller.authorize_write(&mut write)?;
    caller.count_write(state)?;
    let committed = state.store.commit(write).await?;
    Ok(write_response(caller, committed))
}

fn write_response(caller: &Caller, c: Committed) -> Response {
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
    let mut body = json!({ "document": c.document, "event": c.event });
    let readable = match (&c.document, &c.event) {
        (Some(d), _) => caller.may_read(&d.collection, &d.id),
        (None, Some(e)) => caller.may_read(&e.collection, &e.id),
        (None, None) => true,
    };
    if !readable {
        // A write-only grant learns the version and the position of its write, not the content.
        if let Some(d) = body["document"].as_object_mut() {
            d.remove("data");
        }
        if let Some(e) = body["event"].as_object_mut() {
            e.remove("patch");
        }
    }
    (status, headers, Json(body)).into_response()
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(collection): Path<String>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, None, Named::Url).map_err(refused)?;
    let data = object(body)?;
    commit(
        &state,
        &caller,
        spec(target, WriteOp::Create, Payload::Document(data), headers),
    )
    .await
}

pub async fn replace(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, Some(id), Named::Url).map_err(refused)?;
    let data = object(body)?;
    commit(
        &state,
        &caller,
        spec(target, WriteOp::Replace, Payload::Document(data), headers),
    )
    .await
}

/// PATCH takes RFC 6902 (`application/json-patch+json`) or RFC 7396 (`application/merge-patch+json`).
/// Plain `application/json` is accepted too: an array is a JSON Patch, an object a merge patch.
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
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
    commit(
        &state,
        &caller,
        spec(target, op, Payload::Patch(body.value), headers),
    )
    .await
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    headers: WriteHeaders,
) -> Result<Response, ApiError> {
    let target = Target::new(collection, Some(id), Named::Url).map_err(refused)?;
    commit(
        &state,
        &caller,
        spec(target, WriteOp::Delete, Payload::None, headers),
    )
    .await
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_names(&collection, &id)?;
    caller.check_read(&collection, &id)?;
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
    caller: Caller,
    Path(collection): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    check_collection(&collection)?;
    let limit = page_limit(q.limit, &state)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let access = caller.check_read_collection(&collection)?;
    let store = &state.store;
    let collection = &collection;
    let budget = page_budget(limit, &state);
    let page = filtered_page(
        after,
        budget,
        |after: Option<String>, budget| async move {
            let page = store.list_page(collection, after.as_deref(), budget).await?;
            let next = page
                .full
                .then(|| page.items.last().map(|d| d.id.clone()))
                .flatten();
            Ok((page, next))
        },
        |d: &Document| access.allows(&d.id),
        |d: &Document| d.id.clone(),
    )
    .await?;
    let next = page.next.map(|id| encode_cursor(&id));
    Ok(Json(json!({ "items": page.items, "next_cursor": next })))
}

/// Most store pages one filtered listing reads before it answers with what it found (and a cursor).
pub const MAX_SCANNED_PAGES: usize = 10;

/// One page of what the caller may read.
pub struct Page<T, C> {
    pub items: Vec<T>,
    /// Where the next page starts (after the last item *scanned*, kept or not); `None` at the end.
    pub next: Option<C>,
}

/// The budget of one page of a listing: `limit` items, `--max-page-bytes`.
pub fn page_budget(limit: usize, state: &AppState) -> Budget {
    Budget {
        items: limit,
        bytes: state.config.limits.max_page_bytes,
    }
}

/// A page within `budget` of items that pass `keep`, read from the store page by page (`read`
/// from a cursor, within a budget, gives a page and the cursor after it; `cursor_of` is the
/// cursor after an item). A caller whose grant covers the whole collection keeps everything, so
/// this is one read. Otherwise it reads on until the page is full, the bytes of what was
/// *scanned* (kept or not) reach the byte budget, or [`MAX_SCANNED_PAGES`] were scanned: a
/// reader of a few documents among many may get a short (even empty) page with a cursor, never
/// an unbounded scan, nor more than the byte budget in memory, per request.
pub async fn filtered_page<T, C, F, Fut>(
    mut cursor: Option<C>,
    budget: Budget,
    read: F,
    keep: impl Fn(&T) -> bool,
    cursor_of: impl Fn(&T) -> C,
) -> Result<Page<T, C>, ApiError>
where
    C: Clone,
    F: Fn(Option<C>, Budget) -> Fut,
    Fut: std::future::Future<Output = Result<(Paged<T>, Option<C>), crate::store::StoreError>>,
{
    let mut items = Vec::new();
    let mut left = budget;
    for _ in 0..MAX_SCANNED_PAGES {
        let (page, next) = read(cursor.clone(), left).await?;
        left.bytes = left.bytes.saturating_sub(page.bytes);
        let mut rest = page.items.into_iter();
        while let Some(item) = rest.next() {
            if keep(&item) {
                items.push(item);
                if items.len() == budget.items {
                    let more = rest.len() > 0 || next.is_some();
                    let next = more.then(|| cursor_of(items.last().expect("just pushed")));
                    return Ok(Page { items, next });
                }
            }
        }
        cursor = next;
        if cursor.is_none() || left.bytes == 0 {
            break;
        }
    }
    Ok(Page { items, next: cursor })
}
