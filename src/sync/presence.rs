//! Presence and ephemeral messages — seed 002's "who is online": **join → members → join/update/
//! leave → broadcast**. Nothing here is stored: it lives in this node's memory, as long as the
//! sessions that made it.
//!
//! A channel is a collection (`chat`) or a document (`games/g1`) that the session's token may
//! read. A session `join`s it with a small public state (`{"name": "ann", "typing": false}`) and
//! is answered `presence` `sync` with every member; the others get `join`, and later `update`
//! and `leave` — `leave` also when the session ends for any reason (a closed socket, a dead one
//! past its heartbeat deadline, shutdown), since the session's [`Ephemeral`] leaves on drop.
//! `broadcast` sends a message to the channel's other members (typing indicators, cursors).
//!
//! Bounds, each named: [`MAX_CHANNELS`] per session, [`MAX_MEMBERS`] per channel,
//! [`MAX_STATE_BYTES`] of state, [`MAX_BROADCAST_BYTES`] per broadcast, [`RATE`] presence
//! updates and broadcasts per second per session (a GCRA bucket from `governor`, as the write
//! rate), and [`QUEUE`] messages waiting per member — a member that does not read them misses
//! the newest ones rather than holding memory (they are ephemeral by definition; its own `join`
//! answer and the members it gets on a new `join` are always exact).
//!
//! One node's members see one another. Sessions on other nodes of a shared MongoDB are not
//! members of the same channel yet (see docs/PROTOCOL.md, "Presence").

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::protocol::{Member, PresenceEvent, ServerMessage};
use super::session::ProtocolError;
use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::model::{validate_collection, validate_id};

pub use super::protocol::presence_limits::{MAX_BROADCAST_BYTES, MAX_CHANNELS, MAX_STATE_BYTES};
/// Members one channel may have.
pub const MAX_MEMBERS: usize = 1000;
/// Presence updates and broadcasts per second per session (twice as many in a burst).
pub const RATE: u32 = 20;
/// Messages waiting for one member; beyond, the newest are dropped for it.
pub const QUEUE: usize = 256;

/// Every channel of this node.
#[derive(Default)]
pub struct Presence {
    channels: Mutex<HashMap<String, BTreeMap<String, Entry>>>,
}

struct Entry {
    member: Member,
    tx: mpsc::Sender<Arc<ServerMessage>>,
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Entry>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Members of `channel` now (for tests and the health of a channel).
    pub fn members(&self, channel: &str) -> Vec<Member> {
        self.lock()
            .get(channel)
            .map(|m| m.values().map(|e| e.member.clone()).collect())
            .unwrap_or_default()
    }

    /// Sends `msg` to every member of `channel` but `except`.
    fn tell(members: &BTreeMap<String, Entry>, except: &str, msg: ServerMessage) {
        let msg = Arc::new(msg);
        for (id, e) in members {
            if id != except {
                // Full: the member is not reading; ephemeral news is dropped for it.
                let _ = e.tx.try_send(Arc::clone(&msg));
            }
        }
    }
}

/// One session's part in presence: its member id, its channels, its queue of news and its rate.
pub struct Ephemeral {
    presence: Arc<Presence>,
    id: String,
    client_id: String,
    tx: mpsc::Sender<Arc<ServerMessage>>,
    rx: mpsc::Receiver<Arc<ServerMessage>>,
    joined: Vec<String>,
    rate: DefaultDirectRateLimiter,
}

impl Ephemeral {
    pub fn new(presence: Arc<Presence>, client_id: &str) -> Ephemeral {
        let (tx, rx) = mpsc::channel(QUEUE);
        let per_second = NonZeroU32::new(RATE).expect("a positive rate");
        let burst = NonZeroU32::new(RATE * 2).expect("a positive burst");
        Ephemeral {
            presence,
            id: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
            client_id: client_id.to_string(),
            tx,
            rx,
            joined: Vec::new(),
            rate: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// The next message from the channels this session is in. Cancel-safe.
    pub async fn next(&mut self) -> Option<Arc<ServerMessage>> {
        self.rx.recv().await
    }

    fn member(&self, user: Option<&str>, state: Map<String, Value>) -> Member {
        Member {
            member: self.id.clone(),
            client_id: self.client_id.clone(),
            user: user.map(str::to_string),
            state,
        }
    }

    /// `join`: the answer (`presence` `sync`), after telling the others.
    pub fn join(
        &mut self,
        principal: &Principal,
        channel: &str,
        state: Option<Map<String, Value>>,
    ) -> Result<ServerMessage, ProtocolError> {
        check_channel(principal, channel)?;
        let state = state.unwrap_or_default();
        check_size("state", &Value::Object(state.clone()), MAX_STATE_BYTES)?;
        if self.joined.iter().any(|c| c == channel) {
            return Err(invalid(format!(
                "already in '{channel}': send presence to change the state"
            )));
        }
        if self.joined.len() >= MAX_CHANNELS {
            return Err(invalid(format!("at most {MAX_CHANNELS} channels per session")));
        }
        let member = self.member(principal.subject(), state);
        let mut channels = self.presence.lock();
        let members = channels.entry(channel.to_string()).or_default();
        if members.len() >= MAX_MEMBERS {
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!("'{channel}' has {MAX_MEMBERS} members already"),
            ));
        }
        Presence::tell(members, &self.id, news(channel, PresenceEvent::Join, &member));
        members.insert(
            self.id.clone(),
            Entry {
                member,
                tx: self.tx.clone(),
            },
        );
        let all = members.values().map(|e| e.member.clone()).collect();
        self.joined.push(channel.to_string());
        Ok(ServerMessage::Presence {
            channel: channel.to_string(),
            event: PresenceEvent::Sync,
            member: None,
            members: Some(all),
        })
    }

