//! The embedded store's single writer thread, with **group commit**.
//!
//! SQLite allows one writer at a time, so instead of many connections contending for the write lock
//! one dedicated OS thread owns the only writable connection. Requests arrive on a bounded channel;
//! the thread takes everything queued (up to `max_batch`), applies each write inside its own
//! savepoint of one `BEGIN IMMEDIATE` transaction, commits once — one fsync for the whole batch —
//! and only then publishes the events (in sequence order) and answers the callers. A write's refusal
//! or failure rolls back its savepoint alone; a failed COMMIT fails the whole batch, and nothing of
//! it is acknowledged or published.
//!
//! Because this thread is the only writer, the sequence counter lives here in memory, and the version
//! check and the write cannot interleave with another write: `If-Match` is exact and a write without
//! it applies to whatever version is current — no lost update either way.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::rows;
use crate::hub::Hub;
use crate::model::{Event, Seq, StoredDoc};
use crate::store::{Committed, MaintenanceStats, Retention, StoreError};
use crate::time::Timestamp;
use crate::write::{decide, target_id, Applied, Decision, Policy, Recorded, Write};

/// A key into the documents table, for resumable maintenance passes.
pub type DocKey = (String, String);
/// Documents handled per maintenance chunk; writes queued meanwhile wait at most one chunk.
pub const MAINTENANCE_CHUNK: usize = 256;
/// Expired idempotency records removed per compaction chunk.
pub const IDEMPOTENCY_EXPIRY_CHUNK: i64 = 10_000;

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;
pub type Chunk = (MaintenanceStats, Option<DocKey>);

pub enum Command {
    Write(Box<Write>, Reply<Committed>),
    SnapshotChanged {
        after: Option<DocKey>,
        reply: Reply<Chunk>,
    },
    Compact {
        retention: Retention,
        now: Timestamp,
        after: Option<DocKey>,
        reply: Reply<Chunk>,
    },
    ExpireIdempotency {
        before: Timestamp,
        reply: Reply<u64>,
    },
    SaveClient(Box<SaveClient>),
    Close(oneshot::Sender<()>),
}

/// Records the highest sequence number assigned, so it survives compaction of the newest events.
const SAVE_HIGH_WATER: &str = "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?1)";

/// Recently written documents, as the writer last stored them. The writer is the only one that
/// changes documents, so the cache cannot go stale, except through maintenance (which clears it) and
/// a failed batch (which clears it too). Bounded by entries and by bytes of document data; when
/// either bound is hit it is simply emptied — cheap, and the next writes refill it.
#[derive(Default)]
pub struct DocCache {
    /// Each document with its approximate size in bytes.
    docs: std::collections::HashMap<DocKey, (StoredDoc, usize)>,
    bytes: usize,
}

/// Most documents the writer's cache holds.
pub const DOC_CACHE_ENTRIES: usize = 8192;
/// Most document bytes (approximate) the writer's cache holds.
pub const DOC_CACHE_BYTES: usize = 64 * 1024 * 1024;

impl DocCache {
    fn take(&mut self, key: &DocKey) -> Option<(StoredDoc, usize)> {
        let (doc, size) = self.docs.remove(key)?;
        self.bytes = self.bytes.saturating_sub(size);
        Some((doc, size))
    }

    fn put(&mut self, key: DocKey, doc: StoredDoc, size: usize) {
        if self.docs.len() >= DOC_CACHE_ENTRIES || self.bytes + size > DOC_CACHE_BYTES {
            self.clear();
        }
        self.bytes += size;
        if let Some((_, old)) = self.docs.insert(key, (doc, size)) {
            self.bytes = self.bytes.saturating_sub(old);
        }
    }

    /// Puts back what [`DocCache::take`] (or a read) gave, unchanged.
    fn restore(&mut self, key: DocKey, doc: Option<StoredDoc>, size: usize) {
        if let Some(doc) = doc {
            self.put(key, doc, size);
        }
    }

    fn clear(&mut self) {
        self.docs.clear();
        self.bytes = 0;
    }
}

/// A client's acknowledged vector to record; committed in the same group commit as writes.
pub struct SaveClient {
    pub client_id: String,
    pub position: Seq,
    pub entries: crate::protocol::StateVector,
    pub replace: bool,
    pub reply: Reply<()>,
}

pub struct Writer {
    pub conn: Connection,
    pub cache: DocCache,
    pub hub: Hub,
    pub next_seq: Seq,
    pub policy: Policy,
    pub max_batch: usize,
}

