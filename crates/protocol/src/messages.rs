//! The sync protocol's messages — JSON text, each with a `type`. `docs/PROTOCOL.md` is the
//! reference with an example exchange per message; this module is its implementation, used by the
//! server, the Rust client and the tests alike (the server re-exports it as `sync::protocol`).
//!
//! Client → server: [`ClientMessage`] (`hello`, `auth`, `sync`, `subscribe`, `unsubscribe`,
//! `write`, `ack`, `ping`).
//! Server → client: [`ServerMessage`] (`snapshot`, `event`, `removed`, `synced`, `unsubscribed`,
//! `result`, `error`, `pong`, `authenticated`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ErrorBody, ErrorCode};
use crate::model::{Data, Event, Seq, Version};

/// What a client has applied: collection → document id → version. A deleted document stays in the
/// vector with the version of its delete, so that a reconnect does not resend the delete.
pub type StateVector = BTreeMap<String, BTreeMap<String, Version>>;

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first message on a WebSocket: who the client is, what it follows, what it has.
    Hello(Hello),
    /// Replaces the session's token (before it expires, or to change its scope): answered with
    /// `authenticated`, or `error` (`unauthenticated`: the old token stays in force; `forbidden`:
    /// a token of another subject — a session is bound to its subject).
    Auth { token: String },
    /// A manual re-sync: the server answers with what brings the client current, then `synced`.
    /// With a vector, that vector replaces the server's idea of what the client has.
    Sync {
        #[serde(default)]
        state_vector: Option<StateVector>,
    },
    /// Adds a subscription to a live session: answered with that scope's catch-up and a `synced`
    /// naming it (or an `error`).
    Subscribe { subscription: Subscription },
    /// Ends the subscription with this id: documents that leave every remaining scope arrive as
    /// `removed`, then `unsubscribed`.
    Unsubscribe { id: String },
    /// Joins a presence channel (`games` — a collection — or `games/g1` — a document — that the
    /// token may read) with a small public state: answered with `presence` `sync` (the members),
    /// the others get `join`.
    Join {
        channel: String,
        #[serde(default)]
        state: Option<Map<String, Value>>,
    },
    /// Replaces this session's state in a channel it joined: the others get `update`.
    Presence {
        channel: String,
        state: Map<String, Value>,
    },
    /// Leaves a channel: the others get `leave` (as they do when the session ends).
    Leave { channel: String },
    /// An ephemeral message to the channel's other members (typing, cursors): never stored.
    Broadcast { channel: String, data: Value },
    /// A write, answered by a `result` with the same `op_id`.
    Write(WriteMessage),
    /// The client has applied everything up to this position (an event's `seq`, or a `synced`'s).
    Ack { seq: Seq },
    /// Application-level ping, answered by `pong` with the same `id`.
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub client_id: String,
    /// What to follow: collections by name, or scopes.
    #[serde(default)]
    pub subscribe: Vec<Subscription>,
    /// What the client has; absent means "resume from what the server last saw acknowledged"
    /// (or nothing, for a new client). An empty vector means "I have nothing".
    #[serde(default)]
    pub state_vector: Option<StateVector>,
    /// The session's token (a JWT) when the server runs with `--auth jwt`; ignored with
    /// `--auth none`. A WebSocket has no other place for it: browsers cannot set its headers.
    #[serde(default)]
    pub token: Option<String>,
}

/// A subscription: a whole collection by name (`"games"`, whose subscription id is the name), or a
/// [`Scope`] that narrows one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Subscription {
    Collection(String),
    Scope(Scope),
}

impl Subscription {
    /// The subscription's id: a scope's client-chosen one, a collection's name.
    pub fn id(&self) -> &str {
        match self {
            Subscription::Collection(c) => c,
            Subscription::Scope(s) => &s.id,
        }
    }

    pub fn collection(&self) -> &str {
        match self {
            Subscription::Collection(c) => c,
            Subscription::Scope(s) => &s.collection,
        }
    }
}

impl From<&str> for Subscription {
    fn from(c: &str) -> Subscription {
        Subscription::Collection(c.to_string())
    }
}

impl<'de> Deserialize<'de> for Subscription {
    /// A string or an object — decided by the JSON's type, so that a bad scope is told what is
    /// wrong with it (an untagged enum would only say that nothing matched).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subscription, D::Error> {
        match Value::deserialize(d)? {
            Value::String(c) => Ok(Subscription::Collection(c)),
            v @ Value::Object(_) => serde_json::from_value(v)
                .map(Subscription::Scope)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "a subscription is a collection name or a scope object",
            )),
        }
    }
}

