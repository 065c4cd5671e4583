//! # The store conformance suite
//!
//! A dev-only crate (never published, not part of the server's API): the server's `Store` trait
//! checked the same way on every backend; its `tests/` run it on SQLite and on MongoDB.
//!
//! Every backend of [`Store`] must behave the same: the API, the sync protocol and maintenance are
//! written against the trait, not against SQLite. This module states that behaviour once, as
//! `pub async fn` checks that each take a **freshly opened, empty store** and the [`Hub`] it
//! publishes to, and panic (`assert!`) when the backend gets something wrong.
//!
//! ## Running it against a backend
//!
//! A backend's test file opens a fresh store per test and hands the opener to
//! [`conformance_tests!`](crate::conformance_tests), which expands to one `#[tokio::test]` (on a
//! multi-threaded runtime) per check:
//!
//! ```ignore
//! use std::sync::Arc;
//! use eventsync::hub::Hub;
//! use eventsync::store::Store;
//! use eventsync_conformance as conformance;
//!
//! async fn fresh() -> (Arc<dyn Store>, Hub, tempfile::TempDir) {
//!     let dir = tempfile::tempdir().unwrap();
//!     let hub = Hub::new(conformance::HUB_CAPACITY);
//!     let store = MyStore::open(dir.path(), conformance::limits(), conformance::SNAPSHOT_EVERY, hub.clone());
//!     (Arc::new(store), hub, dir)
//! }
//!
//! eventsync_conformance::conformance_tests!(fresh);
//! ```
//!
//! The opener is anything callable with no arguments that returns a future of either
//! `(Arc<dyn Store>, Hub)` or `(Arc<dyn Store>, Hub, G)`: `G` is a guard (a `TempDir`, a database
//! handle to drop, ...) kept alive until the check is over (see [`OpenedStore`]). After each check
//! the generated test closes the store.
//!
//! The store must be opened with:
//! - [`limits()`] as its document limits (the refusal checks write just past them),
//! - a snapshot every [`SNAPSHOT_EVERY`] versions,
//! - a hub of at least [`HUB_CAPACITY`] events, so a subscriber of a check never lags,
//! - a write queue of preferably [`WRITE_QUEUE`] or more (an `Overloaded` refusal is retried, so a
//!   smaller queue only makes the concurrent check slower).
//!
//! Behaviour that only some backends have — reopening the same database, durability across a
//! restart, backend limits — is tested beside the backend (for SQLite: `tests/sqlite.rs` of this crate).
//!
//! ## Adding a check
//!
//! Write a `pub async fn name(store: Arc<dyn Store>, hub: Hub)` here (at column 0, so the line
//! starts with `pub async fn name(`), make it able to fail, and add `name` to the list in
//! [`conformance_tests!`](crate::conformance_tests); a unit test fails if the two disagree. Helpers
//! stay private (`async fn` or `fn`), so they are not mistaken for checks.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use json_patch::Patch;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use eventsync::hub::Hub;
use eventsync::model::{validate_id, Data, Event, Op, Seq, SnapshotInfo, StoredDoc, Version};
pub use eventsync::store::Store;
use eventsync::store::{
    Budget, CatchUpRead, Committed, EventFilter, MaintenanceStats, Retention, StoreError,
};
use eventsync::time::Timestamp;
use eventsync::write::{rebuild, Limits, Mutation, Write, WriteError};

/// The store under test must snapshot a document every this many versions.
pub const SNAPSHOT_EVERY: u64 = 3;
/// The store under test must refuse documents larger than this (see [`limits`]).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// The store under test must refuse documents nesting deeper than this (see [`limits`]).
pub const MAX_DEPTH: usize = 16;
/// The hub passed to the store must hold at least this many events per subscriber.
pub const HUB_CAPACITY: usize = 4096;
/// A write queue this long takes the concurrent check without `Overloaded` retries.
pub const WRITE_QUEUE: usize = 1024;

/// The document limits the store under test must be opened with.
pub fn limits() -> Limits {
    Limits {
        max_document_bytes: MAX_DOCUMENT_BYTES,
        max_depth: MAX_DEPTH,
    }
}

/// What a backend's opener may return: the store and its hub, optionally with a guard that must
/// outlive the check (a temporary directory, a scratch database).
pub trait OpenedStore {
    fn into_parts(self) -> (Arc<dyn Store>, Hub, Box<dyn Any + Send>);
}

impl OpenedStore for (Arc<dyn Store>, Hub) {
    fn into_parts(self) -> (Arc<dyn Store>, Hub, Box<dyn Any + Send>) {
        (self.0, self.1, Box::new(()))
    }
}

impl<G: Send + 'static> OpenedStore for (Arc<dyn Store>, Hub, G) {
    fn into_parts(self) -> (Arc<dyn Store>, Hub, Box<dyn Any + Send>) {
        (self.0, self.1, Box::new(self.2))
    }
}

/// Expands to one `#[tokio::test]` per conformance check, each on a store from `$open`.
///
/// `$open` is a function or closure with no arguments returning a future of
/// `(Arc<dyn Store>, Hub)` or `(Arc<dyn Store>, Hub, Guard)`; see [`OpenedStore`] and the
/// [module documentation](crate).
///
/// ```ignore
/// eventsync_conformance::conformance_tests!(fresh_store);
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (@names) => {
        $crate::conformance_tests!(@with_list names ())
    };
    ($open:expr) => {
        $crate::conformance_tests!(@with_list tests ($open));
    };
    (@with_list $mode:ident $arg:tt) => {
        $crate::conformance_tests! { @$mode $arg;
            create_starts_at_version_one,
            create_over_a_live_document_is_refused,
            create_without_an_id_generates_one,
            replace_appends_the_computed_diff,
            json_patch_appends_the_computed_diff,
            merge_patch_appends_the_computed_diff,
            unchanged_writes_append_nothing,
            expected_version_must_match,
            delete_leaves_a_tombstone,
            writes_to_deleted_or_unknown_documents_are_not_found,
            recreate_continues_the_version_line,
            list_skips_tombstones,
            failed_writes_change_nothing,
            idempotent_retry_replays_the_first_result,
            idempotency_key_reused_for_another_request_is_refused,
            idempotency_keys_are_scoped_per_client,
            idempotency_keys_are_scoped_per_user,
            events_record_their_user_and_filter_by_it,
            refused_write_does_not_consume_its_idempotency_key,
            event_op_id_is_the_idempotency_key,
            sequence_numbers_are_global_and_gapless,
            concurrent_commits_all_land,
            hub_publishes_every_committed_event_once_in_order,
            events_filters_narrow_the_selection,
            events_paginate_with_limit_and_after,
            list_paginates_in_id_order,
            pages_end_at_their_byte_budget,
            document_events_returns_the_requested_versions,
            snapshots_are_taken_every_n_versions,
            snapshot_changed_snapshots_documents_changed_since_their_last_snapshot,
            compaction_respects_retention,
            compaction_drops_covered_events_beyond_the_last_n,
            compaction_keeps_events_younger_than_keep_for,
            maintenance_covers_every_document,
            idempotency_records_expire_after_the_ttl,
            last_seq_survives_compaction_of_the_newest_events,
            catch_up_reads_a_large_collection_in_pages,
            catch_up_parts_go_on_from_the_cut_and_bring_what_changed_before_it,
            close_refuses_later_writes,
        }
    };
    (@names (); $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
    (@tests ($open:expr); $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, hub, guard) =
                    $crate::OpenedStore::into_parts(($open)().await);
                $crate::$name(::std::sync::Arc::clone(&store), hub).await;
                // The check may have closed the store already; a second close may then fail.
                let _ = $crate::Store::close(&*store).await;
                drop(store);
                drop(guard);
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const CLIENT: &str = "conformance";
/// A page size larger than any check's log.
const ALL: usize = 1_000_000;
/// Retention that keeps everything, and an idempotency TTL that expires nothing.
const KEEP_ALL: Retention = Retention {
    keep_last: u64::MAX,
    keep_for_ms: i64::MAX,
};
const NEVER_EXPIRE: i64 = i64::MAX;
/// How long a check waits for a published event before failing (a hang guard, not a timing claim).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

fn obj(v: Value) -> Data {
    match v {
        Value::Object(m) => m,
        other => panic!("test bug: {other} is not an object"),
    }
}

fn ops(v: Value) -> Patch {
    serde_json::from_value(v).expect("test bug: not a JSON Patch")
}

fn write(collection: &str, id: &str, mutation: Mutation) -> Write {
    Write {
        collection: collection.to_string(),
        id: Some(id.to_string()),
        mutation,
        expected_version: None,
        client_id: CLIENT.to_string(),
        idempotency_key: None,
        user: None,
        fingerprint: 0,
    }
}

fn create(collection: &str, id: &str, data: Value) -> Write {
    write(collection, id, Mutation::Create(obj(data)))
}

fn replace(collection: &str, id: &str, data: Value) -> Write {
    write(collection, id, Mutation::Replace(obj(data)))
}

fn patch(collection: &str, id: &str, operations: Value) -> Write {
    write(collection, id, Mutation::Patch(ops(operations)))
}

fn merge(collection: &str, id: &str, merge_patch: Value) -> Write {
    write(collection, id, Mutation::Merge(merge_patch))
}

fn delete(collection: &str, id: &str) -> Write {
    write(collection, id, Mutation::Delete)
}

/// Appends `value` to the document's `/log` array: a write that always changes the document.
fn append(collection: &str, id: &str, value: Value) -> Write {
    patch(
        collection,
        id,
        json!([{"op": "add", "path": "/log/-", "value": value}]),
    )
}

trait WriteExt {
    fn if_version(self, v: Version) -> Self;
    fn by(self, client: &str) -> Self;
    fn keyed(self, key: &str, fingerprint: u64) -> Self;
    fn by_user(self, user: &str) -> Self;
}

impl WriteExt for Write {
    fn if_version(mut self, v: Version) -> Write {
        self.expected_version = Some(v);
        self
    }
    fn by(mut self, client: &str) -> Write {
        self.client_id = client.to_string();
        self
    }
    fn keyed(mut self, key: &str, fingerprint: u64) -> Write {
        self.idempotency_key = Some(key.to_string());
        self.fingerprint = fingerprint;
        self
    }
    fn by_user(mut self, user: &str) -> Write {
        self.user = Some(user.to_string());
        self
    }
}

/// Commits, retrying while the store says it is overloaded (such a write was never queued).
async fn commit(store: &dyn Store, w: Write) -> Result<Committed, StoreError> {
    loop {
        match store.commit(w.clone()).await {
            Err(StoreError::Overloaded) => tokio::time::sleep(Duration::from_millis(1)).await,
            other => return other,
        }
    }
}

/// Commits a write that must succeed.
async fn ok(store: &dyn Store, w: Write) -> Committed {
    let what = format!("{w:?}");
    commit(store, w)
        .await
        .unwrap_or_else(|e| panic!("write refused with {e:?}: {what}"))
}

/// Commits a write that must change the document; returns the result and its event.
async fn changed(store: &dyn Store, w: Write) -> (Committed, Event) {
    let what = format!("{w:?}");
    let c = ok(store, w).await;
    assert!(!c.replayed, "a fresh write came back replayed: {what}");
    let e = c
        .event
        .as_deref()
        .cloned()
        .unwrap_or_else(|| panic!("the write appended no event: {what}"));
    (c, e)
}

/// Commits a write that must be refused; returns the error.
async fn refused(store: &dyn Store, w: Write) -> StoreError {
    let what = format!("{w:?}");
    match commit(store, w).await {
        Ok(c) => panic!("expected a refusal, but it committed {c:?}: {what}"),
        Err(e) => e,
    }
}

async fn get(store: &dyn Store, collection: &str, id: &str) -> StoredDoc {
    store
        .get(collection, id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{collection}/{id} is missing"))
}

async fn events(store: &dyn Store, filter: EventFilter) -> Vec<Event> {
    store.events(&filter, ALL).await.expect("events")
}

async fn all_events(store: &dyn Store) -> Vec<Event> {
    events(store, EventFilter::default()).await
}

async fn last_seq(store: &dyn Store) -> Seq {
    store.last_seq().await.expect("last_seq")
}

async fn snapshot_versions(store: &dyn Store, collection: &str, id: &str) -> Vec<Version> {
    let infos = store.snapshots(collection, id).await.expect("snapshots");
    infos.iter().map(|s| s.version).collect()
}

/// Whether a refusal is the expected one.
type ErrorCheck = fn(&WriteError) -> bool;
/// Whether an event matches a filter.
type EventCheck = Box<dyn Fn(&Event) -> bool>;

/// Everything a refused or empty write must leave untouched.
#[derive(Debug, PartialEq)]
struct State {
    doc: Option<StoredDoc>,
    events: Vec<Event>,
    last_seq: Seq,
    snapshots: Vec<SnapshotInfo>,
}

async fn state(store: &dyn Store, collection: &str, id: &str) -> State {
    State {
        doc: store.get(collection, id).await.expect("get"),
        events: all_events(store).await,
        last_seq: last_seq(store).await,
        snapshots: store.snapshots(collection, id).await.expect("snapshots"),
    }
}

/// `old` with `patch` applied (the patch must apply).
fn patched(old: &Data, patch: &Patch) -> Data {
    let mut doc = Value::Object(old.clone());
    json_patch::patch(&mut doc, patch)
        .unwrap_or_else(|e| panic!("event patch {patch:?} does not apply: {e}"));
    obj(doc)
}

fn data_of(c: &Committed) -> Data {
    c.document
        .as_ref()
        .expect("the result has a document")
        .data
        .clone()
}

fn seqs(events: &[Event]) -> Vec<Seq> {
    events.iter().map(|e| e.seq).collect()
}

fn assert_gapless(events: &[Event], what: &str) {
    for pair in events.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "{what}: sequence numbers must increase by exactly one, got {:?}",
            seqs(events)
        );
    }
}

