//! The node's writer task: writes queued on this node are committed in **batched transactions**.
//!
//! Each batch is one multi-document transaction (read concern `snapshot`, write concern `majority`
//! with journaling): for each write, the idempotency record is looked up, the document read, the
//! pure [`plan`] decides, the document is written *on the condition of the version read* (an insert
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
//! [`RETRY_FOR`]) or failed — nothing of it acknowledged, nothing published.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document as BsonDoc};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection, Database};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::codec::{self, int, COUNTERS, EVENTS, IDEMPOTENCY, SEQ_COUNTER, SNAPSHOTS};
use crate::model::{new_id, Seq};
use crate::store::{changed, Committed, StoreError};
use crate::time::Timestamp;
use crate::write::{plan, Current, Limits, Plan, Write};

/// How long a batch is retried on transient errors (write conflicts with other nodes, a primary
/// election) before its writes fail with `Overloaded`.
pub const RETRY_FOR: Duration = Duration::from_secs(20);
/// How many times a commit whose outcome is unknown is retried.
const COMMIT_RETRIES: usize = 5;

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
    pub limits: Limits,
    pub snapshot_every: u64,
    /// The sessions appending transactions run on (see [`super::sessions`]).
    pub sessions: super::sessions::Sessions,
}

/// Why a transaction attempt failed.
pub enum Abort {
    /// Retry the batch: a transient database error, or a condition that another node's commit
    /// invalidated.
    Retry(String),
    /// The write at this index of the batch hit a transient conflict on its own records (another
    /// transaction holds its document).
    Stuck(usize, String),
    /// Fail the batch.
    Fail(StoreError),
}

/// How [`Shared::retrying`] ended.
enum Outcome {
    Done(Vec<Result<Committed, StoreError>>),
    /// The write at this index keeps the rest from committing: take it out of the batch.
    Park(usize),
    Failed(StoreError),
}

impl From<mongodb::error::Error> for Abort {
    fn from(e: mongodb::error::Error) -> Self {
        if codec::is_transient(&e) {
            Abort::Retry(e.to_string())
        } else {
            Abort::Fail(codec::backend(e))
        }
    }
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        Abort::Fail(e)
    }
}

/// The write concern of every transaction: acknowledged by a majority, journaled.
pub fn durable() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// Starts a snapshot-isolated transaction with durable commits on `s`.
pub async fn start(s: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    s.start_transaction()
        .read_concern(ReadConcern::snapshot())
        .write_concern(durable())
        .await
}