pub fn backend(e: rusqlite::Error) -> StoreError {
    tracing::error!(error = %e, "sqlite error");
    StoreError::backend_source("sqlite", e)
}

impl Writer {
    /// Runs until the store is closed or dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut close_reply = None;
        while let Some(first) = rx.blocking_recv() {
            let mut writes = Vec::new();
            let mut saves = Vec::new();
            let mut others = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Write(w, reply) => writes.push((w, reply)),
                    Command::SaveClient(save) => saves.push(*save),
                    Command::Close(reply) => {
                        close_reply = Some(reply);
                        break;
                    }
                    other => others.push(other),
                }
                if writes.len() + saves.len() + others.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !writes.is_empty() || !saves.is_empty() {
                let (size, started) = (writes.len(), std::time::Instant::now());
                self.commit_batch(writes, saves);
                crate::metrics::committed(size, started.elapsed(), rx.len());
            }
            for cmd in others {
                self.maintain(cmd);
            }
            if close_reply.is_some() {
                break;
            }
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %e, "final checkpoint failed; the WAL will be replayed at next open");
        }
        drop(self.conn);
        if let Some(reply) = close_reply {
            let _ = reply.send(());
        }
    }

    fn commit_batch(&mut self, writes: Vec<(Box<Write>, Reply<Committed>)>, saves: Vec<SaveClient>) {
        let now = Timestamp::now();
        let first_seq = self.next_seq;
        let mut next_seq = first_seq;
        let policy = self.policy;
        let mut results = Vec::with_capacity(writes.len());
        let cache = &mut self.cache;
        let committed = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (w, _) in &writes {
                match apply(&tx, cache, w, next_seq, now, policy) {
                    Ok(c) => {
                        if c.event.is_some() && !c.replayed {
                            next_seq += 1;
                        }
                        results.push(Ok(c));
                    }
                    // A refusal is decided before anything is written: the batch goes on.
                    Err(Failure::Refused(e)) => results.push(Err(e)),
                    // A storage error may leave a write half done: the whole batch rolls back.
                    Err(Failure::Sql(e)) => return Err(e),
                }
            }
            if next_seq != first_seq {
                tx.prepare_cached(SAVE_HIGH_WATER)?
                    .execute([(next_seq - 1) as i64])?;
            }
            for save in &saves {
                rows::save_client(&tx, &save.client_id, save.position, &save.entries, save.replace)?;
            }
            tx.commit()
        })();
        if let Err(e) = committed {
            self.next_seq = first_seq;
            self.cache.clear();
            let err = backend(e);
            for (_, reply) in writes {
                crate::metrics::write("failed");
                let _ = reply.send(Err(err.clone()));
            }
            for save in saves {
                let _ = save.reply.send(Err(err.clone()));
            }
            return;
        }
        for save in saves {
            let _ = save.reply.send(Ok(()));
        }
        self.next_seq = next_seq;
        let fresh = results.iter().filter_map(|r| match r {
            Ok(c) if !c.replayed => c.event.clone(),
            _ => None,
        });
        self.hub.publish(fresh);
        for ((_, reply), result) in writes.into_iter().zip(results) {
            crate::metrics::write_result(&result);
            let _ = reply.send(result);
        }
    }

    fn maintain(&mut self, cmd: Command) {
        if matches!(cmd, Command::SnapshotChanged { .. } | Command::Compact { .. }) {
            // These rewrite documents' snapshot and compaction marks behind the cache.
            self.cache.clear();
        }
        match cmd {
            Command::SnapshotChanged { after, reply } => {
                let _ = reply.send(in_transaction(&mut self.conn, |c| snapshot_changed(c, after)));
            }
            Command::Compact {
                retention,
                now,
                after,
                reply,
            } => {
                let _ = reply.send(in_transaction(&mut self.conn, |c| {
                    compact(c, retention, now, after)
                }));
            }
            Command::ExpireIdempotency { before, reply } => {
                let _ = reply.send(in_transaction(&mut self.conn, |c| expire_idempotency(c, before)));
            }
            Command::Write(..) | Command::SaveClient(_) | Command::Close(_) => {
                unreachable!("batched by run()")
            }
        }
    }
}

fn in_transaction<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let out = f(&tx).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(out)
}

