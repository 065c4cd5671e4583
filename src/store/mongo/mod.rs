//! The MongoDB store: the production backend, and how EventSync runs as **several nodes**.
//!
//! - Writes queue on this node and are committed in batched multi-document transactions
//!   ([`writer`]); a shared counter document makes sequence numbers global, gapless and ordered
//!   like the commits, whichever node wrote.
//! - Nothing is published at commit: every node — the writing one included — publishes what its
//!   change stream on `events` reports ([`follower`]), so each node's subscribers see the one log.
//! - Reads go straight to the database; the catch-up and a client's vector are read inside a
//!   snapshot transaction (one consistent position). Maintenance (snapshots, compaction) runs per
//!   document in small transactions, so any number of nodes may run it at once.
//! - Every transaction runs on one of a fixed set of sessions recorded under the node's id, so
//!   that a node restarted after a crash ends what its previous run left open ([`sessions`]).
//! - Layout of the collections and why bodies are JSON text: [`codec`].
//!
//! The database is the URI's path (`mongodb://host/eventsync_prod`), `eventsync` by default. The
//! deployment must support transactions and change streams: a replica set (or a sharded cluster);
//! `docs/DEPLOY.md` says how to run it.

mod codec;
mod follower;
mod sessions;
mod transaction;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bson::{doc, Document as BsonDoc, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{ClientSession, Collection, Database, IndexModel};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::codec::{int, CLIENTS, COUNTERS, EVENTS, IDEMPOTENCY, SEQ_COUNTER, SNAPSHOTS, STATE_VECTORS};
use self::transaction::{transaction, Abort, READ};
use self::writer::{Command, Writer};
use crate::hub::Hub;
use crate::model::{Document, Event, Seq, Snapshot, SnapshotInfo, StoredDoc, Version};
use crate::plan::{Answer, CatchUpRows, DocSummary, Need};
use crate::protocol::StateVector;
use crate::store::{
    Budget, CatchUpRead, ClientState, Committed, EventFilter, Filling, MaintenanceStats, Paged, Retention,
    Store, StoreError,
};
use crate::time::Timestamp;
use crate::write::{Limits, Policy, Write};

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "eventsync";
/// Documents a maintenance pass reads per query.
const MAINTENANCE_CHUNK: i64 = 256;

/// How to open the MongoDB store.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// `mongodb://...` or `mongodb+srv://...`; the path names the database.
    pub uri: String,
    /// Writes that may wait for this node's writer; beyond this a write fails with `Overloaded`.
    pub write_queue: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    pub limits: Limits,
    /// Snapshot a document every this many versions.
    pub snapshot_every: u64,
    /// This node's id (see [`sessions`]): with it, a restart ends what the previous run left open.
    pub node_id: Option<String>,
}

pub struct MongoStore {
    db: Database,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    follower: Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    closed: AtomicBool,
    published: Arc<AtomicU64>,
    /// The sessions of every transaction but the writer's (see [`sessions`]).
    sessions: sessions::Sessions,
}

/// The database a URI names (its path), or [`DEFAULT_DATABASE`].
pub async fn database_name(uri: &str) -> Result<String, StoreError> {
    let opts = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::backend_source("bad MongoDB URI", e))?;
    Ok(opts
        .default_database
        .unwrap_or_else(|| DEFAULT_DATABASE.to_string()))
}

