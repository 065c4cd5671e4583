//! Storage, as a trait of domain operations — **commit → append → publish**.
//!
//! A backend owns atomicity: [`Store::commit`] runs the version check, the document write, the event
//! append, a due snapshot and the idempotency record in one transaction. What the write does is not
//! the backend's to decide: it reads what [`crate::write::decide`] needs, calls it, and persists the
//! decision, so the backends differ only in how they read and write. After the commit is durable it
//! publishes the event to the [`Hub`] — in sequence order, which only the backend can guarantee (it
//! is the one that assigns sequence numbers).
//!
//! A catch-up is read the same way: [`crate::plan::Planner`] says which reads it needs, the backend
//! answers them inside one consistent read transaction and returns the rows; building messages
//! from them is `sync`'s business, not the store's.
//!
//! Backends: [`sqlite`] (embedded, the default) and [`mongo`] (MongoDB, for production and for
//! several nodes). Every backend must pass the conformance suite (the dev-only crate
//! `crates/conformance`), which is written once against this trait.
//!
//! [`Hub`]: crate::hub::Hub

#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{Document, Event, Op, Seq, Snapshot, SnapshotInfo, StoredDoc, Version};
use crate::plan::{CatchUpRows, Planner, Resume, Selection};
use crate::protocol::StateVector;
use crate::time::Timestamp;
use crate::write::{Refusal, Write, WriteError};

/// The outcome of a successful [`Store::commit`] (decided by [`crate::write::decide`]).
pub use crate::write::Committed;

/// Which events to read. Every field narrows the selection; results are in sequence order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub collection: Option<String>,
    /// A document id (only meaningful with `collection`).
    pub id: Option<String>,
    pub op: Option<Op>,
    pub client_id: Option<String>,
    /// The writer's token subject (an event's `user`).
    pub user: Option<String>,
    /// Only events with a sequence number greater than this.
    pub after: Seq,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
}

/// How much one read of a listing may return: at most `items`, and no more items once their
/// stored size passes `bytes` (the first item is always returned, whatever its size, so that a
/// page always moves on). The size of an item is what the backend holds of it (the JSON text of a
/// body or a patch in SQLite, the BSON record in MongoDB): close to what it costs in memory and on
/// the wire, and known before the item is decoded — an item that would not fit is never read
/// into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub items: usize,
    pub bytes: usize,
}

impl Budget {
    /// A budget of `items` alone.
    pub fn items(items: usize) -> Budget {
        Budget {
            items,
            bytes: usize::MAX,
        }
    }
}

/// What a read within a [`Budget`] returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    /// The budget (in items or in bytes) ended the read: there may be more after the last item.
    pub full: bool,
    /// The stored size of the items, as counted against the budget.
    pub bytes: usize,
}

/// A page being filled within its budget, item by item, by a backend that reads the items'
/// stored sizes before it decodes them.
pub struct Filling<T> {
    budget: Budget,
    items: Vec<T>,
    bytes: usize,
}

impl<T> Filling<T> {
    pub fn new(budget: Budget) -> Filling<T> {
        Filling {
            budget,
            items: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether an item of `size` stored bytes may be taken (then [`Filling::push`] it); `false`
    /// ends the page: stop reading and return [`Filling::stopped`].
    pub fn fits(&mut self, size: usize) -> bool {
        if self.items.len() >= self.budget.items
            || (!self.items.is_empty() && self.bytes.saturating_add(size) > self.budget.bytes)
        {
            return false;
        }
        self.bytes = self.bytes.saturating_add(size);
        true
    }

    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// The budget ended the page (an item was left for the next).
    pub fn stopped(self) -> Paged<T> {
        Paged {
            items: self.items,
            full: true,
            bytes: self.bytes,
        }
    }

    /// The items ran out first.
    pub fn ended(self) -> Paged<T> {
        Paged {
            items: self.items,
            full: false,
            bytes: self.bytes,
        }
    }
}

/// How much history compaction must keep, per document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Keep at least the last K events of each document.
    pub keep_last: u64,
    /// Keep every event younger than this many milliseconds.
    pub keep_for_ms: i64,
}

/// What one pass of maintenance did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceStats {
    pub documents: u64,
    pub snapshots_written: u64,
    pub events_deleted: u64,
    pub snapshots_deleted: u64,
    pub idempotency_keys_expired: u64,
}