/// Waits until the wall clock has passed `t`, so later commits get later timestamps.
async fn wait_until_after(t: Timestamp) {
    while Timestamp::now() <= t {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A `now` that makes every event written so far older than a retention of 0 ms.
fn later() -> Timestamp {
    Timestamp(Timestamp::now().0 + 1_000)
}

async fn recv(rx: &mut eventsync::hub::Subscription) -> Event {
    match tokio::time::timeout(RECV_TIMEOUT, rx.recv()).await {
        Ok(Ok(e)) => Event::clone(e.event()),
        Ok(Err(e)) => panic!("hub subscription failed: {e}"),
        Err(_) => panic!("no event published within {RECV_TIMEOUT:?}"),
    }
}

/// The document as of `version`, rebuilt from the newest snapshot at or below it plus the events.
async fn rebuild_at(store: &dyn Store, collection: &str, id: &str, version: Version) -> Option<Data> {
    let base = store
        .snapshot_at_or_before(collection, id, version)
        .await
        .expect("snapshot_at_or_before");
    let from = base.as_ref().map_or(1, |s| s.version + 1);
    let evs = store
        .document_events(collection, id, from, version)
        .await
        .expect("document_events");
    rebuild(base.as_ref(), &evs, version)
        .unwrap_or_else(|e| panic!("{collection}/{id} cannot be rebuilt at version {version}: {e}"))
}

fn no_maintenance_beyond(stats: MaintenanceStats, what: &str) {
    assert_eq!(
        (stats.events_deleted, stats.snapshots_deleted),
        (0, 0),
        "{what}: nothing may be deleted, got {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

/// A create makes version 1 and appends a `create` event whose patch rebuilds the body from `{}`.
pub async fn create_starts_at_version_one(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    assert_eq!(
        s.get("games", "g1").await.unwrap(),
        None,
        "an unused id has no document"
    );
    assert_eq!(last_seq(s).await, 0, "an empty store's last_seq");
    assert_eq!(all_events(s).await, vec![], "an empty store has no events");

    let data = json!({"name": "chess", "players": ["ann", "bob"], "meta": {"rated": true, "n": 1.5}});
    let (c, e) = changed(s, create("games", "g1", data.clone())).await;
    assert!(c.created, "a create reports created");
    let doc = c.document.clone().expect("a create returns the document");
    assert_eq!(
        (doc.collection.as_str(), doc.id.as_str(), doc.version),
        ("games", "g1", 1)
    );
    assert_eq!(Value::Object(doc.data.clone()), data);
    assert!(doc.created_at <= doc.updated_at);

    assert_eq!((e.collection.as_str(), e.id.as_str()), ("games", "g1"));
    assert_eq!((e.version, e.op), (1, Op::Create));
    assert_eq!(e.client_id, CLIENT);
    assert!(e.seq >= 1, "sequence numbers start above 0, got {}", e.seq);
    assert!(!e.op_id.is_empty(), "every event has an op_id");
    assert_eq!(
        Value::Object(patched(&Data::new(), &e.patch)),
        data,
        "the create patch rebuilds the body"
    );

    let stored = get(s, "games", "g1").await;
    assert!(!stored.deleted);
    assert_eq!(stored.doc, doc, "get returns what the commit returned");
    assert_eq!(stored.compacted_through, 0);
    assert_eq!(
        all_events(s).await,
        vec![e.clone()],
        "exactly one event, equal to the returned one"
    );
    assert_eq!(last_seq(s).await, e.seq);
}

/// A create naming a live id fails with `AlreadyExists { current_version }` and changes nothing.
pub async fn create_over_a_live_document_is_refused(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"a": 1}))).await;
    ok(s, merge("games", "g1", json!({"a": 2}))).await;
    let before = state(s, "games", "g1").await;
    assert_eq!(
        refused(s, create("games", "g1", json!({"b": 1}))).await,
        StoreError::Write(WriteError::AlreadyExists { current_version: 2 })
    );
    assert_eq!(
        state(s, "games", "g1").await,
        before,
        "a refused create changes nothing"
    );
    // The same id in another collection is another document.
    let (c, _) = changed(s, create("chat", "g1", json!({"b": 1}))).await;
    assert_eq!(c.document.unwrap().version, 1);
}

/// A create with `id: None` gets a fresh, valid id.
pub async fn create_without_an_id_generates_one(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut w = create("games", "unused", json!({"n": n}));
        w.id = None;
        let (c, e) = changed(s, w).await;
        let doc = c.document.expect("document");
        assert!(
            validate_id(&doc.id).is_ok(),
            "generated id {:?} is not a valid id",
            doc.id
        );
        assert_eq!(e.id, doc.id, "the event names the generated id");
        assert_eq!((doc.version, e.op, c.created), (1, Op::Create, true));
        assert_eq!(get(s, "games", &doc.id).await.doc.data, obj(json!({"n": n})));
        ids.push(doc.id);
    }
    let distinct: BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "generated ids must differ: {ids:?}");
    let listed: BTreeSet<String> = s
        .list("games", None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ids.into_iter().collect::<BTreeSet<_>>());
}

// ---------------------------------------------------------------------------------------------
// Updates
// ---------------------------------------------------------------------------------------------

/// Checks one update: version + 1, op update, and an event patch that turns the old body into the new.
async fn check_update(s: &dyn Store, w: Write, expected: Value) {
    let (collection, id) = (w.collection.clone(), w.id.clone().unwrap());
    let old = get(s, &collection, &id).await;
    let events_before = all_events(s).await;
    let (c, e) = changed(s, w).await;
    let doc = c.document.clone().expect("an update returns the document");
    assert_eq!(Value::Object(doc.data.clone()), expected);
    assert_eq!(doc.version, old.doc.version + 1);
    assert_eq!(doc.created_at, old.doc.created_at, "an update keeps created_at");
    assert!(!c.created, "an update does not report created");
    assert_eq!((e.op, e.version), (Op::Update, old.doc.version + 1));
    assert_eq!(
        (e.collection.as_str(), e.id.as_str()),
        (collection.as_str(), id.as_str())
    );
    assert_eq!(
        patched(&old.doc.data, &e.patch),
        doc.data,
        "the event patch must be the diff from the old body to the new"
    );
    assert_eq!(
        get(s, &collection, &id).await.doc,
        doc,
        "get returns the new version"
    );
    let after = all_events(s).await;
    assert_eq!(
        after.len(),
        events_before.len() + 1,
        "exactly one event per change"
    );
    assert_eq!(after.last(), Some(&e));
    assert!(e.seq > events_before.last().map_or(0, |l| l.seq));
    assert_eq!(last_seq(s).await, e.seq);
}

/// A replace bumps the version and logs the computed diff.
pub async fn replace_appends_the_computed_diff(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(
        s,
        create("games", "g1", json!({"a": 1, "b": {"c": 2}, "keep": [1, 2]})),
    )
    .await;
    check_update(
        s,
        replace(
            "games",
            "g1",
            json!({"a": 2, "b": {"d": 3}, "keep": [1, 2], "new": null}),
        ),
        json!({"a": 2, "b": {"d": 3}, "keep": [1, 2], "new": null}),
    )
    .await;
    check_update(s, replace("games", "g1", json!({})), json!({})).await;
}

/// A JSON Patch bumps the version and logs the computed diff (not necessarily the client's ops).
pub async fn json_patch_appends_the_computed_diff(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(
        s,
        create(
            "games",
            "g1",
            json!({"list": [1, 2], "a": {"x": 1}, "tmp": 0, "a/b": 1}),
        ),
    )
    .await;
    check_update(
        s,
        patch(
            "games",
            "g1",
            json!([
                {"op": "test", "path": "/list/0", "value": 1},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "move", "from": "/tmp", "path": "/moved"},
                {"op": "remove", "path": "/a/x"},
                {"op": "copy", "from": "/list", "path": "/copy"},
                {"op": "replace", "path": "/a~1b", "value": {"deep": [true]}}
            ]),
        ),
        json!({"list": [1, 2, 3], "a": {}, "moved": 0, "copy": [1, 2, 3], "a/b": {"deep": [true]}}),
    )
    .await;
}

