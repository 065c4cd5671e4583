//! Live fan-out of committed events — **publish**.
//!
//! The store's writer calls [`Hub::publish`] after each durable commit, in sequence order; every sync
//! session subscribes. Each event is wrapped once in a [`LiveEvent`] whose wire forms (the WebSocket
//! text and the SSE frame) are serialized at most once, by whichever subscriber needs them first,
//! and then shared by all: fan-out to N sockets costs one serialization, not N.
//!
//! **Routed.** A subscriber says what it wants ([`Interest`]): every event, or the events of some
//! collections and of some documents (a client whose scopes of a collection all name their
//! documents, `ids`, is woken only for those). [`Hub::publish`] looks each event's collection
//! and document up in an index and puts the event in the mailbox of just those subscribers, so
//! a write costs in proportion to the sessions that may want it — not to every connected
//! session. (Scopes that narrow by prefix, filter or window are routed by collection: the session
//! decides, see `sync::session`.) A subscriber's mailbox holds at most the hub's capacity of
//! events; one that falls further behind is told `RecvError::Lagged` — and must re-read from
//! the log (the sync session then re-plans its client's catch-up from the store). That is
//! lossless because the log, not the hub, is the source of truth.
//!
//! **Bounded in bytes, too.** Mailboxes carry only weak references; the events themselves are
//! held by the hub's *retention*, newest first, up to `--hub-bytes` of their wire forms (and the
//! capacity's count). An event pushed out of the retention is freed at once, whoever has not read
//! it yet — so one subscriber that stops reading holds at most the retention, not its mailbox's
//! count of events of any size — and a subscriber that comes to it finds it gone, which it is
//! told as `Lagged`, exactly as if it had fallen behind. The WebSocket form is built at publish
//! (when anyone subscribes), so that an event's size is known as it is retained.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::{Serialize, Serializer};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::Notify;

use crate::model::{Event, Seq};
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
    routes: Arc<RwLock<Routes>>,
    retained: Arc<Mutex<Retained>>,
    /// Most events one mailbox holds.
    capacity: usize,
}

/// The events the hub keeps alive, oldest first.
struct Retained {
    events: VecDeque<(Arc<LiveEvent>, usize)>,
    bytes: usize,
    max_bytes: usize,
    max_events: usize,
}

/// What a subscriber is woken for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Interest {
    /// Every event.
    #[default]
    Everything,
    /// Every event of `collections`, and the events of `documents` (collection → ids).
    Some {
        collections: BTreeSet<String>,
        documents: BTreeMap<String, BTreeSet<String>>,
    },
}

impl Interest {
    /// Nothing at all (a session that follows nothing yet).
    pub fn nothing() -> Interest {
        Interest::Some {
            collections: BTreeSet::new(),
            documents: BTreeMap::new(),
        }
    }
}

type Mailboxes = HashMap<u64, Arc<Mailbox>>;

/// Who is interested in what.
#[derive(Default)]
struct Routes {
    everything: Mailboxes,
    collections: HashMap<String, Mailboxes>,
    documents: HashMap<String, HashMap<String, Mailboxes>>,
    subscribers: usize,
}

impl Routes {
    fn add(&mut self, m: &Arc<Mailbox>, interest: &Interest) {
        match interest {
            Interest::Everything => {
                self.everything.insert(m.id, Arc::clone(m));
            }
            Interest::Some {
                collections,
                documents,
            } => {
                for c in collections {
                    self.collections
                        .entry(c.clone())
                        .or_default()
                        .insert(m.id, Arc::clone(m));
                }
                for (c, ids) in documents {
                    let docs = self.documents.entry(c.clone()).or_default();
                    for id in ids {
                        docs.entry(id.clone()).or_default().insert(m.id, Arc::clone(m));
                    }
                }
            }
        }
    }

    fn remove(&mut self, id: u64, interest: &Interest) {
        match interest {
            Interest::Everything => {
                self.everything.remove(&id);
            }
            Interest::Some {
                collections,
                documents,
            } => {
                for c in collections {
                    if let Some(m) = self.collections.get_mut(c) {
                        m.remove(&id);
                        if m.is_empty() {
                            self.collections.remove(c);
                        }
                    }
                }
                for (c, ids) in documents {
                    let Some(docs) = self.documents.get_mut(c) else {
                        continue;
                    };
                    for doc in ids {
                        if let Some(m) = docs.get_mut(doc) {
                            m.remove(&id);
                            if m.is_empty() {
                                docs.remove(doc);
                            }
                        }
                    }
                    if docs.is_empty() {
                        self.documents.remove(c);
                    }
                }
            }
        }
    }

