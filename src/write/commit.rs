//! What a write does to the store — **replay, refuse, unchanged or apply** — decided once, for every
//! backend.
//!
//! A backend reads what [`decide`] needs (the idempotency record under the write's key, the
//! document with its tombstone and history marks), calls it inside its write transaction, and
//! persists the [`Decision`]: it never re-decides a rule. So the version check, the `created` flag,
//! the event's `op_id`, when a snapshot is due and what an idempotency record holds are the same on
//! every backend, and unit-tested here.
//!
//! The idempotency record's `result` is [`Committed`] as JSON, and it is on disk: its shape is
//! pinned by a test below.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{plan, Current, Limits, Mutation, Plan, Write, WriteError};
use crate::model::{new_id, Document, Event, Seq, StoredDoc};
use crate::time::Timestamp;

/// The outcome of a successful commit; what an idempotency record replays.
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

/// The store's settings that shape a commit.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub limits: Limits,
    /// Snapshot a document every this many versions.
    pub snapshot_every: u64,
}

/// An idempotency record: the fingerprint of the request that first used the key, and its result
/// ([`Committed`] as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub fingerprint: u64,
    pub result: String,
}

/// Why a write was refused before anything was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// By the rules of [`plan`].
    Write(WriteError),
    /// The idempotency key was used before with a request of different content.
    IdempotencyKeyReused,
}

/// What a write does.
#[derive(Debug)]
pub enum Decision {
    /// A repeat of an earlier request: return its stored result; write nothing.
    Replay(Committed),
    /// Refused: write nothing.
    Refuse(Refusal),
    /// The result equals the current body: no event; store only the idempotency record, if any.
    Unchanged {
        committed: Committed,
        record: Option<Recorded>,
    },
    /// A new version: store all of it in one transaction.
    Apply(Box<Applied>),
}

/// What an applied write stores.
#[derive(Debug)]
pub struct Applied {
    /// The document record after the write (a tombstone after a delete).
    pub stored: StoredDoc,
    /// The body serialized (empty for a delete).
    pub data_json: String,
    /// The event to append.
    pub event: Arc<Event>,
    /// Whether to write a snapshot of the new version (every `snapshot_every` versions).
    pub snapshot_due: bool,
    /// The result to return; it holds the event.
    pub committed: Committed,
    /// The idempotency record to insert, when the write has a key.
    pub record: Option<Recorded>,
}

/// The id a write targets: its own, or a fresh one for a create that lets the server choose.
pub fn target_id(w: &Write) -> String {
    w.id.clone().unwrap_or_else(new_id)
}

/// Decides what `w` does to the document `id`, given the idempotency record stored under its key
/// (`None` when it has no key or the key is new) and the document as stored (`None`: the id was
/// never used). With a record the decision is a replay or a refusal from the record alone, so a
/// backend need not read the document then. `seq` and `now` are the event's, if there is one.
///
/// Fails only when the recorded result does not parse: the store is corrupt.
pub fn decide(
    w: &Write,
    id: &str,
    recorded: Option<&Recorded>,
    current: Option<&StoredDoc>,
    policy: Policy,
    seq: Seq,
    now: Timestamp,
) -> Result<Decision, serde_json::Error> {
    if let Some(r) = recorded {
        if r.fingerprint != w.fingerprint {
            return Ok(Decision::Refuse(Refusal::IdempotencyKeyReused));
        }
        let mut previous: Committed = serde_json::from_str(&r.result)?;
        previous.replayed = true;
        return Ok(Decision::Replay(previous));
    }
    let now_current = current.map(|s| Current {
        version: s.doc.version,
        data: &s.doc.data,
        deleted: s.deleted,
    });
    let change = match plan(now_current, &w.mutation, w.expected_version, policy.limits) {
        Err(e) => return Ok(Decision::Refuse(Refusal::Write(e))),
        Ok(Plan::Unchanged) => {
            let committed = Committed {
                document: current.filter(|s| !s.deleted).map(|s| s.doc.clone()),
                event: None,
                created: false,
                replayed: false,
            };
            let record = record(w, &committed);
            return Ok(Decision::Unchanged { committed, record });
        }
        Ok(Plan::Change(change)) => change,
    };
    let deleting = matches!(w.mutation, Mutation::Delete);
    let (compacted_through, mut snapshot_version) =
        current.map_or((0, 0), |s| (s.compacted_through, s.snapshot_version));
    let snapshot_due = !deleting && change.version >= snapshot_version + policy.snapshot_every.max(1);
    if snapshot_due {
        snapshot_version = change.version;
    }
    let event = Arc::new(Event {
        seq,
        collection: w.collection.clone(),
        id: id.to_string(),
        version: change.version,
        op: change.op,
        patch: change.patch,
        client_id: w.client_id.clone(),
        op_id: w
            .idempotency_key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        ts: now,
        user: w.user.clone(),
    });
    let doc = Document {
        collection: w.collection.clone(),
        id: id.to_string(),
        version: change.version,
        created_at: match current {
            Some(s) if !s.deleted => s.doc.created_at,
            _ => now,
        },
        updated_at: now,
        data: change.data,
    };
    let committed = Committed {
        document: (!deleting).then(|| doc.clone()),
        event: Some(Arc::clone(&event)),
        created: current.is_none_or(|s| s.deleted),
        replayed: false,
    };
    let record = record(w, &committed);
    Ok(Decision::Apply(Box::new(Applied {
        stored: StoredDoc {
            doc,
            deleted: deleting,
            compacted_through,
            snapshot_version,
        },
        data_json: change.data_json,
        event,
        snapshot_due,
        committed,
        record,
    })))
}

