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

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::rows;
use crate::hub::Hub;
use crate::model::{new_id, Event, Seq, StoredDoc};
use crate::store::{Committed, MaintenanceStats, Retention, StoreError};
use crate::time::Timestamp;
use crate::write::{plan, Current, Limits, Mutation, Plan, Write};

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
    Close(oneshot::Sender<()>),
}

pub struct Writer {
    pub conn: Connection,
    pub hub: Hub,
    pub next_seq: Seq,
    pub limits: Limits,
    pub snapshot_every: u64,
    pub max_batch: usize,
}

pub fn backend(e: rusqlite::Error) -> StoreError {
    tracing::error!(error = %e, "sqlite error");
    StoreError::Backend(e.to_string())
}

impl Writer {
    /// Runs until the store is closed or dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut close_reply = None;
        while let Some(first) = rx.blocking_recv() {
            let mut writes = Vec::new();
            let mut others = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Write(w, reply) => writes.push((w, reply)),
                    Command::Close(reply) => {
                        close_reply = Some(reply);
                        break;
                    }
                    other => others.push(other),
                }
                if writes.len() + others.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !writes.is_empty() {
                self.commit_batch(writes);
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

    fn commit_batch(&mut self, writes: Vec<(Box<Write>, Reply<Committed>)>) {
        let now = Timestamp::now();
        let first_seq = self.next_seq;
        let mut next_seq = first_seq;
        let (limits, every) = (self.limits, self.snapshot_every);
        let mut results = Vec::with_capacity(writes.len());
        let committed = (|| -> rusqlite::Result<()> {
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (w, _) in &writes {
                let sp = tx.savepoint()?;
                match apply(&sp, w, next_seq, now, limits, every) {
                    Ok(c) => {
                        sp.commit()?;
                        if c.event.is_some() && !c.replayed {
                            next_seq += 1;
                        }
                        results.push(Ok(c));
                    }
                    Err(e) => results.push(Err(e)), // dropping `sp` rolls it back
                }
            }
            tx.commit()
        })();
        if let Err(e) = committed {
            self.next_seq = first_seq;
            let err = backend(e);
            for (_, reply) in writes {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }
        self.next_seq = next_seq;
        let fresh = results.iter().filter_map(|r| match r {
            Ok(c) if !c.replayed => c.event.clone(),
            _ => None,
        });
        self.hub.publish(fresh);
        for ((_, reply), result) in writes.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }

    fn maintain(&mut self, cmd: Command) {
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
            Command::Write(..) | Command::Close(_) => unreachable!("batched by run()"),
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

/// One write, inside the caller's savepoint. `seq` is the sequence number to use if it appends.
fn apply(
    conn: &Connection,
    w: &Write,
    seq: Seq,
    now: Timestamp,
    limits: Limits,
    snapshot_every: u64,
) -> Result<Committed, StoreError> {
    if let Some(key) = &w.idempotency_key {
        if let Some(previous) = replay(conn, &w.client_id, key, w.fingerprint)? {
            return Ok(previous);
        }
    }
    let id = match &w.id {
        Some(id) => id.clone(),
        None => new_id(),
    };
    let stored = rows::get_doc(conn, &w.collection, &id).map_err(backend)?;
    let current = stored.as_ref().map(|s| Current {
        version: s.doc.version,
        data: &s.doc.data,
        deleted: s.deleted,
    });
    let change = match plan(current, &w.mutation, w.expected_version, limits)? {
        Plan::Unchanged => {
            let document = stored.and_then(StoredDoc::live);
            return record(
                conn,
                w,
                now,
                Committed {
                    document,
                    event: None,
                    created: false,
                    replayed: false,
                },
            );
        }
        Plan::Change(change) => change,
    };
    let op_id = w
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let event = Event {
        seq,
        collection: w.collection.clone(),
        id: id.clone(),
        version: change.version,
        op: change.op,
        patch: change.patch,
        client_id: w.client_id.clone(),
        op_id,
        ts: now,
    };
    let v = change.version as i64;
    if matches!(w.mutation, Mutation::Delete) {
        conn.prepare_cached(
            "UPDATE documents SET version = ?3, seq = ?4, data = '', updated_at = ?5, deleted = 1 \
             WHERE collection = ?1 AND id = ?2",
        )
        .and_then(|mut s| s.execute(params![w.collection, id, v, seq as i64, now.0]))
        .map_err(backend)?;
    } else {
        conn.prepare_cached(
            "INSERT INTO documents (collection, id, version, seq, data, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
             ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, \
             data = excluded.data, updated_at = excluded.updated_at, deleted = 0, \
             created_at = CASE WHEN documents.deleted = 1 THEN excluded.created_at ELSE documents.created_at END",
        )
        .and_then(|mut s| s.execute(params![w.collection, id, v, seq as i64, change.data_json, now.0]))
        .map_err(backend)?;
    }
    let patch_json = serde_json::to_string(&event.patch).map_err(|e| StoreError::Backend(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO events (seq, collection, doc_id, version, op, patch, client_id, op_id, ts) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            seq as i64,
            event.collection,
            event.id,
            v,
            event.op.as_str(),
            patch_json,
            event.client_id,
            event.op_id,
            now.0
        ])
    })
    .map_err(backend)?;

    let last_snapshot = stored.as_ref().map_or(0, |s| s.snapshot_version);
    if !matches!(w.mutation, Mutation::Delete) && change.version >= last_snapshot + snapshot_every.max(1) {
        write_snapshot(
            conn,
            &w.collection,
            &id,
            change.version,
            seq,
            now,
            &change.data_json,
        )
        .map_err(backend)?;
    }
    let created = stored.as_ref().is_none_or(|s| s.deleted);
    let document = (!matches!(w.mutation, Mutation::Delete)).then(|| crate::model::Document {
        collection: w.collection.clone(),
        id,
        version: change.version,
        created_at: match &stored {
            Some(s) if !s.deleted => s.doc.created_at,
            _ => now,
        },
        updated_at: now,
        data: change.data,
    });
    record(
        conn,
        w,
        now,
        Committed {
            document,
            event: Some(Arc::new(event)),
            created,
            replayed: false,
        },
    )
}

/// The stored result of an earlier request with this key, if any.
fn replay(
    conn: &Connection,
    client_id: &str,
    key: &str,
    fingerprint: u64,
) -> Result<Option<Committed>, StoreError> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT fingerprint, result FROM idempotency WHERE client_id = ?1 AND key = ?2")
        .and_then(|mut s| {
            s.query_row(params![client_id, key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    let Some((stored_fp, result)) = row else {
        return Ok(None);
    };
    if stored_fp != fingerprint as i64 {
        return Err(StoreError::IdempotencyKeyReused);
    }
    let mut previous: Committed =
        serde_json::from_str(&result).map_err(|e| StoreError::Backend(format!("idempotency record: {e}")))?;
    previous.replayed = true;
    Ok(Some(previous))
}

/// Records the result under the request's idempotency key (if it has one) and returns it.
fn record(conn: &Connection, w: &Write, now: Timestamp, c: Committed) -> Result<Committed, StoreError> {
    if let Some(key) = &w.idempotency_key {
        let json = serde_json::to_string(&c).map_err(|e| StoreError::Backend(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO idempotency (client_id, key, fingerprint, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![w.client_id, key, w.fingerprint as i64, json, now.0]))
        .map_err(backend)?;
    }
    Ok(c)
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