    /// Puts an event in the mailbox of everyone interested in it.
    fn deliver(&self, e: &Event, weak: &Weak<LiveEvent>) {
        for m in self.everything.values() {
            m.push(e.seq, weak);
        }
        if let Some(ms) = self.collections.get(&e.collection) {
            for m in ms.values() {
                m.push(e.seq, weak);
            }
        }
        if let Some(ms) = self.documents.get(&e.collection).and_then(|d| d.get(&e.id)) {
            for m in ms.values() {
                m.push(e.seq, weak);
            }
        }
    }
}

/// One subscriber's queue of events to read.
struct Mailbox {
    id: u64,
    queue: Mutex<Queue>,
    notify: Notify,
}

struct Queue {
    events: VecDeque<Weak<LiveEvent>>,
    /// It overflowed: what it held was dropped, and nothing is taken until it is read.
    lagged: bool,
    /// The last event taken: one routed twice (by collection and by document) is taken once.
    last: Seq,
    capacity: usize,
}

impl Mailbox {
    fn push(&self, seq: Seq, weak: &Weak<LiveEvent>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= q.last || q.lagged {
            return;
        }
        q.last = seq;
        if q.events.len() >= q.capacity {
            q.lagged = true;
            q.events = VecDeque::new();
        } else {
            q.events.push_back(weak.clone());
        }
        let first = q.events.len() <= 1;
        drop(q);
        if first {
            // The reader drains its mailbox before it waits: only the first event wakes it.
            self.notify.notify_one();
        }
    }

    fn take(&self) -> Result<Arc<LiveEvent>, TryRecvError> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.lagged {
            q.lagged = false;
            return Err(TryRecvError::Lagged(1));
        }
        match q.events.pop_front() {
            Some(weak) => weak.upgrade().ok_or(TryRecvError::Lagged(1)),
            None => {
                if q.events.capacity() > 1024 {
                    q.events = VecDeque::new();
                }
                Err(TryRecvError::Empty)
            }
        }
    }
}

static NEXT_MAILBOX: AtomicU64 = AtomicU64::new(1);

impl Hub {
    /// `capacity`: how many events a subscriber may fall behind before it lags; at most
    /// [`DEFAULT_RETAINED_BYTES`] of them are kept.
    pub fn new(capacity: usize) -> Hub {
        Hub::with_bytes(capacity, DEFAULT_RETAINED_BYTES)
    }

    /// `capacity` events, of at most `bytes` (the newest event is always kept, whatever its size).
    pub fn with_bytes(capacity: usize, bytes: usize) -> Hub {
        let capacity = capacity.max(1);
        let retained = Retained {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes: bytes,
            max_events: capacity,
        };
        Hub {
            routes: Arc::new(RwLock::new(Routes::default())),
            retained: Arc::new(Mutex::new(retained)),
            capacity,
        }
    }