/// The idempotency record of `committed`, for a write with a key (serialized only then).
fn record(w: &Write, committed: &Committed) -> Option<Recorded> {
    w.idempotency_key.as_ref().map(|_| Recorded {
        fingerprint: w.fingerprint,
        result: serde_json::to_string(committed).expect("a commit result always serializes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Data, Op, Version};
    use serde_json::{json, Value};

    const POLICY: Policy = Policy {
        limits: Limits {
            max_document_bytes: 1024,
            max_depth: 8,
        },
        snapshot_every: 3,
    };
    const SEQ: Seq = 42;
    const NOW: Timestamp = Timestamp(1_000);

    fn data(v: Value) -> Data {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn write(mutation: Mutation, key: Option<&str>) -> Write {
        Write::new(
            "games".into(),
            Some("g".into()),
            mutation,
            None,
            "alice".into(),
            key.map(str::to_string),
        )
    }

    fn stored(version: Version, deleted: bool, snapshot_version: Version) -> StoredDoc {
        StoredDoc {
            doc: Document {
                collection: "games".into(),
                id: "g".into(),
                version,
                created_at: Timestamp(7),
                updated_at: Timestamp(8),
                data: if deleted {
                    Data::new()
                } else {
                    data(json!({"n": 1}))
                },
            },
            deleted,
            compacted_through: 2,
            snapshot_version,
        }
    }

    fn decide_now(w: &Write, recorded: Option<&Recorded>, current: Option<&StoredDoc>) -> Decision {
        decide(w, "g", recorded, current, POLICY, SEQ, NOW).unwrap()
    }

    fn applied(d: Decision) -> Applied {
        match d {
            Decision::Apply(a) => *a,
            other => panic!("expected apply, got {other:?}"),
        }
    }

    #[test]
    fn a_create_applies_with_the_event_the_record_and_created() {
        let w = write(Mutation::Create(data(json!({"n": 1}))), None);
        let a = applied(decide_now(&w, None, None));
        assert_eq!((a.event.seq, a.event.version, a.event.op), (SEQ, 1, Op::Create));
        assert_eq!((a.event.id.as_str(), a.event.ts), ("g", NOW));
        assert_eq!(a.data_json, r#"{"n":1}"#);
        assert_eq!((a.stored.doc.created_at, a.stored.doc.updated_at), (NOW, NOW));
        assert!(!a.stored.deleted);
        assert!(a.committed.created);
        assert_eq!(a.committed.event.as_deref(), Some(&*a.event));
        assert_eq!(a.committed.document.as_ref(), Some(&a.stored.doc));
        assert!(a.record.is_none(), "no key, no record");
    }

    #[test]
    fn an_update_keeps_created_at_and_the_history_marks() {
        let w = write(Mutation::Replace(data(json!({"n": 2}))), None);
        let a = applied(decide_now(&w, None, Some(&stored(4, false, 3))));
        assert!(!a.committed.created);
        assert_eq!(a.stored.doc.created_at, Timestamp(7));
        assert_eq!((a.stored.compacted_through, a.stored.snapshot_version), (2, 3));
        assert_eq!(a.event.version, 5);
        assert!(!a.snapshot_due);
    }

    #[test]
    fn a_create_over_a_tombstone_is_created_anew_and_continues_the_version_line() {
        let w = write(Mutation::Create(data(json!({"n": 1}))), None);
        let a = applied(decide_now(&w, None, Some(&stored(4, true, 3))));
        assert!(a.committed.created);
        assert_eq!(a.stored.doc.created_at, NOW);
        assert_eq!(a.event.version, 5);
    }

    #[test]
    fn a_delete_leaves_a_tombstone_and_never_a_snapshot() {
        let w = write(Mutation::Delete, None);
        let a = applied(decide_now(&w, None, Some(&stored(5, false, 3))));
        assert!(a.stored.deleted);
        assert_eq!(a.data_json, "");
        assert_eq!(a.committed.document, None);
        assert!(!a.snapshot_due, "version 6 is due, but a tombstone has no body");
        assert_eq!(a.stored.snapshot_version, 3);
    }

    #[test]
    fn a_snapshot_is_due_every_snapshot_every_versions() {
        let w = write(Mutation::Replace(data(json!({"n": 2}))), None);
        let a = applied(decide_now(&w, None, Some(&stored(5, false, 3))));
        assert!(a.snapshot_due);
        assert_eq!(a.stored.snapshot_version, 6);
        // snapshot_every = 0 means every version.
        let every = Policy {
            snapshot_every: 0,
            ..POLICY
        };
        let current = stored(4, false, 4);
        let d = decide(&w, "g", None, Some(&current), every, SEQ, NOW).unwrap();
        assert!(applied(d).snapshot_due);
    }

    #[test]
    fn the_op_id_is_the_idempotency_key_or_a_fresh_uuid() {
        let keyed = write(Mutation::Create(Data::new()), Some("k-1"));
        assert_eq!(applied(decide_now(&keyed, None, None)).event.op_id, "k-1");
        let plain = write(Mutation::Create(Data::new()), None);
        let (a, b) = (
            applied(decide_now(&plain, None, None)).event.op_id.clone(),
            applied(decide_now(&plain, None, None)).event.op_id.clone(),
        );
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn a_keyed_write_records_its_result_as_json_byte_for_byte() {
        let w = write(Mutation::Create(data(json!({"n": 1}))), Some("k"));
        let a = applied(decide_now(&w, None, None));
        let record = a.record.expect("a keyed write is recorded");
        assert_eq!(record.fingerprint, w.fingerprint);
        let expected = format!(
            concat!(
                r#"{{"document":{{"collection":"games","id":"g","version":1,"created_at":"{t}","#,
                r#""updated_at":"{t}","data":{{"n":1}}}},"event":{{"seq":42,"collection":"games","#,
                r#""id":"g","version":1,"op":"create","patch":[{{"op":"add","path":"/n","value":1}}],"#,
                r#""client_id":"alice","op_id":"k","ts":"{t}"}},"created":true}}"#
            ),
            t = NOW.to_rfc3339()
        );
        assert_eq!(record.result, expected);
        assert_eq!(record.result, serde_json::to_string(&a.committed).unwrap());
    }

    #[test]
    fn a_repeat_replays_the_recorded_result() {
        let w = write(Mutation::Create(data(json!({"n": 1}))), Some("k"));
        let first = applied(decide_now(&w, None, None));
        let record = first.record.clone().unwrap();
        // The document exists by now: without the record this would be refused as AlreadyExists.
        match decide_now(&w, Some(&record), Some(&first.stored)) {
            Decision::Replay(c) => {
                assert!(c.replayed);
                assert_eq!(
                    c,
                    Committed {
                        replayed: true,
                        ..first.committed
                    }
                );
            }
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[test]
    fn a_key_reused_for_another_request_is_refused() {
        let w = write(Mutation::Create(data(json!({"n": 1}))), Some("k"));
        let other = Recorded {
            fingerprint: w.fingerprint ^ 1,
            result: "not even read".into(),
        };
        assert!(matches!(
            decide_now(&w, Some(&other), None),
            Decision::Refuse(Refusal::IdempotencyKeyReused)
        ));
    }

    #[test]
    fn an_unreadable_record_is_an_error() {
        let w = write(Mutation::Delete, Some("k"));
        let broken = Recorded {
            fingerprint: w.fingerprint,
            result: "{".into(),
        };
        assert!(decide(&w, "g", Some(&broken), None, POLICY, SEQ, NOW).is_err());
    }

    #[test]
    fn the_rules_refusals_come_through() {
        let w = write(Mutation::Delete, Some("k"));
        assert!(matches!(
            decide_now(&w, None, Some(&stored(3, true, 0))),
            Decision::Refuse(Refusal::Write(WriteError::NotFound))
        ));
        let create = write(Mutation::Create(Data::new()), None);
        assert!(matches!(
            decide_now(&create, None, Some(&stored(3, false, 0))),
            Decision::Refuse(Refusal::Write(WriteError::AlreadyExists { current_version: 3 }))
        ));
    }

    #[test]
    fn an_unchanged_write_returns_the_document_and_records_a_key() {
        let current = stored(3, false, 0);
        let same = Mutation::Replace(current.doc.data.clone());
        match decide_now(&write(same.clone(), Some("k")), None, Some(&current)) {
            Decision::Unchanged { committed, record } => {
                assert_eq!(committed.document.as_ref(), Some(&current.doc));
                assert_eq!((committed.event.is_none(), committed.created), (true, false));
                let record = record.expect("a keyed write is recorded");
                assert_eq!(record.result, serde_json::to_string(&committed).unwrap());
            }
            other => panic!("expected unchanged, got {other:?}"),
        }
        match decide_now(&write(same, None), None, Some(&current)) {
            Decision::Unchanged { record, .. } => assert!(record.is_none()),
            other => panic!("expected unchanged, got {other:?}"),
        }
    }
}