/// A merge patch (RFC 7396) bumps the version and logs the computed diff.
pub async fn merge_patch_appends_the_computed_diff(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(
        s,
        create("games", "g1", json!({"a": 1, "b": {"c": 1, "d": 2}, "e": [1]})),
    )
    .await;
    check_update(
        s,
        merge(
            "games",
            "g1",
            json!({"a": null, "b": {"c": 5}, "f": "new", "e": [2]}),
        ),
        json!({"b": {"c": 5, "d": 2}, "e": [2], "f": "new"}),
    )
    .await;
}

/// A write whose result equals the current body succeeds with `event: None` and appends nothing.
pub async fn unchanged_writes_append_nothing(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let body = json!({"a": 1, "b": [1, 2], "c": {"d": null}, "log": []});
    ok(s, create("games", "g1", body)).await;
    ok(s, create("games", "other", json!({"x": 1}))).await;
    for round in 0..2u64 {
        let before = state(s, "games", "g1").await;
        let version = before.doc.as_ref().unwrap().doc.version;
        assert_eq!(version, round + 1);
        let current = Value::Object(before.doc.as_ref().unwrap().doc.data.clone());
        for w in [
            replace("games", "g1", current.clone()),
            merge("games", "g1", json!({})),
            merge("games", "g1", json!({"a": 1, "nope": null})),
            patch("games", "g1", json!([{"op": "test", "path": "/a", "value": 1}])),
            patch(
                "games",
                "g1",
                json!([{"op": "replace", "path": "/b/0", "value": 1}]),
            ),
            patch("games", "g1", json!([])),
            replace("games", "g1", current.clone()).if_version(version),
        ] {
            let what = format!("{:?}", w.mutation);
            let c = ok(s, w).await;
            assert_eq!(
                c.event, None,
                "round {round}: {what} changed nothing but appended an event"
            );
            assert!(!c.created && !c.replayed, "{what}: {c:?}");
            let doc = c
                .document
                .expect("an unchanged write returns the current document");
            assert_eq!(
                (doc.version, Value::Object(doc.data)),
                (version, current.clone()),
                "{what}"
            );
            assert_eq!(
                state(s, "games", "g1").await,
                before,
                "round {round}: {what} changed the store"
            );
        }
        // A real change in between, so the second round starts from version 2.
        changed(s, append("games", "g1", json!(round)).if_version(version)).await;
    }
    assert_eq!(get(s, "games", "g1").await.doc.version, 3);
}

// ---------------------------------------------------------------------------------------------
// Versions, deletes, tombstones
// ---------------------------------------------------------------------------------------------

/// `expected_version` that is not the current version refuses with `VersionConflict`; a match applies.
pub async fn expected_version_must_match(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"n": 0}))).await;
    ok(s, merge("games", "g1", json!({"n": 1}))).await;
    let before = state(s, "games", "g1").await;
    for expected in [0, 1, 3, u64::MAX] {
        for w in [
            replace("games", "g1", json!({"n": 9})),
            patch(
                "games",
                "g1",
                json!([{"op": "replace", "path": "/n", "value": 9}]),
            ),
            merge("games", "g1", json!({"n": 9})),
            merge("games", "g1", json!({"n": 1})),
            delete("games", "g1"),
        ] {
            let what = format!("{:?} if {expected}", w.mutation);
            assert_eq!(
                refused(s, w.if_version(expected)).await,
                StoreError::Write(WriteError::VersionConflict {
                    expected,
                    current_version: 2
                }),
                "{what}"
            );
            assert_eq!(state(s, "games", "g1").await, before, "{what} changed the store");
        }
    }
    let (c, e) = changed(s, replace("games", "g1", json!({"n": 2})).if_version(2)).await;
    assert_eq!((c.document.unwrap().version, e.version), (3, 3));
    let (_, e) = changed(s, merge("games", "g1", json!({"n": 3})).if_version(3)).await;
    assert_eq!(e.version, 4);
    let (c, e) = changed(s, delete("games", "g1").if_version(4)).await;
    assert_eq!((c.document, e.op, e.version), (None, Op::Delete, 5));
}

/// A delete leaves a tombstone at version + 1 and appends a `delete` event with an empty patch.
pub async fn delete_leaves_a_tombstone(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"a": 1}))).await;
    ok(s, merge("games", "g1", json!({"b": 2}))).await;
    let (c, e) = changed(s, delete("games", "g1")).await;
    assert_eq!(c.document, None, "a delete returns no document");
    assert!(!c.created);
    assert_eq!((e.op, e.version), (Op::Delete, 3));
    assert!(
        e.patch.0.is_empty(),
        "a delete's patch is empty, got {:?}",
        e.patch
    );
    let tomb = get(s, "games", "g1").await;
    assert!(tomb.deleted, "get returns a tombstone");
    assert_eq!(tomb.doc.version, 3);
    assert_eq!(tomb.clone().live(), None);
    assert_eq!(all_events(s).await.last(), Some(&e));
    assert_eq!(last_seq(s).await, e.seq);
    assert_eq!(
        s.list("games", None, 100).await.unwrap(),
        vec![],
        "list skips tombstones"
    );
}

/// Writes (other than a create) to a deleted or never-created document are `NotFound`.
pub async fn writes_to_deleted_or_unknown_documents_are_not_found(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"a": 1}))).await;
    ok(s, delete("games", "g1")).await;
    for id in ["g1", "never"] {
        let before = state(s, "games", id).await;
        for expected in [None, Some(1), Some(2)] {
            for w in [
                replace("games", id, json!({"a": 2})),
                patch("games", id, json!([{"op": "add", "path": "/a", "value": 2}])),
                merge("games", id, json!({"a": 2})),
                merge("games", id, json!({})),
                delete("games", id),
            ] {
                let mut w = w;
                w.expected_version = expected;
                let what = format!("{id}: {:?} if {expected:?}", w.mutation);
                assert_eq!(
                    refused(s, w).await,
                    StoreError::Write(WriteError::NotFound),
                    "{what}"
                );
                assert_eq!(state(s, "games", id).await, before, "{what} changed the store");
            }
        }
    }
    assert_eq!(s.get("games", "never").await.unwrap(), None);
}

/// Re-creating a deleted id continues its version line: version = tombstone + 1, `created: true`.
pub async fn recreate_continues_the_version_line(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"old": true, "n": 1}))).await;
    ok(s, merge("games", "g1", json!({"n": 2}))).await;
    ok(s, delete("games", "g1")).await;
    let (c, e) = changed(s, create("games", "g1", json!({"fresh": 1}))).await;
    assert!(c.created, "a create over a tombstone reports created");
    let doc = c.document.clone().unwrap();
    assert_eq!((doc.version, e.version, e.op), (4, 4, Op::Create));
    assert_eq!(
        Value::Object(patched(&Data::new(), &e.patch)),
        json!({"fresh": 1}),
        "the re-create's patch rebuilds the new body from {{}}"
    );
    let stored = get(s, "games", "g1").await;
    assert!(!stored.deleted);
    assert_eq!(stored.doc, doc);
    assert_eq!(s.list("games", None, 10).await.unwrap(), vec![doc]);
    ok(s, delete("games", "g1")).await;
    let (c, _) = changed(s, create("games", "g1", json!({"third": 1}))).await;
    assert_eq!((c.document.unwrap().version, c.created), (6, true));
    let versions: Vec<_> = s
        .document_events("games", "g1", 1, u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.version, e.op))
        .collect();
    assert_eq!(
        versions,
        vec![
            (1, Op::Create),
            (2, Op::Update),
            (3, Op::Delete),
            (4, Op::Create),
            (5, Op::Delete),
            (6, Op::Create)
        ]
    );
}

/// `list` never returns tombstones, also when paginating past them.
pub async fn list_skips_tombstones(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    for id in ["a", "b", "c", "d", "e"] {
        ok(s, create("items", id, json!({"id": id}))).await;
    }
    ok(s, delete("items", "b")).await;
    ok(s, delete("items", "d")).await;
    let ids = |docs: Vec<eventsync::model::Document>| docs.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list("items", None, 100).await.unwrap()), ["a", "c", "e"]);
    assert_eq!(ids(s.list("items", Some("a"), 1).await.unwrap()), ["c"]);
    assert_eq!(ids(s.list("items", Some("c"), 1).await.unwrap()), ["e"]);
    assert_eq!(
        ids(s.list("items", Some("e"), 1).await.unwrap()),
        Vec::<String>::new()
    );
    ok(s, create("items", "d", json!({"again": true}))).await;
    assert_eq!(
        ids(s.list("items", None, 100).await.unwrap()),
        ["a", "c", "d", "e"]
    );
}

