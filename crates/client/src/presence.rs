//! Presence: the channels the client joined, their members as the server last said, and the
//! messages that keep them (PROTOCOL.md §12).
//!
//! Nothing here is stored or retried: presence is ephemeral on the server too. What the client
//! keeps is what it *asked for* — each joined channel and the state it last set — so that every
//! new connection joins them again (a WebSocket right after its `hello`; an SSE stream once its
//! first frame names the stream, over the back channel `POST /sync/sse/{stream}`). The members are
//! the connection's: cleared when it starts, filled by the `presence` `sync` answering each join,
//! then kept by `join` / `update` / `leave`. A [`Client::join`](super::Client::join) made offline
//! takes effect when the next connection starts.

use std::collections::BTreeMap;

use eventsync_protocol::messages::{ClientMessage, Member, PresenceEvent};
use serde_json::{Map, Value};

use super::ClientError;

// The server's bounds, checked here first so that what it would refuse never leaves the client.
use eventsync_protocol::messages::presence_limits::{MAX_BROADCAST_BYTES, MAX_CHANNELS, MAX_STATE_BYTES};

/// A channel's news, as [`Change::Presence`](super::Change::Presence) publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceChange {
    pub channel: String,
    pub event: PresenceEvent,
    /// The member that joined, updated or left (`None` for `sync`).
    pub member: Option<Member>,
    /// Every member after the change.
    pub members: Vec<Member>,
}

/// Another member's broadcast, as [`Change::Broadcast`](super::Change::Broadcast) publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastChange {
    pub channel: String,
    pub from: Member,
    pub data: Value,
}

/// The channels joined and their members.
#[derive(Debug, Default)]
pub(crate) struct Channels {
    joined: BTreeMap<String, Joined>,
}

#[derive(Debug)]
struct Joined {
    state: Map<String, Value>,
    /// By member id.
    members: BTreeMap<String, Member>,
}

fn presence_error(message: impl Into<String>) -> ClientError {
    ClientError::Presence(message.into())
}

fn check_channel(channel: &str) -> Result<(), ClientError> {
    if channel.is_empty() || channel.len() > 256 {
        return Err(presence_error("a channel is a collection or collection/id"));
    }
    Ok(())
}

fn check_size(value: &impl serde::Serialize, limit: usize, what: &str) -> Result<(), ClientError> {
    let bytes = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if bytes > limit {
        return Err(presence_error(format!(
            "{what} is {bytes} bytes; at most {limit}"
        )));
    }
    Ok(())
}

impl Channels {
    /// Joins `channel` with `state`: the message to send — for a channel already joined, the
    /// `presence` that replaces its state (the server refuses a second `join`).
    pub fn join(&mut self, channel: &str, state: Map<String, Value>) -> Result<ClientMessage, ClientError> {
        check_channel(channel)?;
        if self.joined.contains_key(channel) {
            return self.update(channel, state);
        }
        check_size(&state, MAX_STATE_BYTES, "a presence state")?;
        if self.joined.len() >= MAX_CHANNELS {
            return Err(presence_error(format!("at most {MAX_CHANNELS} channels")));
        }
        let joined = self.joined.entry(channel.to_string()).or_insert_with(|| Joined {
            state: Map::new(),
            members: BTreeMap::new(),
        });
        joined.state = state.clone();
        Ok(ClientMessage::Join {
            channel: channel.to_string(),
            state: Some(state),
        })
    }

    /// Replaces the state in a joined channel: the message to send.
    pub fn update(&mut self, channel: &str, state: Map<String, Value>) -> Result<ClientMessage, ClientError> {
        check_size(&state, MAX_STATE_BYTES, "a presence state")?;
        let joined = self
            .joined
            .get_mut(channel)
            .ok_or_else(|| presence_error(format!("'{channel}' is not joined")))?;
        joined.state = state.clone();
        Ok(ClientMessage::Presence {
            channel: channel.to_string(),
            state,
        })
    }

    /// Leaves a channel: the message to send (`None` if it was not joined).
    pub fn leave(&mut self, channel: &str) -> Option<ClientMessage> {
        self.joined.remove(channel)?;
        Some(ClientMessage::Leave {
            channel: channel.to_string(),
        })
    }

    /// A broadcast to a joined channel: the message to send.
    pub fn broadcast(&self, channel: &str, data: Value) -> Result<ClientMessage, ClientError> {
        check_size(&data, MAX_BROADCAST_BYTES, "a broadcast")?;
        if !self.joined.contains_key(channel) {
            return Err(presence_error(format!("'{channel}' is not joined")));
        }
        Ok(ClientMessage::Broadcast {
            channel: channel.to_string(),
            data,
        })
    }

    /// A new connection: the members it knows are none yet; the joins it sends.
    pub fn rejoin(&mut self) -> Vec<ClientMessage> {
        self.joined
            .iter_mut()
            .map(|(channel, j)| {
                j.members.clear();
                ClientMessage::Join {
                    channel: channel.clone(),
                    state: Some(j.state.clone()),
                }
            })
            .collect()
    }

