//! The node's writer task: writes queued on this node are committed in **batched transactions**.
//!
//! Each batch is one multi-document transaction (read concern `snapshot`, write concern `majority`
//! with journaling): for each write, the idempotency record is looked up, the document read, the
//! pure [`decide`] decides, the document is written *on the condition of the version read* (an insert
//! for a new id, so a concurrent creation is a duplicate key), the event inserted with the next
//! sequence number, a due snapshot written and the idempotency record inserted. The batch ends by
//! advancing the shared sequence counter (`counters._id = "seq"`) — again on the condition of the
//! value it read.
//!
//! Why this gives one global, gapless, commit-ordered log across any number of nodes: every
//! transaction that appends events writes the counter document, so two such transactions conflict
//! and one of them aborts (write conflict, `TransientTransactionError`) and is retried from the
//! start. Sequence numbers are therefore handed out in commit order, and the change stream — which
//! reports commits in order — delivers the log in sequence order to every node (see
//! [`super::follower`]).
//!
//! Appending transactions run on the node's recorded sessions ([`super::sessions`]), so that a
//! restart of a crashed node can end what it left open — the counter above all.
//!
//! Batching amortizes the round trips and the majority-commit wait over all writes queued on this
//! node, like the embedded store's group commit. A refusal (version conflict, failed patch, ...) is
//! decided before the write touches anything, so the batch goes on without it; any database error
//! aborts the whole batch, which is then retried (transient errors, with jittered backoff, until
//! [`RETRY_FOR`]; see [the transaction module](mod@super::transaction)) or failed — nothing of it
//! acknowledged, nothing published.

use std::collections::HashSet;
use std::sync::Arc;

use bson::{doc, Document as BsonDoc};
use mongodb::{ClientSession, Collection, Database};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::codec::{self, int, COUNTERS, EVENTS, IDEMPOTENCY, SEQ_COUNTER, SNAPSHOTS};
use super::transaction::{transaction, Abort, Halt, Retry, RETRY_FOR};
use crate::model::{Seq, StoredDoc};
use crate::store::{Committed, StoreError};
use crate::time::Timestamp;
use crate::write::{decide, target_id, Applied, Decision, Policy, Recorded, Write};

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Command {
    Write(Box<Write>, Reply<Committed>),
}

pub struct Writer {
    pub shared: Arc<Shared>,
    pub max_batch: usize,
    /// Document collections whose indexes this node has made sure of.
    pub indexed: HashSet<String>,
    /// Bounds the writes parked off the writer's path (see [`Writer::commit_batch`]).
    pub parking: Arc<Semaphore>,
    /// The parked writes' tasks, waited for when the writer stops.
    pub parked: tokio_util::task::TaskTracker,
}

/// What a batch needs to run, shared with the tasks of parked writes.
pub struct Shared {
    pub db: Database,
    pub policy: Policy,
    /// The sessions appending transactions run on (see [`super::sessions`]).
    pub sessions: super::sessions::Sessions,
}

/// Each write's result, in batch order.
type Results = Vec<Result<Committed, StoreError>>;