/// A collection narrowed: every condition given must hold (documents the token may not read are
/// never in any scope).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Chosen by the client, unique among its subscriptions: `synced` and `unsubscribe` name it.
    pub id: String,
    pub collection: String,
    /// Only these documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Only documents whose id starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Only documents whose body matches this filter (`docs/PROTOCOL.md`, "Filters").
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<Value>,
    /// The catch-up brings only the newest `latest` matching documents by creation; documents
    /// created afterwards arrive live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<u64>,
}

/// What a write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOp {
    /// `data` is the new document (`id` optional: generated if absent).
    Create,
    /// `data` replaces the body.
    Replace,
    /// `patch` is an RFC 6902 JSON Patch (an array).
    Patch,
    /// `patch` is an RFC 7396 merge patch (an object).
    Merge,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteMessage {
    /// Unique per write and client: a retry with the same `op_id` is applied at most once.
    pub op_id: String,
    pub op: WriteOp,
    pub collection: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
    #[serde(default)]
    pub patch: Option<Value>,
    /// Apply only at this version (optimistic concurrency); a mismatch is a `version_conflict`.
    #[serde(default)]
    pub expected_version: Option<Version>,
}

/// A document's full state at a version (or its deletion), sent when events cannot or should not be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMessage {
    pub collection: String,
    pub id: String,
    pub version: Version,
    /// The body; `null` when `deleted`.
    pub data: Option<Data>,
    /// The document is deleted at `version` (or never existed, with version 0): drop it.
    #[serde(default)]
    pub deleted: bool,
}

/// Sent when a catch-up is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncedMessage {
    /// The log position the client is now current to; acknowledge it with `ack`.
    pub seq: Seq,
    /// The client's resulting vector, for the subscribed collections.
    pub state_vector: StateVector,
    /// How many snapshots and events this catch-up sent.
    pub snapshots: u64,
    pub events: u64,
    /// The subscription a live `subscribe` added, whose catch-up this ends (absent for the
    /// hello's and a `sync`'s, which cover every subscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
}

/// A document left every scope of the client (a write made it stop matching, or its subscription
/// ended): drop it and its vector entry. Not a delete — the document may still exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedMessage {
    pub collection: String,
    pub id: String,
    /// The document's version when it left (the client's, when it left with a subscription).
    pub version: Version,
    /// The event that moved it out, when a write did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
}

/// The answer to a `write`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub op_id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The document's version after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// The event's sequence number (absent when the write changed nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    /// The answer replays an earlier write with the same `op_id`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Why the write was refused: `{code, message, ...}` as in the REST API (e.g. `current_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Presence's bounds (PROTOCOL.md §12): the server refuses beyond them, clients check them first.
pub mod presence_limits {
    /// Channels one session may be in at once.
    pub const MAX_CHANNELS: usize = 16;
    /// Bytes of a member's state (as JSON).
    pub const MAX_STATE_BYTES: usize = 1024;
    /// Bytes of a broadcast's data (as JSON).
    pub const MAX_BROADCAST_BYTES: usize = 4096;
}

/// One member of a presence channel: a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The session's id in the channel (unique per connection).
    pub member: String,
    pub client_id: String,
    /// The token's subject, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub state: Map<String, Value>,
}

/// What happened in a presence channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    /// The answer to a `join`: every member now, the joiner included (`members`).
    Sync,
    Join,
    Update,
    Leave,
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Snapshot(SnapshotMessage),
    /// An event exactly as stored in the log.
    Event(Event),
    Removed(RemovedMessage),
    Synced(SyncedMessage),
    /// The answer to an `unsubscribe`, after the `removed` messages it caused.
    Unsubscribed {
        id: String,
    },
    /// A presence channel's news: `sync` (to a joiner, with `members`), or a member's `join`,
    /// `update` or `leave` (with `member`).
    Presence {
        channel: String,
        event: PresenceEvent,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<Box<Member>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<Member>>,
    },
    /// Another member's ephemeral message (boxed: a rare message keeps every message small).
    Broadcast {
        channel: String,
        from: Box<Member>,
        data: Value,
    },
    /// The first message of an SSE stream: its id, to which the client posts its messages
    /// (`POST /sync/sse/{stream}`) — SSE's back channel.
    Stream {
        stream: String,
    },
    Result(ResultMessage),
    Error {
        code: ErrorCode,
        message: String,
        /// The subscription refused, when the error is the answer to one (a `subscribe`, or a
        /// subscription of a `hello` refused while the others proceed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subscription: Option<String>,
    },
    Pong {
        #[serde(default)]
        id: Option<Value>,
    },
    /// The answer to an `auth`: the new token is in force until `expires_at` (Unix seconds; `null`:
    /// it never expires, e.g. `--auth none`).
    Authenticated {
        #[serde(default)]
        expires_at: Option<u64>,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            subscription: None,
        }
    }

    /// The `error` refusing subscription `id`.
    pub fn refused(id: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            subscription: Some(id.into()),
        }
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }

    /// The SSE `event:` name of this message (its `type`).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Snapshot(_) => "snapshot",
            ServerMessage::Event(_) => "event",
            ServerMessage::Removed(_) => "removed",
            ServerMessage::Synced(_) => "synced",
            ServerMessage::Unsubscribed { .. } => "unsubscribed",
            ServerMessage::Presence { .. } => "presence",
            ServerMessage::Broadcast { .. } => "broadcast",
            ServerMessage::Stream { .. } => "stream",
            ServerMessage::Result(_) => "result",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Authenticated { .. } => "authenticated",
        }
    }
}

