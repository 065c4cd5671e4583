//! A client's local copy of the documents it follows, and its state vector — pure, no I/O.
//!
//! [`Replica::apply`] takes each [`ServerMessage`] and decides, by the protocol's rules:
//!
//! - `snapshot` is authoritative: it replaces the document (or removes it, when `deleted`) and sets
//!   the vector entry to its version — even when that version is lower than the local one (a reset
//!   of a client that claimed a version the server never had). A deleted document stays in the
//!   vector with the version of its delete; a deletion at version 0 ("never existed") removes the
//!   entry, which means the same thing (absent ≡ version 0).
//! - `event` applies only when `event.version == local + 1` (local 0 for an unknown document):
//!   `create` builds the document by applying the patch to `{}`, `update` applies the RFC 6902 patch,
//!   `delete` removes the document and keeps its version. An event at or below the local version is
//!   a [`Applied::Duplicate`], one further ahead a [`Applied::Gap`]; neither changes anything.
//! - `removed` (the document left every scope of the client: a write made it stop matching a
//!   filter, or a subscription ended) drops the document **and** its vector entry — it is not a
//!   delete: the document may still exist, and should it come back in scope the server sends it
//!   whole, as a snapshot (its events then apply from that version on).
//! - `synced` records the position the replica is current to ([`Replica::last_seq`]).
//! - Everything else (`result`, `error`, `pong`, `unsubscribed`, ...) is [`Applied::Ignored`].
//!
//! An event whose patch does not apply to the local document (which means the local copy is not
//! what the server had at that version) is [`Applied::Invalid`]: the document is forgotten (removed
//! from documents and vector), so that the resync the caller then asks for brings it whole.
//!
//! **No event is applied twice**: besides the version rule, the replica remembers the `seq` of the
//! last event applied to each document. Since a document's events have increasing `seq`s, applying
//! an event whose `seq` is not above that is a violation; it is counted in
//! [`Counters::applied_twice`] (and must stay 0). Only a reset (a snapshot that moves a document's
//! version backwards, a forgotten or `removed` document) clears the record — the server said to
//! start over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use eventsync_protocol::messages::{
    RemovedMessage, ServerMessage, SnapshotMessage, StateVector, SyncedMessage,
};
use eventsync_protocol::model::{Data, Event, Op, Seq, Version};

/// What [`Replica::apply`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A snapshot or event changed the replica.
    Applied,
    /// An event the replica already has (`version <= local`): dropped.
    Duplicate,
    /// An event beyond the next version: not applied; the caller must resync.
    Gap {
        collection: String,
        id: String,
        local_version: Version,
        event_version: Version,
    },
    /// A `synced`: the replica is current to its `seq`. `mismatched` counts documents whose
    /// version in the server's vector differs from the local one (both known and non-zero).
    Synced { mismatched: usize },
    /// A snapshot or event that cannot be applied (a patch that fails, an update of an absent
    /// document, a live snapshot without data). Nothing was applied; a failed event's document was
    /// forgotten. The caller must resync.
    Invalid { reason: String },
    /// Not a data message (`result`, `error`, `pong`).
    Ignored,
}

impl Applied {
    /// The caller must ask the server for what it is missing.
    pub fn needs_resync(&self) -> bool {
        matches!(self, Applied::Gap { .. } | Applied::Invalid { .. })
    }
}

/// What the replica has seen, since it was created (persisted with it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Events applied.
    pub events_applied: u64,
    /// Events dropped because the replica already had them.
    pub duplicates: u64,
    /// Events not applied because an earlier version was missing.
    pub gaps: u64,
    /// Snapshots applied (deleted ones included).
    pub snapshots: u64,
    /// `synced` messages received.
    pub synced: u64,
    /// Documents whose version went backwards (a snapshot below the local version) or that were
    /// forgotten after an invalid event.
    pub resets: u64,
    /// Messages that could not be applied ([`Applied::Invalid`]).
    pub invalid: u64,
    /// `removed` messages that dropped a document (or a deleted document's vector entry), and
    /// documents dropped with a collection no subscription follows any more.
    pub removed: u64,
    /// Events applied although an event with the same or a later `seq` had already been applied to
    /// the same document since its last reset. Must be 0; anything else is a bug (ours or the
    /// server's).
    pub applied_twice: u64,
}