impl std::ops::AddAssign for MaintenanceStats {
    fn add_assign(&mut self, o: Self) {
        self.documents += o.documents;
        self.snapshots_written += o.snapshots_written;
        self.events_deleted += o.events_deleted;
        self.snapshots_deleted += o.snapshots_deleted;
        self.idempotency_keys_expired += o.idempotency_keys_expired;
    }
}

/// What the server remembers of a client: its last acknowledged vector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientState {
    pub client_id: String,
    /// The log position the client last acknowledged.
    pub position: Seq,
    pub state_vector: StateVector,
    pub updated_at: Timestamp,
}

/// Errors of store operations. Domain refusals come through as [`StoreError::Write`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write was refused by the rules of [`crate::write::plan`]; nothing changed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// An idempotency key was reused with a request of different content.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The requested version is older than the retained history.
    #[error("version {version} was compacted; the oldest retained version is {oldest}")]
    Compacted { version: Version, oldest: Version },
    /// The write queue is full; retry later.
    #[error("the store is overloaded")]
    Overloaded,
    /// The store was closed (the server is shutting down).
    #[error("the store is closed")]
    Closed,
    /// The backend failed (I/O, corruption, a bug). Details are for the log, not for clients.
    #[error("storage failure: {0}")]
    Backend(BackendError),
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> StoreError {
        match r {
            Refusal::Write(e) => StoreError::Write(e),
            Refusal::IdempotencyKeyReused => StoreError::IdempotencyKeyReused,
        }
    }
}

impl StoreError {
    /// A backend failure described by `what` alone.
    pub fn backend(what: impl Into<String>) -> StoreError {
        crate::metrics::store_error();
        StoreError::Backend(BackendError {
            what: what.into(),
            source: None,
        })
    }

    /// A backend failure: `what` failed because of `source` (kept, for the log).
    pub fn backend_source(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        crate::metrics::store_error();
        StoreError::Backend(BackendError {
            what: what.into(),
            source: Some(Arc::new(source)),
        })
    }
}

/// What failed in a backend, with the error that made it fail.
#[derive(Debug, Clone)]
pub struct BackendError {
    pub what: String,
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Two failures are equal when they read the same (the sources are not comparable otherwise).
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The storage API: domain operations, each atomic.
/// What one catch-up read covers ([`Store::catch_up`]): a part of a catch-up, or all of it.
pub struct CatchUpRead {
    /// The collections, in the order they are planned.
    pub collections: Vec<String>,
    /// What the client has: shared with its session, not copied for each part.
    pub vector: Arc<StateVector>,
    /// The rows' byte budget ([`Planner::with_budget`]).
    pub budget: u64,
    /// The documents it may plan (all without one): [`Planner::with_selection`].
    pub selection: Option<Arc<Selection>>,
    /// Where the part before was cut, when this one goes on from it: [`Planner::resuming`].
    pub resume: Option<Resume>,
}

impl CatchUpRead {
    /// Every document of `collections` for a client with `vector`, in one part.
    pub fn whole(collections: Vec<String>, vector: StateVector) -> CatchUpRead {
        CatchUpRead {
            collections,
            vector: Arc::new(vector),
            budget: u64::MAX,
            selection: None,
            resume: None,
        }
    }

