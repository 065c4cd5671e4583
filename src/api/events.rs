//! `GET /api/events`: the event log, filtered and paginated by sequence number.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::documents::{check_collection, page_limit};
use super::extract::Query;
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::model::{validate_id, Op};
use crate::store::EventFilter;
use crate::time::Timestamp;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    collection: Option<String>,
    /// A document id; needs `collection`.
    id: Option<String>,
    op: Option<String>,
    client_id: Option<String>,
    /// Events after this sequence number.
    after: Option<u64>,
    /// RFC 3339: events at or after.
    since: Option<String>,
    /// RFC 3339: events before.
    until: Option<String>,
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

fn time(name: &str, v: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|s| {
        Timestamp::parse(&s).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("{name} must be an RFC 3339 time"),
            )
        })
    })
    .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit, &state)?;
    if let Some(c) = &q.collection {
        check_collection(c)?;
    }
    if let Some(id) = &q.id {
        if q.collection.is_none() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "id needs collection",
            ));
        }
        validate_id(id).map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))?;
    }
    let op =
        q.op.map(|s| {
            Op::parse(&s).ok_or_else(|| {
                ApiError::bad_request(ErrorCode::InvalidQuery, "op must be create, update or delete")
            })
        })
        .transpose()?;
    let cursor = q
        .cursor
        .map(|c| {
            c.parse::<u64>().map_err(|_| {
                ApiError::bad_request(ErrorCode::InvalidCursor, "cursor is not one this server returned")
            })
        })
        .transpose()?;
    let filter = EventFilter {
        collection: q.collection,
        id: q.id,
        op,
        client_id: q.client_id,
        after: cursor.unwrap_or(0).max(q.after.unwrap_or(0)),
        since: time("since", q.since)?,
        until: time("until", q.until)?,
    };
    let (items, last_seq) = tokio::try_join!(state.store.events(&filter, limit), state.store.last_seq())?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(
        json!({ "items": items, "next_cursor": next, "last_seq": last_seq }),
    ))
}
