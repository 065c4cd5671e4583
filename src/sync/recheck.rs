//! **One read per event, shared by every session that rechecks it.** A write that touches a
//! filtered path may move its document in or out of every session filtering on that path
//! ([`crate::scope::Live::Recheck`]): each such session must see the document's body. Read once
//! per session, a write to a collection that 1,000 filtered sessions follow would cost 1,000
//! store reads; here the first session to ask reads it and the others — woken by the same event
//! — take the same answer (a session asking while the read is under way waits for it rather than
//! reading again).
//!
//! The answer is the document as stored *after* the event was committed — at its version or a
//! later one, as each session's own read was — so sharing it changes nothing a session decides
//! (see [`crate::sync::session::Session::rechecked`]).
//!
//! Bounded: the newest [`RECHECK_ENTRIES`] events' reads, of at most [`RECHECK_BYTES`] of bodies
//! in all, are kept; the oldest go first (sessions handle events in log order, so the oldest
//! are the ones every session is done with). An evicted read is read again by a session that
//! still asks for it — a cost, never a different answer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::model::{Event, Seq, StoredDoc};
use crate::store::{Store, StoreError};

/// Events whose reads are kept at once.
pub const RECHECK_ENTRIES: usize = 4096;
/// Bytes of bodies (as JSON) the kept reads hold at most.
pub const RECHECK_BYTES: usize = 16 * 1024 * 1024;

/// The document as stored after an event, read once.
type Read = Arc<OnceCell<Option<Arc<StoredDoc>>>>;

/// The shared reads of one node; see the module docs.
#[derive(Default)]
pub struct Rechecks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reads: HashMap<Seq, (Read, usize)>,
    /// Seqs in the order their reads were asked for (the oldest first).
    order: VecDeque<Seq>,
    bytes: usize,
}

impl Rechecks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The document event `e` was written to, as stored after it: read from `store` by the first
    /// session to ask, shared with the others.
    pub async fn read(&self, store: &dyn Store, e: &Event) -> Result<Option<Arc<StoredDoc>>, StoreError> {
        let cell = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            match inner.reads.get(&e.seq) {
                Some((cell, _)) => Arc::clone(cell),
                None => {
                    let cell = Read::default();
                    inner.reads.insert(e.seq, (Arc::clone(&cell), 0));
                    inner.order.push_back(e.seq);
                    inner.evict();
                    cell
                }
            }
        };
        let mut fresh = false;
        let stored = cell
            .get_or_try_init(|| async {
                fresh = true;
                Ok::<_, StoreError>(store.get(&e.collection, &e.id).await?.map(Arc::new))
            })
            .await?
            .clone();
        if fresh {
            let bytes = stored
                .as_ref()
                .map_or(0, |s| serde_json::to_vec(&s.doc.data).map_or(0, |b| b.len()));
            let mut inner = self.lock();
            let inner = &mut *inner;
            // Still kept, and not evicted and asked for again meanwhile (another cell).
            if let Some(entry) = inner.reads.get_mut(&e.seq).filter(|(c, _)| Arc::ptr_eq(c, &cell)) {
                entry.1 = bytes;
                inner.bytes += bytes;
                inner.evict();
            }
        }
        Ok(stored)
    }

    /// Reads kept now, and the bytes of their bodies (for tests and metrics).
    pub fn kept(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.reads.len(), inner.bytes)
    }
}

impl Inner {
    /// Drops the oldest reads while over a bound (the newest always stays).
    fn evict(&mut self) {
        while self.order.len() > 1 && (self.order.len() > RECHECK_ENTRIES || self.bytes > RECHECK_BYTES) {
            let Some(seq) = self.order.pop_front() else {
                break;
            };
            if let Some((_, bytes)) = self.reads.remove(&seq) {
                self.bytes -= bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::store::sqlite::{Durability, SqliteOptions, SqliteStore};
    use crate::write::{Limits, Mutation, Write};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_asking_for_one_event_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            path: dir.path().join("eventsync.db"),
            durability: Durability::Normal,
            write_queue: 16,
            max_batch: 16,
            limits: Limits {
                max_document_bytes: 1 << 20,
                max_depth: 16,
            },
            snapshot_every: 100,
        };
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SqliteStore::open(opts, Hub::new(16)))
                .await
                .unwrap()
                .unwrap(),
        );
        let body = serde_json::json!({"band": 3}).as_object().unwrap().clone();
        let write = Write::new(
            "games".into(),
            Some("g1".into()),
            Mutation::Create(body.clone()),
            None,
            "t".into(),
            None,
        );
        let event = store.commit(write).await.unwrap().event.unwrap();
        let rechecks = Rechecks::default();
        // Many sessions at once, as the hub wakes them for one event.
        let reads = futures::future::join_all((0..50).map(|_| rechecks.read(&*store, &event))).await;
        let first = reads[0].as_ref().unwrap().clone().expect("the document is there");
        assert_eq!(first.doc.data, body);
        for r in &reads {
            let r = r.as_ref().unwrap().as_ref().expect("the same answer");
            assert!(Arc::ptr_eq(r, &first), "every session got the one read");
        }
        let (kept, bytes) = rechecks.kept();
        assert_eq!(kept, 1);
        assert_eq!(bytes, serde_json::to_vec(&body).unwrap().len());
        store.close().await.unwrap();
    }

    #[test]
    fn eviction_keeps_the_newest_within_both_bounds() {
        let mut inner = Inner::default();
        for seq in 1..=(RECHECK_ENTRIES as u64 + 10) {
            inner.reads.insert(seq, (Read::default(), 0));
            inner.order.push_back(seq);
            inner.evict();
        }
        assert_eq!(inner.reads.len(), RECHECK_ENTRIES);
        assert!(inner.reads.contains_key(&(RECHECK_ENTRIES as u64 + 10)));
        assert!(!inner.reads.contains_key(&10));
        // One body over the byte bound: everything older goes, the newest stays.
        let last = RECHECK_ENTRIES as u64 + 11;
        inner.reads.insert(last, (Read::default(), RECHECK_BYTES + 1));
        inner.order.push_back(last);
        inner.bytes += RECHECK_BYTES + 1;
        inner.evict();
        assert_eq!(inner.reads.len(), 1);
        assert_eq!(inner.bytes, RECHECK_BYTES + 1);
    }
}