/// Refused writes (failed patch test, non-object result, too large, too deep) change nothing.
pub async fn failed_writes_change_nothing(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"a": 1, "list": []}))).await;
    ok(s, merge("games", "g1", json!({"b": 2}))).await;
    let deep = (0..MAX_DEPTH).fold(json!(1), |inner, _| json!({ "x": inner }));
    let big = "x".repeat(MAX_DOCUMENT_BYTES + 1);
    let cases: Vec<(Write, ErrorCheck)> = vec![
        (
            patch(
                "games",
                "g1",
                json!([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/a", "value": 2}]),
            ),
            |e| matches!(e, WriteError::PatchFailed { operation: 1, .. }),
        ),
        (
            patch("games", "g1", json!([{"op": "remove", "path": "/missing"}])),
            |e| matches!(e, WriteError::PatchFailed { operation: 0, .. }),
        ),
        (
            patch(
                "games",
                "g1",
                json!([{"op": "replace", "path": "", "value": [1, 2]}]),
            ),
            |e| *e == WriteError::NotAnObject { found: "an array" },
        ),
        (merge("games", "g1", json!("text")), |e| {
            matches!(e, WriteError::NotAnObject { .. })
        }),
        (merge("games", "g1", json!({"big": big})), |e| {
            matches!(
                e,
                WriteError::TooLarge {
                    limit: MAX_DOCUMENT_BYTES,
                    ..
                }
            )
        }),
        (replace("games", "g1", json!({"big": big})), |e| {
            matches!(
                e,
                WriteError::TooLarge {
                    limit: MAX_DOCUMENT_BYTES,
                    ..
                }
            )
        }),
        (
            patch(
                "games",
                "g1",
                json!([{"op": "add", "path": "/list/-", "value": deep}]),
            ),
            |e| matches!(e, WriteError::TooDeep { limit: MAX_DEPTH, .. }),
        ),
    ];
    for (w, expected) in cases {
        let before = state(s, "games", "g1").await;
        let what = format!("{:?}", w.mutation);
        match refused(s, w).await {
            StoreError::Write(e) if expected(&e) => {}
            other => panic!("{what}: unexpected error {other:?}"),
        }
        assert_eq!(state(s, "games", "g1").await, before, "{what} changed the store");
    }
    // A create that is refused leaves no document (not even a tombstone) and no event.
    let before = state(s, "games", "g2").await;
    assert!(matches!(
        refused(s, create("games", "g2", json!({"big": big}))).await,
        StoreError::Write(WriteError::TooLarge { .. })
    ));
    assert_eq!(state(s, "games", "g2").await, before);
    assert_eq!(s.get("games", "g2").await.unwrap(), None);
    assert_eq!(get(s, "games", "g1").await.doc.version, 2);
}

// ---------------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------------

fn assert_replay_of(replay: &Committed, first: &Committed, what: &str) {
    assert!(replay.replayed, "{what}: a retry must come back replayed");
    assert!(!first.replayed, "{what}: the first write must not be replayed");
    assert_eq!(
        replay.document, first.document,
        "{what}: the replay returns the first document"
    );
    assert_eq!(
        replay.event, first.event,
        "{what}: the replay returns the first event"
    );
    assert_eq!(replay.created, first.created, "{what}");
}

/// A retry with the same key, fingerprint and client returns the first result and appends nothing.
pub async fn idempotent_retry_replays_the_first_result(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;

    // An update.
    let w = append("games", "g1", json!("first")).keyed("k-update", u64::MAX - 7);
    let first = ok(s, w.clone()).await;
    assert_eq!(first.event.as_ref().expect("event").version, 2);
    let after_first = state(s, "games", "g1").await;
    let replay = ok(s, w.clone()).await;
    assert_replay_of(&replay, &first, "update retry");
    assert_eq!(
        state(s, "games", "g1").await,
        after_first,
        "a replay appends nothing"
    );
    // Later writes do not change what a retry returns.
    ok(s, append("games", "g1", json!("second"))).await;
    let after_second = state(s, "games", "g1").await;
    assert_replay_of(&ok(s, w).await, &first, "retry after another write");
    assert_eq!(state(s, "games", "g1").await, after_second);

    // A create with a generated id: the retry names the same document, and makes no other.
    let mut w = create("games", "unused", json!({"n": 1})).keyed("k-create", 42);
    w.id = None;
    let first = ok(s, w.clone()).await;
    let replay = ok(s, w).await;
    assert_replay_of(&replay, &first, "create retry");
    assert_eq!(
        s.list("games", None, 100).await.unwrap().len(),
        2,
        "the retry created nothing"
    );

    // A write that changed nothing is recorded too: its retry still says "unchanged".
    let w = merge("games", "g1", json!({})).keyed("k-noop", 7);
    let first = ok(s, w.clone()).await;
    assert_eq!(first.event, None);
    ok(s, append("games", "g1", json!("third"))).await;
    let before = state(s, "games", "g1").await;
    assert_replay_of(&ok(s, w).await, &first, "unchanged retry");
    assert_eq!(state(s, "games", "g1").await, before);

    // A delete.
    let w = delete("games", "g1").keyed("k-delete", 8);
    let first = ok(s, w.clone()).await;
    let before = state(s, "games", "g1").await;
    assert_replay_of(&ok(s, w).await, &first, "delete retry");
    assert_eq!(state(s, "games", "g1").await, before);
}

/// The same key with a different fingerprint is `IdempotencyKeyReused`, and changes nothing.
pub async fn idempotency_key_reused_for_another_request_is_refused(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;
    ok(s, create("games", "g2", json!({"log": []}))).await;
    ok(s, append("games", "g1", json!(1)).keyed("k", 1)).await;
    for (w, what) in [
        (append("games", "g1", json!(2)).keyed("k", 2), "same document"),
        (append("games", "g2", json!(1)).keyed("k", 2), "another document"),
        (create("games", "g3", json!({})).keyed("k", 3), "a create"),
    ] {
        let before = (state(s, "games", "g1").await, state(s, "games", "g2").await);
        assert_eq!(refused(s, w).await, StoreError::IdempotencyKeyReused, "{what}");
        let after = (state(s, "games", "g1").await, state(s, "games", "g2").await);
        assert_eq!(after, before, "{what}: a refused reuse changed the store");
    }
    assert_eq!(s.get("games", "g3").await.unwrap(), None);
}

/// Idempotency keys belong to a client: the same key under another client id is independent.
pub async fn idempotency_keys_are_scoped_per_client(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;
    let for_alice = append("games", "g1", json!("x")).keyed("shared", 1).by("alice");
    let for_bob = append("games", "g1", json!("x")).keyed("shared", 1).by("bob");
    let (alice_first, a) = changed(s, for_alice.clone()).await;
    let (bob_first, b) = changed(s, for_bob.clone()).await;
    assert_eq!((a.version, b.version), (2, 3), "bob's write is a fresh write");
    assert_eq!((a.client_id.as_str(), b.client_id.as_str()), ("alice", "bob"));
    assert_eq!((a.op_id.as_str(), b.op_id.as_str()), ("shared", "shared"));
    // Another fingerprint under carol's id is fine; under bob's it is a reuse.
    let (_, c) = changed(
        s,
        append("games", "g1", json!("y")).keyed("shared", 2).by("carol"),
    )
    .await;
    assert_eq!(c.version, 4);
    assert_eq!(
        refused(s, append("games", "g1", json!("y")).keyed("shared", 2).by("bob")).await,
        StoreError::IdempotencyKeyReused
    );
    let before = state(s, "games", "g1").await;
    assert_replay_of(&ok(s, for_alice).await, &alice_first, "alice's retry");
    assert_replay_of(&ok(s, for_bob).await, &bob_first, "bob's retry");
    assert_eq!(state(s, "games", "g1").await, before);
    assert_eq!(
        get(s, "games", "g1").await.doc.data["log"],
        json!(["x", "x", "y"])
    );
}

/// With access control, keys belong to the subject too: the same key and client id from another
/// subject is another write (neither replayed to it nor refused as a reuse of the first's key).
pub async fn idempotency_keys_are_scoped_per_user(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;
    let alice = append("games", "g1", json!("a"))
        .keyed("k", 1)
        .by("tab")
        .by_user("alice");
    let mallory = append("games", "g1", json!("m"))
        .keyed("k", 2)
        .by("tab")
        .by_user("mallory");
    let (alice_first, a) = changed(s, alice.clone()).await;
    let (_, m) = changed(s, mallory.clone()).await;
    assert_eq!((a.version, m.version), (2, 3), "mallory's write is a fresh write");
    // The same key without a user (no auth) is a third scope.
    let (_, anon) = changed(s, append("games", "g1", json!("n")).keyed("k", 3).by("tab")).await;
    assert_eq!(anon.version, 4);
    // Each scope still replays and refuses within itself.
    let before = state(s, "games", "g1").await;
    assert_replay_of(&ok(s, alice).await, &alice_first, "alice's retry");
    assert_eq!(
        refused(
            s,
            append("games", "g1", json!("x"))
                .keyed("k", 9)
                .by("tab")
                .by_user("mallory")
        )
        .await,
        StoreError::IdempotencyKeyReused
    );
    assert_eq!(state(s, "games", "g1").await, before);
    // A user whose name ends like another scope's does not collide with it (`a/b` + `c` is not
    // `a` + `b/c`: client ids have no `/`).
    let (_, x) = changed(
        s,
        append("games", "g1", json!("s"))
            .keyed("k", 4)
            .by("tab")
            .by_user("alice/tab"),
    )
    .await;
    assert_eq!(x.version, 5);
}

/// Events carry their writer's subject, and the log filters by it.
pub async fn events_record_their_user_and_filter_by_it(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let (_, a) = changed(s, create("games", "g1", json!({"log": []})).by_user("alice")).await;
    let (_, b) = changed(s, append("games", "g1", json!(1)).by_user("bob")).await;
    let (_, n) = changed(s, append("games", "g1", json!(2))).await;
    assert_eq!(
        (a.user.as_deref(), b.user.as_deref(), n.user.as_deref()),
        (Some("alice"), Some("bob"), None)
    );
    // As read back, not only as answered.
    let all = all_events(s).await;
    assert_eq!(all, vec![a.clone(), b.clone(), n]);
    let page = events(
        s,
        EventFilter {
            user: Some("bob".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page, vec![b]);
}

/// A refused write records nothing under its key: retrying it once it can apply is a fresh write.
pub async fn refused_write_does_not_consume_its_idempotency_key(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"n": 1}))).await;
    let w = replace("games", "g1", json!({"n": 3}))
        .if_version(2)
        .keyed("k", 5);
    assert_eq!(
        refused(s, w.clone()).await,
        StoreError::Write(WriteError::VersionConflict {
            expected: 2,
            current_version: 1
        })
    );
    ok(s, replace("games", "g1", json!({"n": 2}))).await;
    let (first, e) = changed(s, w.clone()).await;
    assert_eq!((e.version, e.op_id.as_str()), (3, "k"));
    assert_replay_of(&ok(s, w).await, &first, "retry after success");
}

/// An event's `op_id` is the write's idempotency key when it has one, and unique otherwise.
pub async fn event_op_id_is_the_idempotency_key(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let (_, e) = changed(
        s,
        create("games", "g1", json!({"log": []})).keyed("op-create-1", 1),
    )
    .await;
    assert_eq!(e.op_id, "op-create-1");
    let (_, e) = changed(s, append("games", "g1", json!(1)).keyed("op-2", 2)).await;
    assert_eq!(e.op_id, "op-2");
    let (_, e) = changed(s, delete("games", "g1").keyed("op-3", 3)).await;
    assert_eq!(e.op_id, "op-3");
    let logged: Vec<String> = all_events(s).await.into_iter().map(|e| e.op_id).collect();
    assert_eq!(
        logged,
        ["op-create-1", "op-2", "op-3"],
        "the log keeps the op ids"
    );

    let mut generated = BTreeSet::new();
    ok(s, create("games", "g2", json!({"log": []}))).await;
    for n in 0..5 {
        ok(s, append("games", "g2", json!(n))).await;
    }
    for e in events(
        s,
        EventFilter {
            collection: Some("games".into()),
            id: Some("g2".into()),
            ..EventFilter::default()
        },
    )
    .await
    {
        assert!(!e.op_id.is_empty());
        generated.insert(e.op_id);
    }
    assert_eq!(
        generated.len(),
        6,
        "op ids of writes without a key must be unique"
    );
}

// ---------------------------------------------------------------------------------------------
// Sequence numbers and the hub
// ---------------------------------------------------------------------------------------------