    /// The members of a joined channel, by member id (`None` if not joined).
    pub fn members(&self, channel: &str) -> Option<Vec<Member>> {
        Some(self.joined.get(channel)?.members.values().cloned().collect())
    }

    /// Applies a `presence` message; the change to publish (`None` for a channel not joined —
    /// left meanwhile — or a message that says nothing).
    pub fn on_presence(
        &mut self,
        channel: String,
        event: PresenceEvent,
        member: Option<Member>,
        members: Option<Vec<Member>>,
    ) -> Option<PresenceChange> {
        let joined = self.joined.get_mut(&channel)?;
        match (event, &member) {
            (PresenceEvent::Sync, _) => {
                joined.members = members?.into_iter().map(|m| (m.member.clone(), m)).collect();
            }
            (PresenceEvent::Join | PresenceEvent::Update, Some(m)) => {
                joined.members.insert(m.member.clone(), m.clone());
            }
            (PresenceEvent::Leave, Some(m)) => {
                joined.members.remove(&m.member);
            }
            _ => return None,
        }
        Some(PresenceChange {
            channel,
            event,
            member,
            members: joined.members.values().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(id: &str, name: &str) -> Member {
        Member {
            member: id.into(),
            client_id: "c".into(),
            user: None,
            state: json!({ "name": name }).as_object().unwrap().clone(),
        }
    }

    fn state(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn members_follow_sync_join_update_and_leave() {
        let mut c = Channels::default();
        c.join("chat", state(json!({"name": "ann"}))).unwrap();
        assert_eq!(c.members("chat"), Some(vec![]));
        let sync = c.on_presence(
            "chat".into(),
            PresenceEvent::Sync,
            None,
            Some(vec![member("a", "ann")]),
        );
        assert_eq!(sync.unwrap().members.len(), 1);
        c.on_presence("chat".into(), PresenceEvent::Join, Some(member("b", "bob")), None);
        let up = c
            .on_presence(
                "chat".into(),
                PresenceEvent::Update,
                Some(member("b", "bobby")),
                None,
            )
            .unwrap();
        assert_eq!(up.members[1].state["name"], "bobby");
        let left = c
            .on_presence(
                "chat".into(),
                PresenceEvent::Leave,
                Some(member("a", "ann")),
                None,
            )
            .unwrap();
        assert_eq!(left.members, vec![member("b", "bobby")]);
        // News of a channel not joined changes nothing.
        assert!(c
            .on_presence("other".into(), PresenceEvent::Join, Some(member("x", "x")), None)
            .is_none());
    }

    #[test]
    fn a_new_connection_joins_again_with_the_last_state_and_no_members() {
        let mut c = Channels::default();
        c.join("chat", state(json!({"name": "ann"}))).unwrap();
        c.join("games/g1", Map::new()).unwrap();
        c.update("chat", state(json!({"name": "ann", "typing": true})))
            .unwrap();
        c.on_presence(
            "chat".into(),
            PresenceEvent::Sync,
            None,
            Some(vec![member("a", "ann")]),
        );
        let joins = c.rejoin();
        assert_eq!(
            joins,
            [
                ClientMessage::Join {
                    channel: "chat".into(),
                    state: Some(state(json!({"name": "ann", "typing": true})))
                },
                ClientMessage::Join {
                    channel: "games/g1".into(),
                    state: Some(Map::new())
                },
            ]
        );
        assert_eq!(c.members("chat"), Some(vec![]));
        assert!(c.leave("chat").is_some());
        assert_eq!(c.rejoin().len(), 1);
    }

    #[test]
    fn what_the_server_would_refuse_is_refused_first() {
        let mut c = Channels::default();
        assert!(matches!(
            c.update("chat", Map::new()),
            Err(ClientError::Presence(_))
        ));
        assert!(matches!(
            c.broadcast("chat", json!(1)),
            Err(ClientError::Presence(_))
        ));
        assert!(matches!(c.join("", Map::new()), Err(ClientError::Presence(_))));
        let big = state(json!({"x": "y".repeat(MAX_STATE_BYTES)}));
        assert!(matches!(c.join("chat", big), Err(ClientError::Presence(_))));
        for i in 0..MAX_CHANNELS {
            c.join(&format!("c{i}"), Map::new()).unwrap();
        }
        assert!(matches!(
            c.join("one-more", Map::new()),
            Err(ClientError::Presence(_))
        ));
        let again = c
            .join("c0", state(json!({"n": 1})))
            .expect("a joined channel's state may change");
        assert!(
            matches!(again, ClientMessage::Presence { .. }),
            "{again:?}: not a second join"
        );
        assert!(c
            .broadcast("c0", json!({"d": "y".repeat(MAX_BROADCAST_BYTES)}))
            .is_err());
        assert!(c.leave("nope").is_none());
    }
}