/// Serializes an event as a `{"type":"event", ...}` message — what the hub does once per event.
pub fn event_json(event: &Event) -> String {
    #[derive(Serialize)]
    struct Tagged<'a> {
        r#type: &'static str,
        #[serde(flatten)]
        event: &'a Event,
    }
    serde_json::to_string(&Tagged {
        r#type: "event",
        event,
    })
    .expect("events always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Op;
    use crate::time::Timestamp;
    use serde_json::json;

    #[test]
    fn client_messages_parse_from_the_documented_json() {
        let hello: ClientMessage = serde_json::from_value(json!({
            "type": "hello", "client_id": "c1", "subscribe": ["games"],
            "state_vector": {"games": {"g1": 3}}
        }))
        .unwrap();
        let ClientMessage::Hello(h) = hello else { panic!() };
        assert_eq!(h.state_vector.unwrap()["games"]["g1"], 3);
        let w: ClientMessage = serde_json::from_value(json!({
            "type": "write", "op_id": "o1", "op": "patch", "collection": "games", "id": "g1",
            "patch": [{"op": "replace", "path": "/gold", "value": 1}], "expected_version": 3
        }))
        .unwrap();
        assert!(matches!(
            w,
            ClientMessage::Write(WriteMessage {
                op: WriteOp::Patch,
                ..
            })
        ));
        assert_eq!(
            serde_json::from_value::<ClientMessage>(json!({"type": "ack", "seq": 9})).unwrap(),
            ClientMessage::Ack { seq: 9 }
        );
        assert_eq!(
            serde_json::from_value::<ClientMessage>(json!({"type": "sync"})).unwrap(),
            ClientMessage::Sync { state_vector: None }
        );
        assert_eq!(
            serde_json::from_value::<ClientMessage>(json!({"type": "auth", "token": "t"})).unwrap(),
            ClientMessage::Auth { token: "t".into() }
        );
    }

    #[test]
    fn authenticated_serializes_with_its_expiry_or_null() {
        let m = ServerMessage::Authenticated {
            expires_at: Some(1700000000),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type": "authenticated", "expires_at": 1700000000u64})
        );
        assert_eq!(m.kind(), "authenticated");
        let none = ServerMessage::Authenticated { expires_at: None };
        assert_eq!(
            serde_json::to_value(&none).unwrap(),
            json!({"type": "authenticated", "expires_at": null})
        );
        assert_eq!(
            serde_json::from_str::<ServerMessage>(&none.to_json()).unwrap(),
            none
        );
    }

    #[test]
    fn malformed_client_messages_are_rejected() {
        for bad in [
            json!({"type": "explode"}),
            json!({"client_id": "c"}),
            json!({"type": "hello"}),
            json!({"type": "hello", "client_id": 5}),
            json!({"type": "hello", "client_id": "c", "state_vector": {"games": {"g": "x"}}}),
            json!({"type": "hello", "client_id": "c", "state_vector": [1]}),
            json!({"type": "ack", "seq": -1}),
            json!({"type": "write", "op_id": "o", "op": "frobnicate", "collection": "g"}),
            json!({"type": "hello", "client_id": "c", "surprise": true}),
            json!({"type": "auth"}),
            json!({"type": "auth", "token": 5}),
        ] {
            assert!(
                serde_json::from_value::<ClientMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn event_json_is_the_event_with_its_type() {
        let e = Event {
            seq: 7,
            collection: "games".into(),
            id: "g1".into(),
            version: 2,
            op: Op::Update,
            patch: serde_json::from_value(json!([{"op": "replace", "path": "/a", "value": 1}])).unwrap(),
            client_id: "c".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        };
        let text = event_json(&e);
        let back: ServerMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ServerMessage::Event(e.clone()));
        assert_eq!(text, ServerMessage::Event(e).to_json());
    }
}