impl Writer {
    /// Runs until every sender is dropped (the store closed), finishing what is queued.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let batch: Vec<_> = batch
                .into_iter()
                .map(|cmd| match cmd {
                    Command::Write(w, reply) => (w, reply),
                })
                .collect();
            let (size, started) = (batch.len(), std::time::Instant::now());
            self.commit_batch(batch).await;
            crate::metrics::committed(size, started.elapsed(), rx.len());
        }
        self.parked.close();
        self.parked.wait().await;
    }

    /// Commits a batch and answers its writes. A write whose document another transaction holds
    /// (typically one a killed node left open, which MongoDB keeps for up to
    /// `transactionLifetimeLimitSeconds`) is **parked**: taken out of the batch and retried alone in
    /// a task of its own, so it delays neither the rest of its batch nor the writes queued after it.
    async fn commit_batch(&mut self, mut batch: Vec<(Box<Write>, Reply<Committed>)>) {
        for (w, _) in &batch {
            if !self.indexed.contains(&w.collection) {
                if let Err(e) = super::ensure_document_indexes(&self.shared.db, &w.collection).await {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(e.clone()));
                    }
                    return;
                }
                self.indexed.insert(w.collection.clone());
            }
        }
        loop {
            let may_park = batch.len() > 1 && self.parking.available_permits() > 0;
            let writes: Vec<&Write> = batch.iter().map(|(w, _)| &**w).collect();
            match self.shared.retrying(&writes, may_park).await {
                Ok(results) => {
                    for ((_, reply), result) in batch.into_iter().zip(results) {
                        crate::metrics::write_result(&result);
                        let _ = reply.send(result);
                    }
                    return;
                }
                Err(Halt::Park(i)) => {
                    let Ok(permit) = Arc::clone(&self.parking).try_acquire_owned() else {
                        continue;
                    };
                    let (w, reply) = batch.remove(i);
                    let shared = Arc::clone(&self.shared);
                    self.parked.spawn(async move {
                        let result = match shared.retrying(&[&*w], false).await {
                            Ok(mut results) => results.pop().unwrap_or(Err(StoreError::Overloaded)),
                            Err(halt) => Err(halt.into()),
                        };
                        drop(permit);
                        crate::metrics::write_result(&result);
                        let _ = reply.send(result);
                    });
                }
                Err(Halt::Failed(e)) => {
                    for (_, reply) in batch {
                        crate::metrics::write("failed");
                        let _ = reply.send(Err(e.clone()));
                    }
                    return;
                }
            }
        }
    }
}

impl Shared {
    /// Commits `writes` in one transaction, retried on transient errors for up to [`RETRY_FOR`].
    /// With `may_park`, a write stuck on its own document ends the retries with [`Halt::Park`].
    async fn retrying(&self, writes: &[&Write], may_park: bool) -> Result<Results, Halt> {
        let retry = Retry {
            what: "a write batch",
            deadline: RETRY_FOR,
            may_park,
        };
        transaction!(&self.sessions, retry, |s| self.batch(s, writes))
    }

