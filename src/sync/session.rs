//! One sync connection's state, with no I/O: what it follows (its subscriptions, compiled into
//! [`Scope`]s), what it has been sent (its vector and log position), what the client acknowledged,
//! and which live events to forward.
//!
//! A collection the session follows whole needs no check per event. One it follows only in part
//! (every subscription of it narrowed) has [`Scopes`], which decide each live event's fate — in,
//! out (`removed`), or "read the document and decide" ([`Live::Recheck`]); the same scopes go
//! to the catch-up planner, so both paths hold the client to the same documents.
//!
//! A session also keeps, per subscribed collection, what its token may read of it (an [`Access`],
//! computed once at `hello` and again after an `auth`): events and catch-up rows of documents it may
//! not read are never sent, and the vector never holds them. A session whose every collection is
//! readable whole (`--auth none`, or `games/*`) pays one branch per live event for this.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::auth::Access;
use crate::error::ErrorCode;
use crate::hub::Interest;
use crate::model::{validate_collection, validate_id, Event, Op, Seq, StoredDoc, Version};
use crate::plan::Selection;
use crate::scope::{self, Scope, Scopes};
use crate::sync::protocol::{
    Hello, RemovedMessage, ServerMessage, SnapshotMessage, StateVector, Subscription, SyncedMessage,
};
use crate::sync::CatchUp;
use crate::sync::{MAX_SUBSCRIPTIONS, MAX_UNACKED, MAX_VIOLATIONS};

/// Why a `hello` (or a vector) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("client_id: {0}")]
    ClientId(String),
    #[error("subscribe: {0}")]
    Subscribe(String),
    #[error("state_vector: {0}")]
    Vector(String),
}

impl HelloError {
    pub fn code(&self) -> ErrorCode {
        match self {
            HelloError::ClientId(_) => ErrorCode::InvalidClientId,
            HelloError::Subscribe(_) => ErrorCode::InvalidSubscription,
            HelloError::Vector(_) => ErrorCode::InvalidStateVector,
        }
    }
}

/// A refused protocol message: answered with an `error` message (over HTTP, an error body),
/// counted as a violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The subscription it refuses, if it answers one.
    pub subscription: Option<String>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
            subscription: None,
        }
    }

    /// The same, naming the subscription it refuses.
    pub fn refusing(mut self, id: &str) -> ProtocolError {
        self.subscription = Some(id.to_string());
        self
    }

    /// The `error` message that answers it.
    pub fn into_message(self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message,
            subscription: self.subscription,
        }
    }
}

impl From<HelloError> for ProtocolError {
    fn from(e: HelloError) -> ProtocolError {
        ProtocolError::new(e.code(), e.to_string())
    }
}

/// What to do with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Forward it.
    Send,
    /// Not for this client, or already covered (by the catch-up or an earlier send).
    Skip,
    /// It does not follow what the client has: re-plan the catch-up from the store.
    Gap,
    /// It moved the document out of the client's scopes: send `removed` ([`Session::removed`]).
    Remove,
    /// It may have moved the document in or out: read the document, then
    /// [`Session::rechecked`].
    Recheck,
}

/// What an `unsubscribe` leaves to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The collection is no longer followed: these documents left (send `removed` for each).
    Left(Vec<RemovedMessage>),
    /// The collection is still followed in part: a catch-up of it finds what left.
    Recheck(String),
    /// Nothing left (another subscription still follows the collection whole).
    Nothing,
}

#[derive(Debug)]
pub struct Session {
    client_id: String,
    /// Where the client's vector is remembered (`Principal::client_key`); the client id by default.
    key: String,
    /// What the client subscribed to, in the order subscribed; ids unique.
    subscriptions: Vec<Scope>,
    /// The collections of `subscriptions`: sorted, without duplicates.
    collections: Vec<String>,
    /// The collections followed only in part, with their scopes.
    scoped: BTreeMap<String, Scopes>,
    /// What the session may read of each of `collections` (same order); never `Access::None`.
    access: Vec<Access>,
    /// Whether some collection is readable only in part: when not, live events need no check.
    restricted: bool,
    /// What the client has been sent (or had, per its hello), for the subscribed collections.
    /// Shared with a catch-up read in flight (so a part does not copy it); written through
    /// `Arc::make_mut`, which copies only if a read still holds it (none does by then).
    vector: Arc<StateVector>,
    /// Log position covered by the last catch-up: live events at or below it are already included.
    position: Seq,
    /// Collections caught up later than `position` (a live `subscribe`'s catch-up, an
    /// `unsubscribe`'s check), with the position each was read at.
    covered: BTreeMap<String, Seq>,
    /// Per document, the last change sent and not yet acknowledged: collection → id → (position,
    /// version). One entry per document, not per event, so a client that never acks costs memory in
    /// proportion to the documents it follows, not to the events it received.
    unacked: HashMap<String, HashMap<String, (Seq, Version)>>,
    unacked_len: usize,
    /// Acknowledged changes not yet persisted, and the position they bring the client to.
    acked: StateVector,
    acked_position: Option<Seq>,
    /// The highest position sent so far (catch-up or live event).
    sent: Seq,
    violations: u32,
}