    /// `presence`: a new state, told to the others.
    pub fn update(&mut self, channel: &str, state: Map<String, Value>) -> Result<(), ProtocolError> {
        self.joined_to(channel)?;
        check_size("state", &Value::Object(state.clone()), MAX_STATE_BYTES)?;
        self.spend()?;
        let mut channels = self.presence.lock();
        let Some(members) = channels.get_mut(channel) else {
            return Err(invalid(format!("not in '{channel}'")));
        };
        let Some(me) = members.get_mut(&self.id) else {
            return Err(invalid(format!("not in '{channel}'")));
        };
        me.member.state = state;
        let member = me.member.clone();
        Presence::tell(members, &self.id, news(channel, PresenceEvent::Update, &member));
        Ok(())
    }

    /// `broadcast`: to the others, never stored.
    pub fn broadcast(&mut self, channel: &str, data: Value) -> Result<(), ProtocolError> {
        self.joined_to(channel)?;
        check_size("data", &data, MAX_BROADCAST_BYTES)?;
        self.spend()?;
        let channels = self.presence.lock();
        let Some(members) = channels.get(channel) else {
            return Err(invalid(format!("not in '{channel}'")));
        };
        let Some(me) = members.get(&self.id) else {
            return Err(invalid(format!("not in '{channel}'")));
        };
        let msg = ServerMessage::Broadcast {
            channel: channel.to_string(),
            from: Box::new(me.member.clone()),
            data,
        };
        Presence::tell(members, &self.id, msg);
        Ok(())
    }

    /// `leave` (or the session's end): the others are told.
    pub fn leave(&mut self, channel: &str) -> Result<(), ProtocolError> {
        let Some(i) = self.joined.iter().position(|c| c == channel) else {
            return Err(invalid(format!("not in '{channel}'")));
        };
        self.joined.remove(i);
        let mut channels = self.presence.lock();
        if let Some(members) = channels.get_mut(channel) {
            if let Some(me) = members.remove(&self.id) {
                Presence::tell(members, &self.id, news(channel, PresenceEvent::Leave, &me.member));
            }
            if members.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    /// Leaves the channels the token may no longer read (after an `auth`); their names.
    pub fn reauthorize(&mut self, principal: &Principal) -> Vec<String> {
        let lost: Vec<String> = self
            .joined
            .iter()
            .filter(|c| check_channel(principal, c).is_err())
            .cloned()
            .collect();
        for c in &lost {
            let _ = self.leave(c);
        }
        lost
    }

    fn joined_to(&self, channel: &str) -> Result<(), ProtocolError> {
        if self.joined.iter().any(|c| c == channel) {
            Ok(())
        } else {
            Err(invalid(format!("not in '{channel}': join it first")))
        }
    }

    fn spend(&self) -> Result<(), ProtocolError> {
        self.rate.check().map_err(|_| {
            ProtocolError::new(
                ErrorCode::RateLimited,
                format!("at most {RATE} presence updates and broadcasts per second"),
            )
        })
    }
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        while let Some(c) = self.joined.last().cloned() {
            let _ = self.leave(&c);
        }
    }
}

fn news(channel: &str, event: PresenceEvent, member: &Member) -> ServerMessage {
    ServerMessage::Presence {
        channel: channel.to_string(),
        event,
        member: Some(Box::new(member.clone())),
        members: None,
    }
}

fn invalid(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidMessage, message)
}

fn check_size(what: &str, v: &Value, max: usize) -> Result<(), ProtocolError> {
    let n = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
    if n > max {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            format!("{what}: at most {max} bytes of JSON, not {n}"),
        ));
    }
    Ok(())
}

/// A channel is `collection` or `collection/id`, and the token may read it.
fn check_channel(principal: &Principal, channel: &str) -> Result<(), ProtocolError> {
    let bad = |e: String| ProtocolError::new(ErrorCode::InvalidMessage, format!("channel: {e}"));
    let denied = |e: crate::auth::AuthError| ProtocolError::new(e.code, e.message);
    match channel.split_once('/') {
        None => {
            validate_collection(channel).map_err(|e| bad(e.to_string()))?;
            principal.check_read_collection(channel).map_err(denied)?;
        }
        Some((c, id)) => {
            validate_collection(c).map_err(|e| bad(e.to_string()))?;
            validate_id(id).map_err(|e| bad(e.to_string()))?;
            principal.check_read(c, id).map_err(denied)?;
        }
    }
    Ok(())
}