/// Why [`apply`] did not commit a write.
enum Failure {
    /// Refused by the rules (or a reused idempotency key) before anything was written.
    Refused(StoreError),
    /// SQLite failed; part of the write may be in the transaction.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// One write inside the batch's transaction. `seq` is the sequence number to use if it appends.
fn apply(
    conn: &Connection,
    cache: &mut DocCache,
    w: &Write,
    seq: Seq,
    now: Timestamp,
    policy: Policy,
) -> Result<Committed, Failure> {
    let recorded = match &w.idempotency_key {
        Some(key) => recorded(conn, &w.idempotency_scope(), key)?,
        None => None,
    };
    let key = (w.collection.clone(), target_id(w));
    let (stored, size) = if recorded.is_some() {
        // A replay decides from the record alone: the document is not read for it.
        (None, 0)
    } else if let Some((doc, size)) = cache.take(&key) {
        (Some(doc), size)
    } else {
        let doc = rows::get_doc(conn, &key.0, &key.1)?;
        let size = doc.as_ref().map_or(0, |d| crate::json::measure_data(&d.doc.data));
        (doc, size)
    };
    let decision = decide(w, &key.1, recorded.as_ref(), stored.as_ref(), policy, seq, now)
        .map_err(|e| Failure::Sql(unreadable_result(e)))?;
    let (committed, record) = match decision {
        Decision::Apply(applied) => {
            let Applied {
                stored,
                data_json,
                event,
                snapshot_due,
                committed,
                record,
            } = *applied;
            write_change(conn, &stored, &event, &data_json)?;
            if snapshot_due {
                write_snapshot(conn, &key.0, &key.1, event.version, seq, now, &data_json)?;
            }
            cache.put(key, stored, data_json.len());
            (committed, record)
        }
        Decision::Unchanged { committed, record } => {
            cache.restore(key, stored, size);
            (committed, record)
        }
        Decision::Replay(previous) => {
            cache.restore(key, stored, size);
            return Ok(previous);
        }
        Decision::Refuse(refusal) => {
            cache.restore(key, stored, size);
            return Err(Failure::Refused(refusal.into()));
        }
    };
    save_record(conn, w, now, record)?;
    Ok(committed)
}

/// Writes the document record and appends the event of an applied write.
fn write_change(
    conn: &Connection,
    stored: &StoredDoc,
    event: &Event,
    data_json: &str,
) -> rusqlite::Result<()> {
    let (c, i, v, seq, ts) = (
        &event.collection,
        &event.id,
        event.version as i64,
        event.seq as i64,
        event.ts.0,
    );
    if stored.deleted {
        conn.prepare_cached(
            "UPDATE documents SET version = ?3, seq = ?4, data = '', updated_at = ?5, deleted = 1 \
             WHERE collection = ?1 AND id = ?2",
        )?
        .execute(params![c, i, v, seq, ts])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO documents (collection, id, version, seq, data, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
             ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, \
             data = excluded.data, updated_at = excluded.updated_at, deleted = 0, \
             created_at = CASE WHEN documents.deleted = 1 THEN excluded.created_at ELSE documents.created_at END",
        )?
        .execute(params![c, i, v, seq, data_json, ts])?;
    }
    let patch_json = serde_json::to_string(&event.patch).expect("a patch always serializes");
    conn.prepare_cached(
        "INSERT INTO events (seq, collection, doc_id, version, op, patch, client_id, op_id, ts, user) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        seq,
        c,
        i,
        v,
        event.op.as_str(),
        patch_json,
        event.client_id,
        event.op_id,
        ts,
        event.user
    ])?;
    Ok(())
}

/// The idempotency record stored under this client's key, if any.
fn recorded(conn: &Connection, client_id: &str, key: &str) -> rusqlite::Result<Option<Recorded>> {
    conn.prepare_cached("SELECT fingerprint, result FROM idempotency WHERE client_id = ?1 AND key = ?2")?
        .query_row(params![client_id, key], |r| {
            Ok(Recorded {
                fingerprint: r.get::<_, i64>(0)? as u64,
                result: r.get(1)?,
            })
        })
        .optional()
}

/// A recorded result that does not parse, reported like any unreadable column.
fn unreadable_result(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
}

