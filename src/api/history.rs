//! A document's past: `/history` (its retained events), `/snapshots`, and `/versions/{v}` (the
//! document rebuilt as of a retained version). Each says where retained history starts.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::documents::{check_names, page_limit};
use super::extract::{Path, Query};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::model::{StoredDoc, Version};
use crate::store::StoreError;
use crate::write::rebuild;

async fn stored(
    state: &AppState,
    caller: &Caller,
    collection: &str,
    id: &str,
) -> Result<StoredDoc, ApiError> {
    check_names(collection, id)?;
    caller.check_read(collection, id)?;
    state
        .store
        .get(collection, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no document '{id}' in '{collection}'")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Events with a version after this.
    after_version: Option<Version>,
    limit: Option<usize>,
    cursor: Option<String>,
}

pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let doc = stored(&state, &caller, &collection, &id).await?;
    let limit = page_limit(q.limit, &state)? as u64;
    let cursor = q
        .cursor
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| ApiError::bad_request(ErrorCode::InvalidCursor, "bad cursor"))
        })
        .transpose()?;
    // Pages start at the first retained event, whatever position the client asks for.
    let after = cursor
        .unwrap_or(0)
        .max(q.after_version.unwrap_or(0))
        .max(doc.compacted_through);
    let from = after.saturating_add(1);
    let to = after.saturating_add(limit).min(doc.doc.version);
    let budget = super::documents::page_budget(limit as usize, &state);
    let (items, to) = if from <= to {
        let page = state
            .store
            .document_events_page(&collection, &id, from, to, budget)
            .await?;
        // Cut by the byte budget: the page ends at its last event's version.
        let to = match page.items.last() {
            Some(last) if page.full => last.version,
            _ => to,
        };
        (page.items, to)
    } else {
        (Vec::new(), to)
    };
    let next = (to < doc.doc.version && from <= to).then(|| to.to_string());
    Ok(Json(json!({
        "collection": collection,
        "id": id,
        "version": doc.doc.version,
        "deleted": doc.deleted,
        "retained": doc.retained(),
        "items": items,
        "next_cursor": next,
    })))
}

pub async fn snapshots(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let doc = stored(&state, &caller, &collection, &id).await?;
    let items = state.store.snapshots(&collection, &id).await?;
    Ok(Json(json!({
        "collection": collection,
        "id": id,
        "version": doc.doc.version,
        "retained": doc.retained(),
        "items": items,
    })))
}

pub async fn version(
    State(state): State<AppState>,
    caller: Caller,
    Path((collection, id, version)): Path<(String, String, Version)>,
) -> Result<Json<Value>, ApiError> {
    let doc = stored(&state, &caller, &collection, &id).await?;
    let retained = doc.retained();
    if version == 0 || version > doc.doc.version {
        return Err(ApiError::not_found(format!(
            "document '{id}' has versions 1 to {}",
            doc.doc.version
        )));
    }
    if version < retained.oldest_version {
        return Err(StoreError::Compacted {
            version,
            oldest: retained.oldest_version,
        }
        .into());
    }
    let base = state
        .store
        .snapshot_at_or_before(&collection, &id, version)
        .await?;
    let from = base.as_ref().map_or(1, |s| s.version + 1);
    let events = if from <= version {
        state
            .store
            .document_events(&collection, &id, from, version)
            .await?
    } else {
        Vec::new()
    };
    let data = rebuild(base.as_ref(), &events, version)?;
    Ok(Json(json!({
        "collection": collection,
        "id": id,
        "version": version,
        "deleted": data.is_none(),
        "data": data,
        "retained": retained,
    })))
}
