//! The node's **follower**: a change stream on the shared `events` collection, feeding this node's
//! [`Hub`] — how a write made on any node reaches the subscribers of every node.
//!
//! Every node publishes only what it reads here, its own writes included, so all nodes publish the
//! same log in the same order: sequence order, which is commit order (see [`super::writer`]).
//!
//! What keeps the published stream exact:
//! - **Start**: the stream is opened *before* the counter is read; events at or below the counter
//!   were committed before the node started (its clients catch up on them from the store), events
//!   above it arrive through the stream.
//! - **Duplicates**: an event at or below the last published sequence number is skipped.
//! - **Gaps**: the sequence is gapless, so an event further ahead than the next number means the
//!   stream skipped something (a resume that lost history); the missing range is read from the
//!   `events` collection and published first.
//! - **Errors**: the stream is reopened with the resume token of the last change it reported (the
//!   driver already resumes once by itself on resumable errors). When the token can no longer be
//!   resumed (the oplog rolled past it), a fresh stream is opened and everything after the last
//!   published number is read from the collection — the gap rule again.
//!
//! A node restart starts a new follower; the resume token is kept for the life of the process
//! because a restarted node has no subscribers left to deliver old events to — its clients come
//! back with their state vectors (or `Last-Event-ID`) and catch up exactly from the store.

use std::time::Duration;

use bson::{doc, Document as BsonDoc};
use futures::TryStreamExt;
use mongodb::change_stream::event::ChangeStreamEvent;
use mongodb::change_stream::ChangeStream;
use mongodb::Collection;
use tokio_util::sync::CancellationToken;

use super::codec::{self, int};
use crate::hub::Hub;
use crate::model::{Event, Seq};
use crate::store::StoreError;

/// Longest pause between two attempts to reopen a failed stream.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

pub type Stream = ChangeStream<ChangeStreamEvent<BsonDoc>>;

/// Opens a change stream of inserts into `events` (resuming after `token` when given).
pub async fn open(
    events: &Collection<BsonDoc>,
    token: Option<mongodb::change_stream::event::ResumeToken>,
) -> Result<Stream, mongodb::error::Error> {
    events
        .watch()
        .pipeline([doc! {"$match": {"operationType": "insert"}}])
        .resume_after(token)
        .await
}

pub struct Follower {
    pub events: Collection<BsonDoc>,
    pub hub: Hub,
    /// The last sequence number published (or known to be covered by catch-up).
    pub last: Seq,
    pub stop: CancellationToken,
    /// Shared with the store, for `/api/health` and the logs: the last sequence number published.
    pub published: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Follower {
    /// Follows `stream` until `stop` is cancelled.
    pub async fn run(mut self, mut stream: Stream) {
        self.mark();
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                next = stream.try_next() => next,
            };
            match next {
                Ok(Some(change)) => {
                    failures = 0;
                    let Some(record) = change.full_document else {
                        continue;
                    };
                    match codec::event(&record) {
                        Ok(e) => self.publish(e).await,
                        Err(e) => tracing::error!(error = %e, "skipping an unreadable event"),
                    }
                    continue;
                }
                Ok(None) => tracing::warn!("the change stream ended; reopening it"),
                Err(e) => tracing::warn!(error = %e, "the change stream failed; resuming it"),
            }
            match self.reopen(stream.resume_token(), &mut failures).await {
                Some(s) => stream = s,
                None => return,
            }
        }
    }

    /// Reopens after a failure: from the resume token if it still resumes, else from scratch with
    /// the events after the last published one read from the collection. `None` once stopped.
    async fn reopen(
        &mut self,
        token: Option<mongodb::change_stream::event::ResumeToken>,
        failures: &mut u32,
    ) -> Option<Stream> {
        loop {
            *failures += 1;
            let pause = Duration::from_millis(50 * u64::from((*failures).min(40))).min(MAX_RETRY_PAUSE);
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {},
            }
            if let Some(token) = token.clone() {
                match open(&self.events, Some(token)).await {
                    Ok(s) => return Some(s),
                    Err(e) => tracing::warn!(error = %e, "cannot resume the change stream; restarting it"),
                }
            }
            match open(&self.events, None).await {
                Ok(s) => match self.fill(Seq::MAX).await {
                    Ok(()) => return Some(s),
                    Err(e) => tracing::warn!(error = %e, "reading the events the change stream missed"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot open the change stream"),
            }
        }
    }

    async fn publish(&mut self, e: Event) {
        if e.seq <= self.last {
            return;
        }
        if e.seq > self.last + 1 {
            if let Err(err) = self.fill(e.seq).await {
                tracing::error!(error = %err, from = self.last + 1, to = e.seq - 1,
                    "the change stream skipped events and they cannot be read");
            }
            if e.seq > self.last + 1 {
                tracing::error!(
                    from = self.last + 1,
                    to = e.seq - 1,
                    "events missing from the log (compacted?); subscribers re-sync on the next gap"
                );
            }
        }
        self.last = e.seq;
        self.hub.publish([std::sync::Arc::new(e)]);
        self.mark();
    }

    /// Publishes the logged events after `last` and before `before`, in order.
    async fn fill(&mut self, before: Seq) -> Result<(), StoreError> {
        let filter = doc! {"_id": {"$gt": int(self.last), "$lt": int(before)}};
        let mut cursor = self
            .events
            .find(filter)
            .sort(doc! {"_id": 1})
            .await
            .map_err(codec::backend)?;
        while let Some(record) = cursor.try_next().await.map_err(codec::backend)? {
            let e = codec::event(&record)?;
            if e.seq > self.last {
                self.last = e.seq;
                self.hub.publish([std::sync::Arc::new(e)]);
            }
        }
        self.mark();
        Ok(())
    }

    fn mark(&self) {
        self.published
            .store(self.last, std::sync::atomic::Ordering::Relaxed);
    }
}