/// Commits, retrying while the outcome is unknown (the driver's `UnknownTransactionCommitResult`).
pub async fn commit(s: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    let mut attempt = 0;
    loop {
        match s.commit_transaction().await {
            Err(e)
                if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && attempt < COMMIT_RETRIES =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Sleeps before retry `attempt` (1, 2, ...): exponential from 2 ms up to 200 ms, full jitter.
pub async fn backoff(attempt: u32) {
    let cap = 2u64.saturating_mul(1 << attempt.min(7)).min(200);
    let ms = rand::rng().random_range(1..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

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
            let batch = batch
                .into_iter()
                .map(|cmd| match cmd {
                    Command::Write(w, reply) => (w, reply),
                })
                .collect();
            self.commit_batch(batch).await;
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
                Outcome::Done(results) => {
                    for ((_, reply), result) in batch.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                    return;
                }
                Outcome::Park(i) => {
                    let Ok(permit) = Arc::clone(&self.parking).try_acquire_owned() else {
                        continue;
                    };
                    let (w, reply) = batch.remove(i);
                    let shared = Arc::clone(&self.shared);
                    self.parked.spawn(async move {
                        let result = match shared.retrying(&[&*w], false).await {
                            Outcome::Done(mut results) => {
                                results.pop().unwrap_or(Err(StoreError::Overloaded))
                            }
                            Outcome::Park(_) => Err(StoreError::Overloaded),
                            Outcome::Failed(e) => Err(e),
                        };
                        drop(permit);
                        let _ = reply.send(result);
                    });
                }
                Outcome::Failed(e) => {
                    for (_, reply) in batch {
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
    /// With `may_park`, a write stuck on its own document ends the attempt with [`Outcome::Park`].
    async fn retrying(&self, writes: &[&Write], may_park: bool) -> Outcome {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let why = match self.try_batch(writes).await {
                Ok(results) => return Outcome::Done(results),
                Err(Abort::Stuck(i, _)) if may_park => return Outcome::Park(i),
                Err(Abort::Retry(why) | Abort::Stuck(_, why)) => why,
                Err(Abort::Fail(e)) => return Outcome::Failed(e),
            };
            if started.elapsed() >= RETRY_FOR {
                tracing::warn!(attempt, %why, "a write batch kept conflicting; refusing it");
                return Outcome::Failed(StoreError::Overloaded);
            }
            attempt += 1;
            tracing::debug!(attempt, %why, "retrying a write batch");
            backoff(attempt).await;
        }
    }

    async fn try_batch(&self, writes: &[&Write]) -> Result<Vec<Result<Committed, StoreError>>, Abort> {
        let mut lease = self.sessions.begin().await?;
        let s: &mut ClientSession = &mut lease;
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
        commit(s).await?;
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
        let idempotency = self.db.collection::<BsonDoc>(IDEMPOTENCY);
        if let Some(key) = &w.idempotency_key {
            let id = doc! {"c": &w.client_id, "k": key};
            if let Some(rec) = idempotency.find_one(doc! {"_id": id}).session(&mut *s).await? {
                if codec::i64_field(&rec, "fp")? != w.fingerprint as i64 {
                    return Ok(Err(StoreError::IdempotencyKeyReused));
                }
                let mut previous: Committed = serde_json::from_str(codec::str_field(&rec, "result")?)
                    .map_err(|e| codec::corrupt("idempotency result", e))?;
                previous.replayed = true;
                return Ok(Ok(previous));
            }
        }
        let id = w.id.clone().unwrap_or_else(new_id);
        let docs: Collection<BsonDoc> = self.db.collection(&w.collection);
        let stored = match docs.find_one(doc! {"_id": &id}).session(&mut *s).await? {
            Some(d) => Some(codec::stored_doc(&w.collection, &d)?),
            None => None,
        };
        let current = stored.as_ref().map(|s| Current {
            version: s.doc.version,
            data: &s.doc.data,
            deleted: s.deleted,
        });
        let committed = match plan(current, &w.mutation, w.expected_version, self.limits) {
            Err(e) => return Ok(Err(e.into())),
            Ok(Plan::Unchanged) => Committed {
                document: stored.filter(|s| !s.deleted).map(|s| s.doc),
                event: None,
                created: false,
                replayed: false,
            },
            Ok(Plan::Change(change)) => {
                let out = changed(stored.as_ref(), w, id, change, seq, now, self.snapshot_every);
                let record = codec::doc_record(&out.stored, seq, &out.data_json);
                match &stored {
                    Some(previous) => {
                        let filter = doc! {"_id": &out.stored.doc.id, "version": int(previous.doc.version)};
                        let r = docs.replace_one(filter, record).session(&mut *s).await?;
                        if r.matched_count == 0 {
                            return Err(Abort::Retry("the document changed".into()));
                        }
                    }
                    None => {
                        docs.insert_one(record).session(&mut *s).await?;
                    }
                }
                let event = out.event();
                self.db
                    .collection::<BsonDoc>(EVENTS)
                    .insert_one(codec::event_record(event))
                    .session(&mut *s)
                    .await?;
                if out.snapshot_due {
                    let rec = codec::snapshot_record(
                        &event.collection,
                        &event.id,
                        event.version,
                        seq,
                        now,
                        &out.data_json,
                    );
                    upsert_snapshot(&self.db, s, rec).await?;
                }
                out.committed
            }
        };
        if let Some(key) = &w.idempotency_key {
            let result = serde_json::to_string(&committed).expect("a commit result always serializes");
            idempotency
                .insert_one(doc! {
                    "_id": {"c": &w.client_id, "k": key},
                    "fp": w.fingerprint as i64,
                    "result": result,
                    "created_at": now.0,
                })
                .session(&mut *s)
                .await?;
        }
        Ok(Ok(committed))
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
