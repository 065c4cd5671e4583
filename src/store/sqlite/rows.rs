//! Mapping rows to domain types, and the read queries (run on pooled read-only connections).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use crate::model::{Data, Document, Event, Op, Seq, Snapshot, SnapshotInfo, StoredDoc, Version};
use crate::plan::{Answer, CatchUpRows, DocSummary, Need};
use crate::protocol::StateVector;
use crate::store::{Budget, CatchUpRead, ClientState, EventFilter, Filling, Paged};
use crate::time::Timestamp;

pub const DOC_COLUMNS: &str =
    "collection, id, version, data, created_at, updated_at, deleted, compacted_through, snapshot_version";
pub const EVENT_COLUMNS: &str = "seq, collection, doc_id, version, op, patch, client_id, op_id, ts, user";

/// A corrupt row is reported as a conversion failure, never a panic.
fn bad(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, msg.into())
}

pub fn parse_data(col: usize, text: &str) -> rusqlite::Result<Data> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(col, "stored document is not an object".into())),
        Err(e) => Err(bad(col, e.to_string())),
    }
}

fn u64_at(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)?.max(0) as u64)
}

pub fn stored_doc(row: &Row<'_>) -> rusqlite::Result<StoredDoc> {
    let data: String = row.get(3)?;
    Ok(StoredDoc {
        doc: Document {
            collection: row.get(0)?,
            id: row.get(1)?,
            version: u64_at(row, 2)?,
            data: if data.is_empty() {
                Data::new()
            } else {
                parse_data(3, &data)?
            },
            created_at: Timestamp(row.get(4)?),
            updated_at: Timestamp(row.get(5)?),
        },
        deleted: row.get::<_, i64>(6)? != 0,
        compacted_through: u64_at(row, 7)?,
        snapshot_version: u64_at(row, 8)?,
    })
}

pub fn event(row: &Row<'_>) -> rusqlite::Result<Event> {
    let op: String = row.get(4)?;
    let patch: String = row.get(5)?;
    Ok(Event {
        seq: u64_at(row, 0)?,
        collection: row.get(1)?,
        id: row.get(2)?,
        version: u64_at(row, 3)?,
        op: Op::parse(&op).ok_or_else(|| bad(4, format!("unknown op {op}")))?,
        patch: serde_json::from_str(&patch).map_err(|e| bad(5, e.to_string()))?,
        client_id: row.get(6)?,
        op_id: row.get(7)?,
        ts: Timestamp(row.get(8)?),
        user: row.get(9)?,
    })
}

pub fn get_doc(conn: &Connection, collection: &str, id: &str) -> rusqlite::Result<Option<StoredDoc>> {
    conn.prepare_cached(&format!(
        "SELECT {DOC_COLUMNS} FROM documents WHERE collection = ?1 AND id = ?2"
    ))?
    .query_row(params![collection, id], stored_doc)
    .optional()
}

pub fn list_docs(
    conn: &Connection,
    collection: &str,
    after: Option<&str>,
    budget: Budget,
) -> rusqlite::Result<Paged<Document>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DOC_COLUMNS} FROM documents WHERE collection = ?1 AND id > ?2 AND deleted = 0 \
         ORDER BY id LIMIT ?3"
    ))?;
    let limit = budget.items.saturating_add(1).min(i64::MAX as usize) as i64;
    let rows = stmt.query(params![collection, after.unwrap_or(""), limit])?;
    fill(rows, budget, 3, |row| Ok(stored_doc(row)?.doc))
}

