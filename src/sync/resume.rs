//! Resuming an SSE stream from its `Last-Event-ID`: the vector of a client that has every message
//! of its subscriptions up to a log position.
//!
//! Along an SSE stream ids only grow — snapshots carry none and come before their catch-up's
//! events, events carry their `seq`, `synced` its position — so a browser reconnecting with
//! `Last-Event-ID: N` has everything up to N, whatever vector its URL still carries from when the
//! stream was first opened. [`vector_at`] rebuilds that vector from the store.

use std::collections::{BTreeMap, HashSet};

use super::protocol::StateVector;
use crate::model::{Seq, Version};
use crate::store::{Budget, EventFilter, Store, StoreError};

/// One collection's part of a vector.
type Docs = BTreeMap<String, Version>;

/// A version no document has: the catch-up answers it with the document's snapshot or deletion.
const RESET: u64 = u64::MAX;

/// Most documents or log events read to rebuild a reconnecting SSE client's vector; past that it
/// gets a full re-sync.
const MAX_REWIND_EVENTS: usize = 100_000;

/// The byte budget of each read here (documents and events of which only versions are needed).
const READ_BYTES: usize = 4 * 1024 * 1024;

/// The vector of a client that has every message of its subscriptions up to log position `received`:
/// each live document at its current version, except that every document changed after `received`
/// goes back to the version before its first such change. That is exact while the log still holds
/// the events after `received` (see `--retain-for`). Where the version before is "nothing", or the
/// scan would pass [`MAX_REWIND_EVENTS`], the catch-up is made to reset instead (a snapshot or the
/// deletion) — more data, never less. The store is read `page` items (and [`READ_BYTES`]) at a time.
pub async fn vector_at(
    store: &dyn Store,
    collections: &[String],
    received: Seq,
    page: usize,
) -> Result<StateVector, StoreError> {
    let mut vector = StateVector::new();
    for collection in collections {
        let docs = vector.entry(collection.clone()).or_default();
        current_versions(store, collection, page, docs).await?;
        rewind(store, collection, received, page, docs).await?;
    }
    Ok(vector)
}

/// Adds each live document of `collection` at its current version (stopping past the limit).
async fn current_versions(
    store: &dyn Store,
    collection: &str,
    page: usize,
    docs: &mut Docs,
) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    let budget = Budget {
        items: page,
        bytes: READ_BYTES,
    };
    loop {
        let live = store.list_page(collection, after.as_deref(), budget).await?;
        docs.extend(live.items.iter().map(|d| (d.id.clone(), d.version)));
        match live.items.last() {
            Some(last) if live.full && docs.len() <= MAX_REWIND_EVENTS => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// Winds every document changed after `received` back to the version before its first such change;
/// empties `docs` (a full re-sync) when that would read too much.
async fn rewind(
    store: &dyn Store,
    collection: &str,
    received: Seq,
    page: usize,
    docs: &mut Docs,
) -> Result<(), StoreError> {
    let mut filter = EventFilter {
        collection: Some(collection.to_string()),
        after: received,
        ..EventFilter::default()
    };
    let mut seen = HashSet::new();
    let mut read = 0;
    let budget = Budget {
        items: page,
        bytes: READ_BYTES,
    };
    loop {
        let page = store.events_page(&filter, budget).await?;
        let events = page.items;
        read += events.len();
        if read > MAX_REWIND_EVENTS || docs.len() > MAX_REWIND_EVENTS {
            docs.clear();
            return Ok(());
        }
        for e in &events {
            if seen.insert(e.id.clone()) {
                let before = e.version.saturating_sub(1);
                docs.insert(e.id.clone(), if before == 0 { RESET } else { before });
            }
        }
        match events.last() {
            Some(last) if page.full => filter.after = last.seq,
            _ => return Ok(()),
        }
    }
}