/// Sequence numbers increase across all documents and collections, one per committed change, no gaps.
pub async fn sequence_numbers_are_global_and_gapless(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let mut appended: Vec<Event> = Vec::new();
    let mut record = |c: Committed| {
        if let Some(e) = c.event {
            appended.push((*e).clone());
        }
    };
    let writes = [
        create("a", "x", json!({"log": []})),
        create("b", "x", json!({"log": []})),
        create("a", "y", json!({"log": []})),
        append("b", "x", json!(1)),
        merge("a", "x", json!({})), // unchanged
        append("a", "y", json!(1)),
        delete("b", "x"),
        create("b", "x", json!({"again": 1})),
        append("a", "x", json!(1)).keyed("k", 1),
        append("a", "x", json!(1)).keyed("k", 1), // replay
        append("a", "x", json!(2)),
    ];
    let refusals = [
        create("a", "x", json!({})),
        append("a", "missing", json!(1)),
        append("a", "x", json!(3)).if_version(5),
        patch("a", "y", json!([{"op": "test", "path": "/log", "value": 0}])),
    ];
    for (n, w) in writes.into_iter().enumerate() {
        record(ok(s, w).await);
        // Interleave refusals: they must not take sequence numbers.
        if let Some(r) = refusals.get(n) {
            refused(s, r.clone()).await;
        }
    }
    let mut seen = BTreeSet::new();
    appended.retain(|e| seen.insert(e.seq)); // the replay returned an event already counted
    assert_eq!(appended.len(), 9, "one event per committed change");
    let log = all_events(s).await;
    assert_eq!(
        log, appended,
        "the log holds exactly the committed events, in commit order"
    );
    assert_eq!(log[0].seq, 1, "the first sequence number of an empty store is 1");
    assert_gapless(&log, "the log");
    assert_eq!(last_seq(s).await, log.last().unwrap().seq);
}