/// Checks a client id, subscriptions and (optionally) a vector.
pub fn validate_hello(h: &Hello) -> Result<(), HelloError> {
    validate_id(&h.client_id).map_err(|e| HelloError::ClientId(e.to_string()))?;
    validate_subscriptions(&h.subscribe)?;
    if let Some(v) = &h.state_vector {
        validate_vector(v)?;
    }
    Ok(())
}

pub fn validate_subscriptions(subscriptions: &[Subscription]) -> Result<(), HelloError> {
    compile(subscriptions).map(|_| ())
}

/// Compiles subscriptions (at most [`MAX_SUBSCRIPTIONS`], ids unique; a collection named twice is
/// followed once).
pub fn compile(subscriptions: &[Subscription]) -> Result<Vec<Scope>, HelloError> {
    if subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(HelloError::Subscribe(format!(
            "at most {MAX_SUBSCRIPTIONS} subscriptions"
        )));
    }
    let mut out: Vec<Scope> = Vec::with_capacity(subscriptions.len());
    for s in subscriptions {
        let scope = Scope::parse(s).map_err(HelloError::Subscribe)?;
        match out.iter().find(|o| o.id == scope.id) {
            Some(o) if *o == scope => {}
            Some(_) => {
                return Err(HelloError::Subscribe(format!(
                    "two subscriptions with the id '{}'",
                    scope.id
                )))
            }
            None => out.push(scope),
        }
    }
    Ok(out)
}

pub fn validate_vector(v: &StateVector) -> Result<(), HelloError> {
    for (c, docs) in v {
        validate_collection(c).map_err(|e| HelloError::Vector(format!("{c}: {e}")))?;
        for id in docs.keys() {
            validate_id(id).map_err(|e| HelloError::Vector(format!("{c}/{id}: {e}")))?;
        }
    }
    Ok(())
}

impl Session {
    /// A session for a validated hello, following `subscriptions` (each with what may be read of
    /// it), starting from `vector` (the client's, or the one the server remembered for it),
    /// restricted to what it follows and may read.
    pub fn new(client_id: String, subscriptions: Vec<(Scope, Access)>, vector: StateVector) -> Session {
        let mut s = Session {
            key: client_id.clone(),
            client_id,
            subscriptions: Vec::new(),
            collections: Vec::new(),
            scoped: BTreeMap::new(),
            restricted: false,
            access: Vec::new(),
            vector: Arc::default(),
            position: 0,
            covered: BTreeMap::new(),
            unacked: HashMap::new(),
            unacked_len: 0,
            acked: StateVector::new(),
            acked_position: None,
            sent: 0,
            violations: 0,
        };
        let mut access: BTreeMap<String, Access> = BTreeMap::new();
        for (scope, a) in subscriptions {
            if a.is_none() || s.subscriptions.iter().any(|o| o.id == scope.id) {
                continue;
            }
            access.insert(scope.collection.clone(), a);
            s.subscriptions.push(scope);
        }
        s.derive(access);
        s.reset_vector(vector);
        s
    }

    /// A session for collections readable whole (no authentication, or tests).
    pub fn unrestricted(client_id: String, subscribe: &[String], vector: StateVector) -> Session {
        let subscriptions = subscribe.iter().map(|c| (Scope::whole(c), Access::All)).collect();
        Session::new(client_id, subscriptions, vector)
    }

    /// Recomputes what follows from the subscriptions: the collections (with `access`, what may
    /// be read of each) and the scopes of those followed in part.
    fn derive(&mut self, mut access: BTreeMap<String, Access>) {
        let mut collections: Vec<String> = self.subscriptions.iter().map(|s| s.collection.clone()).collect();
        collections.sort();
        collections.dedup();
        self.access = collections
            .iter()
            .map(|c| access.remove(c).unwrap_or(Access::All))
            .collect();
        self.restricted = self.access.iter().any(|a| *a != Access::All);
        self.scoped = BTreeMap::new();
        for c in &collections {
            let of_c = self.subscriptions.iter().filter(|s| &s.collection == c);
            if of_c.clone().any(Scope::is_whole) {
                continue;
            }
            self.scoped
                .insert(c.clone(), Scopes::new(of_c.cloned().collect()));
        }
        self.collections = collections;
    }