/// The documents a client follows (collection → id → body) and its state vector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Replica {
    documents: BTreeMap<String, BTreeMap<String, Data>>,
    vector: StateVector,
    /// The `seq` of the last event applied to each document (since its last reset).
    applied_seq: BTreeMap<String, BTreeMap<String, Seq>>,
    last_seq: Seq,
    counters: Counters,
}

impl Replica {
    /// An empty replica: no documents, an empty vector.
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Applies one server message by the protocol's rules (see the module docs).
    pub fn apply(&mut self, message: &ServerMessage) -> Applied {
        match message {
            ServerMessage::Snapshot(s) => self.apply_snapshot(s),
            ServerMessage::Event(e) => self.apply_event(e),
            ServerMessage::Synced(s) => self.apply_synced(s),
            ServerMessage::Removed(r) => self.apply_removed(r),
            ServerMessage::Unsubscribed { .. }
            | ServerMessage::Result(_)
            | ServerMessage::Error { .. }
            | ServerMessage::Pong { .. }
            | ServerMessage::Authenticated { .. }
            | ServerMessage::Presence { .. }
            | ServerMessage::Broadcast { .. }
            | ServerMessage::Stream { .. } => Applied::Ignored,
        }
    }

    /// Applies a snapshot: always (it is authoritative).
    pub fn apply_snapshot(&mut self, s: &SnapshotMessage) -> Applied {
        let data = match (&s.data, s.deleted) {
            (_, true) => None,
            (Some(data), false) => Some(data.clone()),
            (None, false) => {
                self.counters.invalid += 1;
                return Applied::Invalid {
                    reason: format!("snapshot of {}/{} without data", s.collection, s.id),
                };
            }
        };
        let local = self.version(&s.collection, &s.id);
        if s.version < local {
            self.counters.resets += 1;
            remove2(&mut self.applied_seq, &s.collection, &s.id);
        }
        match data {
            Some(data) => {
                self.documents
                    .entry(s.collection.clone())
                    .or_default()
                    .insert(s.id.clone(), data);
            }
            None => {
                remove2(&mut self.documents, &s.collection, &s.id);
            }
        }
        self.set_version(&s.collection, &s.id, s.version);
        self.counters.snapshots += 1;
        Applied::Applied
    }

    /// Applies a `removed`: the document left every scope; it and its vector entry are dropped
    /// (whatever their version: out is out). [`Applied::Ignored`] when the replica had neither.
    pub fn apply_removed(&mut self, r: &RemovedMessage) -> Applied {
        if let Some(seq) = r.seq {
            self.last_seq = self.last_seq.max(seq);
        }
        let had_doc = remove2(&mut self.documents, &r.collection, &r.id).is_some();
        let had_entry = remove2(&mut self.vector, &r.collection, &r.id).is_some();
        // The document's record starts over: if it comes back, it is as a snapshot.
        remove2(&mut self.applied_seq, &r.collection, &r.id);
        if had_doc || had_entry {
            self.counters.removed += 1;
            Applied::Applied
        } else {
            Applied::Ignored
        }
    }

    /// Drops a whole collection (documents, vector entries, seq records) — what a client does
    /// when no subscription follows it any more. Returns a `removed` message per vector entry
    /// dropped (deleted documents' included), at its version.
    pub fn forget_collection(&mut self, collection: &str) -> Vec<RemovedMessage> {
        let live = self.documents.remove(collection).unwrap_or_default();
        self.applied_seq.remove(collection);
        let mut vector = self.vector.remove(collection).unwrap_or_default();
        // A live document always has a vector entry; be lenient with a replica loaded from a file.
        for id in live.into_keys() {
            vector.entry(id).or_insert(0);
        }
        self.counters.removed += vector.len() as u64;
        vector
            .into_iter()
            .map(|(id, version)| RemovedMessage {
                collection: collection.to_string(),
                id,
                version,
                seq: None,
            })
            .collect()
    }

