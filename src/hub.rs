//! Live fan-out of committed events — **publish**.
//!
//! The store's writer calls [`Hub::publish`] after each durable commit, in sequence order; anything in
//! the process that wants live events subscribes. The channel is bounded ([`Hub::new`]'s capacity):
//! a subscriber that falls further behind than that gets `RecvError::Lagged` and must re-read the log
//! from its last sequence number — which is always possible, because the log is the source of truth
//! and the hub only a low-latency copy of its tail.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::model::Event;

/// Events go out as `Arc<Event>`: one allocation shared by every subscriber.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
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
            let _ = self.tx.send(e);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