impl MongoStore {
    /// Connects, creates the collections and indexes that are missing, starts following the event
    /// log into `hub` and starts this node's writer.
    pub async fn open(opts: MongoOptions, hub: Hub) -> Result<MongoStore, StoreError> {
        let mut client_opts = ClientOptions::parse(&opts.uri)
            .await
            .map_err(|e| StoreError::backend_source("bad MongoDB URI", e))?;
        client_opts
            .app_name
            .get_or_insert_with(|| "eventsync".to_string());
        client_opts
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(10));
        let name = client_opts
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = mongodb::Client::with_options(client_opts).map_err(codec::backend)?;
        let db = client.database(&name);
        db.run_command(doc! {"ping": 1})
            .await
            .map_err(|e| StoreError::backend_source("cannot reach MongoDB", e))?;
        // First, so that what this node's previous run left open is released before anything waits
        // on it.
        let (appending, other) = sessions::open(&client, &db, opts.node_id.as_deref()).await?;
        ensure_schema(&db).await?;
        let mut indexed = HashSet::new();
        for collection in document_collections(&db).await? {
            ensure_document_indexes(&db, &collection).await?;
            indexed.insert(collection);
        }

        // The follower's stream is opened before the counter is read: see `follower`.
        let events = db.collection::<BsonDoc>(EVENTS);
        let stream = follower::open(&events, None).await.map_err(codec::backend)?;
        let last = read_counter(&db, None).await?;
        let stop = CancellationToken::new();
        let published = Arc::new(AtomicU64::new(last));
        let follower = follower::Follower {
            events,
            hub,
            last,
            stop: stop.clone(),
            published: Arc::clone(&published),
        };
        let follower = tokio::spawn(follower.run(stream));

        let (tx, rx) = mpsc::channel(opts.write_queue.max(1));
        let writer = Writer {
            shared: Arc::new(writer::Shared {
                db: db.clone(),
                policy: Policy {
                    limits: opts.limits,
                    snapshot_every: opts.snapshot_every,
                },
                sessions: appending,
            }),
            max_batch: opts.max_batch.max(1),
            indexed,
            parking: Arc::new(tokio::sync::Semaphore::new(opts.write_queue.max(1))),
            parked: tokio_util::task::TaskTracker::new(),
        };
        let writer = tokio::spawn(writer.run(rx));
        tracing::info!(database = %name, last_seq = last, node = opts.node_id.as_deref().unwrap_or("(none)"), "mongodb store open");
        Ok(MongoStore {
            db,
            commands: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            follower: Mutex::new(Some(follower)),
            stop,
            closed: AtomicBool::new(false),
            published,
            sessions: other,
        })
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// The event log, read as raw records (their sizes count against a page's budget).
    fn events_coll(&self) -> Collection<RawDocumentBuf> {
        self.db.collection(EVENTS)
    }

    fn snapshots_coll(&self) -> Collection<BsonDoc> {
        self.db.collection(SNAPSHOTS)
    }
}

async fn read_counter(db: &Database, s: Option<&mut ClientSession>) -> Result<Seq, StoreError> {
    let counters = db.collection::<BsonDoc>(COUNTERS);
    let find = counters.find_one(doc! {"_id": SEQ_COUNTER});
    let found = match s {
        Some(s) => find.session(s).await,
        None => find.await,
    }
    .map_err(codec::backend)?;
    codec::counter_value(found.as_ref())
}

fn index(name: &str, keys: BsonDoc, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_string())
                .unique(unique)
                .build(),
        )
        .build()
}

/// Creates those of `indexes` that `collection` lacks. Listing first matters: creating even an
/// existing index takes a lock that a transaction left open by a killed node holds until MongoDB
/// reaps it, which would stall a restarting node for up to a minute.
async fn ensure_indexes(db: &Database, collection: &str, indexes: Vec<IndexModel>) -> Result<(), StoreError> {
    let coll = db.collection::<BsonDoc>(collection);
    let existing: HashSet<String> = match coll.list_index_names().await {
        Ok(names) => names.into_iter().collect(),
        Err(e) if codec::error_code(&e) == Some(codec::code::NAMESPACE_NOT_FOUND) => HashSet::new(),
        Err(e) => return Err(codec::backend(e)),
    };
    let missing: Vec<IndexModel> = indexes
        .into_iter()
        .filter(|m| {
            let name = m
                .options
                .as_ref()
                .and_then(|o| o.name.as_deref())
                .unwrap_or_default();
            !existing.contains(name)
        })
        .collect();
    if !missing.is_empty() {
        coll.create_indexes(missing).await.map_err(codec::backend)?;
    }
    Ok(())
}