    /// Applies an event if it is the document's next version.
    pub fn apply_event(&mut self, e: &Event) -> Applied {
        let local = self.version(&e.collection, &e.id);
        if e.version <= local {
            self.counters.duplicates += 1;
            return Applied::Duplicate;
        }
        // A create may re-use an id whose earlier life (and delete) this client never saw: the
        // server sends it when the client has nothing of the document.
        let fresh_create = e.op == Op::Create && local == 0;
        if e.version != local + 1 && !fresh_create {
            self.counters.gaps += 1;
            return Applied::Gap {
                collection: e.collection.clone(),
                id: e.id.clone(),
                local_version: local,
                event_version: e.version,
            };
        }
        let next = match e.op {
            Op::Create => patched(Value::Object(Data::new()), &e.patch).map(Some),
            // Taken out, not cloned: if the patch fails the document is forgotten anyway.
            Op::Update => match remove2(&mut self.documents, &e.collection, &e.id) {
                Some(doc) => patched(Value::Object(doc), &e.patch).map(Some),
                None => Err("an update of a document the replica does not have".to_string()),
            },
            Op::Delete => Ok(None),
        };
        let next = match next {
            Ok(next) => next,
            Err(reason) => {
                self.forget(&e.collection, &e.id);
                self.counters.invalid += 1;
                return Applied::Invalid {
                    reason: format!(
                        "event seq {} ({}/{} v{}): {reason}",
                        e.seq, e.collection, e.id, e.version
                    ),
                };
            }
        };
        match next {
            Some(data) => {
                self.documents
                    .entry(e.collection.clone())
                    .or_default()
                    .insert(e.id.clone(), data);
            }
            None => {
                remove2(&mut self.documents, &e.collection, &e.id);
            }
        }
        self.set_version(&e.collection, &e.id, e.version);
        let seqs = self.applied_seq.entry(e.collection.clone()).or_default();
        if let Some(previous) = seqs.insert(e.id.clone(), e.seq) {
            if previous >= e.seq {
                self.counters.applied_twice += 1;
            }
        }
        self.last_seq = self.last_seq.max(e.seq);
        self.counters.events_applied += 1;
        Applied::Applied
    }

    /// Records a `synced`: the replica is current to its `seq`.
    pub fn apply_synced(&mut self, s: &SyncedMessage) -> Applied {
        self.last_seq = self.last_seq.max(s.seq);
        self.counters.synced += 1;
        let mut mismatched = 0;
        for (collection, ids) in &s.state_vector {
            for (id, &server) in ids {
                let local = self.version(collection, id);
                if server > 0 && local > 0 && server != local {
                    mismatched += 1;
                }
            }
        }
        Applied::Synced { mismatched }
    }

    /// Removes a document and its vector entry (so that a resync sends it whole).
    pub fn forget(&mut self, collection: &str, id: &str) {
        remove2(&mut self.documents, collection, id);
        remove2(&mut self.applied_seq, collection, id);
        if remove2(&mut self.vector, collection, id).is_some() {
            self.counters.resets += 1;
        }
    }

    /// The state vector: collection → id → version (deleted documents included, with the version
    /// of their delete).
    pub fn vector(&self) -> &StateVector {
        &self.vector
    }

    /// The live documents: collection → id → body.
    pub fn documents(&self) -> &BTreeMap<String, BTreeMap<String, Data>> {
        &self.documents
    }

    /// One collection's live documents (id → body): every subscription of the collection
    /// shares it (a document two scopes match is held once).
    pub fn collection(&self, collection: &str) -> Option<&BTreeMap<String, Data>> {
        self.documents.get(collection)
    }

    /// One live document's body.
    pub fn document(&self, collection: &str, id: &str) -> Option<&Data> {
        self.documents.get(collection)?.get(id)
    }

    /// A document's version in the vector (0 when unknown). A deleted document has the version of
    /// its delete.
    pub fn version(&self, collection: &str, id: &str) -> Version {
        self.vector
            .get(collection)
            .and_then(|ids| ids.get(id))
            .copied()
            .unwrap_or(0)
    }

    /// Number of live documents.
    pub fn len(&self) -> usize {
        self.documents.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest position known applied: the larger of the last `synced`'s `seq` and the highest
    /// applied event's `seq`.
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The `seq` of the last event applied to a document (since its last reset).
    pub fn applied_seq(&self, collection: &str, id: &str) -> Option<Seq> {
        self.applied_seq.get(collection)?.get(id).copied()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Events applied twice (see [`Counters::applied_twice`]); 0 in a correct run.
    pub fn applied_twice(&self) -> u64 {
        self.counters.applied_twice
    }

    /// Checks the replica's own consistency: every live document has a non-zero version in the
    /// vector, no vector entry is 0, and no event was applied twice. Returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.counters.applied_twice > 0 {
            return Err(format!("{} events applied twice", self.counters.applied_twice));
        }
        for (collection, ids) in &self.documents {
            for id in ids.keys() {
                if self.version(collection, id) == 0 {
                    return Err(format!("{collection}/{id} is live without a version"));
                }
            }
        }
        for (collection, ids) in &self.vector {
            if let Some((id, _)) = ids.iter().find(|(_, v)| **v == 0) {
                return Err(format!("{collection}/{id} has version 0 in the vector"));
            }
        }
        Ok(())
    }