    /// The current access of each followed collection, by name.
    fn access_map(&self) -> BTreeMap<String, Access> {
        self.collections
            .iter()
            .cloned()
            .zip(self.access.iter().cloned())
            .collect()
    }

    /// What the hub should wake the session for: the collections it follows, except those whose
    /// every scope names its documents (`ids`) — for those, just the documents. A superset of what
    /// [`Session::live`] forwards, never less.
    pub fn interest(&self) -> Interest {
        let mut collections = BTreeSet::new();
        let mut documents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in &self.collections {
            let by_ids = self
                .scoped
                .get(c)
                .map(|scopes| scopes.iter().map(Scope::ids).collect::<Option<Vec<_>>>());
            match by_ids {
                Some(Some(sets)) => {
                    let docs = documents.entry(c.clone()).or_default();
                    for ids in sets {
                        docs.extend(ids.iter().cloned());
                    }
                }
                _ => {
                    collections.insert(c.clone());
                }
            }
        }
        Interest::Some {
            collections,
            documents,
        }
    }

    /// The subscriptions, in the order made.
    pub fn subscriptions(&self) -> &[Scope] {
        &self.subscriptions
    }

    /// Adds a subscription the token may read (`access` of its collection, not `None`). Refused
    /// when its id is taken or the session has [`MAX_SUBSCRIPTIONS`] already.
    pub fn subscribe(&mut self, scope: Scope, access: Access) -> Result<(), ProtocolError> {
        if self.subscriptions.iter().any(|s| s.id == scope.id) {
            let msg = format!("a subscription with the id '{}' exists already", scope.id);
            return Err(ProtocolError::new(ErrorCode::InvalidSubscription, msg));
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            let msg = format!("at most {MAX_SUBSCRIPTIONS} subscriptions");
            return Err(ProtocolError::new(ErrorCode::InvalidSubscription, msg));
        }
        let mut access_map = self.access_map();
        access_map.insert(scope.collection.clone(), access);
        Arc::make_mut(&mut self.vector)
            .entry(scope.collection.clone())
            .or_default();
        self.subscriptions.push(scope);
        self.derive(access_map);
        Ok(())
    }

    /// Ends the subscription `id`: what is left to do about the documents it brought.
    pub fn unsubscribe(&mut self, id: &str) -> Result<Unsubscribed, ProtocolError> {
        let Some(i) = self.subscriptions.iter().position(|s| s.id == id) else {
            let msg = format!("no subscription with the id '{id}'");
            return Err(ProtocolError::new(ErrorCode::InvalidSubscription, msg));
        };
        let access_map = self.access_map();
        let gone = self.subscriptions.remove(i);
        self.derive(access_map);
        let c = gone.collection;
        if self.collections.binary_search(&c).is_ok() {
            return Ok(if self.scoped.contains_key(&c) {
                Unsubscribed::Recheck(c)
            } else {
                Unsubscribed::Nothing
            });
        }
        let docs = Arc::make_mut(&mut self.vector).remove(&c).unwrap_or_default();
        let mut left = Vec::new();
        for (doc, version) in docs {
            // Forgotten as acknowledged at version 0 once the client acks what follows.
            self.record(self.sent, &c, &doc, 0);
            if version > 0 {
                left.push(RemovedMessage {
                    collection: c.clone(),
                    id: doc,
                    version,
                    seq: None,
                });
            }
        }
        Ok(Unsubscribed::Left(left))
    }