/// Creates the store's own collections and indexes where missing (idempotent; every node runs it).
async fn ensure_schema(db: &Database) -> Result<(), StoreError> {
    let existing: HashSet<String> = db
        .list_collection_names()
        .await
        .map_err(codec::backend)?
        .into_iter()
        .collect();
    for name in [EVENTS, SNAPSHOTS, IDEMPOTENCY, CLIENTS, STATE_VECTORS, COUNTERS] {
        if !existing.contains(name) {
            match db.create_collection(name).await {
                Err(e) if codec::error_code(&e) != Some(codec::code::NAMESPACE_EXISTS) => {
                    return Err(codec::backend(e))
                }
                _ => {}
            }
        }
    }
    let by_document = doc! {"collection": 1, "doc_id": 1, "version": 1};
    ensure_indexes(
        db,
        EVENTS,
        vec![
            index("by_document", by_document.clone(), true),
            index("by_collection", doc! {"collection": 1, "_id": 1}, false),
            index("by_client", doc! {"client_id": 1, "_id": 1}, false),
            index("by_time", doc! {"ts": 1}, false),
        ],
    )
    .await?;
    ensure_indexes(db, SNAPSHOTS, vec![index("by_document", by_document, true)]).await?;
    ensure_indexes(
        db,
        IDEMPOTENCY,
        vec![index("by_age", doc! {"created_at": 1}, false)],
    )
    .await?;
    let by_client = doc! {"client_id": 1, "collection": 1, "doc_id": 1};
    ensure_indexes(db, STATE_VECTORS, vec![index("by_client", by_client, true)]).await
}

/// The indexes of a document collection (created before the first write to it).
pub(crate) async fn ensure_document_indexes(db: &Database, collection: &str) -> Result<(), StoreError> {
    let indexes = vec![
        index("snapshot_due", doc! {"snap_due": 1, "_id": 1}, false),
        index("compaction_due", doc! {"compact_due": 1, "_id": 1}, false),
        // What changed since a position: a catch-up's later parts (`plan::Resume`).
        index("changed", doc! {"seq": 1}, false),
    ];
    ensure_indexes(db, collection, indexes).await
}