/// 200 concurrent writes over 10 documents all land, each exactly once, without lost updates.
pub async fn concurrent_commits_all_land(store: Arc<dyn Store>, hub: Hub) {
    const DOCS: usize = 10;
    const WRITES: usize = 200;
    let mut rx = hub.subscribe();
    for d in 0..DOCS {
        ok(&*store, create("logs", &format!("d{d}"), json!({"log": []}))).await;
    }
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let w = append("logs", &format!("d{}", i % DOCS), json!(i)).by(&format!("writer-{i}"));
                (i, ok(&*store, w).await)
            })
        })
        .collect();
    let mut by_seq = BTreeMap::new();
    for task in tasks {
        let (i, c) = task.await.expect("a writer task panicked");
        let e = c
            .event
            .as_deref()
            .cloned()
            .expect("every append changes the document");
        let doc = c.document.expect("document");
        let log = doc.data["log"].as_array().expect("log array").clone();
        assert_eq!(e.version, doc.version);
        assert_eq!(
            log.len() as u64,
            doc.version - 1,
            "writer {i}: one append per version"
        );
        assert_eq!(
            log.last(),
            Some(&json!(i)),
            "writer {i}: its append is the newest"
        );
        assert_eq!(e.client_id, format!("writer-{i}"));
        assert!(
            by_seq.insert(e.seq, e).is_none(),
            "two commits got the same sequence number"
        );
    }
    let per_doc = (WRITES / DOCS) as u64;
    for d in 0..DOCS {
        let id = format!("d{d}");
        let doc = get(&*store, "logs", &id).await;
        assert_eq!(doc.doc.version, 1 + per_doc, "{id}'s version");
        let mut values: Vec<u64> = doc.doc.data["log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        values.sort_unstable();
        let expected: Vec<u64> = (0..WRITES as u64)
            .filter(|i| i % DOCS as u64 == d as u64)
            .collect();
        assert_eq!(values, expected, "{id} holds every append exactly once");
        let versions: Vec<Version> = store
            .document_events("logs", &id, 1, u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(
            versions,
            (1..=1 + per_doc).collect::<Vec<_>>(),
            "{id}'s event versions"
        );
        assert_eq!(
            rebuild_at(&*store, "logs", &id, 1 + per_doc).await,
            Some(doc.doc.data),
            "{id} rebuilt from its log"
        );
    }
    let log = all_events(&*store).await;
    assert_eq!(log.len(), DOCS + WRITES);
    assert_gapless(&log, "the log after concurrent commits");
    assert_eq!(last_seq(&*store).await, log.last().unwrap().seq);
    let updates: BTreeMap<Seq, Event> = log.iter().skip(DOCS).map(|e| (e.seq, e.clone())).collect();
    assert_eq!(
        updates, by_seq,
        "the log holds exactly the events the commits returned"
    );
    let mut published = Vec::new();
    for _ in 0..log.len() {
        published.push(recv(&mut rx).await);
    }
    assert_eq!(
        published, log,
        "the hub publishes every event once, in sequence order"
    );
}

/// A subscriber gets every committed event exactly once, in order, equal to the log; refusals,
/// unchanged writes and replays publish nothing.
pub async fn hub_publishes_every_committed_event_once_in_order(store: Arc<dyn Store>, hub: Hub) {
    let s = &*store;
    let mut rx = hub.subscribe();
    ok(s, create("games", "g1", json!({"log": []}))).await;
    ok(s, create("chat", "c1", json!({"log": []}))).await;
    ok(s, append("games", "g1", json!(1)).keyed("k", 1)).await;
    ok(s, append("games", "g1", json!(1)).keyed("k", 1)).await; // replay
    ok(s, merge("games", "g1", json!({}))).await; // unchanged
    refused(s, append("games", "g1", json!(2)).if_version(1)).await;
    refused(s, create("games", "g1", json!({}))).await;
    refused(s, append("games", "nope", json!(2))).await;
    ok(s, append("chat", "c1", json!("hi"))).await;
    ok(s, delete("games", "g1")).await;
    ok(s, create("games", "g1", json!({"log": [0]}))).await;
    let log = all_events(s).await;
    assert_eq!(log.len(), 6);
    let mut published = Vec::new();
    for _ in 0..log.len() {
        published.push(recv(&mut rx).await);
    }
    assert_eq!(published, log, "published events equal the log, in order");

    // Nothing else was published: after more refusals, the next event out is a new commit's.
    refused(s, append("games", "g1", json!(3)).if_version(9)).await;
    refused(
        s,
        patch("games", "g1", json!([{"op": "test", "path": "/log", "value": 0}])),
    )
    .await;
    ok(s, append("games", "g1", json!(1)).keyed("k", 1)).await; // replay of the old key
    let (_, marker) = changed(s, append("chat", "c1", json!("marker"))).await;
    assert_eq!(
        recv(&mut rx).await,
        marker,
        "refused writes and replays publish nothing"
    );
    assert!(
        matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty)),
        "nothing published after the last commit"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading the log and listing
// ---------------------------------------------------------------------------------------------

/// Every `EventFilter` field narrows the selection to exactly the matching events.
pub async fn events_filters_narrow_the_selection(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    // Three groups of writes, each at a later millisecond than the one before.
    let group_a = [
        create("games", "g1", json!({"log": []})).by("alice"),
        create("games", "g2", json!({"log": []})).by("bob"),
        create("chat", "g1", json!({"log": []})).by("alice"),
    ];
    let group_b = [
        append("games", "g1", json!(1)).by("bob"),
        append("chat", "g1", json!(1)).by("alice"),
        delete("games", "g2").by("alice"),
    ];
    let group_c = [
        create("games", "g3", json!({})).by("carol"),
        append("games", "g1", json!(2)).by("alice"),
        create("chat", "c2", json!({})).by("bob"),
    ];
    let mut groups: Vec<Vec<Event>> = Vec::new();
    for group in [group_a, group_b, group_c] {
        if let Some(last) = groups.last().and_then(|g| g.last()) {
            wait_until_after(last.ts).await;
        }
        let mut evs = Vec::new();
        for w in group {
            evs.push(changed(s, w).await.1);
        }
        groups.push(evs);
    }
    let all = all_events(s).await;
    assert_eq!(all, groups.concat());
    let start_b = groups[1].iter().map(|e| e.ts).min().unwrap();
    let start_c = groups[2].iter().map(|e| e.ts).min().unwrap();
    assert!(groups[0].iter().all(|e| e.ts < start_b) && groups[1].iter().all(|e| e.ts < start_c));

    let cases: Vec<(EventFilter, EventCheck)> = vec![
        (
            EventFilter {
                collection: Some("games".into()),
                ..Default::default()
            },
            Box::new(|e| e.collection == "games"),
        ),
        (
            EventFilter {
                collection: Some("games".into()),
                id: Some("g1".into()),
                ..Default::default()
            },
            Box::new(|e| e.collection == "games" && e.id == "g1"),
        ),
        (
            EventFilter {
                op: Some(Op::Create),
                ..Default::default()
            },
            Box::new(|e| e.op == Op::Create),
        ),
        (
            EventFilter {
                op: Some(Op::Update),
                ..Default::default()
            },
            Box::new(|e| e.op == Op::Update),
        ),
        (
            EventFilter {
                op: Some(Op::Delete),
                ..Default::default()
            },
            Box::new(|e| e.op == Op::Delete),
        ),
        (
            EventFilter {
                client_id: Some("alice".into()),
                ..Default::default()
            },
            Box::new(|e| e.client_id == "alice"),
        ),
        (
            EventFilter {
                after: all[3].seq,
                ..Default::default()
            },
            Box::new({
                let cut = all[3].seq;
                move |e| e.seq > cut
            }),
        ),
        (
            EventFilter {
                since: Some(start_b),
                ..Default::default()
            },
            Box::new(move |e| e.ts >= start_b),
        ),
        (
            EventFilter {
                until: Some(start_c),
                ..Default::default()
            },
            Box::new(move |e| e.ts < start_c),
        ),
        (
            EventFilter {
                since: Some(start_b),
                until: Some(start_c),
                ..Default::default()
            },
            Box::new(move |e| e.ts >= start_b && e.ts < start_c),
        ),
        (
            EventFilter {
                collection: Some("games".into()),
                client_id: Some("alice".into()),
                op: Some(Op::Update),
                ..Default::default()
            },
            Box::new(|e| e.collection == "games" && e.client_id == "alice" && e.op == Op::Update),
        ),
        (
            EventFilter {
                collection: Some("nothing".into()),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
    ];
    for (filter, matches) in cases {
        let expected: Vec<Event> = all.iter().filter(|e| matches(e)).cloned().collect();
        assert!(
            expected.len() < all.len(),
            "test bug: {filter:?} selects everything"
        );
        assert_eq!(events(s, filter.clone()).await, expected, "{filter:?}");
    }
    // The time filters select exactly the groups.
    let since_b = events(
        s,
        EventFilter {
            since: Some(start_b),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(since_b, [groups[1].clone(), groups[2].clone()].concat());
    let until_c = events(
        s,
        EventFilter {
            until: Some(start_c),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(until_c, [groups[0].clone(), groups[1].clone()].concat());
}

/// `limit` and `after` page through the whole log (and a filtered log) in order.
pub async fn events_paginate_with_limit_and_after(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    for id in ["a", "b", "c"] {
        ok(s, create("games", id, json!({"log": []}))).await;
        ok(s, create("chat", id, json!({"log": []}))).await;
    }
    for n in 0..8 {
        for id in ["a", "b", "c"] {
            ok(s, append("games", id, json!(n))).await;
        }
        ok(s, append("chat", "b", json!(n))).await;
    }
    let all = all_events(s).await;
    assert_eq!(all.len(), 6 + 8 * 4);
    let games = events(
        s,
        EventFilter {
            collection: Some("games".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(games.len(), 3 + 8 * 3);
    for base in [
        EventFilter::default(),
        EventFilter {
            collection: Some("games".into()),
            ..Default::default()
        },
    ] {
        let expected = if base.collection.is_some() { &games } else { &all };
        for limit in [1, 4, 7, expected.len(), expected.len() + 1] {
            let mut pages = Vec::new();
            let mut filter = base.clone();
            loop {
                let page = s.events(&filter, limit).await.unwrap();
                assert!(page.len() <= limit, "a page holds at most limit events");
                match page.last() {
                    None => break,
                    Some(last) => filter.after = last.seq,
                }
                let full = page.len() == limit;
                pages.extend(page);
                assert!(pages.len() <= expected.len(), "pagination does not end");
                if !full {
                    // A short page is the end; the next one must be empty.
                    assert_eq!(s.events(&filter, limit).await.unwrap(), vec![]);
                    break;
                }
            }
            assert_eq!(&pages, expected, "pages of {limit} with {base:?}");
        }
    }
    assert_eq!(
        s.events(&EventFilter::default(), 0).await.unwrap(),
        vec![],
        "limit 0"
    );
    let beyond = EventFilter {
        after: all.last().unwrap().seq,
        ..Default::default()
    };
    assert_eq!(s.events(&beyond, 10).await.unwrap(), vec![]);
}

/// `list` returns a collection's live documents in id order; `after` and `limit` page through them.
pub async fn list_paginates_in_id_order(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let ids = [
        "k05",
        "a1",
        "m",
        "b-2",
        "z9",
        "a10",
        "a2",
        "k04",
        "q",
        "c",
        "x:y",
        "user@host",
        "n.1",
    ];
    for id in ids {
        ok(s, create("items", id, json!({"id": id}))).await;
    }
    // Ids that would interleave, in a collection whose name shares a prefix.
    for id in ["a0", "b", "zz"] {
        ok(s, create("item", id, json!({"other": true}))).await;
        ok(s, create("items2", id, json!({"other": true}))).await;
    }
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();
    let all = s.list("items", None, 1000).await.unwrap();
    assert_eq!(all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), sorted);
    for d in &all {
        assert_eq!(d.collection, "items");
        assert_eq!(Value::Object(d.data.clone()), json!({"id": d.id}));
        assert_eq!(d, &get(s, "items", &d.id).await.doc);
    }
    for limit in [1, 3, 5, ids.len()] {
        let mut listed = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.list("items", after.as_deref(), limit).await.unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            listed.extend(page);
            assert!(listed.len() <= ids.len(), "pagination does not end");
        }
        assert_eq!(listed, all, "pages of {limit}");
    }
    // `after` need not be an existing id.
    let from_b = s.list("items", Some("b"), 1000).await.unwrap();
    assert_eq!(
        from_b,
        all.iter()
            .filter(|d| d.id.as_str() > "b")
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(s.list("items", Some("zzz"), 10).await.unwrap(), vec![]);
    assert_eq!(s.list("empty", None, 10).await.unwrap(), vec![]);
    assert_eq!(s.list("item", None, 10).await.unwrap().len(), 3);
}

/// A read within a byte budget ends before the item that would pass it (and says so, `full`),
/// always returns at least one item, and read on from its last item covers everything once — for
/// documents, the event log and one document's events alike.
pub async fn pages_end_at_their_byte_budget(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    // Ten documents of ~10 KB, each replaced twice (events of ~10 KB).
    for i in 0..10 {
        let id = format!("d{i}");
        ok(s, create("big", &id, json!({ "fill": "a".repeat(10_000) }))).await;
        ok(s, replace("big", &id, json!({ "fill": "b".repeat(10_000) }))).await;
    }
    ok(s, replace("big", "d0", json!({ "fill": "c".repeat(10_000) }))).await;
    let all = s.list("big", None, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    let budget = Budget {
        items: 100,
        bytes: 25_000,
    };
    let first = s.list_page("big", None, budget).await.unwrap();
    assert!(first.full, "cut by bytes");
    assert!(
        (1..=2).contains(&first.items.len()),
        "{} items of ~10 KB in 25 KB",
        first.items.len()
    );
    assert!(first.bytes <= budget.bytes);
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list_page("big", after.as_deref(), budget).await.unwrap();
        assert!(!page.items.is_empty() || !page.full);
        listed.extend(page.items.iter().cloned());
        if !page.full {
            break;
        }
        after = page.items.last().map(|d| d.id.clone());
        assert!(listed.len() <= 10, "pagination does not end");
    }
    assert_eq!(listed, all);
    // A budget smaller than any one item still moves on, one item at a time.
    let tiny = Budget { items: 100, bytes: 1 };
    let one = s.list_page("big", None, tiny).await.unwrap();
    assert_eq!((one.items.len(), one.full), (1, true));
    // By count, as before: full when there may be more.
    let counted = s.list_page("big", None, Budget::items(10)).await.unwrap();
    assert_eq!((counted.items.len(), counted.full), (10, false));
    let counted = s.list_page("big", None, Budget::items(4)).await.unwrap();
    assert_eq!((counted.items.len(), counted.full), (4, true));

    let every = s.events(&EventFilter::default(), 1000).await.unwrap();
    assert_eq!(every.len(), 21);
    let mut read = Vec::new();
    let mut filter = EventFilter::default();
    loop {
        let page = s.events_page(&filter, budget).await.unwrap();
        assert!(page.items.len() <= 3, "~10 KB events in 25 KB");
        read.extend(page.items.iter().cloned());
        if !page.full {
            break;
        }
        filter.after = page.items.last().unwrap().seq;
        assert!(read.len() <= 21, "pagination does not end");
    }
    assert_eq!(read, every);

    let history = s.document_events("big", "d0", 1, 3).await.unwrap();
    assert_eq!(history.len(), 3);
    let cut = s.document_events_page("big", "d0", 1, 3, budget).await.unwrap();
    assert!(cut.full && (1..=2).contains(&cut.items.len()));
    assert_eq!(cut.items[..], history[..cut.items.len()]);
}

/// `document_events` returns one document's events with versions in `from..=to`, ascending.
pub async fn document_events_returns_the_requested_versions(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;
    ok(s, create("games", "g10", json!({"log": []}))).await;
    ok(s, create("chat", "g1", json!({"log": []}))).await;
    for n in 0..6 {
        ok(s, append("games", "g1", json!(n))).await;
        ok(s, append("chat", "g1", json!(n))).await;
        ok(s, append("games", "g10", json!(n))).await;
    }
    let mine = events(
        s,
        EventFilter {
            collection: Some("games".into()),
            id: Some("g1".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(mine.len(), 7);
    for (from, to) in [(1, 7), (0, u64::MAX), (3, 5), (4, 4), (6, 100), (8, 9), (5, 2)] {
        let got = s.document_events("games", "g1", from, to).await.unwrap();
        let expected: Vec<Event> = mine
            .iter()
            .filter(|e| e.version >= from && e.version <= to)
            .cloned()
            .collect();
        assert_eq!(got, expected, "versions {from}..={to}");
    }
    assert_eq!(s.document_events("games", "nope", 1, 10).await.unwrap(), vec![]);
}

// ---------------------------------------------------------------------------------------------
// Snapshots and compaction
// ---------------------------------------------------------------------------------------------

/// Writes `n` appends to a fresh document and returns its body at every version (index = version).
async fn history(s: &dyn Store, collection: &str, id: &str, versions: u64) -> Vec<Option<Data>> {
    let mut bodies = vec![None];
    let (c, _) = changed(s, create(collection, id, json!({"log": []}))).await;
    bodies.push(Some(data_of(&c)));
    for n in 2..=versions {
        let (c, _) = changed(s, append(collection, id, json!(n))).await;
        bodies.push(Some(data_of(&c)));
    }
    bodies
}

/// With `snapshot_every = 3`, versions 3, 6, ... get snapshots; `snapshot_at_or_before` finds the
/// newest at or below a version.
pub async fn snapshots_are_taken_every_n_versions(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    let bodies = history(s, "games", "g1", 8).await;
    history(s, "games", "short", SNAPSHOT_EVERY - 1).await;
    let log = events(
        s,
        EventFilter {
            collection: Some("games".into()),
            id: Some("g1".into()),
            ..Default::default()
        },
    )
    .await;
    let infos = s.snapshots("games", "g1").await.unwrap();
    assert_eq!(
        infos.iter().map(|i| i.version).collect::<Vec<_>>(),
        [SNAPSHOT_EVERY, 2 * SNAPSHOT_EVERY],
        "snapshots every {SNAPSHOT_EVERY} versions"
    );
    for info in &infos {
        let e = &log[(info.version - 1) as usize];
        assert_eq!(e.version, info.version);
        assert_eq!(info.seq, e.seq, "a snapshot's seq is its version's event's");
        assert!(info.bytes > 0);
    }
    assert_eq!(get(s, "games", "g1").await.snapshot_version, 2 * SNAPSHOT_EVERY);
    assert_eq!(
        snapshot_versions(s, "games", "short").await,
        Vec::<Version>::new()
    );
    assert_eq!(get(s, "games", "short").await.snapshot_version, 0);
    for v in 0..=10u64 {
        let snap = s.snapshot_at_or_before("games", "g1", v).await.unwrap();
        let expected = infos.iter().rev().find(|i| i.version <= v).map(|i| i.version);
        assert_eq!(
            snap.as_ref().map(|s| s.version),
            expected,
            "snapshot at or before {v}"
        );
        if let Some(snap) = snap {
            assert_eq!((snap.collection.as_str(), snap.id.as_str()), ("games", "g1"));
            assert_eq!(
                Some(snap.data),
                bodies[snap.version as usize],
                "snapshot {}",
                snap.version
            );
            assert_eq!(snap.seq, log[(snap.version - 1) as usize].seq);
        }
    }
    for v in 1..=8 {
        assert_eq!(
            rebuild_at(s, "games", "g1", v).await,
            bodies[v as usize],
            "version {v}"
        );
    }
}

/// `snapshot_changed` snapshots every live document changed since its last snapshot, returns
/// counts, and writes nothing the second time.
pub async fn snapshot_changed_snapshots_documents_changed_since_their_last_snapshot(
    store: Arc<dyn Store>,
    _hub: Hub,
) {
    let s = &*store;
    let a = history(s, "games", "a", 2).await; // no snapshot yet
    history(s, "games", "b", 3).await; // snapshot at 3, unchanged since
    let c = history(s, "games", "c", 4).await; // snapshot at 3, changed since
    history(s, "games", "d", 1).await;
    ok(s, delete("games", "d")).await; // a tombstone: nothing to snapshot
    let e = history(s, "chat", "e", 1).await;
    let stats = s.snapshot_changed().await.unwrap();
    assert_eq!(stats.snapshots_written, 3, "a, c and e are due: {stats:?}");
    no_maintenance_beyond(stats, "snapshot_changed");
    assert_eq!(snapshot_versions(s, "games", "a").await, [2]);
    assert_eq!(snapshot_versions(s, "games", "b").await, [3]);
    assert_eq!(snapshot_versions(s, "games", "c").await, [3, 4]);
    assert_eq!(snapshot_versions(s, "games", "d").await, Vec::<Version>::new());
    assert_eq!(snapshot_versions(s, "chat", "e").await, [1]);
    for (collection, id, bodies, v) in [("games", "a", &a, 2), ("games", "c", &c, 4), ("chat", "e", &e, 1)] {
        let snap = s.snapshot_at_or_before(collection, id, v).await.unwrap().unwrap();
        assert_eq!(snap.version, v);
        assert_eq!(Some(snap.data), bodies[v as usize]);
        let event = &s.document_events(collection, id, v, v).await.unwrap()[0];
        assert_eq!(
            snap.seq, event.seq,
            "{id}'s snapshot seq is its version's event's"
        );
        assert_eq!(get(s, collection, id).await.snapshot_version, v);
    }
    let again = s.snapshot_changed().await.unwrap();
    assert_eq!(
        again.snapshots_written, 0,
        "a second pass has nothing to do: {again:?}"
    );
    assert_eq!(snapshot_versions(s, "games", "c").await, [3, 4]);
    ok(s, append("games", "a", json!("more"))).await;
    assert_eq!(s.snapshot_changed().await.unwrap().snapshots_written, 1);
    assert_eq!(snapshot_versions(s, "games", "a").await, [2, 3]);
}

/// Compaction deletes nothing while retention (by count or by age) still covers the events.
pub async fn compaction_respects_retention(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    history(s, "games", "g1", 10).await;
    assert_eq!(snapshot_versions(s, "games", "g1").await, [3, 6, 9]);
    let before = state(s, "games", "g1").await;
    for (retention, now, what) in [
        (KEEP_ALL, later(), "keep everything"),
        (
            Retention {
                keep_last: u64::MAX,
                keep_for_ms: 0,
            },
            later(),
            "keep_last = u64::MAX",
        ),
        (
            Retention {
                keep_last: 10,
                keep_for_ms: 0,
            },
            later(),
            "keep_last = 10 of 10",
        ),
        (
            Retention {
                keep_last: 0,
                keep_for_ms: 3_600_000,
            },
            Timestamp::now(),
            "every event is younger than keep_for",
        ),
        (
            Retention {
                keep_last: 2,
                keep_for_ms: i64::MAX,
            },
            Timestamp::now(),
            "keep_for = i64::MAX",
        ),
    ] {
        let stats = s.compact(retention, NEVER_EXPIRE, now).await.unwrap();
        no_maintenance_beyond(stats, what);
        assert_eq!(
            state(s, "games", "g1").await,
            before,
            "{what}: compaction changed the store"
        );
    }
}

/// With `keep_last = 2`, events covered by the newest snapshot at or below `version - 2` go, with
/// the snapshots before it; the document can still be rebuilt at every retained version.
pub async fn compaction_drops_covered_events_beyond_the_last_n(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    // Versions 1-6 appends (snapshots at 3 and 6), 7 a delete, 8 a re-create, 9 an append
    // (snapshot at 9: 9 >= 6 + 3), 10 an append.
    let mut bodies = history(s, "games", "g1", 6).await;
    ok(s, delete("games", "g1")).await;
    bodies.push(None);
    let (c, _) = changed(s, create("games", "g1", json!({"log": ["again"]}))).await;
    bodies.push(Some(data_of(&c)));
    for n in 9..=10 {
        let (c, _) = changed(s, append("games", "g1", json!(n))).await;
        bodies.push(Some(data_of(&c)));
    }
    let other = history(s, "games", "other", 2).await; // no snapshot: never compacted
    assert_eq!(snapshot_versions(s, "games", "g1").await, [3, 6, 9]);
    let all_before = all_events(s).await;
    let seq_before = last_seq(s).await;
    let other_before = (
        get(s, "games", "other").await,
        s.document_events("games", "other", 0, u64::MAX).await.unwrap(),
    );

    let keep_two = Retention {
        keep_last: 2,
        keep_for_ms: 0,
    };
    let stats = s.compact(keep_two, NEVER_EXPIRE, later()).await.unwrap();
    // The cut is the newest snapshot at or below 10 - 2 = 8: version 6.
    let doc = get(s, "games", "g1").await;
    assert_eq!(doc.compacted_through, 6, "compacted through the cut snapshot");
    assert_eq!(doc.doc.version, 10);
    assert_eq!(
        snapshot_versions(s, "games", "g1").await,
        [6, 9],
        "the cut's snapshot stays"
    );
    let retained = s.document_events("games", "g1", 0, u64::MAX).await.unwrap();
    assert_eq!(
        retained.iter().map(|e| e.version).collect::<Vec<_>>(),
        [7, 8, 9, 10],
        "every event after the cut is kept"
    );
    let expected_log: Vec<Event> = all_before
        .iter()
        .filter(|e| !(e.collection == "games" && e.id == "g1" && e.version <= 6))
        .cloned()
        .collect();
    assert_eq!(all_events(s).await, expected_log, "only the covered events went");
    assert_eq!(
        (stats.events_deleted, stats.snapshots_deleted),
        (6, 1),
        "{stats:?}"
    );
    assert_eq!(last_seq(s).await, seq_before);
    let other_after = (
        get(s, "games", "other").await,
        s.document_events("games", "other", 0, u64::MAX).await.unwrap(),
    );
    assert_eq!(
        other_after, other_before,
        "a document without a snapshot is not compacted"
    );
    for v in 6..=10u64 {
        assert_eq!(
            rebuild_at(s, "games", "g1", v).await,
            bodies[v as usize],
            "version {v}"
        );
    }
    assert_eq!(rebuild_at(s, "games", "other", 2).await, other[2]);

    // The same pass again finds nothing new to cut.
    let again = s.compact(keep_two, NEVER_EXPIRE, later()).await.unwrap();
    assert_eq!(
        (again.events_deleted, again.snapshots_deleted),
        (0, 0),
        "{again:?}"
    );
    assert_eq!(get(s, "games", "g1").await.compacted_through, 6);

    // keep_last = 0: the cut moves to the newest snapshot, 9.
    let stats = s
        .compact(
            Retention {
                keep_last: 0,
                keep_for_ms: 0,
            },
            NEVER_EXPIRE,
            later(),
        )
        .await
        .unwrap();
    assert_eq!(
        (stats.events_deleted, stats.snapshots_deleted),
        (3, 1),
        "{stats:?}"
    );
    assert_eq!(get(s, "games", "g1").await.compacted_through, 9);
    assert_eq!(snapshot_versions(s, "games", "g1").await, [9]);
    for v in 9..=10u64 {
        assert_eq!(
            rebuild_at(s, "games", "g1", v).await,
            bodies[v as usize],
            "version {v}"
        );
    }
    // Writing on continues the history from there.
    let (c, _) = changed(s, append("games", "g1", json!(11))).await;
    assert_eq!(rebuild_at(s, "games", "g1", 11).await, Some(data_of(&c)));
}

/// Events younger than `keep_for_ms` stay even where `keep_last` alone would drop them: the cut is
/// the newest snapshot at or below the newest *old* version.
pub async fn catch_up_reads_a_large_collection_in_pages(store: Arc<dyn Store>, _hub: Hub) {
    use eventsync::plan::{DocRows, SUMMARY_PAGE};
    use eventsync::protocol::StateVector;
    let s = &*store;
    // More documents than two pages of summaries; ids whose order is the bytes' order.
    let n = 2 * SUMMARY_PAGE + 37;
    let ids: Vec<String> = (0..n).map(|i| format!("d{i:05}")).collect();
    for id in &ids {
        ok(s, create("big", id, json!({"n": 1}))).await;
    }
    ok(
        s,
        patch(
            "big",
            &ids[5],
            json!([{"op": "replace", "path": "/n", "value": 2}]),
        ),
    )
    .await;
    ok(s, delete("big", &ids[SUMMARY_PAGE + 3])).await;
    let collections = vec!["big".to_string()];
    // A fresh client: every live document once, in id order, whatever the pages.
    let rows = s
        .catch_up(CatchUpRead::whole(collections.clone(), StateVector::new()))
        .await
        .unwrap();
    assert!(rows.complete);
    let sent: Vec<&str> = rows.collections[0]
        .documents
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    let live: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| *id != ids[SUMMARY_PAGE + 3])
        .collect();
    assert_eq!(sent, live, "a fresh client gets every live document once");
    // A client current on all: what it has that the server never had is reset wherever it falls
    // among the pages (before the first id, between pages, past the last); the rest is exact.
    let mut vector = StateVector::new();
    let has = vector.entry("big".to_string()).or_default();
    for id in &ids {
        has.insert(id.clone(), 1);
    }
    has.insert(ids[SUMMARY_PAGE + 3].clone(), 2);
    let (before, between, after) = (
        "a0".to_string(),
        format!("{}x", ids[SUMMARY_PAGE - 1]),
        "zz".to_string(),
    );
    for id in [&before, &between, &after] {
        has.insert(id.clone(), 1);
    }
    let rows = s.catch_up(CatchUpRead::whole(collections, vector)).await.unwrap();
    let sent: Vec<(&str, bool)> = rows.collections[0]
        .documents
        .iter()
        .map(|(id, r)| (id.as_str(), matches!(r, DocRows::Deleted { version: 0 })))
        .collect();
    assert_eq!(
        sent,
        [
            (before.as_str(), true),
            (ids[5].as_str(), false),
            (between.as_str(), true),
            (after.as_str(), true)
        ],
        "only the changed document and the resets"
    );
}

/// A catch-up in parts, each going on from where the one before was cut (`plan::Resume`), while
/// documents change between the parts — before the cut (found through the store's "changed
/// since" read), after it, created and deleted: the parts together bring the client to exactly
/// the store's state, and a document unchanged since the part that sent it is not sent again.
pub async fn catch_up_parts_go_on_from_the_cut_and_bring_what_changed_before_it(
    store: Arc<dyn Store>,
    _hub: Hub,
) {
    use eventsync::plan::{DocRows, SUMMARY_PAGE};
    use eventsync::protocol::StateVector;
    let s = &*store;
    let n = SUMMARY_PAGE + 200;
    let id = |i: usize| format!("d{i:05}");
    for i in 0..n {
        ok(s, create("big", &id(i), json!({"n": 0, "log": []}))).await;
    }
    ok(s, create("small", "s1", json!({"n": 0, "log": []}))).await;
    let collections = vec!["big".to_string(), "small".to_string()];
    let mut vector = StateVector::new();
    let mut resume = None;
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut changed = HashSet::new();
    for part in 0.. {
        assert!(part < 100, "the parts do not end");
        let read = CatchUpRead {
            collections: collections.clone(),
            vector: Arc::new(vector.clone()),
            // About 40 documents a part.
            budget: 40 * 100,
            selection: None,
            resume: resume.take(),
        };
        let rows = s.catch_up(read).await.unwrap();
        for c in &rows.collections {
            let docs = vector.entry(c.collection.clone()).or_default();
            for (doc, r) in &c.documents {
                *sent.entry(format!("{}/{doc}", c.collection)).or_default() += 1;
                match r {
                    DocRows::Events { to, .. } => docs.insert(doc.clone(), *to),
                    DocRows::Body { version, .. } => docs.insert(doc.clone(), *version),
                    DocRows::Deleted { version } => docs.insert(doc.clone(), *version),
                    DocRows::Removed { .. } => docs.remove(doc),
                };
            }
        }
        if rows.complete {
            break;
        }
        resume = rows.resume.clone();
        assert!(
            resume.is_some(),
            "a part cut while reading everything says where it was cut"
        );
        // Between parts: a document the parts so far sent changes (the first, again and again),
        // one far ahead changes, one is created among the sent ones, one sent is deleted.
        if part % 3 == 0 {
            ok(s, append("big", &id(0), json!(part))).await;
            changed.insert(format!("big/{}", id(0)));
        }
        if part == 2 {
            ok(s, append("big", &id(n - 1), json!(part))).await;
            ok(s, create("big", "d00000a", json!({"n": 0, "log": []}))).await;
            ok(s, delete("big", &id(3))).await;
            changed.extend(["big/d00000a".to_string(), format!("big/{}", id(3))]);
        }
    }
    // Exactly the store's state, whatever changed between the parts.
    let fresh = s
        .catch_up(CatchUpRead::whole(collections.clone(), StateVector::new()))
        .await
        .unwrap();
    let mut want = StateVector::new();
    for c in &fresh.collections {
        let docs = want.entry(c.collection.clone()).or_default();
        for (doc, r) in &c.documents {
            if let DocRows::Body { version, .. } = r {
                docs.insert(doc.clone(), *version);
            }
        }
    }
    want.get_mut("big")
        .unwrap()
        .insert(id(3), get(s, "big", &id(3)).await.doc.version);
    assert_eq!(vector, want, "the parts together are the store's state");
    let again: Vec<&String> = sent.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k).collect();
    for doc in &again {
        assert!(changed.contains(*doc), "{doc} was sent twice without changing");
    }
    assert!(
        again.contains(&&format!("big/{}", id(0))),
        "a change before the cut is sent"
    );
}

pub async fn compaction_keeps_events_younger_than_keep_for(store: Arc<dyn Store>, _hub: Hub) {
    const KEEP_FOR: i64 = 60_000;
    let s = &*store;
    let mut bodies = history(s, "games", "g1", 7).await; // snapshots at 3 and 6
    let old_until = all_events(s).await.last().unwrap().ts;
    wait_until_after(old_until).await;
    for n in 8..=10 {
        let (c, _) = changed(s, append("games", "g1", json!(n))).await; // snapshot at 9
        bodies.push(Some(data_of(&c)));
    }
    assert_eq!(snapshot_versions(s, "games", "g1").await, [3, 6, 9]);
    let young_from = s.document_events("games", "g1", 8, 8).await.unwrap()[0].ts;
    assert!(young_from > old_until);
    // As of `now`, versions 1-7 are older than KEEP_FOR and 8-10 younger.
    let now = Timestamp(young_from.0 + KEEP_FOR);
    let retention = Retention {
        keep_last: 0,
        keep_for_ms: KEEP_FOR,
    };
    let stats = s.compact(retention, NEVER_EXPIRE, now).await.unwrap();
    assert_eq!(
        (stats.events_deleted, stats.snapshots_deleted),
        (6, 1),
        "{stats:?}"
    );
    assert_eq!(get(s, "games", "g1").await.compacted_through, 6);
    assert_eq!(snapshot_versions(s, "games", "g1").await, [6, 9]);
    let retained = s.document_events("games", "g1", 0, u64::MAX).await.unwrap();
    assert_eq!(
        retained.iter().map(|e| e.version).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    for v in 6..=10u64 {
        assert_eq!(
            rebuild_at(s, "games", "g1", v).await,
            bodies[v as usize],
            "version {v}"
        );
    }
}

/// Maintenance passes cover every document, however many there are (backends may work in chunks).
pub async fn maintenance_covers_every_document(store: Arc<dyn Store>, _hub: Hub) {
    const DOCS: usize = 600;
    let s = &*store;
    let ids: Vec<String> = (0..DOCS).map(|n| format!("d{n:04}")).collect();
    let creates = ids.iter().map(|id| ok(s, create("bulk", id, json!({"id": id}))));
    futures::future::join_all(creates).await;
    let stats = s.snapshot_changed().await.unwrap();
    assert_eq!(stats.snapshots_written, DOCS as u64, "{stats:?}");
    assert_eq!(s.snapshot_changed().await.unwrap().snapshots_written, 0);
    let stats = s
        .compact(
            Retention {
                keep_last: 0,
                keep_for_ms: 0,
            },
            NEVER_EXPIRE,
            later(),
        )
        .await
        .unwrap();
    assert_eq!(stats.events_deleted, DOCS as u64, "{stats:?}");
    assert_eq!(all_events(s).await, vec![]);
    for id in &ids {
        let doc = get(s, "bulk", id).await;
        assert_eq!((doc.snapshot_version, doc.compacted_through), (1, 1), "{id}");
        assert_eq!(
            rebuild_at(s, "bulk", id, 1).await,
            Some(obj(json!({"id": id}))),
            "{id}"
        );
    }
    assert_eq!(s.list("bulk", None, DOCS + 1).await.unwrap().len(), DOCS);
}

/// Idempotency records older than the TTL expire; reusing an expired key is a fresh write.
pub async fn idempotency_records_expire_after_the_ttl(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;
    let w1 = append("games", "g1", json!(1)).keyed("k1", 1);
    let w2 = append("games", "g1", json!(2)).keyed("k2", 2);
    let first = ok(s, w1.clone()).await;
    ok(s, w2.clone()).await;

    // Young records survive.
    let stats = s.compact(KEEP_ALL, 3_600_000, Timestamp::now()).await.unwrap();
    assert_eq!(stats.idempotency_keys_expired, 0, "{stats:?}");
    assert_replay_of(&ok(s, w1.clone()).await, &first, "retry within the TTL");

    // Ten seconds on, a one-second TTL has expired both.
    let future = Timestamp(Timestamp::now().0 + 10_000);
    let stats = s.compact(KEEP_ALL, 1_000, future).await.unwrap();
    assert_eq!(stats.idempotency_keys_expired, 2, "{stats:?}");
    no_maintenance_beyond(stats, "expiring keys");
    let (again, e) = changed(s, w1).await;
    assert!(!again.replayed);
    assert_eq!(
        (e.version, e.op_id.as_str()),
        (4, "k1"),
        "an expired key's retry is a fresh write"
    );
    // An expired key may be reused for another request.
    let (_, e) = changed(s, append("games", "g1", json!(3)).keyed("k2", 99)).await;
    assert_eq!(e.version, 5);
    assert_eq!(get(s, "games", "g1").await.doc.data["log"], json!([1, 2, 1, 3]));
}

/// `last_seq` still reports the highest sequence number after the newest events were compacted,
/// and the next write gets a higher one.
pub async fn last_seq_survives_compaction_of_the_newest_events(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    history(s, "games", "a", 2).await;
    history(s, "chat", "b", 4).await;
    let max = last_seq(s).await;
    assert_eq!(max, 6);
    let written = s.snapshot_changed().await.unwrap();
    assert_eq!(written.snapshots_written, 2, "{written:?}");
    let everything = Retention {
        keep_last: 0,
        keep_for_ms: 0,
    };
    let stats = s.compact(everything, NEVER_EXPIRE, later()).await.unwrap();
    assert_eq!(stats.events_deleted, 6, "{stats:?}");
    assert_eq!(
        all_events(s).await,
        vec![],
        "every event was covered by a snapshot"
    );
    assert_eq!(last_seq(s).await, max, "last_seq survives compaction");
    let (_, e) = changed(s, append("chat", "b", json!("after"))).await;
    assert!(e.seq > max, "a new write got seq {} after {max}", e.seq);
    assert_eq!(last_seq(s).await, e.seq);
    let (_, e2) = changed(s, create("games", "new", json!({}))).await;
    assert!(e2.seq > e.seq);
    assert_eq!(
        rebuild_at(s, "chat", "b", 5).await,
        Some(get(s, "chat", "b").await.doc.data)
    );
}

/// After `close()`, writes fail with `StoreError::Closed`.
pub async fn close_refuses_later_writes(store: Arc<dyn Store>, _hub: Hub) {
    let s = &*store;
    ok(s, create("games", "g1", json!({"log": []}))).await;
    s.close().await.expect("close");
    assert_eq!(
        s.commit(append("games", "g1", json!(1))).await,
        Err(StoreError::Closed)
    );
    assert_eq!(
        s.commit(create("games", "g2", json!({}))).await,
        Err(StoreError::Closed)
    );
    assert_eq!(s.snapshot_changed().await, Err(StoreError::Closed));
    assert_eq!(
        s.compact(KEEP_ALL, NEVER_EXPIRE, later()).await,
        Err(StoreError::Closed)
    );
    assert_eq!(s.get("games", "g1").await, Err(StoreError::Closed));
    assert_eq!(s.last_seq().await, Err(StoreError::Closed));
}

#[cfg(test)]
mod tests {
    /// The macro's list and the checks in this file must be the same set.
    #[test]
    fn the_macro_runs_every_conformance_check() {
        let listed: &[&str] = crate::conformance_tests!(@names);
        let mut declared: Vec<&str> = include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .map(|rest| rest.split(['(', '<']).next().unwrap_or(rest).trim())
            .collect();
        let mut listed = listed.to_vec();
        declared.sort_unstable();
        listed.sort_unstable();
        let duplicates = listed.windows(2).filter(|w| w[0] == w[1]).count();
        assert_eq!(duplicates, 0, "a check is listed twice");
        assert_eq!(
            listed, declared,
            "conformance_tests! must list every `pub async fn` check"
        );
        assert!(declared.len() >= 30);
    }
}
