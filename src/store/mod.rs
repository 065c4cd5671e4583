//! Storage, as a trait of domain operations — **commit → append → publish**.
//!
//! A backend owns atomicity: [`Store::commit`] runs the version check, the document write, the event
//! append, a due snapshot and the idempotency record in one transaction, using the pure rules of
//! [`crate::write::plan`]. After the commit is durable it publishes the event to the [`Hub`] — in
//! sequence order, which only the backend can guarantee (it is the one that assigns sequence numbers).
//!
//! Backends: [`sqlite`] (embedded, the default). Every backend must pass [`conformance`], which is
//! written once against this trait.
//!
//! [`Hub`]: crate::hub::Hub

pub mod conformance;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{Document, Event, Op, Seq, Snapshot, SnapshotInfo, StoredDoc, Version};
use crate::sync::protocol::{ServerMessage, StateVector};
use crate::time::Timestamp;
use crate::write::{Write, WriteError};

/// The outcome of a successful [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    /// The document after the write (`None` after a delete).
    pub document: Option<Document>,
    /// The appended event (`None` when the write changed nothing).
    pub event: Option<Arc<Event>>,
    /// Whether the write created the document (the API answers 201).
    pub created: bool,
    /// True when this is the stored result of an earlier request with the same idempotency key.
    #[serde(skip)]
    pub replayed: bool,
}

/// Which events to read. Every field narrows the selection; results are in sequence order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub collection: Option<String>,
    /// A document id (only meaningful with `collection`).
    pub id: Option<String>,
    pub op: Option<Op>,
    pub client_id: Option<String>,
    /// Only events with a sequence number greater than this.
    pub after: Seq,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
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

/// What brings a client current, read at one consistent position of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUp {
    /// The log position the messages bring the client to.
    pub position: Seq,
    /// `snapshot` and `event` messages, per document in version order.
    pub messages: Vec<ServerMessage>,
    /// The client's vector after applying them (for the requested collections).
    pub vector: StateVector,
    pub snapshots: u64,
    pub events: u64,
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
    Backend(String),
}

/// The storage API: domain operations, each atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one write atomically: idempotency check, version check, document write, event append
    /// (with the next global sequence number), a snapshot when one is due, and the idempotency record.
    /// Returns only once the change is durable; then the event is published in sequence order.
    async fn commit(&self, write: Write) -> Result<Committed, StoreError>;

    /// The document, live or a tombstone; `None` if the id was never used.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError>;

    /// Live documents of a collection in id order, starting after `after`.
    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError>;

    /// Events matching `filter`, in sequence order, at most `limit`.
    async fn events(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// One document's retained events with versions in `from..=to`, ascending.
    async fn document_events(
        &self,
        collection: &str,
        id: &str,
        from: Version,
        to: Version,
    ) -> Result<Vec<Event>, StoreError>;

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

    /// Plans and reads a client's catch-up for `collections` (see [`crate::sync::plan`]), all at one
    /// consistent position of the log.
    async fn catch_up(&self, collections: &[String], vector: &StateVector) -> Result<CatchUp, StoreError>;

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

    /// Finishes queued writes, makes everything durable and releases the store. Later calls fail
    /// with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;
}