/// The collections holding documents: every collection but the store's own ones.
async fn document_collections(db: &Database) -> Result<Vec<String>, StoreError> {
    let internal = [EVENTS, SNAPSHOTS, IDEMPOTENCY, CLIENTS, STATE_VECTORS, COUNTERS];
    let mut names: Vec<String> = db
        .list_collection_names()
        .await
        .map_err(codec::backend)?
        .into_iter()
        .filter(|n| !internal.contains(&n.as_str()) && crate::model::validate_collection(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Runs a query (outside any transaction) and decodes every record it returns.
/// Reads a cursor's records while they fit `budget` (a record's size is its BSON length, known
/// before it is decoded), decoding each taken.
async fn decode_within<T>(
    budget: Budget,
    find: impl std::future::IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<RawDocumentBuf>>>,
    decode: impl Fn(&BsonDoc) -> Result<T, StoreError>,
) -> Result<Paged<T>, StoreError> {
    let mut cursor = find.await.map_err(codec::backend)?;
    let mut page = Filling::new(budget);
    while let Some(raw) = cursor.try_next().await.map_err(codec::backend)? {
        if !page.fits(raw.as_bytes().len()) {
            return Ok(page.stopped());
        }
        let record = raw
            .to_document()
            .map_err(|e| StoreError::backend_source("a record", e))?;
        page.push(decode(&record)?);
    }
    Ok(page.ended())
}

async fn decode_all<T>(
    find: impl std::future::IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<BsonDoc>>>,
    decode: impl Fn(&BsonDoc) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let cursor = find.await.map_err(codec::backend)?;
    let records: Vec<BsonDoc> = cursor.try_collect().await.map_err(codec::backend)?;
    records.iter().map(decode).collect()
}

/// Reads every record of a cursor opened in a session.
async fn collect(
    mut cursor: mongodb::SessionCursor<BsonDoc>,
    s: &mut ClientSession,
) -> Result<Vec<BsonDoc>, mongodb::error::Error> {
    let mut out = Vec::new();
    while let Some(d) = cursor.next(s).await.transpose()? {
        out.push(d);
    }
    Ok(out)
}

/// A `limit` for a query: `None` means "no limit" (MongoDB reads 0 as that).
fn limit_of(limit: usize) -> Option<i64> {
    (limit < i64::MAX as usize).then_some(limit as i64)
}

fn events_filter(f: &EventFilter) -> BsonDoc {
    let mut filter = doc! {"_id": {"$gt": int(f.after)}};
    if let Some(c) = &f.collection {
        filter.insert("collection", c);
    }
    if let Some(id) = &f.id {
        filter.insert("doc_id", id);
    }
    if let Some(op) = f.op {
        filter.insert("op", op.as_str());
    }
    if let Some(c) = &f.client_id {
        filter.insert("client_id", c);
    }
    if let Some(u) = &f.user {
        filter.insert("user", u);
    }
    let mut ts = BsonDoc::new();
    if let Some(t) = f.since {
        ts.insert("$gte", t.0);
    }
    if let Some(t) = f.until {
        ts.insert("$lt", t.0);
    }
    if !ts.is_empty() {
        filter.insert("ts", ts);
    }
    filter
}

fn doc_events_filter(collection: &str, id: &str, from: Version, to: Version) -> BsonDoc {
    doc! {"collection": collection, "doc_id": id, "version": {"$gte": int(from), "$lte": int(to)}}
}

#[async_trait]
impl Store for MongoStore {
    async fn commit(&self, write: Write) -> Result<Committed, StoreError> {
        self.check_open()?;
        let sender = self
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (tx, rx) = oneshot::channel();
        sender
            .try_send(Command::Write(Box::new(write), tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    crate::metrics::write("overloaded");
                    StoreError::Overloaded
                }
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        self.check_open()?;
        let found = self
            .db
            .collection::<BsonDoc>(collection)
            .find_one(doc! {"_id": id})
            .await
            .map_err(codec::backend)?;
        found.map(|d| codec::stored_doc(collection, &d)).transpose()
    }

    async fn list_page(
        &self,
        collection: &str,
        after: Option<&str>,
        budget: Budget,
    ) -> Result<Paged<Document>, StoreError> {
        self.check_open()?;
        if budget.items == 0 {
            return Ok(Filling::new(budget).ended());
        }
        decode_within(
            budget,
            self.db
                .collection::<RawDocumentBuf>(collection)
                .find(doc! {"_id": {"$gt": after.unwrap_or("")}, "deleted": false})
                .sort(doc! {"_id": 1})
                .limit(limit_of(budget.items.saturating_add(1)).unwrap_or(0)),
            |d| codec::stored_doc(collection, d).map(|s| s.doc),
        )
        .await
    }

    async fn events_page(&self, filter: &EventFilter, budget: Budget) -> Result<Paged<Event>, StoreError> {
        self.check_open()?;
        if budget.items == 0 {
            return Ok(Filling::new(budget).ended());
        }
        decode_within(
            budget,
            self.events_coll()
                .find(events_filter(filter))
                .sort(doc! {"_id": 1})
                .limit(limit_of(budget.items.saturating_add(1)).unwrap_or(0)),
            codec::event,
        )
        .await
    }

    async fn document_events_page(
        &self,
        collection: &str,
        id: &str,
        from: Version,
        to: Version,
        budget: Budget,
    ) -> Result<Paged<Event>, StoreError> {
        self.check_open()?;
        decode_within(
            budget,
            self.events_coll()
                .find(doc_events_filter(collection, id, from, to))
                .sort(doc! {"version": 1}),
            codec::event,
        )
        .await
    }

    async fn snapshots(&self, collection: &str, id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.check_open()?;
        decode_all(
            self.snapshots_coll()
                .find(doc! {"collection": collection, "doc_id": id})
                .projection(doc! {"data": 0})
                .sort(doc! {"version": 1}),
            codec::snapshot_info,
        )
        .await
    }

    async fn snapshot_at_or_before(
        &self,
        collection: &str,
        id: &str,
        version: Version,
    ) -> Result<Option<Snapshot>, StoreError> {
        self.check_open()?;
        let found = self
            .snapshots_coll()
            .find_one(doc! {"collection": collection, "doc_id": id, "version": {"$lte": int(version)}})
            .sort(doc! {"version": -1})
            .await
            .map_err(codec::backend)?;
        found.map(|d| codec::snapshot(&d)).transpose()
    }

    async fn snapshot_changed(&self) -> Result<MaintenanceStats, StoreError> {
        self.check_open()?;
        let mut stats = MaintenanceStats::default();
        for collection in document_collections(&self.db).await? {
            let mut after = String::new();
            loop {
                let ids = self.due_ids(&collection, "snap_due", &after).await?;
                for id in &ids {
                    if self.snapshot_one(&collection, id).await? {
                        stats.documents += 1;
                        stats.snapshots_written += 1;
                    }
                }
                match ids.last() {
                    Some(last) if ids.len() as i64 == MAINTENANCE_CHUNK => after = last.clone(),
                    _ => break,
                }
            }
        }
        Ok(stats)
    }

    async fn compact(
        &self,
        retention: Retention,
        idempotency_ttl_ms: i64,
        now: Timestamp,
    ) -> Result<MaintenanceStats, StoreError> {
        self.check_open()?;
        let mut stats = MaintenanceStats::default();
        for collection in document_collections(&self.db).await? {
            let mut after = String::new();
            loop {
                let ids = self.due_ids(&collection, "compact_due", &after).await?;
                for id in &ids {
                    stats += self.compact_one(&collection, id, retention, now).await?;
                }
                match ids.last() {
                    Some(last) if ids.len() as i64 == MAINTENANCE_CHUNK => after = last.clone(),
                    _ => break,
                }
            }
        }
        let before = now.saturating_sub_ms(idempotency_ttl_ms);
        let expired = self
            .db
            .collection::<BsonDoc>(IDEMPOTENCY)
            .delete_many(doc! {"created_at": {"$lt": before.0}})
            .await
            .map_err(codec::backend)?;
        stats.idempotency_keys_expired += expired.deleted_count;
        Ok(stats)
    }

    async fn catch_up(&self, read: CatchUpRead) -> Result<CatchUpRows, StoreError> {
        self.check_open()?;
        let read = &read;
        Ok(transaction!(&self.sessions, READ, |s| catch_up(
            &self.db, s, read
        ))?)
    }

    async fn load_client(&self, client_id: &str) -> Result<Option<ClientState>, StoreError> {
        self.check_open()?;
        Ok(transaction!(&self.sessions, READ, |s| load_client(
            &self.db, s, client_id
        ))?)
    }

    async fn save_client(
        &self,
        client_id: &str,
        position: Seq,
        entries: &StateVector,
        replace: bool,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        Ok(transaction!(&self.sessions, READ, |s| save_client(
            &self.db, s, client_id, position, entries, replace
        ))?)
    }

    async fn last_seq(&self) -> Result<Seq, StoreError> {
        self.check_open()?;
        read_counter(&self.db, None).await
    }

    fn published_seq(&self) -> Option<Seq> {
        Some(self.published.load(Ordering::Relaxed))
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        // Dropping the sender lets the writer finish what is queued, then stop.
        drop(self.commands.lock().unwrap_or_else(|e| e.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.stop.cancel();
        let follower = self.follower.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = follower {
            let _ = f.await;
        }
        Ok(())
    }
}

impl MongoStore {
    /// Up to one chunk of document ids with `flag` set, after `after`, in id order.
    async fn due_ids(&self, collection: &str, flag: &str, after: &str) -> Result<Vec<String>, StoreError> {
        decode_all(
            self.db
                .collection::<BsonDoc>(collection)
                .find(doc! {flag: true, "_id": {"$gt": after}})
                .projection(doc! {"_id": 1})
                .sort(doc! {"_id": 1})
                .limit(MAINTENANCE_CHUNK),
            |d| codec::str_field(d, "_id").map(str::to_string),
        )
        .await
    }

    /// Snapshots one document at its current version, if it still needs it. Returns whether it did.
    async fn snapshot_one(&self, collection: &str, id: &str) -> Result<bool, StoreError> {
        Ok(transaction!(&self.sessions, READ, |s| snapshot_one(
            &self.db, s, collection, id
        ))?)
    }

    /// Compacts one document's history as far as `retention` allows.
    async fn compact_one(
        &self,
        collection: &str,
        id: &str,
        retention: Retention,
        now: Timestamp,
    ) -> Result<MaintenanceStats, StoreError> {
        Ok(transaction!(&self.sessions, READ, |s| compact_one(
            &self.db, s, collection, id, retention, now
        ))?)
    }
}

/// Snapshots one document at its current version, if it still needs it. Returns whether it did.
async fn snapshot_one(
    db: &Database,
    s: &mut ClientSession,
    collection: &str,
    id: &str,
) -> Result<bool, Abort> {
    {
        let docs = db.collection::<BsonDoc>(collection);
        let Some(record) = docs.find_one(doc! {"_id": id}).session(&mut *s).await? else {
            return Ok(false);
        };
        let mut stored = codec::stored_doc(collection, &record)?;
        if stored.deleted || stored.doc.version <= stored.snapshot_version {
            return Ok(false);
        }
        let seq = codec::u64_field(&record, "seq")?;
        let data = codec::str_field(&record, "data")?;
        let version = stored.doc.version;
        let rec = codec::snapshot_record(collection, id, version, seq, Timestamp::now(), data);
        writer::upsert_snapshot(db, s, rec).await?;
        stored.snapshot_version = version;
        let updated = codec::doc_record(&stored, seq, data);
        docs.replace_one(doc! {"_id": id, "version": int(version)}, updated)
            .session(&mut *s)
            .await?;
        Ok(true)
    }
}

/// Compacts one document's history as far as `retention` allows (see the embedded store's rule).
async fn compact_one(
    db: &Database,
    s: &mut ClientSession,
    collection: &str,
    id: &str,
    retention: Retention,
    now: Timestamp,
) -> Result<MaintenanceStats, Abort> {
    {
        let mut stats = MaintenanceStats::default();
        let docs = db.collection::<BsonDoc>(collection);
        let Some(record) = docs.find_one(doc! {"_id": id}).session(&mut *s).await? else {
            return Ok(stats);
        };
        let mut stored = codec::stored_doc(collection, &record)?;
        if stored.snapshot_version <= stored.compacted_through {
            return Ok(stats);
        }
        let events = db.collection::<BsonDoc>(EVENTS);
        let snapshots = db.collection::<BsonDoc>(SNAPSHOTS);
        let keep_last_bound = stored.doc.version.saturating_sub(retention.keep_last);
        let old_before = now.saturating_sub_ms(retention.keep_for_ms).0;
        let newest_old = events
            .find_one(doc! {"collection": collection, "doc_id": id, "ts": {"$lt": old_before}})
            .sort(doc! {"version": -1})
            .projection(doc! {"version": 1})
            .session(&mut *s)
            .await?;
        let old_bound = match newest_old {
            Some(d) => codec::u64_field(&d, "version")?,
            None => 0,
        };
        let bound = keep_last_bound.min(old_bound);
        let cut = snapshots
            .find_one(doc! {
                "collection": collection,
                "doc_id": id,
                "version": {"$lte": int(bound), "$gt": int(stored.compacted_through)},
            })
            .sort(doc! {"version": -1})
            .projection(doc! {"version": 1})
            .session(&mut *s)
            .await?;
        let Some(cut) = cut else { return Ok(stats) };
        let cut = codec::u64_field(&cut, "version")?;
        stats.documents += 1;
        stats.events_deleted += events
            .delete_many(doc! {"collection": collection, "doc_id": id, "version": {"$lte": int(cut)}})
            .session(&mut *s)
            .await?
            .deleted_count;
        stats.snapshots_deleted += snapshots
            .delete_many(doc! {"collection": collection, "doc_id": id, "version": {"$lt": int(cut)}})
            .session(&mut *s)
            .await?
            .deleted_count;
        stored.compacted_through = cut;
        let seq = codec::u64_field(&record, "seq")?;
        let updated = codec::doc_record(&stored, seq, codec::str_field(&record, "data")?);
        docs.replace_one(doc! {"_id": id, "version": int(stored.doc.version)}, updated)
            .session(&mut *s)
            .await?;
        Ok(stats)
    }
}

/// Answers a catch-up's reads inside the session's snapshot transaction (one consistent position).
async fn catch_up(db: &Database, s: &mut ClientSession, read: &CatchUpRead) -> Result<CatchUpRows, Abort> {
    let position = read_counter(db, Some(&mut *s)).await?;
    let mut planner = read.planner(position);
    while let Some(need) = planner.need() {
        let answer = match need {
            Need::Summaries {
                collection,
                after,
                limit,
                changed_after,
                through,
            } => {
                let page = Page {
                    after,
                    limit,
                    changed_after,
                    through,
                };
                Answer::Summaries(summaries(db, s, collection, page).await?)
            }
            Need::PatchSizes {
                collection,
                id,
                from,
                to,
            } => {
                let sizes = find_events(db, s, collection, id, from, to, Some(doc! {"bytes": 1})).await?;
                Answer::PatchSizes(
                    sizes
                        .iter()
                        .map(|d| codec::u64_field(d, "bytes"))
                        .collect::<Result<_, _>>()?,
                )
            }
            Need::Events {
                collection,
                id,
                from,
                to,
            } => {
                let records = find_events(db, s, collection, id, from, to, None).await?;
                Answer::Events(records.iter().map(codec::event).collect::<Result<_, _>>()?)
            }
            Need::Document { collection, id } => {
                let docs = db.collection::<BsonDoc>(collection);
                let found = docs.find_one(doc! {"_id": id}).session(&mut *s).await?;
                Answer::Document(found.map(|d| codec::stored_doc(collection, &d)).transpose()?)
            }
        };
        planner.answer(answer);
    }
    Ok(planner.finish())
}

/// Which summaries a page holds (see [`Need::Summaries`]).
struct Page<'p> {
    after: Option<&'p str>,
    limit: usize,
    changed_after: Option<Seq>,
    through: Option<&'p str>,
}

/// A page of `collection`'s summaries: at most `limit`, ids above `after` (and, for changes, at
/// most `through`, changed after `changed_after`), in id order (BSON compares strings by their
/// UTF-8 bytes, as Rust does).
async fn summaries(
    db: &Database,
    s: &mut ClientSession,
    collection: &str,
    page: Page<'_>,
) -> Result<Vec<DocSummary>, Abort> {
    let mut ids = BsonDoc::new();
    if let Some(after) = page.after {
        ids.insert("$gt", after);
    }
    let mut filter = BsonDoc::new();
    if let Some(since) = page.changed_after {
        filter.insert("seq", doc! {"$gt": int(since)});
        if let Some(through) = page.through {
            ids.insert("$lte", through);
        }
    }
    if !ids.is_empty() {
        filter.insert("_id", ids);
    }
    let docs = db.collection::<BsonDoc>(collection);
    let find = docs
        .find(filter)
        .projection(codec::summary_fields())
        .sort(doc! {"_id": 1})
        .limit(i64::try_from(page.limit).unwrap_or(i64::MAX));
    // The changes since a position are few: the query planner finds them through the `changed`
    // index (`{seq: 1}`). Not hinted: a hint fails on a collection that does not exist (yet), or
    // that a node of an older version created without the index.
    let cursor = find.session(&mut *s).await?;
    let records = collect(cursor, s).await?;
    Ok(records.iter().map(codec::summary).collect::<Result<_, _>>()?)
}

/// One document's event records with versions `from..=to`, in version order (only the fields
/// of `projection`, when given).
async fn find_events(
    db: &Database,
    s: &mut ClientSession,
    collection: &str,
    id: &str,
    from: Version,
    to: Version,
    projection: Option<BsonDoc>,
) -> Result<Vec<BsonDoc>, Abort> {
    let events = db.collection::<BsonDoc>(EVENTS);
    let find = events
        .find(doc_events_filter(collection, id, from, to))
        .sort(doc! {"version": 1});
    let find = match projection {
        Some(fields) => find.projection(fields),
        None => find,
    };
    let cursor = find.session(&mut *s).await?;
    Ok(collect(cursor, s).await?)
}

async fn load_client(
    db: &Database,
    s: &mut ClientSession,
    client_id: &str,
) -> Result<Option<ClientState>, Abort> {
    let head = db
        .collection::<BsonDoc>(CLIENTS)
        .find_one(doc! {"_id": client_id})
        .session(&mut *s)
        .await?;
    let Some(head) = head else { return Ok(None) };
    let cursor = db
        .collection::<BsonDoc>(STATE_VECTORS)
        .find(doc! {"client_id": client_id})
        .session(&mut *s)
        .await?;
    let mut state_vector = StateVector::new();
    for entry in collect(cursor, s).await? {
        state_vector
            .entry(codec::str_field(&entry, "collection")?.to_string())
            .or_default()
            .insert(
                codec::str_field(&entry, "doc_id")?.to_string(),
                codec::u64_field(&entry, "version")?,
            );
    }
    Ok(Some(ClientState {
        client_id: client_id.to_string(),
        position: codec::u64_field(&head, "position")?,
        state_vector,
        updated_at: Timestamp(codec::i64_field(&head, "updated_at")?),
    }))
}

async fn save_client(
    db: &Database,
    s: &mut ClientSession,
    client_id: &str,
    position: Seq,
    entries: &StateVector,
    replace: bool,
) -> Result<(), Abort> {
    let vectors = db.collection::<BsonDoc>(STATE_VECTORS);
    for (collection, docs) in entries {
        // Replaced whole, or just the entries named: either way they are deleted, then the ones
        // above version 0 inserted (version 0 means "the client has nothing of it": no entry).
        let filter = if replace {
            doc! {"client_id": client_id, "collection": collection}
        } else {
            let ids: Vec<&String> = docs.keys().collect();
            doc! {"client_id": client_id, "collection": collection, "doc_id": {"$in": ids}}
        };
        vectors.delete_many(filter).session(&mut *s).await?;
        let fresh: Vec<BsonDoc> = docs
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(id, v)| {
                doc! {"client_id": client_id, "collection": collection, "doc_id": id, "version": int(*v)}
            })
            .collect();
        if !fresh.is_empty() {
            vectors.insert_many(fresh).session(&mut *s).await?;
        }
    }
    db.collection::<BsonDoc>(CLIENTS)
        .update_one(
            doc! {"_id": client_id},
            doc! {"$set": {"position": int(position), "updated_at": Timestamp::now().0}},
        )
        .upsert(true)
        .session(&mut *s)
        .await?;
    Ok(())
}