    /// Remembers the client's vector under `key` (its `Principal::client_key`).
    pub fn with_key(mut self, key: String) -> Session {
        self.key = key;
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Where the client's vector is remembered.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What the session may read of `collection` (`Access::None` if it does not follow it).
    pub fn access(&self, collection: &str) -> &Access {
        match self.collections.binary_search_by(|c| c.as_str().cmp(collection)) {
            Ok(i) => &self.access[i],
            Err(_) => &Access::None,
        }
    }

    /// What a catch-up may plan (`None`: everything it follows): the documents it may read, as an
    /// owned predicate for the store, and the scopes of the collections it follows in part.
    pub fn selection(&self) -> Option<Arc<Selection>> {
        if !self.restricted && self.scoped.is_empty() {
            return None;
        }
        let readable: Option<Box<crate::plan::Readable>> = self.restricted.then(|| {
            let (collections, access) = (self.collections.clone(), self.access.clone());
            Box::new(move |collection: &str, id: &str| {
                match collections.binary_search_by(|c| c.as_str().cmp(collection)) {
                    Ok(i) => access[i].allows(id),
                    Err(_) => false,
                }
            }) as Box<crate::plan::Readable>
        });
        Some(Arc::new(Selection {
            readable,
            scopes: self.scoped.clone(),
        }))
    }

    /// Whether the session may be told about `collection/id`.
    pub fn readable(&self, collection: &str, id: &str) -> bool {
        self.access(collection).allows(id)
    }

    /// Applies a replaced token's grants (`access_of` for each followed collection): a collection
    /// it cannot read at all is dropped (returned, so the client can be told), and documents it
    /// can no longer read leave the vector and what waits for an acknowledgement — the client is
    /// sent nothing more about them.
    pub fn reauthorize(&mut self, access_of: impl Fn(&str) -> Access) -> Vec<String> {
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        for (c, _) in std::mem::take(&mut self.collections)
            .into_iter()
            .zip(std::mem::take(&mut self.access))
        {
            let access = access_of(&c);
            if access.is_none() {
                Arc::make_mut(&mut self.vector).remove(&c);
                if let Some(docs) = self.unacked.remove(&c) {
                    self.unacked_len -= docs.len();
                }
                dropped.push(c);
            } else {
                kept.push((c, access));
            }
        }
        self.subscriptions.retain(|s| !dropped.contains(&s.collection));
        self.derive(kept.into_iter().collect());
        for (c, a) in self.collections.iter().zip(&self.access) {
            if *a == Access::All {
                continue;
            }
            if let Some(docs) = Arc::make_mut(&mut self.vector).get_mut(c) {
                docs.retain(|id, _| a.allows(id));
            }
            if let Some(docs) = self.unacked.get_mut(c) {
                let before = docs.len();
                docs.retain(|id, _| a.allows(id));
                self.unacked_len -= before - docs.len();
            }
        }
        dropped
    }

    pub fn collections(&self) -> &[String] {
        &self.collections
    }

    pub fn vector(&self) -> &StateVector {
        &self.vector
    }

    /// The vector, shared (for a catch-up read).
    pub fn shared_vector(&self) -> Arc<StateVector> {
        Arc::clone(&self.vector)
    }

    pub fn position(&self) -> Seq {
        self.position
    }

    /// Replaces what the server believes the client has (a `sync` with a vector). Entries for
    /// documents the session may not read are dropped: the catch-up is planned without them, so
    /// the client learns nothing about those documents, not even that its version is stale.
    pub fn reset_vector(&mut self, mut vector: StateVector) {
        vector.retain(|c, _| self.collections.binary_search(c).is_ok());
        for (c, a) in self.collections.iter().zip(&self.access) {
            let docs = vector.entry(c.clone()).or_default();
            if *a != Access::All {
                docs.retain(|id, _| a.allows(id));
            }
        }
        self.vector = Arc::new(vector);
    }

    /// Records a catch-up that was sent: the vector and position it brought the client to.
    pub fn caught_up(&mut self, c: &CatchUp) {
        self.took(c);
        self.position = self.position.max(c.position);
        self.covered.retain(|_, p| *p > c.position);
    }

    /// Records the catch-up of one collection's scopes (a live `subscribe`'s, or what an
    /// `unsubscribe` left): its documents are current to its position, but the session's position
    /// stays — live events of the other collections below it may still be on their way. Events
    /// of this collection at or below it are skipped: the catch-up covered them.
    pub fn caught_up_scope(&mut self, collection: &str, c: &CatchUp) {
        self.took(c);
        if c.position > self.position {
            let p = self.covered.entry(collection.to_string()).or_insert(c.position);
            *p = (*p).max(c.position);
        }
    }

    fn took(&mut self, c: &CatchUp) {
        for (collection, docs) in &c.changes {
            let vector = Arc::make_mut(&mut self.vector);
            let before = match vector.get_mut(collection) {
                Some(before) => before,
                None => vector.entry(collection.clone()).or_default(),
            };
            let mut changed = Vec::new();
            for (id, v) in docs {
                let was = if *v == 0 {
                    before.remove(id)
                } else {
                    before.insert(id.clone(), *v)
                };
                if was.unwrap_or(0) != *v {
                    changed.push((id, *v));
                }
            }
            for (id, v) in changed {
                self.record(c.position, collection, id, v);
            }
        }
        self.sent = self.sent.max(c.position);
    }

    /// Remembers a change as sent and not yet acknowledged.
    fn record(&mut self, position: Seq, collection: &str, id: &str, version: Version) {
        if self.unacked_len >= MAX_UNACKED {
            // Forgetting costs a resend on resume (the persisted vector lags), never a loss.
            self.unacked.clear();
            self.unacked_len = 0;
        }
        let docs = match self.unacked.get_mut(collection) {
            Some(docs) => docs,
            None => self.unacked.entry(collection.to_string()).or_default(),
        };
        match docs.get_mut(id) {
            Some(entry) => *entry = (position, version),
            None => {
                docs.insert(id.to_string(), (position, version));
                self.unacked_len += 1;
            }
        }
    }

    /// The `synced` message for a catch-up just recorded with [`Session::caught_up`], holding the
    /// session's vector itself — moved into it, not copied (a million documents' vector is tens of
    /// megabytes); [`Session::synced_sent`] takes it back. Its collections are the session's (an
    /// empty one for a collection with no documents).
    pub fn lend_synced(&mut self, c: &CatchUp) -> ServerMessage {
        let mut vector = std::mem::take(Arc::make_mut(&mut self.vector));
        for collection in &self.collections {
            if !vector.contains_key(collection) {
                vector.insert(collection.clone(), BTreeMap::new());
            }
        }
        ServerMessage::Synced(SyncedMessage {
            seq: c.position,
            state_vector: vector,
            snapshots: c.snapshots,
            events: c.events,
            subscription: None,
        })
    }

    /// Takes back the vector lent to a `synced` ([`Session::lend_synced`]) once it is sent.
    pub fn synced_sent(&mut self, synced: ServerMessage) {
        if let ServerMessage::Synced(m) = synced {
            self.vector = Arc::new(m.state_vector);
        }
    }

    /// The `synced` that ends a live `subscribe`'s catch-up: its collection's vector, and its id.
    pub fn synced_subscription(&self, c: &CatchUp, subscription: &Scope) -> ServerMessage {
        let collections = [subscription.collection.clone()];
        ServerMessage::Synced(SyncedMessage {
            seq: c.position,
            state_vector: restrict(&self.vector, &collections),
            snapshots: c.snapshots,
            events: c.events,
            subscription: Some(subscription.id.clone()),
        })
    }

    /// Decides about a live event; when it is to be sent, records it as sent.
    pub fn live(&mut self, e: &Event) -> Live {
        // Not restricted (every followed collection readable whole): one branch, no lookup.
        if self.restricted && !self.readable(&e.collection, &e.id) {
            return Live::Skip;
        }
        let Some(docs) = Arc::make_mut(&mut self.vector).get_mut(&e.collection) else {
            return Live::Skip;
        };
        if e.seq <= self.position || self.covered.get(&e.collection).is_some_and(|p| e.seq <= *p) {
            return Live::Skip;
        }
        let have = docs.get(&e.id).copied().unwrap_or(0);
        if e.version <= have {
            return Live::Skip;
        }
        if let Some(scopes) = self.scoped.get(&e.collection) {
            match scopes.live(e, have > 0) {
                scope::Live::In => {}
                scope::Live::Out if have > 0 => return Live::Remove,
                scope::Live::Out => return Live::Skip,
                scope::Live::Recheck => return Live::Recheck,
            }
        }
        // A create may follow a deletion the client never saw only if it has nothing of the document.
        let follows = e.version == have + 1 || (e.op == Op::Create && have == 0);
        if !follows {
            return Live::Gap;
        }
        match docs.get_mut(&e.id) {
            Some(v) => *v = e.version,
            None => {
                docs.insert(e.id.clone(), e.version);
            }
        }
        self.sent = self.sent.max(e.seq);
        self.record(e.seq, &e.collection, &e.id, e.version);
        Live::Send
    }

    /// After [`Live::Remove`]: the client is to drop the document; the `removed` message.
    pub fn removed(&mut self, e: &Event) -> ServerMessage {
        if let Some(docs) = Arc::make_mut(&mut self.vector).get_mut(&e.collection) {
            docs.remove(&e.id);
        }
        self.sent = self.sent.max(e.seq);
        self.record(e.seq, &e.collection, &e.id, 0);
        ServerMessage::Removed(RemovedMessage {
            collection: e.collection.clone(),
            id: e.id.clone(),
            version: e.version,
            seq: Some(e.seq),
        })
    }

    /// After [`Live::Recheck`] on `e`, with the document as stored now (read after `e` was
    /// committed, so at `e`'s version or later): what to send — the event itself when the
    /// document is in and the event follows what the client has, a snapshot when it is in and
    /// the client's copy is older (it moved in, or moved on since), `removed` when it is out and
    /// the client has it, else nothing.
    pub fn rechecked(&mut self, e: &Event, stored: Option<&StoredDoc>) -> Recheck {
        let Some(scopes) = self.scoped.get(&e.collection) else {
            return Recheck::Nothing;
        };
        let have = self
            .vector
            .get(&e.collection)
            .and_then(|d| d.get(&e.id))
            .copied()
            .unwrap_or(0);
        let live = stored.filter(|s| !s.deleted && scopes.recheck(&e.id, have > 0, &s.doc.data));
        match live {
            Some(s) if s.doc.version <= have => Recheck::Nothing,
            Some(s) if s.doc.version == e.version && e.version == have + 1 => {
                self.sent_live(e);
                Recheck::Event
            }
            Some(s) => {
                let (collection, id, version) = (e.collection.clone(), e.id.clone(), s.doc.version);
                if let Some(docs) = Arc::make_mut(&mut self.vector).get_mut(&collection) {
                    docs.insert(id.clone(), version);
                }
                self.sent = self.sent.max(e.seq);
                self.record(e.seq, &collection, &id, version);
                Recheck::Send(ServerMessage::Snapshot(SnapshotMessage {
                    collection,
                    id,
                    version,
                    data: Some(s.doc.data.clone()),
                    deleted: false,
                }))
            }
            None if have > 0 => Recheck::Send(self.removed(e)),
            None => Recheck::Nothing,
        }
    }

    /// Records a live event as sent.
    fn sent_live(&mut self, e: &Event) {
        if let Some(docs) = Arc::make_mut(&mut self.vector).get_mut(&e.collection) {
            match docs.get_mut(&e.id) {
                Some(v) => *v = e.version,
                None => {
                    docs.insert(e.id.clone(), e.version);
                }
            }
        }
        self.sent = self.sent.max(e.seq);
        self.record(e.seq, &e.collection, &e.id, e.version);
    }

    /// The client acknowledged everything up to `seq`.
    pub fn ack(&mut self, seq: Seq) {
        for (collection, docs) in &mut self.unacked {
            let acked = &mut self.acked;
            let before = docs.len();
            docs.retain(|id, (position, version)| {
                if *position > seq {
                    return true;
                }
                acked
                    .entry(collection.clone())
                    .or_default()
                    .insert(id.clone(), *version);
                false
            });
            self.unacked_len -= before - docs.len();
        }
        let pos = seq.min(self.sent);
        self.acked_position = Some(self.acked_position.map_or(pos, |p| p.max(pos)));
    }

    /// Acknowledged changes not yet persisted, with their position; `None` if there are none.
    pub fn take_acked(&mut self) -> Option<(Seq, StateVector)> {
        let position = self.acked_position.take()?;
        Some((position, std::mem::take(&mut self.acked)))
    }

    /// Counts a bad message; true when the connection has now misbehaved too often.
    pub fn violation(&mut self) -> bool {
        self.violations += 1;
        self.violations >= MAX_VIOLATIONS
    }

    /// Whether acknowledged changes wait to be persisted.
    pub fn has_acked(&self) -> bool {
        self.acked_position.is_some()
    }
}

/// What a [`Live::Recheck`] comes to ([`Session::rechecked`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Recheck {
    /// Send the event itself.
    Event,
    /// Send this instead (a snapshot or `removed`).
    Send(ServerMessage),
    Nothing,
}