    /// The plan of this read, at `position` (the read transaction's).
    pub fn planner(&self, position: Seq) -> Planner<'_> {
        Planner::new(position, &self.collections, &self.vector)
            .with_budget(self.budget)
            .resuming(self.resume.clone())
            .with_selection(self.selection.as_deref())
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one write atomically: idempotency check, version check, document write, event append
    /// (with the next global sequence number), a snapshot when one is due, and the idempotency record.
    /// Returns only once the change is durable; then the event is published in sequence order.
    async fn commit(&self, write: Write) -> Result<Committed, StoreError>;

    /// The document, live or a tombstone; `None` if the id was never used.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError>;

    /// Live documents of a collection in id order, starting after `after`, within `budget`.
    async fn list_page(
        &self,
        collection: &str,
        after: Option<&str>,
        budget: Budget,
    ) -> Result<Paged<Document>, StoreError>;

    /// Events matching `filter`, in sequence order, within `budget`.
    async fn events_page(&self, filter: &EventFilter, budget: Budget) -> Result<Paged<Event>, StoreError>;

    /// Live documents of a collection in id order, starting after `after`, at most `limit`.
    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        Ok(self
            .list_page(collection, after, Budget::items(limit))
            .await?
            .items)
    }

    /// Events matching `filter`, in sequence order, at most `limit`.
    async fn events(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(self.events_page(filter, Budget::items(limit)).await?.items)
    }

    /// One document's retained events with versions in `from..=to`, ascending, within `budget`.
    async fn document_events_page(
        &self,
        collection: &str,
        id: &str,
        from: Version,
        to: Version,
        budget: Budget,
    ) -> Result<Paged<Event>, StoreError>;

    /// One document's retained events with versions in `from..=to`, ascending.
    async fn document_events(
        &self,
        collection: &str,
        id: &str,
        from: Version,
        to: Version,
    ) -> Result<Vec<Event>, StoreError> {
        let all = Budget::items(usize::MAX);
        Ok(self
            .document_events_page(collection, id, from, to, all)
            .await?
            .items)
    }

    /// Metadata of a document's retained snapshots, oldest first.
    async fn snapshots(&self, collection: &str, id: &str) -> Result<Vec<SnapshotInfo>, StoreError>;

    /// The newest snapshot at or below `version`.
    async fn snapshot_at_or_before(
        &self,
        collection: &str,
        id: &str,
        version: Version,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// Snapshots every live document changed since its last snapshot (the timer's half of the policy).
    async fn snapshot_changed(&self) -> Result<MaintenanceStats, StoreError>;

    /// Drops events covered by a snapshot beyond `retention`, the snapshots older than the newest
    /// one still needed, and idempotency records older than `idempotency_ttl_ms`.
    async fn compact(
        &self,
        retention: Retention,
        idempotency_ttl_ms: i64,
        now: Timestamp,
    ) -> Result<MaintenanceStats, StoreError>;

    /// Reads what `read` says a client needs to catch up — the reads its
    /// [`CatchUpRead::planner`] asks for — all at one consistent position of the log.
    async fn catch_up(&self, read: CatchUpRead) -> Result<CatchUpRows, StoreError>;

    /// The client's last acknowledged vector, if it ever acknowledged one.
    async fn load_client(&self, client_id: &str) -> Result<Option<ClientState>, StoreError>;

    /// Records a client's acknowledged vector: `entries` are upserted — with `replace`, each
    /// collection in `entries` is replaced whole — an entry at version 0 is removed, and the position
    /// moves to `position`.
    async fn save_client(
        &self,
        client_id: &str,
        position: Seq,
        entries: &StateVector,
        replace: bool,
    ) -> Result<(), StoreError>;

    /// The highest sequence number ever assigned (0 for an empty store).
    async fn last_seq(&self) -> Result<Seq, StoreError>;

    /// For a backend shared by several nodes: the last sequence number this node has published to
    /// its hub (its followers' position; `last_seq - published_seq` is how far this node lags).
    /// `None` for a backend that publishes at commit.
    fn published_seq(&self) -> Option<Seq> {
        None
    }

    /// Finishes queued writes, makes everything durable and releases the store. Later calls fail
    /// with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
