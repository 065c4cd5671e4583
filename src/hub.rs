//! Live fan-out of committed events — **publish**.
//!
//! The store's writer calls [`Hub::publish`] after each durable commit, in sequence order; every sync
//! session subscribes. Each event is wrapped once in a [`LiveEvent`] whose wire forms (the WebSocket
//! text and the SSE frame) are serialized at most once, by whichever subscriber needs them first,
//! and then shared by all: fan-out to N sockets costs one serialization, not N.
//!
//! The channel is a bounded ring ([`Hub::new`]'s capacity) shared by all subscribers, so memory
//! does not grow with slow clients. A subscriber that falls further behind than the ring gets
//! `RecvError::Lagged` — and must re-read from the log (the sync session then re-plans its client's
//! catch-up from the store). That is lossless because the log, not the hub, is the source of truth.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::{Serialize, Serializer};
use tokio::sync::broadcast;

use crate::model::Event;
use crate::protocol::event_json;

/// A committed event on its way to subscribers, with its wire forms cached.
#[derive(Debug)]
pub struct LiveEvent {
    event: Arc<Event>,
    json: OnceLock<Utf8Bytes>,
    sse: OnceLock<Bytes>,
}

impl LiveEvent {
    pub fn new(event: Arc<Event>) -> LiveEvent {
        LiveEvent {
            event,
            json: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    pub fn event(&self) -> &Arc<Event> {
        &self.event
    }

    /// `{"type":"event", ...}`, serialized once.
    pub fn ws_text(&self) -> Utf8Bytes {
        self.json
            .get_or_init(|| Utf8Bytes::from(event_json(&self.event)))
            .clone()
    }

    /// `event: event\nid: <seq>\ndata: <json>\n\n`, built once.
    pub fn sse_frame(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let json = self.ws_text();
                Bytes::from(format!(
                    "event: event\nid: {}\ndata: {}\n\n",
                    self.event.seq,
                    json.as_str()
                ))
            })
            .clone()
    }
}

impl Deref for LiveEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl Serialize for LiveEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.event.serialize(s)
    }
}

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<LiveEvent>>,
}

impl Hub {
    /// `capacity`: how many events a subscriber may fall behind before it lags.
    pub fn new(capacity: usize) -> Hub {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Hub { tx }
    }

    /// Publishes events in the order given. Never blocks; with no subscribers it is a no-op.
    pub fn publish(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        for e in events {
            let _ = self.tx.send(Arc::new(LiveEvent::new(e)));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Op;
    use crate::time::Timestamp;

    #[test]
    fn wire_forms_are_built_once_and_shared() {
        let hub = Hub::new(4);
        let (mut a, mut b) = (hub.subscribe(), hub.subscribe());
        hub.publish([Arc::new(Event {
            seq: 3,
            collection: "games".into(),
            id: "g".into(),
            version: 1,
            op: Op::Create,
            patch: json_patch::Patch(vec![]),
            client_id: "c".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        })]);
        let (ea, eb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert!(Arc::ptr_eq(&ea, &eb), "one LiveEvent for all subscribers");
        assert_eq!(ea.ws_text().as_str().as_ptr(), eb.ws_text().as_str().as_ptr());
        let frame = ea.sse_frame();
        assert!(frame.starts_with(b"event: event\nid: 3\ndata: {\"type\":\"event\""));
        assert!(frame.ends_with(b"\n\n"));
    }
}
