//! How the domain's records are laid out in MongoDB, and how driver errors are read.
//!
//! Bodies, patches and snapshot data are stored as **JSON text**, not as BSON subdocuments: JSON
//! round-trips exactly (BSON has no unsigned 64-bit integer, and keys starting with `$` or holding
//! `.` are restricted in MongoDB updates), and the body is opaque to the store anyway — every query
//! is on the envelope (`_id`, `version`, `deleted`, ...). Numbers are stored as `i64`.
//!
//! | collection | `_id` | other fields |
//! |---|---|---|
//! | `games`, … (one per document collection) | document id | `version`, `seq`, `data`, `bytes`, `created_at`, `updated_at`, `deleted`, `snapshot_version`, `compacted_through`, `snap_due`, `compact_due` |
//! | `events` | sequence number | `collection`, `doc_id`, `version`, `op`, `patch`, `bytes`, `client_id`, `op_id`, `ts`, `user` (when the writer had one) |
//! | `snapshots` | generated | `collection`, `doc_id`, `version`, `seq`, `ts`, `data`, `bytes` |
//! | `idempotency` | `{c: client id, k: key}` | `fp`, `result`, `created_at` |
//! | `clients` | client id | `position`, `updated_at` |
//! | `state_vectors` | generated | `client_id`, `collection`, `doc_id`, `version` |
//! | `_counters` | `"seq"` | `v`: the highest sequence number assigned |
//!
//! `snap_due` (live and changed since its last snapshot) and `compact_due` (a snapshot newer than the
//! compaction point) are kept on every write so maintenance finds its work through an index instead
//! of comparing two fields of every document.

use bson::{doc, Bson, Document as BsonDoc};
use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::model::{Data, Document, Event, Op, Seq, Snapshot, StoredDoc, Version};
use crate::store::StoreError;
use crate::time::Timestamp;

pub const EVENTS: &str = "events";
pub const SNAPSHOTS: &str = "snapshots";
pub const IDEMPOTENCY: &str = "idempotency";
pub const CLIENTS: &str = "clients";
pub const STATE_VECTORS: &str = "state_vectors";
/// Starts with `_`, which no collection name of the API may: it can never shadow a user's collection.
pub const COUNTERS: &str = "_counters";
/// The counter document holding the highest sequence number assigned.
pub const SEQ_COUNTER: &str = "seq";

/// MongoDB's server error codes this backend reacts to.
pub mod code {
    pub const WRITE_CONFLICT: i32 = 112;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
}

/// The server error code of a failed operation, if the server answered with one.
pub fn error_code(e: &Error) -> Option<i32> {
    match &*e.kind {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Whether the whole transaction may be retried: the driver's `TransientTransactionError` label, a
/// write conflict, or a duplicate key (another node inserted the same document, event or
/// idempotency record first — the retry reads it and decides again).
pub fn is_transient(e: &Error) -> bool {
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || matches!(error_code(e), Some(code::WRITE_CONFLICT | code::DUPLICATE_KEY))
}

pub fn backend(e: Error) -> StoreError {
    tracing::error!(error = %e, "mongodb error");
    StoreError::backend_source("mongodb", e)
}

/// A record that does not decode is reported as a backend failure, never a panic.
pub fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    tracing::error!(what, %detail, "unreadable record in mongodb");
    StoreError::backend(format!("unreadable {what}: {detail}"))
}

/// A sequence number, version or count as MongoDB stores it (values above `i64::MAX` are clamped;
/// none is ever that large except the "reset" marker of a client vector, which must stay largest).
pub fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub fn u64_field(d: &BsonDoc, key: &str) -> Result<u64, StoreError> {
    match d.get(key) {
        Some(Bson::Int64(v)) => Ok((*v).max(0) as u64),
        Some(Bson::Int32(v)) => Ok((*v).max(0) as u64),
        Some(Bson::Double(v)) if v.fract() == 0.0 => Ok(v.max(0.0) as u64),
        other => Err(corrupt(key, format!("expected an integer, found {other:?}"))),
    }
}

pub fn i64_field(d: &BsonDoc, key: &str) -> Result<i64, StoreError> {
    match d.get(key) {
        Some(Bson::Int64(v)) => Ok(*v),
        Some(Bson::Int32(v)) => Ok(*v as i64),
        other => Err(corrupt(key, format!("expected an integer, found {other:?}"))),
    }
}

pub fn str_field<'a>(d: &'a BsonDoc, key: &str) -> Result<&'a str, StoreError> {
    d.get_str(key).map_err(|e| corrupt(key, e))
}

pub fn bool_field(d: &BsonDoc, key: &str) -> Result<bool, StoreError> {
    d.get_bool(key).map_err(|e| corrupt(key, e))
}

pub fn parse_data(text: &str) -> Result<Data, StoreError> {
    if text.is_empty() {
        return Ok(Data::new());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(corrupt("data", "stored body is not an object")),
        Err(e) => Err(corrupt("data", e)),
    }
}

/// The stored form of a document record.
pub fn doc_record(s: &StoredDoc, seq: Seq, data_json: &str) -> BsonDoc {
    let d = &s.doc;
    doc! {
        "_id": &d.id,
        "version": int(d.version),
        "seq": int(seq),
        "data": data_json,
        "bytes": data_json.len() as i64,
        "created_at": d.created_at.0,
        "updated_at": d.updated_at.0,
        "deleted": s.deleted,
        "snapshot_version": int(s.snapshot_version),
        "compacted_through": int(s.compacted_through),
        "snap_due": !s.deleted && d.version > s.snapshot_version,
        "compact_due": s.snapshot_version > s.compacted_through,
    }
}