    fn set_version(&mut self, collection: &str, id: &str, version: Version) {
        if version == 0 {
            remove2(&mut self.vector, collection, id);
        } else {
            self.vector
                .entry(collection.to_string())
                .or_default()
                .insert(id.to_string(), version);
        }
    }
}

/// Applies an RFC 6902 patch; the result must be an object. (`patch_unsafe`: no undo log, since a
/// document whose patch failed is dropped whole.)
fn patched(mut doc: Value, patch: &json_patch::Patch) -> Result<Data, String> {
    json_patch::patch_unsafe(&mut doc, patch).map_err(|e| format!("patch failed: {e}"))?;
    match doc {
        Value::Object(data) => Ok(data),
        _ => Err("the patch's result is not an object".to_string()),
    }
}

/// Removes `outer[a][b]`, and `outer[a]` when it becomes empty.
fn remove2<T>(outer: &mut BTreeMap<String, BTreeMap<String, T>>, a: &str, b: &str) -> Option<T> {
    let inner = outer.get_mut(a)?;
    let removed = inner.remove(b);
    if inner.is_empty() {
        outer.remove(a);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsync_protocol::messages::ResultMessage;
    use eventsync_protocol::time::Timestamp;
    use serde_json::json;

    fn event(seq: Seq, id: &str, version: Version, op: Op, patch: Value) -> ServerMessage {
        ServerMessage::Event(Event {
            seq,
            collection: "games".into(),
            id: id.into(),
            version,
            op,
            patch: serde_json::from_value(patch).unwrap(),
            client_id: "c".into(),
            op_id: format!("op-{seq}"),
            ts: Timestamp(0),
            user: None,
        })
    }

    fn create(seq: Seq, id: &str, version: Version, body: Value) -> ServerMessage {
        let Value::Object(body) = body else { panic!() };
        let patch: Vec<Value> = body
            .into_iter()
            .map(|(k, v)| json!({"op": "add", "path": format!("/{}", k.replace('~', "~0").replace('/', "~1")), "value": v}))
            .collect();
        event(seq, id, version, Op::Create, Value::Array(patch))
    }

    fn update(seq: Seq, id: &str, version: Version, patch: Value) -> ServerMessage {
        event(seq, id, version, Op::Update, patch)
    }

    fn delete(seq: Seq, id: &str, version: Version) -> ServerMessage {
        event(seq, id, version, Op::Delete, json!([]))
    }

    fn snapshot(id: &str, version: Version, data: Option<Value>) -> ServerMessage {
        let deleted = data.is_none();
        ServerMessage::Snapshot(SnapshotMessage {
            collection: "games".into(),
            id: id.into(),
            version,
            data: data.map(|d| match d {
                Value::Object(m) => m,
                _ => panic!(),
            }),
            deleted,
        })
    }

    fn synced(seq: Seq, vector: Value) -> ServerMessage {
        ServerMessage::Synced(SyncedMessage {
            seq,
            state_vector: serde_json::from_value(vector).unwrap(),
            snapshots: 0,
            events: 0,
            subscription: None,
        })
    }

    fn removed(id: &str, version: Version, seq: Option<Seq>) -> ServerMessage {
        ServerMessage::Removed(RemovedMessage {
            collection: "games".into(),
            id: id.into(),
            version,
            seq,
        })
    }

    fn doc(r: &Replica, id: &str) -> Option<Value> {
        r.document("games", id).cloned().map(Value::Object)
    }

    #[test]
    fn create_update_delete_recreate() {
        let mut r = Replica::new();
        assert_eq!(
            r.apply(&create(1, "g1", 1, json!({"gold": 1, "name": "a"}))),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 1, "name": "a"})));
        assert_eq!(r.version("games", "g1"), 1);
        let up = update(
            2,
            "g1",
            2,
            json!([{"op": "replace", "path": "/gold", "value": 5}]),
        );
        assert_eq!(r.apply(&up), Applied::Applied);
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 5, "name": "a"})));
        assert_eq!(r.apply(&delete(3, "g1", 3)), Applied::Applied);
        assert_eq!(doc(&r, "g1"), None);
        assert_eq!(
            r.version("games", "g1"),
            3,
            "a deleted document keeps its version"
        );
        assert_eq!(r.vector()["games"]["g1"], 3);
        assert!(r.is_empty());
        // Re-created: the version line continues, the body starts from {}.
        assert_eq!(
            r.apply(&create(4, "g1", 4, json!({"level": 2}))),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"level": 2})));
        assert_eq!(r.version("games", "g1"), 4);
        assert_eq!(r.last_seq(), 4);
        assert_eq!(r.applied_seq("games", "g1"), Some(4));
        let c = r.counters();
        assert_eq!(
            (c.events_applied, c.duplicates, c.gaps, c.applied_twice),
            (4, 0, 0, 0)
        );
        r.check().unwrap();
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let mut r = Replica::new();
        let c1 = create(1, "g1", 1, json!({"gold": 1}));
        let u2 = update(2, "g1", 2, json!([{"op": "add", "path": "/list", "value": []}]));
        let u3 = update(3, "g1", 3, json!([{"op": "add", "path": "/list/-", "value": 1}]));
        for m in [&c1, &u2, &u3] {
            assert_eq!(r.apply(m), Applied::Applied);
        }
        // A non-idempotent patch (an append) resent must not be applied again.
        for m in [&u3, &u2, &c1, &u3] {
            assert_eq!(r.apply(m), Applied::Duplicate);
        }
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 1, "list": [1]})));
        assert_eq!(r.counters().duplicates, 4);
        assert_eq!(r.counters().events_applied, 3);
        assert_eq!(r.applied_twice(), 0);
        // A duplicate of a deleted document's delete.
        assert_eq!(r.apply(&delete(4, "g1", 4)), Applied::Applied);
        assert_eq!(r.apply(&delete(4, "g1", 4)), Applied::Duplicate);
        assert_eq!(r.apply(&u3), Applied::Duplicate);
        assert_eq!(doc(&r, "g1"), None);
    }

    #[test]
    fn gaps_change_nothing() {
        let mut r = Replica::new();
        // Unknown document: only version 1 applies.
        let gap = r.apply(&update(
            5,
            "g1",
            2,
            json!([{"op": "add", "path": "/x", "value": 1}]),
        ));
        assert_eq!(
            gap,
            Applied::Gap {
                collection: "games".into(),
                id: "g1".into(),
                local_version: 0,
                event_version: 2
            }
        );
        assert!(gap.needs_resync());
        assert!(r.vector().is_empty());
        assert_eq!(r.last_seq(), 0, "a gap does not advance the position");
        r.apply(&create(1, "g1", 1, json!({"a": 1})));
        assert!(matches!(
            r.apply(&update(9, "g1", 3, json!([]))),
            Applied::Gap {
                local_version: 1,
                event_version: 3,
                ..
            }
        ));
        assert_eq!(r.version("games", "g1"), 1);
        assert_eq!(doc(&r, "g1"), Some(json!({"a": 1})));
        assert_eq!(r.counters().gaps, 2);
        // The missing event, then the one that was a gap, apply.
        assert_eq!(
            r.apply(&update(
                2,
                "g1",
                2,
                json!([{"op": "add", "path": "/b", "value": 2}])
            )),
            Applied::Applied
        );
        assert_eq!(
            r.apply(&update(9, "g1", 3, json!([{"op": "remove", "path": "/a"}]))),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"b": 2})));
        assert_eq!(r.last_seq(), 9);
    }

    #[test]
    fn snapshots_replace_and_are_authoritative() {
        let mut r = Replica::new();
        assert_eq!(
            r.apply(&snapshot("g1", 7, Some(json!({"gold": 7})))),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 7})));
        assert_eq!(r.version("games", "g1"), 7);
        // Events continue from the snapshot's version.
        assert_eq!(r.apply(&update(20, "g1", 7, json!([]))), Applied::Duplicate);
        assert_eq!(
            r.apply(&update(
                21,
                "g1",
                8,
                json!([{"op": "replace", "path": "/gold", "value": 8}])
            )),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 8})));
        // A snapshot at a lower version resets (the server never had our version).
        assert_eq!(
            r.apply(&snapshot("g1", 3, Some(json!({"gold": 3})))),
            Applied::Applied
        );
        assert_eq!(r.version("games", "g1"), 3);
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 3})));
        assert_eq!(r.counters().resets, 1);
        assert_eq!(
            r.applied_seq("games", "g1"),
            None,
            "a reset clears the applied record"
        );
        // After a reset, the server's own events (with lower seqs) apply and are not "twice".
        assert_eq!(
            r.apply(&update(
                4,
                "g1",
                4,
                json!([{"op": "replace", "path": "/gold", "value": 4}])
            )),
            Applied::Applied
        );
        assert_eq!(r.applied_twice(), 0);
        // A snapshot at the same version re-sets the body.
        assert_eq!(
            r.apply(&snapshot("g1", 4, Some(json!({"gold": 44})))),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"gold": 44})));
        assert_eq!(r.counters().snapshots, 3);
        assert_eq!(r.counters().resets, 1);
        r.check().unwrap();
    }

    #[test]
    fn deleted_snapshots_remove_and_keep_the_version() {
        let mut r = Replica::new();
        r.apply(&create(1, "g1", 1, json!({"a": 1})));
        r.apply(&create(2, "g2", 1, json!({"a": 2})));
        assert_eq!(r.apply(&snapshot("g1", 5, None)), Applied::Applied);
        assert_eq!(doc(&r, "g1"), None);
        assert_eq!(r.version("games", "g1"), 5);
        // Version 0: the server never had it — gone from the vector (absent ≡ 0).
        assert_eq!(r.apply(&snapshot("g2", 0, None)), Applied::Applied);
        assert_eq!(doc(&r, "g2"), None);
        assert!(!r.vector()["games"].contains_key("g2"));
        assert_eq!(r.counters().resets, 1, "g2 went from 1 to 0");
        // A deleted snapshot for an unknown document.
        assert_eq!(r.apply(&snapshot("g3", 2, None)), Applied::Applied);
        assert_eq!(r.version("games", "g3"), 2);
        // Re-creation after a deleted snapshot continues the version line.
        assert_eq!(r.apply(&create(9, "g1", 6, json!({"b": 1}))), Applied::Applied);
        assert_eq!(doc(&r, "g1"), Some(json!({"b": 1})));
        // Removing the last document of a collection leaves no empty map behind.
        let mut r2 = Replica::new();
        r2.apply(&snapshot("x", 0, None));
        assert!(r2.vector().is_empty() && r2.documents().is_empty());
        r.check().unwrap();
    }

    #[test]
    fn a_live_snapshot_without_data_is_invalid() {
        let mut r = Replica::new();
        let bad = ServerMessage::Snapshot(SnapshotMessage {
            collection: "games".into(),
            id: "g1".into(),
            version: 2,
            data: None,
            deleted: false,
        });
        assert!(matches!(r.apply(&bad), Applied::Invalid { .. }));
        assert!(r.vector().is_empty());
        assert_eq!(r.counters().invalid, 1);
    }

    #[test]
    fn failing_patches_forget_the_document() {
        let mut r = Replica::new();
        r.apply(&create(1, "g1", 1, json!({"a": 1})));
        // `test` fails: the local copy is not what the server patched.
        let bad = update(
            2,
            "g1",
            2,
            json!([{"op": "replace", "path": "/a", "value": 9}, {"op": "test", "path": "/a", "value": 1}]),
        );
        let got = r.apply(&bad);
        assert!(matches!(got, Applied::Invalid { .. }), "{got:?}");
        assert!(got.needs_resync());
        assert_eq!(doc(&r, "g1"), None);
        assert_eq!(
            r.version("games", "g1"),
            0,
            "forgotten, so a resync sends it whole"
        );
        // An update of a document we do not have (but whose version is next) is invalid too.
        r.apply(&snapshot("g2", 1, None));
        assert!(matches!(
            r.apply(&update(3, "g2", 2, json!([]))),
            Applied::Invalid { .. }
        ));
        // A patch that turns the document into a non-object.
        r.apply(&create(4, "g3", 1, json!({"a": 1})));
        assert!(matches!(
            r.apply(&update(
                5,
                "g3",
                2,
                json!([{"op": "replace", "path": "", "value": [1]}])
            )),
            Applied::Invalid { .. }
        ));
        assert_eq!(r.counters().invalid, 3);
        r.check().unwrap();
        // The server resends from scratch: applies cleanly, not counted as applied twice.
        assert_eq!(r.apply(&create(1, "g1", 1, json!({"a": 1}))), Applied::Applied);
        assert_eq!(
            r.apply(&update(
                2,
                "g1",
                2,
                json!([{"op": "replace", "path": "/a", "value": 2}])
            )),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"a": 2})));
        assert_eq!(r.applied_twice(), 0);
    }

    #[test]
    fn json_pointer_escaping() {
        let mut r = Replica::new();
        r.apply(&create(
            1,
            "g1",
            1,
            json!({"a/b": 1, "m~n": 2, "": 3, "x": {"y/z": {"~": 4}}}),
        ));
        assert_eq!(
            doc(&r, "g1"),
            Some(json!({"a/b": 1, "m~n": 2, "": 3, "x": {"y/z": {"~": 4}}}))
        );
        let up = update(
            2,
            "g1",
            2,
            json!([
                {"op": "replace", "path": "/a~1b", "value": 10},
                {"op": "remove", "path": "/m~0n"},
                {"op": "replace", "path": "/", "value": 30},
                {"op": "add", "path": "/x/y~1z/~0", "value": 40},
                {"op": "add", "path": "/~01", "value": "tilde-one"},
            ]),
        );
        assert_eq!(r.apply(&up), Applied::Applied);
        assert_eq!(
            doc(&r, "g1"),
            Some(json!({"a/b": 10, "": 30, "x": {"y/z": {"~": 40}}, "~1": "tilde-one"}))
        );
    }

    #[test]
    fn the_applied_twice_record_catches_reapplied_events() {
        let mut r = Replica::new();
        r.apply(&create(10, "g1", 1, json!({})));
        // Same document, next version, but a seq not above the last applied one: a server that
        // resent an old event under a new version would have us apply it twice.
        assert_eq!(r.apply(&update(10, "g1", 2, json!([]))), Applied::Applied);
        assert_eq!(r.applied_twice(), 1);
        assert!(r.check().is_err());
    }

    #[test]
    fn synced_sets_the_position_and_counts_mismatches() {
        let mut r = Replica::new();
        r.apply(&create(3, "g1", 1, json!({})));
        r.apply(&snapshot("g2", 4, Some(json!({}))));
        assert_eq!(
            r.apply(&synced(10, json!({"games": {"g1": 1, "g2": 4, "g3": 2}}))),
            Applied::Synced { mismatched: 0 }
        );
        assert_eq!(r.last_seq(), 10);
        assert_eq!(
            r.apply(&synced(8, json!({"games": {"g1": 2, "g2": 4}}))),
            Applied::Synced { mismatched: 1 }
        );
        assert_eq!(r.last_seq(), 10, "the position never goes backwards");
        assert_eq!(r.counters().synced, 2);
        assert!(
            !r.vector()["games"].contains_key("g3"),
            "synced does not change the vector"
        );
    }

    #[test]
    fn other_messages_are_ignored() {
        let mut r = Replica::new();
        let before = r.clone();
        for m in [
            ServerMessage::error(eventsync_protocol::ErrorCode::InvalidMessage, "x"),
            ServerMessage::Pong { id: Some(json!(1)) },
            ServerMessage::Result(ResultMessage {
                op_id: "o".into(),
                ok: true,
                id: Some("g".into()),
                version: Some(1),
                seq: Some(1),
                replayed: false,
                error: None,
            }),
        ] {
            assert_eq!(r.apply(&m), Applied::Ignored);
        }
        assert_eq!(r, before);
    }

    #[test]
    fn collections_are_independent() {
        let mut r = Replica::new();
        let mut e = match create(1, "g1", 1, json!({"a": 1})) {
            ServerMessage::Event(e) => e,
            _ => unreachable!(),
        };
        r.apply_event(&e);
        e.collection = "other".into();
        e.seq = 2;
        assert_eq!(r.apply_event(&e), Applied::Applied);
        assert_eq!(r.len(), 2);
        assert_eq!(r.version("other", "g1"), 1);
        r.forget("other", "g1");
        assert!(!r.vector().contains_key("other"));
        assert!(!r.documents().contains_key("other"));
    }

    #[test]
    fn removed_drops_the_document_and_its_entry_and_it_may_come_back() {
        let mut r = Replica::new();
        r.apply(&create(1, "g1", 1, json!({"level": 7})));
        r.apply(&update(
            2,
            "g1",
            2,
            json!([{"op": "replace", "path": "/level", "value": 8}]),
        ));
        r.apply(&create(3, "g2", 1, json!({"level": 9})));
        // Moved out by the write at seq 4 (its version 3, which the client never gets).
        assert_eq!(r.apply(&removed("g1", 3, Some(4))), Applied::Applied);
        assert_eq!(doc(&r, "g1"), None);
        assert_eq!(r.version("games", "g1"), 0, "not a delete: no version kept");
        assert_eq!(r.applied_seq("games", "g1"), None);
        assert_eq!(r.last_seq(), 4);
        assert_eq!(r.counters().removed, 1);
        r.check().unwrap();
        // Twice, or a document never had: nothing to do.
        assert_eq!(r.apply(&removed("g1", 3, None)), Applied::Ignored);
        assert_eq!(r.apply(&removed("nope", 1, None)), Applied::Ignored);
        assert_eq!(r.counters().removed, 1);
        // Back in scope later: a snapshot, then its events — none counted as applied twice, though
        // the seqs of its earlier life were higher than nothing.
        assert_eq!(
            r.apply(&snapshot("g1", 5, Some(json!({"level": 6})))),
            Applied::Applied
        );
        assert_eq!(r.counters().resets, 0, "no reset: the replica had nothing of it");
        assert_eq!(
            r.apply(&update(
                9,
                "g1",
                6,
                json!([{"op": "replace", "path": "/level", "value": 5}])
            )),
            Applied::Applied
        );
        assert_eq!(doc(&r, "g1"), Some(json!({"level": 5})));
        assert_eq!(r.version("games", "g1"), 6);
        // An event of the document while out (a late one) is a gap, not applied to nothing.
        r.apply(&removed("g1", 6, Some(10)));
        assert!(matches!(
            r.apply(&update(11, "g1", 7, json!([]))),
            Applied::Gap { local_version: 0, .. }
        ));
        // A deleted document's entry is dropped too.
        r.apply(&update(12, "g2", 2, json!([])));
        r.apply(&delete(13, "g2", 3));
        assert_eq!(r.apply(&removed("g2", 3, None)), Applied::Applied);
        assert!(r.vector().is_empty() && r.documents().is_empty());
        assert_eq!(r.applied_twice(), 0);
        r.check().unwrap();
    }

    #[test]
    fn a_collection_is_forgotten_whole() {
        let mut r = Replica::new();
        r.apply(&create(1, "g1", 1, json!({})));
        r.apply(&create(2, "g2", 1, json!({})));
        r.apply(&delete(3, "g2", 2));
        let mut other = match create(4, "o1", 1, json!({"a": 1})) {
            ServerMessage::Event(e) => e,
            _ => unreachable!(),
        };
        other.collection = "other".into();
        r.apply_event(&other);
        assert_eq!(r.collection("games").map(BTreeMap::len), Some(1));
        let gone = r.forget_collection("games");
        assert_eq!(
            gone.iter()
                .map(|m| (m.id.as_str(), m.version))
                .collect::<Vec<_>>(),
            [("g1", 1), ("g2", 2)]
        );
        assert!(r.collection("games").is_none());
        assert!(!r.vector().contains_key("games"));
        assert_eq!(r.version("other", "o1"), 1, "other collections stay");
        assert!(r.forget_collection("games").is_empty());
        r.check().unwrap();
    }

    #[test]
    fn round_trips_through_json() {
        let mut r = Replica::new();
        r.apply(&create(1, "g1", 1, json!({"a": [1, {"b": null}]})));
        r.apply(&snapshot("g2", 3, None));
        r.apply(&synced(5, json!({})));
        let text = serde_json::to_string(&r).unwrap();
        let back: Replica = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        // An older file without counters or seq records still loads.
        let minimal: Replica = serde_json::from_value(
            json!({"documents": {"games": {"g1": {}}}, "vector": {"games": {"g1": 1}}}),
        )
        .unwrap();
        assert_eq!(minimal.version("games", "g1"), 1);
        minimal.check().unwrap();
    }
}