    /// The batch's transaction body: every write, then the sequence counter.
    async fn batch(&self, s: &mut ClientSession, writes: &[&Write]) -> Result<Results, Abort> {
        let counters = self.db.collection::<BsonDoc>(COUNTERS);
        let counter = counters
            .find_one(doc! {"_id": SEQ_COUNTER})
            .session(&mut *s)
            .await?;
        let first = codec::counter_value(counter.as_ref())?;
        let now = Timestamp::now();
        let mut next = first + 1;
        let mut results = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let applied = self.apply(s, w, next, now).await.map_err(|a| match a {
                Abort::Retry(why) => Abort::Stuck(i, why),
                other => other,
            })?;
            match applied {
                Ok(c) => {
                    if c.event.is_some() && !c.replayed {
                        next += 1;
                    }
                    results.push(Ok(c));
                }
                Err(refused) => results.push(Err(refused)),
            }
        }
        if next != first + 1 {
            let moved = counters
                .update_one(
                    doc! {"_id": SEQ_COUNTER, "v": int(first)},
                    doc! {"$set": {"v": int(next - 1)}},
                )
                .upsert(counter.is_none())
                .session(&mut *s)
                .await?;
            if moved.matched_count == 0 && moved.upserted_id.is_none() {
                return Err(Abort::Retry("the sequence counter moved".into()));
            }
        }
        Ok(results)
    }

    /// One write inside the batch's transaction: `Ok(Err(_))` is a refusal (nothing written).
    async fn apply(
        &self,
        s: &mut ClientSession,
        w: &Write,
        seq: Seq,
        now: Timestamp,
    ) -> Result<Result<Committed, StoreError>, Abort> {
        let recorded = match &w.idempotency_key {
            Some(key) => self.recorded(s, &w.idempotency_scope(), key).await?,
            None => None,
        };
        let id = target_id(w);
        let docs: Collection<BsonDoc> = self.db.collection(&w.collection);
        // A replay decides from the record alone: the document is not read for it.
        let found = match recorded {
            Some(_) => None,
            None => docs.find_one(doc! {"_id": &id}).session(&mut *s).await?,
        };
        let stored = found.map(|d| codec::stored_doc(&w.collection, &d)).transpose()?;
        let decision = decide(w, &id, recorded.as_ref(), stored.as_ref(), self.policy, seq, now)
            .map_err(|e| codec::corrupt("idempotency result", e))?;
        let (committed, record) = match decision {
            Decision::Replay(previous) => return Ok(Ok(previous)),
            Decision::Refuse(refusal) => return Ok(Err(refusal.into())),
            Decision::Unchanged { committed, record } => (committed, record),
            Decision::Apply(applied) => {
                self.write_change(s, &docs, stored.as_ref(), &applied).await?;
                let Applied {
                    committed, record, ..
                } = *applied;
                (committed, record)
            }
        };
        if let (Some(key), Some(record)) = (&w.idempotency_key, record) {
            self.db
                .collection::<BsonDoc>(IDEMPOTENCY)
                .insert_one(doc! {
                    "_id": {"c": w.idempotency_scope().as_ref(), "k": key},
                    "fp": record.fingerprint as i64,
                    "result": record.result,
                    "created_at": now.0,
                })
                .session(&mut *s)
                .await?;
        }
        Ok(Ok(committed))
    }

    /// The idempotency record stored under this client's key, if any.
    async fn recorded(
        &self,
        s: &mut ClientSession,
        client_id: &str,
        key: &str,
    ) -> Result<Option<Recorded>, Abort> {
        let id = doc! {"c": client_id, "k": key};
        let idempotency = self.db.collection::<BsonDoc>(IDEMPOTENCY);
        let Some(rec) = idempotency.find_one(doc! {"_id": id}).session(&mut *s).await? else {
            return Ok(None);
        };
        Ok(Some(Recorded {
            fingerprint: codec::i64_field(&rec, "fp")? as u64,
            result: codec::str_field(&rec, "result")?.to_string(),
        }))
    }

    /// Writes an applied write's document record — on the condition of the version read, or as an
    /// insert for a new id — its event, and its snapshot when one is due.
    async fn write_change(
        &self,
        s: &mut ClientSession,
        docs: &Collection<BsonDoc>,
        previous: Option<&StoredDoc>,
        a: &Applied,
    ) -> Result<(), Abort> {
        let (event, seq) = (&a.event, a.event.seq);
        let record = codec::doc_record(&a.stored, seq, &a.data_json);
        match previous {
            Some(previous) => {
                let filter = doc! {"_id": &a.stored.doc.id, "version": int(previous.doc.version)};
                let r = docs.replace_one(filter, record).session(&mut *s).await?;
                if r.matched_count == 0 {
                    return Err(Abort::Retry("the document changed".into()));
                }
            }
            None => {
                docs.insert_one(record).session(&mut *s).await?;
            }
        }
        self.db
            .collection::<BsonDoc>(EVENTS)
            .insert_one(codec::event_record(event))
            .session(&mut *s)
            .await?;
        if a.snapshot_due {
            let rec = codec::snapshot_record(
                &event.collection,
                &event.id,
                event.version,
                seq,
                event.ts,
                &a.data_json,
            );
            upsert_snapshot(&self.db, s, rec).await?;
        }
        Ok(())
    }
}

/// Writes a snapshot (replacing one at the same version) inside the session's transaction.
pub async fn upsert_snapshot(
    db: &Database,
    s: &mut ClientSession,
    rec: BsonDoc,
) -> Result<(), mongodb::error::Error> {
    let filter = doc! {
        "collection": rec.get_str("collection").unwrap_or_default(),
        "doc_id": rec.get_str("doc_id").unwrap_or_default(),
        "version": rec.get_i64("version").unwrap_or_default(),
    };
    db.collection::<BsonDoc>(SNAPSHOTS)
        .replace_one(filter, rec)
        .upsert(true)
        .session(s)
        .await
        .map(|_| ())
}