pub fn stored_doc(collection: &str, d: &BsonDoc) -> Result<StoredDoc, StoreError> {
    Ok(StoredDoc {
        doc: Document {
            collection: collection.to_string(),
            id: str_field(d, "_id")?.to_string(),
            version: u64_field(d, "version")?,
            created_at: Timestamp(i64_field(d, "created_at")?),
            updated_at: Timestamp(i64_field(d, "updated_at")?),
            data: parse_data(str_field(d, "data")?)?,
        },
        deleted: bool_field(d, "deleted")?,
        compacted_through: u64_field(d, "compacted_through")?,
        snapshot_version: u64_field(d, "snapshot_version")?,
    })
}

pub fn event_record(e: &Event) -> BsonDoc {
    let patch = serde_json::to_string(&e.patch).expect("a patch always serializes");
    let mut record = doc! {
        "_id": int(e.seq),
        "collection": &e.collection,
        "doc_id": &e.id,
        "version": int(e.version),
        "op": e.op.as_str(),
        "bytes": patch.len() as i64,
        "patch": patch,
        "client_id": &e.client_id,
        "op_id": &e.op_id,
        "ts": e.ts.0,
    };
    if let Some(u) = &e.user {
        record.insert("user", u);
    }
    record
}

pub fn event(d: &BsonDoc) -> Result<Event, StoreError> {
    let op = str_field(d, "op")?;
    Ok(Event {
        seq: u64_field(d, "_id")?,
        collection: str_field(d, "collection")?.to_string(),
        id: str_field(d, "doc_id")?.to_string(),
        version: u64_field(d, "version")?,
        op: Op::parse(op).ok_or_else(|| corrupt("op", op))?,
        patch: serde_json::from_str(str_field(d, "patch")?).map_err(|e| corrupt("patch", e))?,
        client_id: str_field(d, "client_id")?.to_string(),
        op_id: str_field(d, "op_id")?.to_string(),
        ts: Timestamp(i64_field(d, "ts")?),
        user: d.get_str("user").ok().map(str::to_string),
    })
}

pub fn snapshot_record(
    collection: &str,
    id: &str,
    version: Version,
    seq: Seq,
    ts: Timestamp,
    data_json: &str,
) -> BsonDoc {
    doc! {
        "collection": collection,
        "doc_id": id,
        "version": int(version),
        "seq": int(seq),
        "ts": ts.0,
        "data": data_json,
        "bytes": data_json.len() as i64,
    }
}

pub fn snapshot(d: &BsonDoc) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        collection: str_field(d, "collection")?.to_string(),
        id: str_field(d, "doc_id")?.to_string(),
        version: u64_field(d, "version")?,
        seq: u64_field(d, "seq")?,
        ts: Timestamp(i64_field(d, "ts")?),
        data: parse_data(str_field(d, "data")?)?,
    })
}

pub fn snapshot_info(d: &BsonDoc) -> Result<crate::model::SnapshotInfo, StoreError> {
    Ok(crate::model::SnapshotInfo {
        version: u64_field(d, "version")?,
        seq: u64_field(d, "seq")?,
        ts: Timestamp(i64_field(d, "ts")?),
        bytes: u64_field(d, "bytes")?,
    })
}

/// The planner's view of a document record (read with [`SUMMARY_FIELDS`]).
pub fn summary(d: &BsonDoc) -> Result<crate::plan::DocSummary, StoreError> {
    Ok(crate::plan::DocSummary {
        id: str_field(d, "_id")?.to_string(),
        version: u64_field(d, "version")?,
        deleted: bool_field(d, "deleted")?,
        compacted_through: u64_field(d, "compacted_through")?,
        data_bytes: u64_field(d, "bytes")?,
        created: i64_field(d, "created_at")?,
    })
}

pub fn summary_fields() -> BsonDoc {
    doc! {"version": 1, "deleted": 1, "compacted_through": 1, "bytes": 1, "created_at": 1}
}

/// The value of the sequence counter document (0 when it does not exist yet).
pub fn counter_value(d: Option<&BsonDoc>) -> Result<Seq, StoreError> {
    d.map_or(Ok(0), |d| u64_field(d, "v"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_round_trip() {
        let data = match json!({"big": u64::MAX, "$k": {"a.b": [1.5, -0.0, null]}}) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let json = serde_json::to_string(&data).unwrap();
        let s = StoredDoc {
            doc: Document {
                collection: "games".into(),
                id: "g.1".into(),
                version: 7,
                created_at: Timestamp(1),
                updated_at: Timestamp(2),
                data,
            },
            deleted: false,
            compacted_through: 3,
            snapshot_version: 5,
        };
        let rec = doc_record(&s, 9, &json);
        assert_eq!(stored_doc("games", &rec).unwrap(), s);
        assert!(rec.get_bool("snap_due").unwrap());
        assert!(rec.get_bool("compact_due").unwrap());

        let e = Event {
            seq: 9,
            collection: "games".into(),
            id: "g.1".into(),
            version: 7,
            op: Op::Update,
            patch: serde_json::from_value(json!([{"op": "add", "path": "/x", "value": u64::MAX}])).unwrap(),
            client_id: "c".into(),
            op_id: "o".into(),
            ts: Timestamp(2),
            user: None,
        };
        assert_eq!(event(&event_record(&e)).unwrap(), e);
    }

    #[test]
    fn unreadable_records_are_errors_not_panics() {
        assert!(stored_doc("games", &doc! {"_id": "x"}).is_err());
        assert!(event(&doc! {"_id": 1i64, "op": "explode"}).is_err());
        assert!(parse_data("[1]").is_err());
    }
}
