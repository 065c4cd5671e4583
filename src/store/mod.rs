//! Storage, as a trait of domain operations — **commit → append → publish**.
//!
//! A backend owns atomicity: [`Store::commit`] runs the version check, the document write, the event
//! append, a due snapshot and the idempotency record in one transaction, using the pure rules of
//! [`crate::write::plan`]. After the commit is durable it publishes the event to the [`Hub`] — in
//! sequence order, which only the backend can guarantee (it is the one that assigns sequence numbers).
//!
//! Backends: [`sqlite`] (embedded, the default) and [`mongo`] (MongoDB, for production and for
//! several nodes). Every backend must pass the conformance suite (the dev-only crate
//! `crates/conformance`), which is written once against this trait.
//! What a committed change stores — the event, the new document record, whether a snapshot is due —
//! is decided once, by [`changed`], so the backends differ only in how they persist it.
//!
//! [`Hub`]: crate::hub::Hub

#[cfg(feature = "mongodb")]
pub mod mongo;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{Document, Event, Op, Seq, Snapshot, SnapshotInfo, StoredDoc, Version};
use crate::protocol::{ServerMessage, SnapshotMessage, StateVector};
use crate::sync::plan::{self, Step};
use crate::time::Timestamp;
use crate::write::{Change, Mutation, Write, WriteError};

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
    Backend(BackendError),
}

impl StoreError {
    /// A backend failure described by `what` alone.
    pub fn backend(what: impl Into<String>) -> StoreError {
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

/// What a committed change stores, decided the same way by every backend.
#[derive(Debug)]
pub struct Changed {
    /// The document record after the write (a tombstone after a delete).
    pub stored: StoredDoc,
    /// The body serialized (empty for a delete).
    pub data_json: String,
    /// Whether a snapshot of the new version is due (every `snapshot_every` versions).
    pub snapshot_due: bool,
    /// The result to return (and record under the idempotency key); it holds the event.
    pub committed: Committed,
}

impl Changed {
    pub fn event(&self) -> &Arc<Event> {
        self.committed
            .event
            .as_ref()
            .expect("a change always has an event")
    }
}

/// Turns a planned [`Change`] of the document `previous` (`None`: the id was never used) into the
/// event with sequence number `seq` and the new document record.
pub fn changed(
    previous: Option<&StoredDoc>,
    w: &Write,
    id: String,
    change: Change,
    seq: Seq,
    now: Timestamp,
    snapshot_every: u64,
) -> Changed {
    let deleting = matches!(w.mutation, Mutation::Delete);
    let (compacted_through, mut snapshot_version) =
        previous.map_or((0, 0), |s| (s.compacted_through, s.snapshot_version));
    let snapshot_due = !deleting && change.version >= snapshot_version + snapshot_every.max(1);
    if snapshot_due {
        snapshot_version = change.version;
    }
    let event = Event {
        seq,
        collection: w.collection.clone(),
        id: id.clone(),
        version: change.version,
        op: change.op,
        patch: change.patch,
        client_id: w.client_id.clone(),
        op_id: w
            .idempotency_key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        ts: now,
    };
    let doc = Document {
        collection: w.collection.clone(),
        id,
        version: change.version,
        created_at: match previous {
            Some(s) if !s.deleted => s.doc.created_at,
            _ => now,
        },
        updated_at: now,
        data: change.data,
    };
    Changed {
        committed: Committed {
            document: (!deleting).then(|| doc.clone()),
            event: Some(Arc::new(event)),
            created: previous.is_none_or(|s| s.deleted),
            replayed: false,
        },
        stored: StoredDoc {
            doc,
            deleted: deleting,
            compacted_through,
            snapshot_version,
        },
        data_json: change.data_json,
        snapshot_due,
    }
}

/// Builds a [`CatchUp`] from the steps a backend planned and the pieces it read for them, so every
/// backend produces the same messages and vector.
pub struct CatchUpBuilder {
    out: CatchUp,
}

impl CatchUpBuilder {
    pub fn new(position: Seq) -> CatchUpBuilder {
        CatchUpBuilder {
            out: CatchUp {
                position,
                messages: Vec::new(),
                vector: StateVector::new(),
                snapshots: 0,
                events: 0,
            },
        }
    }

    /// Adds one collection. `steps` are its final steps (event sizes already weighed, see
    /// [`plan::events_or_snapshot`]); `fetch` reads what a step needs: the events `from..=to` of a
    /// document, or its live body at a version (`None` if it changed since — then nothing is sent).
    pub fn collection(
        &mut self,
        collection: &str,
        client: Option<&std::collections::BTreeMap<String, Version>>,
        steps: Vec<(String, Step, Fetched)>,
    ) {
        let mut resulting = client.cloned().unwrap_or_default();
        for (id, step, fetched) in steps {
            match (step, fetched) {
                (Step::Events { to, .. }, Fetched::Events(events)) => {
                    self.out.events += events.len() as u64;
                    self.out
                        .messages
                        .extend(events.into_iter().map(ServerMessage::Event));
                    resulting.insert(id, to);
                }
                (Step::Snapshot { version }, Fetched::Body(Some(data))) => {
                    self.out.snapshots += 1;
                    self.out.messages.push(ServerMessage::Snapshot(SnapshotMessage {
                        collection: collection.to_string(),
                        id: id.clone(),
                        version,
                        data: Some(data),
                        deleted: false,
                    }));
                    resulting.insert(id, version);
                }
                (Step::Delete { version }, _) => {
                    self.out.snapshots += 1;
                    self.out.messages.push(ServerMessage::Snapshot(SnapshotMessage {
                        collection: collection.to_string(),
                        id: id.clone(),
                        version,
                        data: None,
                        deleted: true,
                    }));
                    if version == 0 {
                        resulting.remove(&id);
                    } else {
                        resulting.insert(id, version);
                    }
                }
                _ => {}
            }
        }
        self.out.vector.insert(collection.to_string(), resulting);
    }

    pub fn finish(mut self) -> CatchUp {
        plan::order_messages(&mut self.out.messages);
        self.out
    }
}

/// What a backend read for one catch-up step.
#[derive(Debug)]
pub enum Fetched {
    Nothing,
    Events(Vec<Event>),
    /// The live body at the planned version, or `None` when it is not there any more.
    Body(Option<crate::model::Data>),
}
