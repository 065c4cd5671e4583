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
//!
//! **Bounded in bytes, too.** The ring carries only weak references; the events themselves are
//! held by the hub's *retention*, newest first, up to `--hub-bytes` of their wire forms (and the
//! ring's count). An event pushed out of the retention is freed at once, whoever has not read it
//! yet — so one subscriber that stops reading holds at most the retention, not the ring's count
//! of events of any size — and a subscriber that comes to it finds it gone, which it is told as
//! `Lagged`, exactly as if the ring had passed it. The WebSocket form is built at publish (when
//! anyone subscribes), so that an event's size is known as it is retained.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::{Serialize, Serializer};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

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

    /// What the event's wire forms take once both are built: the WebSocket text (built here, at
    /// publish), and the SSE frame's length reckoned from it — the frame itself is built only if
    /// an SSE session sends the event.
    fn wire_bytes(&self) -> usize {
        let json = self.ws_text().len();
        let seq_digits = self.event.seq.checked_ilog10().map_or(1, |d| d as usize + 1);
        let frame = "event: event\nid: ".len() + seq_digits + "\ndata: ".len() + json + "\n\n".len();
        json + frame
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

/// The hub's default retention in bytes (`--hub-bytes`).
pub const DEFAULT_RETAINED_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Weak<LiveEvent>>,
    retained: Arc<Mutex<Retained>>,
}

/// The events the hub keeps alive, oldest first.
struct Retained {
    events: VecDeque<(Arc<LiveEvent>, usize)>,
    bytes: usize,
    max_bytes: usize,
    max_events: usize,
}

impl Hub {
    /// `capacity`: how many events a subscriber may fall behind before it lags; at most
    /// [`DEFAULT_RETAINED_BYTES`] of them are kept.
    pub fn new(capacity: usize) -> Hub {
        Hub::with_bytes(capacity, DEFAULT_RETAINED_BYTES)
    }

    /// `capacity` events, of at most `bytes` (the newest event is always kept, whatever its size).
    pub fn with_bytes(capacity: usize, bytes: usize) -> Hub {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        let retained = Retained {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes: bytes,
            max_events: capacity,
        };
        Hub {
            tx,
            retained: Arc::new(Mutex::new(retained)),
        }
    }

    /// Publishes events in the order given. Never blocks on a subscriber; with no subscribers it
    /// is a no-op.
    pub fn publish(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        // One lock per published batch (a group commit's events), not per event.
        let mut r = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            let live = Arc::new(LiveEvent::new(e));
            let weak = Arc::downgrade(&live);
            let size = live.wire_bytes();
            r.events.push_back((live, size));
            r.bytes += size;
            while r.events.len() > 1 && (r.bytes > r.max_bytes || r.events.len() > r.max_events) {
                if let Some((_, n)) = r.events.pop_front() {
                    r.bytes -= n;
                }
            }
            let _ = self.tx.send(weak);
        }
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription(self.tx.subscribe())
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The bytes of the events retained now.
    pub fn retained_bytes(&self) -> usize {
        self.retained.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// One subscriber's place in the hub: a `broadcast::Receiver`, with events already freed by the
/// retention told as `Lagged`.
pub struct Subscription(broadcast::Receiver<Weak<LiveEvent>>);

impl Subscription {
    pub async fn recv(&mut self) -> Result<Arc<LiveEvent>, RecvError> {
        self.0.recv().await?.upgrade().ok_or(RecvError::Lagged(1))
    }

    pub fn try_recv(&mut self) -> Result<Arc<LiveEvent>, TryRecvError> {
        self.0.try_recv()?.upgrade().ok_or(TryRecvError::Lagged(1))
    }

    /// Skips everything published so far: what a subscriber does before it re-reads the log,
    /// so that it meets no more of what it fell behind on (each of which would say `Lagged`).
    pub fn skip_to_now(&mut self) {
        self.0 = self.0.resubscribe();
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
        hub.publish([event(3, 0)]);
        let (ea, eb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert!(Arc::ptr_eq(&ea, &eb), "one LiveEvent for all subscribers");
        assert_eq!(ea.ws_text().as_str().as_ptr(), eb.ws_text().as_str().as_ptr());
        let frame = ea.sse_frame();
        assert!(frame.starts_with(b"event: event\nid: 3\ndata: {\"type\":\"event\""));
        assert!(frame.ends_with(b"\n\n"));
    }

    #[test]
    fn the_retention_is_bounded_in_bytes_and_what_it_dropped_is_lagged() {
        // Room for about three 10 KB events; a subscriber that reads nothing holds no more.
        let hub = Hub::with_bytes(1000, 3 * 2 * 10_300);
        let mut slow = hub.subscribe();
        hub.publish((1..=50).map(|seq| event(seq, 10_000)));
        assert!(hub.retained_bytes() <= 3 * 2 * 10_300, "{}", hub.retained_bytes());
        // The oldest are gone: told as lagged, not skipped in silence.
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Lagged(_))));
        let mut seen = Vec::new();
        loop {
            match slow.try_recv() {
                Ok(e) => seen.push(e.seq),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        assert_eq!(seen, [48, 49, 50], "the newest are still there, in order");
        // The newest is kept whatever its size.
        let tiny = Hub::with_bytes(10, 1);
        let mut rx = tiny.subscribe();
        tiny.publish([event(1, 100)]);
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        // No subscriber: nothing is built or kept.
        let idle = Hub::new(10);
        idle.publish([event(1, 100)]);
        assert_eq!(idle.retained_bytes(), 0);
    }

    fn event(seq: u64, fill: usize) -> Arc<Event> {
        Arc::new(Event {
            seq,
            collection: "games".into(),
            id: "g".into(),
            version: 1,
            op: Op::Create,
            patch: serde_json::from_value(serde_json::json!([
                {"op": "add", "path": "/fill", "value": "x".repeat(fill)}
            ]))
            .unwrap(),
            client_id: "c".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        })
    }
}