/// Takes rows while they fit `budget`, sized by the text of their column `sized` (read before
/// the row is decoded, so a row that does not fit is never copied out).
fn fill<T>(
    mut rows: rusqlite::Rows<'_>,
    budget: Budget,
    sized: usize,
    decode: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Paged<T>> {
    let mut page = Filling::new(budget);
    while let Some(row) = rows.next()? {
        if !page.fits(text_len(row, sized)) {
            return Ok(page.stopped());
        }
        page.push(decode(row)?);
    }
    Ok(page.ended())
}

/// The length of a text column, without copying it out.
fn text_len(row: &Row<'_>, column: usize) -> usize {
    row.get_ref(column).map_or(0, |v| match v {
        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t.len(),
        _ => 8,
    }) + ROW_OVERHEAD
}

/// What a row costs besides its body (ids, version, times), roughly.
const ROW_OVERHEAD: usize = 128;

pub fn events(conn: &Connection, f: &EventFilter, budget: Budget) -> rusqlite::Result<Paged<Event>> {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?");
    let mut args: Vec<rusqlite::types::Value> = vec![(f.after.min(i64::MAX as u64) as i64).into()];
    let mut push = |clause: &str, v: rusqlite::types::Value| {
        sql.push_str(clause);
        args.push(v);
    };
    if let Some(c) = &f.collection {
        push(" AND collection = ?", c.clone().into());
    }
    if let Some(id) = &f.id {
        push(" AND doc_id = ?", id.clone().into());
    }
    if let Some(op) = f.op {
        push(" AND op = ?", op.as_str().to_string().into());
    }
    if let Some(c) = &f.client_id {
        push(" AND client_id = ?", c.clone().into());
    }
    if let Some(u) = &f.user {
        push(" AND user = ?", u.clone().into());
    }
    if let Some(t) = f.since {
        push(" AND ts >= ?", t.0.into());
    }
    if let Some(t) = f.until {
        push(" AND ts < ?", t.0.into());
    }
    let limit = budget.items.saturating_add(1).min(i64::MAX as usize) as i64;
    push(" ORDER BY seq LIMIT ?", limit.into());
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query(rusqlite::params_from_iter(args))?;
    fill(rows, budget, 5, event)
}

pub fn document_events(
    conn: &Connection,
    collection: &str,
    id: &str,
    from: Version,
    to: Version,
) -> rusqlite::Result<Vec<Event>> {
    let all = Budget::items(usize::MAX);
    Ok(document_events_within(conn, collection, id, from, to, all)?.items)
}

/// [`document_events`] within a budget.
pub fn document_events_within(
    conn: &Connection,
    collection: &str,
    id: &str,
    from: Version,
    to: Version,
    budget: Budget,
) -> rusqlite::Result<Paged<Event>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE collection = ?1 AND doc_id = ?2 \
         AND version >= ?3 AND version <= ?4 ORDER BY version"
    ))?;
    let (from, to) = (from.min(i64::MAX as u64) as i64, to.min(i64::MAX as u64) as i64);
    let rows = stmt.query(params![collection, id, from, to])?;
    fill(rows, budget, 5, event)
}

pub fn snapshots(conn: &Connection, collection: &str, id: &str) -> rusqlite::Result<Vec<SnapshotInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, seq, ts, octet_length(data) FROM snapshots WHERE collection = ?1 AND doc_id = ?2 \
         ORDER BY version",
    )?;
    let rows = stmt.query_map(params![collection, id], |r| {
        Ok(SnapshotInfo {
            version: u64_at(r, 0)?,
            seq: u64_at(r, 1)?,
            ts: Timestamp(r.get(2)?),
            bytes: u64_at(r, 3)?,
        })
    })?;
    rows.collect()
}

pub fn snapshot_at_or_before(
    conn: &Connection,
    collection: &str,
    id: &str,
    version: Version,
) -> rusqlite::Result<Option<Snapshot>> {
    conn.prepare_cached(
        "SELECT version, seq, ts, data FROM snapshots WHERE collection = ?1 AND doc_id = ?2 \
         AND version <= ?3 ORDER BY version DESC LIMIT 1",
    )?
    .query_row(
        params![collection, id, version.min(i64::MAX as u64) as i64],
        |r| {
            let data: String = r.get(3)?;
            Ok(Snapshot {
                collection: collection.to_string(),
                id: id.to_string(),
                version: u64_at(r, 0)?,
                seq: u64_at(r, 1)?,
                ts: Timestamp(r.get(2)?),
                data: parse_data(3, &data)?,
            })
        },
    )
    .optional()
}

/// The highest sequence number ever assigned: the recorded high-water mark, or the log's newest event
/// if that is higher (the mark is written after each batch, in the same transaction).
pub fn last_seq(conn: &Connection) -> rusqlite::Result<Seq> {
    let mark: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| r.get(0))
        .optional()?;
    let newest: Option<i64> = conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    Ok(mark.max(newest).unwrap_or(0).max(0) as u64)
}

/// Answers a catch-up's reads inside one read transaction (one consistent position of the log).
pub fn catch_up(conn: &Connection, read: &CatchUpRead) -> rusqlite::Result<CatchUpRows> {
    let tx = conn.unchecked_transaction()?;
    let mut planner = read.planner(last_seq(&tx)?);
    while let Some(need) = planner.need() {
        let answer = match need {
            Need::Summaries {
                collection,
                after,
                limit,
                changed_after: None,
                ..
            } => Answer::Summaries(doc_summaries(&tx, collection, after, limit)?),
            Need::Summaries {
                collection,
                after,
                limit,
                changed_after: Some(since),
                through,
            } => Answer::Summaries(changed_summaries(&tx, collection, since, after, through, limit)?),
            Need::PatchSizes {
                collection,
                id,
                from,
                to,
            } => Answer::PatchSizes(patch_sizes(&tx, collection, id, from, to)?),
            Need::Events {
                collection,
                id,
                from,
                to,
            } => Answer::Events(document_events(&tx, collection, id, from, to)?),
            Need::Document { collection, id } => Answer::Document(get_doc(&tx, collection, id)?),
        };
        planner.answer(answer);
    }
    tx.finish()?;
    Ok(planner.finish())
}