    /// Publishes events in the order given to the subscribers interested in each. Never blocks on
    /// a subscriber; with no subscribers it is a no-op.
    pub fn publish(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if routes.subscribers == 0 {
            return;
        }
        // One lock per published batch (a group commit's events), not per event.
        let mut r = self.retained.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            let live = Arc::new(LiveEvent::new(e));
            let weak = Arc::downgrade(&live);
            let size = live.wire_bytes();
            r.events.push_back((Arc::clone(&live), size));
            r.bytes += size;
            while r.events.len() > 1 && (r.bytes > r.max_bytes || r.events.len() > r.max_events) {
                if let Some((_, n)) = r.events.pop_front() {
                    r.bytes -= n;
                }
            }
            routes.deliver(live.event(), &weak);
        }
    }

    /// A subscriber of every event.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_to(Interest::Everything)
    }

    /// A subscriber of what `interest` names.
    pub fn subscribe_to(&self, interest: Interest) -> Subscription {
        let mailbox = Arc::new(Mailbox {
            id: NEXT_MAILBOX.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                lagged: false,
                last: 0,
                capacity: self.capacity,
            }),
            notify: Notify::new(),
        });
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.add(&mailbox, &interest);
        routes.subscribers += 1;
        Subscription {
            mailbox,
            interest,
            routes: Arc::downgrade(&self.routes),
        }
    }

    pub fn subscribers(&self) -> usize {
        self.routes.read().unwrap_or_else(|e| e.into_inner()).subscribers
    }

    /// The bytes of the events retained now.
    pub fn retained_bytes(&self) -> usize {
        self.retained.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// One subscriber's place in the hub: its mailbox, with events already freed by the retention
/// told as `Lagged`. Dropping it leaves the hub.
pub struct Subscription {
    mailbox: Arc<Mailbox>,
    interest: Interest,
    routes: Weak<RwLock<Routes>>,
}

impl Subscription {
    /// The next event. Cancel-safe: nothing is lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<Arc<LiveEvent>, RecvError> {
        loop {
            match self.mailbox.take() {
                Ok(e) => return Ok(e),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(_) => self.mailbox.notify.notified().await,
            }
        }
    }

    pub fn try_recv(&mut self) -> Result<Arc<LiveEvent>, TryRecvError> {
        self.mailbox.take()
    }

    /// Skips everything delivered so far: what a subscriber does before it re-reads the log,
    /// so that it meets no more of what it fell behind on (each of which would say `Lagged`).
    pub fn skip_to_now(&mut self) {
        let mut q = self.mailbox.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.events = VecDeque::new();
        q.lagged = false;
    }

    /// What it is woken for now.
    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// Changes what it is woken for, from the next event published: a session widens it before
    /// it reads a new subscription's catch-up (so nothing committed meanwhile is missed), and may
    /// narrow it once a subscription ends.
    pub fn set_interest(&mut self, interest: Interest) {
        if interest == self.interest {
            return;
        }
        if let Some(routes) = self.routes.upgrade() {
            let mut routes = routes.write().unwrap_or_else(|e| e.into_inner());
            routes.remove(self.mailbox.id, &self.interest);
            routes.add(&self.mailbox, &interest);
        }
        self.interest = interest;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(routes) = self.routes.upgrade() {
            let mut routes = routes.write().unwrap_or_else(|e| e.into_inner());
            routes.remove(self.mailbox.id, &self.interest);
            routes.subscribers -= 1;
        }
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

    #[test]
    fn events_go_only_to_the_subscribers_interested_in_them() {
        let hub = Hub::new(100);
        let docs = |c: &str, ids: &[&str]| Interest::Some {
            collections: BTreeSet::new(),
            documents: [(c.to_string(), ids.iter().map(|i| i.to_string()).collect())].into(),
        };
        let games = Interest::Some {
            collections: ["games".to_string()].into(),
            documents: BTreeMap::new(),
        };
        let mut all = hub.subscribe();
        let mut coll = hub.subscribe_to(games.clone());
        let mut g = hub.subscribe_to(docs("games", &["g"]));
        let mut other = hub.subscribe_to(docs("games", &["x"]));
        let mut none = hub.subscribe_to(Interest::nothing());
        // Routed by collection and by document: taken once.
        let mut both = hub.subscribe_to(Interest::Some {
            collections: ["games".to_string()].into(),
            documents: [("games".to_string(), ["g".to_string()].into())].into(),
        });
        let mut chat = event(2, 0);
        Arc::make_mut(&mut chat).collection = "chat".into();
        hub.publish([event(1, 0), chat]);
        let seqs = |s: &mut Subscription| {
            let mut out = Vec::new();
            while let Ok(e) = s.try_recv() {
                out.push(e.seq);
            }
            out
        };
        assert_eq!(seqs(&mut all), [1, 2]);
        assert_eq!(seqs(&mut coll), [1]);
        assert_eq!(seqs(&mut g), [1]);
        assert_eq!(seqs(&mut both), [1]);
        assert!(seqs(&mut other).is_empty());
        assert!(seqs(&mut none).is_empty());
        // Widened: from the next event on.
        none.set_interest(games);
        hub.publish([event(3, 0)]);
        assert_eq!(seqs(&mut none), [3]);
        assert_eq!(hub.subscribers(), 6);
        drop(other);
        assert_eq!(hub.subscribers(), 5);
    }

    #[test]
    fn a_mailbox_that_overflows_says_lagged_once_and_then_starts_again() {
        let hub = Hub::new(3);
        let mut slow = hub.subscribe();
        hub.publish((1..=5).map(|seq| event(seq, 0)));
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Lagged(_))));
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
        slow.skip_to_now();
        hub.publish([event(6, 0)]);
        assert_eq!(slow.try_recv().unwrap().seq, 6);
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_event_and_wakes_for_it() {
        let hub = Hub::new(8);
        let mut rx = hub.subscribe();
        let publisher = hub.clone();
        let waiter = tokio::spawn(async move { rx.recv().await.map(|e| e.seq) });
        tokio::task::yield_now().await;
        publisher.publish([event(4, 0)]);
        assert_eq!(waiter.await.unwrap().unwrap(), 4);
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
