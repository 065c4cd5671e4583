//! A catch-up's messages, built from the rows the store read for it.
//!
//! The store answers the [`Planner`](crate::plan::Planner)'s reads at one position of the log and
//! returns [`CatchUpRows`]; this module turns them into what a transport sends — `snapshot` and
//! `event` messages in sending order — and the changes they make to the client's vector. Every
//! transport's catch-up and `POST /api/sync` go through here, so they cannot differ.

use crate::model::{Seq, Version};
use crate::plan::{CatchUpRows, DocRows, Resume};
use crate::protocol::{RemovedMessage, ServerMessage, SnapshotMessage};

/// What brings a client current, read at one consistent position of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUp {
    /// The log position the messages bring the client to.
    pub position: Seq,
    /// `snapshot` and `event` messages, per document in version order.
    pub messages: Vec<ServerMessage>,
    /// What they change in the client's vector, per collection planned: each document sent and
    /// the version the client has of it after them (0: nothing, it leaves the vector). The rest of
    /// the vector stays as it was — so a part costs what it sends, not what the client has.
    pub changes: Vec<(String, Vec<(String, Version)>)>,
    pub snapshots: u64,
    pub events: u64,
    /// Whether this brings the client current; `false` for a part of a catch-up cut by its byte
    /// budget, after which the next part is planned from the vector this one brings it to.
    pub complete: bool,
    /// For a part: where the next one goes on ([`crate::plan::Planner::resuming`]).
    pub resume: Option<Resume>,
}

impl CatchUp {
    /// The catch-up the rows read for a client make.
    pub fn assemble(rows: CatchUpRows) -> CatchUp {
        let mut out = CatchUp {
            position: rows.position,
            messages: Vec::new(),
            changes: Vec::with_capacity(rows.collections.len()),
            snapshots: 0,
            events: 0,
            complete: rows.complete,
            resume: rows.resume,
        };
        for c in rows.collections {
            let mut changes = Vec::with_capacity(c.documents.len());
            for (id, doc) in c.documents {
                let version = match doc {
                    DocRows::Events { to, events } => {
                        out.events += events.len() as u64;
                        out.messages.extend(events.into_iter().map(ServerMessage::Event));
                        to
                    }
                    DocRows::Body { version, data } => {
                        out.snapshots += 1;
                        out.messages
                            .push(snapshot(&c.collection, &id, version, Some(data)));
                        version
                    }
                    DocRows::Removed { version } => {
                        out.messages.push(ServerMessage::Removed(RemovedMessage {
                            collection: c.collection.clone(),
                            id: id.clone(),
                            version,
                            seq: None,
                        }));
                        0
                    }
                    DocRows::Deleted { version } => {
                        out.snapshots += 1;
                        out.messages.push(snapshot(&c.collection, &id, version, None));
                        version
                    }
                };
                changes.push((id, version));
            }
            out.changes.push((c.collection, changes));
        }
        order_messages(&mut out.messages);
        out
    }
}

/// A `snapshot` message: the body at `version`, or (`None`) the document's deletion.
fn snapshot(collection: &str, id: &str, version: u64, data: Option<crate::model::Data>) -> ServerMessage {
    ServerMessage::Snapshot(SnapshotMessage {
        collection: collection.to_string(),
        id: id.to_string(),
        version,
        deleted: data.is_none(),
        data,
    })
}

/// Puts a catch-up's messages in sending order: every snapshot first, then every event in sequence
/// order. Per-document order holds (a document gets either a snapshot or its events), and the event
/// ids a client sees only grow — which is what lets an SSE client's `Last-Event-ID` mean "I have every
/// message up to here".
fn order_messages(messages: &mut [ServerMessage]) {
    messages.sort_by_key(|m| match m {
        ServerMessage::Event(e) => (1, e.seq),
        _ => (0, 0),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Data, Event, Op};
    use crate::plan::CollectionRows;
    use crate::time::Timestamp;

    fn event(seq: Seq, id: &str) -> Event {
        Event {
            seq,
            collection: "c".into(),
            id: id.into(),
            version: seq,
            op: Op::Update,
            patch: json_patch::Patch(vec![]),
            client_id: "x".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        }
    }

    fn keys(messages: &[ServerMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m {
                ServerMessage::Event(e) => format!("e{}", e.seq),
                ServerMessage::Snapshot(s) if s.deleted => format!("d{}", s.id),
                ServerMessage::Snapshot(s) => format!("s{}", s.id),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn catch_up_messages_go_snapshots_first_then_events_by_seq() {
        let snap = |id: &str| snapshot("c", id, 1, None);
        let ev = |seq, id| ServerMessage::Event(event(seq, id));
        let mut m = vec![ev(9, "a"), ev(12, "a"), snap("b"), ev(10, "c"), snap("d")];
        order_messages(&mut m);
        assert_eq!(keys(&m), ["db", "dd", "e9", "e10", "e12"]);
    }

    #[test]
    fn rows_become_messages_counts_and_the_changes_to_the_vector() {
        let rows = CatchUpRows {
            position: 30,
            collections: vec![
                CollectionRows {
                    collection: "c".into(),
                    documents: vec![
                        (
                            "a".into(),
                            DocRows::Events {
                                to: 12,
                                events: vec![event(11, "a"), event(12, "a")],
                            },
                        ),
                        (
                            "b".into(),
                            DocRows::Body {
                                version: 4,
                                data: Data::new(),
                            },
                        ),
                        ("r".into(), DocRows::Deleted { version: 0 }),
                        ("z".into(), DocRows::Deleted { version: 6 }),
                    ],
                },
                CollectionRows {
                    collection: "empty".into(),
                    documents: vec![],
                },
            ],
            complete: true,
            resume: None,
        };
        let c = CatchUp::assemble(rows);
        assert_eq!(c.position, 30);
        assert_eq!(keys(&c.messages), ["sb", "dr", "dz", "e11", "e12"]);
        assert_eq!((c.snapshots, c.events), (3, 2));
        let change = |id: &str, v| (id.to_string(), v);
        assert_eq!(
            c.changes,
            [
                (
                    "c".to_string(),
                    vec![change("a", 12), change("b", 4), change("r", 0), change("z", 6)]
                ),
                ("empty".to_string(), vec![])
            ],
            "each document sent and where it leaves the client; a reset at 0"
        );
    }
}
