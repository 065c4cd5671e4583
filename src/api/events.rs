//! `GET /api/events`: the event log, filtered and paginated by sequence number.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::documents::{check_collection, filtered_page, page_limit};
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
    /// The writer's token subject.
    user: Option<String>,
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
    caller: Caller,
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
        user: q.user,
        after: cursor.unwrap_or(0).max(q.after.unwrap_or(0)),
        since: time("since", q.since)?,
        until: time("until", q.until)?,
    };
    if let Some(c) = &filter.collection {
        caller.check_read_collection(c)?;
    }
    if let (Some(c), Some(id)) = (&filter.collection, &filter.id) {
        caller.check_read(c, id)?;
    }
    // A reader sees the events of what it may read, and nothing of the rest (not even that
    // there were events: the cursor skips them, `last_seq` is the log's head, which says no more
    // than `GET /api/health`).
    let store = &state.store;
    let filter = &filter;
    let read = |after: Option<u64>, budget| async move {
        let mut f = filter.clone();
        f.after = after.unwrap_or(f.after);
        let page = store.events_page(&f, budget).await?;
        let next = page.full.then(|| page.items.last().map(|e| e.seq)).flatten();
        Ok((page, next))
    };
    let (page, last_seq) = tokio::try_join!(
        filtered_page(
            None,
            super::documents::page_budget(limit, &state),
            read,
            |e: &crate::model::Event| caller.may_read(&e.collection, &e.id),
            |e: &crate::model::Event| e.seq,
        ),
        async { Ok(store.last_seq().await?) },
    )?;
    let items = page.items;
    let next = page.next.map(|s| s.to_string());
    Ok(Json(
        json!({ "items": items, "next_cursor": next, "last_seq": last_seq }),
    ))
}