/// Restricts a vector to some collections (what `POST /api/sync` and `synced` report).
pub fn restrict(vector: &StateVector, collections: &[String]) -> StateVector {
    collections
        .iter()
        .map(|c| (c.clone(), vector.get(c).cloned().unwrap_or_else(BTreeMap::new)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::grants::IdPattern;
    use crate::time::Timestamp;

    fn ev(seq: Seq, id: &str, version: Version, op: Op) -> Event {
        Event {
            seq,
            collection: "games".into(),
            id: id.into(),
            version,
            op,
            patch: json_patch::Patch(vec![]),
            client_id: "c".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        }
    }

    fn vector(entries: &[(&str, Version)]) -> StateVector {
        let docs = entries.iter().map(|(id, v)| (id.to_string(), *v)).collect();
        [("games".to_string(), docs)].into()
    }

    fn session() -> Session {
        Session::unrestricted("c1".into(), &["games".to_string()], StateVector::new())
    }

    /// A session that may read only the `alice-` documents of `games`.
    fn alices() -> Session {
        let access = Access::Some(vec![IdPattern::Prefix("alice-".into())]);
        Session::new(
            "c1".into(),
            vec![(Scope::whole("games"), access)],
            StateVector::new(),
        )
    }

    /// A catch-up to `position` whose changes are `v`'s entries (version 0: removed).
    fn catch_up(position: Seq, v: StateVector) -> CatchUp {
        CatchUp {
            position,
            messages: vec![],
            changes: v.into_iter().map(|(c, d)| (c, d.into_iter().collect())).collect(),
            snapshots: 0,
            events: 0,
            complete: true,
            resume: None,
        }
    }

    #[test]
    fn live_events_at_or_below_the_catch_up_position_are_skipped() {
        let mut s = session();
        s.caught_up(&catch_up(10, vector(&[("a", 3)])));
        assert_eq!(s.live(&ev(9, "b", 1, Op::Create)), Live::Skip);
        assert_eq!(s.live(&ev(10, "a", 3, Op::Update)), Live::Skip);
        assert_eq!(s.live(&ev(11, "a", 4, Op::Update)), Live::Send);
        assert_eq!(s.vector()["games"]["a"], 4);
    }

    #[test]
    fn synced_lends_the_vector_and_gets_it_back() {
        let mut s = Session::unrestricted(
            "c".into(),
            &["games".to_string(), "notes".to_string()],
            StateVector::new(),
        );
        let c = catch_up(7, vector(&[("a", 3)]));
        s.caught_up(&c);
        let synced = s.lend_synced(&c);
        let ServerMessage::Synced(m) = &synced else {
            panic!("{synced:?}")
        };
        assert_eq!(m.seq, 7);
        assert_eq!(m.state_vector["games"]["a"], 3);
        assert!(
            m.state_vector["notes"].is_empty(),
            "every collection, the empty ones too"
        );
        s.synced_sent(synced);
        assert_eq!(s.vector()["games"]["a"], 3);
        assert_eq!(s.live(&ev(8, "a", 4, Op::Update)), Live::Send);
    }

    #[test]
    fn duplicates_are_skipped_and_gaps_detected() {
        let mut s = session();
        s.caught_up(&catch_up(5, vector(&[("a", 2)])));
        assert_eq!(s.live(&ev(6, "a", 2, Op::Update)), Live::Skip);
        assert_eq!(s.live(&ev(7, "a", 4, Op::Update)), Live::Gap);
        assert_eq!(s.live(&ev(8, "a", 3, Op::Update)), Live::Send);
    }

    #[test]
    fn other_collections_are_not_forwarded() {
        let mut s = session();
        let mut e = ev(1, "a", 1, Op::Create);
        e.collection = "other".into();
        assert_eq!(s.live(&e), Live::Skip);
    }

    #[test]
    fn a_recreated_document_follows_only_what_the_client_has() {
        let mut s = session();
        s.caught_up(&catch_up(1, vector(&[])));
        assert_eq!(s.live(&ev(2, "n", 1, Op::Create)), Live::Send);
        assert_eq!(s.live(&ev(3, "n", 2, Op::Delete)), Live::Send);
        assert_eq!(s.live(&ev(4, "n", 3, Op::Create)), Live::Send);
        // A create at a high version for an unknown document (recreated before we subscribed).
        assert_eq!(s.live(&ev(5, "m", 7, Op::Create)), Live::Send);
        // An update at a high version for an unknown document is a gap.
        assert_eq!(s.live(&ev(6, "z", 7, Op::Update)), Live::Gap);
    }

    #[test]
    fn acks_move_sent_changes_to_the_persisted_vector_in_order() {
        let mut s = session();
        s.caught_up(&catch_up(10, vector(&[("a", 3), ("b", 1)])));
        assert_eq!(s.live(&ev(11, "a", 4, Op::Update)), Live::Send);
        assert_eq!(s.live(&ev(12, "b", 2, Op::Update)), Live::Send);
        assert_eq!(s.take_acked(), None);
        s.ack(11);
        let (pos, acked) = s.take_acked().unwrap();
        assert_eq!(pos, 11);
        // b's v1 (from the catch-up) was superseded by the unacknowledged v2: only a moves.
        assert_eq!(acked, vector(&[("a", 4)]));
        s.ack(12);
        assert_eq!(s.take_acked().unwrap(), (12, vector(&[("b", 2)])));
        // Acking beyond what was sent acknowledges only what was sent.
        s.ack(1000);
        assert_eq!(s.take_acked().unwrap().0, 12);
    }

    #[test]
    fn a_catch_up_that_removes_a_document_is_acknowledged_as_version_zero() {
        let mut s = Session::unrestricted("c".into(), &["games".to_string()], vector(&[("ghost", 4)]));
        s.caught_up(&catch_up(3, vector(&[("ghost", 0)])));
        s.ack(3);
        assert_eq!(s.take_acked().unwrap(), (3, vector(&[("ghost", 0)])));
    }

    #[test]
    fn the_vector_is_restricted_to_subscriptions() {
        let mut v = vector(&[("a", 1)]);
        v.insert("other".into(), [("x".to_string(), 2)].into());
        let s = Session::unrestricted("c".into(), &["games".to_string(), "games".to_string()], v);
        assert_eq!(s.collections(), ["games".to_string()]);
        assert!(!s.vector().contains_key("other"));
    }

    #[test]
    fn live_events_of_unreadable_documents_are_skipped() {
        let mut s = alices();
        s.caught_up(&catch_up(1, vector(&[])));
        assert_eq!(s.live(&ev(2, "bob-1", 1, Op::Create)), Live::Skip);
        assert_eq!(s.live(&ev(3, "alice-1", 1, Op::Create)), Live::Send);
        // Unreadable documents never enter the vector, so their updates cannot look like gaps.
        assert_eq!(s.live(&ev(4, "bob-1", 2, Op::Update)), Live::Skip);
        assert_eq!(s.vector()["games"].keys().collect::<Vec<_>>(), ["alice-1"]);
    }

    #[test]
    fn vector_entries_of_unreadable_documents_are_dropped() {
        let mut s = alices();
        s.reset_vector(vector(&[("alice-1", 2), ("bob-1", 7)]));
        assert_eq!(s.vector(), &vector(&[("alice-1", 2)]));
        assert!(s.readable("games", "alice-9"));
        assert!(!s.readable("games", "bob-1"));
        assert!(!s.readable("other", "alice-1"));
    }

    #[test]
    fn collections_that_cannot_be_read_are_not_followed() {
        let s = Session::new(
            "c".into(),
            vec![
                (Scope::whole("games"), Access::All),
                (Scope::whole("secret"), Access::None),
            ],
            StateVector::new(),
        );
        assert_eq!(s.collections(), ["games".to_string()]);
        assert_eq!(s.access("secret"), &Access::None);
    }

    #[test]
    fn a_narrower_token_drops_collections_and_documents() {
        let mut s = Session::unrestricted(
            "c".into(),
            &["games".to_string(), "chat".to_string()],
            StateVector::new(),
        );
        let mut v = vector(&[("alice-1", 1), ("bob-1", 1)]);
        v.insert("chat".into(), [("x".to_string(), 1)].into());
        s.caught_up(&catch_up(5, v));
        assert_eq!(s.live(&ev(6, "bob-1", 2, Op::Update)), Live::Send);
        let dropped = s.reauthorize(|c| match c {
            "games" => Access::Some(vec![IdPattern::Prefix("alice-".into())]),
            _ => Access::None,
        });
        assert_eq!(dropped, ["chat".to_string()]);
        assert_eq!(s.collections(), ["games".to_string()]);
        assert_eq!(s.vector(), &vector(&[("alice-1", 1)]));
        let mut chat = ev(7, "x", 2, Op::Update);
        chat.collection = "chat".into();
        assert_eq!(s.live(&chat), Live::Skip);
        assert_eq!(s.live(&ev(8, "bob-1", 3, Op::Update)), Live::Skip);
        assert_eq!(s.live(&ev(9, "alice-1", 2, Op::Update)), Live::Send);
        // What was sent of bob-1 and not acknowledged is forgotten, not persisted later.
        s.ack(9);
        let (_, acked) = s.take_acked().unwrap();
        assert_eq!(acked, vector(&[("alice-1", 2)]));
    }

    #[test]
    fn the_key_defaults_to_the_client_id() {
        assert_eq!(session().key(), "c1");
        assert_eq!(session().with_key("alice/c1".into()).key(), "alice/c1");
    }

    #[test]
    fn violations_add_up_to_a_close() {
        let mut s = session();
        for _ in 1..MAX_VIOLATIONS {
            assert!(!s.violation());
        }
        assert!(s.violation());
    }

    #[test]
    fn hellos_are_validated() {
        let ok = Hello {
            client_id: "c1".into(),
            subscribe: vec!["games".into()],
            state_vector: Some(vector(&[("a", 1)])),
            token: None,
        };
        assert_eq!(validate_hello(&ok), Ok(()));
        let bad_id = Hello {
            client_id: "a b".into(),
            ..ok.clone()
        };
        assert_eq!(validate_hello(&bad_id).unwrap_err().code(), "invalid_client_id");
        let bad_sub = Hello {
            subscribe: vec!["2x".into()],
            ..ok.clone()
        };
        assert_eq!(
            validate_hello(&bad_sub).unwrap_err().code(),
            "invalid_subscription"
        );
        let too_many = Hello {
            subscribe: (0..=MAX_SUBSCRIPTIONS)
                .map(|i| Subscription::Collection(format!("c{i}")))
                .collect(),
            ..ok.clone()
        };
        assert_eq!(
            validate_hello(&too_many).unwrap_err().code(),
            "invalid_subscription"
        );
        let mut v = vector(&[]);
        v.get_mut("games").unwrap().insert("bad id".into(), 1);
        let bad_vec = Hello {
            state_vector: Some(v),
            ..ok
        };
        assert_eq!(
            validate_hello(&bad_vec).unwrap_err().code(),
            "invalid_state_vector"
        );
    }
}