/// Stores the idempotency record a decision made (there is one when the write has a key).
fn save_record(
    conn: &Connection,
    w: &Write,
    now: Timestamp,
    record: Option<Recorded>,
) -> rusqlite::Result<()> {
    if let (Some(key), Some(record)) = (&w.idempotency_key, record) {
        conn.prepare_cached(
            "INSERT INTO idempotency (client_id, key, fingerprint, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![w.idempotency_scope(), key, record.fingerprint as i64, record.result, now.0])?;
    }
    Ok(())
}

fn write_snapshot(
    conn: &Connection,
    collection: &str,
    id: &str,
    version: u64,
    seq: Seq,
    now: Timestamp,
    data_json: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO snapshots (collection, doc_id, version, seq, ts, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![collection, id, version as i64, seq as i64, now.0, data_json])?;
    conn.prepare_cached("UPDATE documents SET snapshot_version = ?3 WHERE collection = ?1 AND id = ?2")?
        .execute(params![collection, id, version as i64])?;
    Ok(())
}

fn cursor(after: &Option<DocKey>) -> (&str, &str) {
    after.as_ref().map_or(("", ""), |(c, i)| (c.as_str(), i.as_str()))
}

/// Snapshots up to one chunk of live documents changed since their last snapshot.
fn snapshot_changed(conn: &Connection, after: Option<DocKey>) -> rusqlite::Result<Chunk> {
    let (ac, ai) = cursor(&after);
    let mut stmt = conn.prepare_cached(
        "SELECT collection, id, version, seq, data FROM documents \
         WHERE deleted = 0 AND version > snapshot_version AND (collection, id) > (?1, ?2) \
         ORDER BY collection, id LIMIT ?3",
    )?;
    let due: Vec<(String, String, i64, i64, String)> = stmt
        .query_map(params![ac, ai, MAINTENANCE_CHUNK as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let now = Timestamp::now();
    let mut stats = MaintenanceStats::default();
    for (c, i, version, seq, data) in &due {
        write_snapshot(conn, c, i, *version as u64, *seq as u64, now, data)?;
        stats.documents += 1;
        stats.snapshots_written += 1;
    }
    let next = (due.len() == MAINTENANCE_CHUNK)
        .then(|| due.last().map(|d| (d.0.clone(), d.1.clone())))
        .flatten();
    Ok((stats, next))
}

/// Deletes up to one chunk of idempotency records created before `before`; returns how many.
fn expire_idempotency(conn: &Connection, before: Timestamp) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM idempotency WHERE (client_id, key) IN \
             (SELECT client_id, key FROM idempotency WHERE created_at < ?1 LIMIT ?2)",
        )?
        .execute(params![before.0, IDEMPOTENCY_EXPIRY_CHUNK])?;
    Ok(n as u64)
}

/// Compacts up to one chunk of documents that have a snapshot newer than their compaction point.
fn compact(
    conn: &Connection,
    retention: Retention,
    now: Timestamp,
    after: Option<DocKey>,
) -> rusqlite::Result<Chunk> {
    let mut stats = MaintenanceStats::default();
    let (ac, ai) = cursor(&after);
    let candidates: Vec<(String, String, i64, i64)> = conn
        .prepare_cached(
            "SELECT collection, id, version, compacted_through FROM documents \
             WHERE snapshot_version > compacted_through AND (collection, id) > (?1, ?2) \
             ORDER BY collection, id LIMIT ?3",
        )?
        .query_map(params![ac, ai, MAINTENANCE_CHUNK as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let old_before = now.saturating_sub_ms(retention.keep_for_ms).0;
    for (c, i, version, compacted) in &candidates {
        let keep_last_bound = version.saturating_sub(retention.keep_last.min(i64::MAX as u64) as i64);
        let old_bound: Option<i64> = conn
            .prepare_cached(
                "SELECT MAX(version) FROM events WHERE collection = ?1 AND doc_id = ?2 AND ts < ?3",
            )?
            .query_row(params![c, i, old_before], |r| r.get(0))?;
        let bound = keep_last_bound.min(old_bound.unwrap_or(0));
        let cut: Option<i64> = conn
            .prepare_cached(
                "SELECT MAX(version) FROM snapshots WHERE collection = ?1 AND doc_id = ?2 \
                 AND version <= ?3 AND version > ?4",
            )?
            .query_row(params![c, i, bound, compacted], |r| r.get(0))?;
        let Some(cut) = cut else { continue };
        stats.documents += 1;
        stats.events_deleted += conn
            .prepare_cached("DELETE FROM events WHERE collection = ?1 AND doc_id = ?2 AND version <= ?3")?
            .execute(params![c, i, cut])? as u64;
        stats.snapshots_deleted += conn
            .prepare_cached("DELETE FROM snapshots WHERE collection = ?1 AND doc_id = ?2 AND version < ?3")?
            .execute(params![c, i, cut])? as u64;
        conn.prepare_cached("UPDATE documents SET compacted_through = ?3 WHERE collection = ?1 AND id = ?2")?
            .execute(params![c, i, cut])?;
    }
    let next = (candidates.len() == MAINTENANCE_CHUNK)
        .then(|| candidates.last().map(|d| (d.0.clone(), d.1.clone())))
        .flatten();
    Ok((stats, next))
}