/// A page of `collection`'s summaries: at most `limit`, ids above `after`, in id order (the
/// primary key's order: SQLite's binary collation, as Rust's string order).
fn doc_summaries(
    conn: &Connection,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<DocSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, version, deleted, compacted_through, octet_length(data), created_at FROM documents \
         WHERE collection = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // From the first: every id is above the empty string (ids are never empty). A plain `id > ?2`
    // lets SQLite seek the primary key to the page's start instead of scanning up to it.
    let after = after.unwrap_or("");
    let rows = stmt.query_map(params![collection, after, limit], summary)?;
    rows.collect()
}

/// A page of the summaries of `collection`'s documents changed after `since`: at most `limit`,
/// ids above `after` and at most `through`, in id order. Found through the index by `seq` (the
/// changes since a part of a catch-up are few; the ids they fall among may be a million).
fn changed_summaries(
    conn: &Connection,
    collection: &str,
    since: Seq,
    after: Option<&str>,
    through: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<DocSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, version, deleted, compacted_through, octet_length(data), created_at \
         FROM documents INDEXED BY documents_changed \
         WHERE collection = ?1 AND seq > ?2 AND id > ?3 AND (?4 IS NULL OR id <= ?4) \
         ORDER BY id LIMIT ?5",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let rows = stmt.query_map(
        params![collection, since, after.unwrap_or(""), through, limit],
        summary,
    )?;
    rows.collect()
}

/// A summary from a row of `id, version, deleted, compacted_through, octet_length(data),
/// created_at`.
fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocSummary> {
    Ok(DocSummary {
        id: r.get(0)?,
        version: u64_at(r, 1)?,
        deleted: r.get::<_, i64>(2)? != 0,
        compacted_through: u64_at(r, 3)?,
        data_bytes: u64_at(r, 4)?,
        created: r.get(5)?,
    })
}

fn patch_sizes(
    conn: &Connection,
    collection: &str,
    id: &str,
    from: Version,
    to: Version,
) -> rusqlite::Result<Vec<u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT octet_length(patch) FROM events WHERE collection = ?1 AND doc_id = ?2 \
         AND version >= ?3 AND version <= ?4 ORDER BY version",
    )?;
    let rows = stmt.query_map(params![collection, id, from as i64, to as i64], |r| u64_at(r, 0))?;
    rows.collect()
}

pub fn load_client(conn: &Connection, client_id: &str) -> rusqlite::Result<Option<ClientState>> {
    let tx = conn.unchecked_transaction()?;
    let head: Option<(i64, i64)> = tx
        .prepare_cached("SELECT position, updated_at FROM clients WHERE client_id = ?1")?
        .query_row(params![client_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((position, updated_at)) = head else {
        return Ok(None);
    };
    let mut state_vector = StateVector::new();
    let mut stmt =
        tx.prepare_cached("SELECT collection, doc_id, version FROM state_vectors WHERE client_id = ?1")?;
    let rows = stmt.query_map(params![client_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, u64_at(r, 2)?))
    })?;
    for row in rows {
        let (c, id, v) = row?;
        state_vector.entry(c).or_default().insert(id, v);
    }
    drop(stmt);
    tx.finish()?;
    Ok(Some(ClientState {
        client_id: client_id.to_string(),
        position: position.max(0) as u64,
        state_vector,
        updated_at: Timestamp(updated_at),
    }))
}

pub fn save_client(
    conn: &Connection,
    client_id: &str,
    position: Seq,
    entries: &StateVector,
    replace: bool,
) -> rusqlite::Result<()> {
    if replace {
        let mut clear =
            conn.prepare_cached("DELETE FROM state_vectors WHERE client_id = ?1 AND collection = ?2")?;
        for collection in entries.keys() {
            clear.execute(params![client_id, collection])?;
        }
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO state_vectors (client_id, collection, doc_id, version) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (client_id, collection, doc_id) DO UPDATE SET version = excluded.version",
    )?;
    let mut forget = conn.prepare_cached(
        "DELETE FROM state_vectors WHERE client_id = ?1 AND collection = ?2 AND doc_id = ?3",
    )?;
    for (collection, docs) in entries {
        for (id, v) in docs {
            // Version 0 means "the client has nothing of it" (a reset): no entry.
            if *v == 0 {
                forget.execute(params![client_id, collection, id])?;
            } else {
                // Clamped: a "version unknown, reset it" marker (u64::MAX) stays above every real version.
                upsert.execute(params![
                    client_id,
                    collection,
                    id,
                    (*v).min(i64::MAX as u64) as i64
                ])?;
            }
        }
    }
    conn.prepare_cached(
        "INSERT INTO clients (client_id, position, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (client_id) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
    )?
    .execute(params![client_id, position as i64, Timestamp::now().0])?;
    Ok(())
}
