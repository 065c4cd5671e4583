//! The node's **recorded sessions**, and how a restarted node frees what its previous run left
//! open.
//!
//! A node killed in the middle of a commit leaves its transaction open on the server. MongoDB keeps
//! it — with the records it wrote, the sequence counter that every append writes among them — until
//! `transactionLifetimeLimitSeconds` (60 s by default) reaps it, and until then every node's writes
//! conflict and wait; a client vector it was saving holds up that client's catch-up the same way.
//! So every transaction a node runs uses one of a fixed set of sessions, created at start, whose
//! ids the node records under its node id in `_nodes` (the leading `_`: no API collection can have
//! that name). A node starting with the same id first ends those sessions with `killSessions`,
//! which aborts whatever they left open: a crashed node that is restarted (by systemd, a
//! StatefulSet, a supervisor) frees the log at once instead of a minute later. Without a node id
//! (port 0, or no host name) nothing is recorded, and MongoDB's reaping is the only remedy.
//!
//! Sessions are reused, one transaction after another, for the life of the process (MongoDB
//! recreates a session it expired after `localLogicalSessionTimeoutMinutes` when its id is used
//! again). Only session ids are recorded — nothing about the transactions themselves.
//!
//! Two sets: the writer's ([`APPENDING`] sessions: its batches and parked writes' attempts), and
//! the rest's ([`OTHER`]: catch-ups, client vectors, maintenance) — so that a burst of reconnecting
//! clients never keeps the writer waiting for a session. Each set also bounds how many of those
//! transactions a node runs at once; beyond that they wait their turn.
//!
//! Node ids must be unique among running nodes: a process started with the id of a running node
//! aborts that node's open transactions. Nothing is lost — they were not acknowledged and are
//! retried — but that node stalls briefly.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use bson::{doc, Bson, Document as BsonDoc};
use mongodb::{ClientSession, Database};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::codec;
use super::transaction::durable;
use crate::store::StoreError;
use crate::time::Timestamp;

/// The collection of the nodes' records: `{_id: node id, sessions: [session ids], started_at}`.
pub const NODES: &str = "_nodes";

/// Sessions for appending transactions: the writer's, and a few for parked writes' attempts.
pub const APPENDING: usize = 4;
/// Sessions for the other transactions (catch-ups, client vectors, maintenance).
pub const OTHER: usize = 32;

/// A fixed set of sessions, lent out one transaction attempt at a time.
pub struct Sessions {
    free: Mutex<Vec<ClientSession>>,
    permits: Semaphore,
}

/// A session lent by [`Sessions::begin`], with a transaction started; back to the set when
/// dropped. A transaction an attempt left open is aborted when the session is next lent.
pub struct Lease<'a> {
    sessions: &'a Sessions,
    session: Option<ClientSession>,
    _permit: SemaphorePermit<'a>,
}

/// Ends the sessions this node's previous run recorded, then creates and records this run's: the
/// appending set and the other.
pub async fn open(
    client: &mongodb::Client,
    db: &Database,
    node_id: Option<&str>,
) -> Result<(Sessions, Sessions), StoreError> {
    let nodes = db.collection::<BsonDoc>(NODES);
    if let Some(node) = node_id {
        end_previous(client, &nodes, node).await?;
    }
    let mut all = Vec::with_capacity(APPENDING + OTHER);
    for _ in 0..APPENDING + OTHER {
        all.push(client.start_session().await.map_err(codec::backend)?);
    }
    if let Some(node) = node_id {
        let ids: Vec<Bson> = all.iter().map(|s| Bson::Document(s.id().clone())).collect();
        let record = doc! {"_id": node, "sessions": ids, "started_at": Timestamp::now().0};
        nodes
            .replace_one(doc! {"_id": node}, record)
            .upsert(true)
            .write_concern(durable())
            .await
            .map_err(codec::backend)?;
    }
    let other = all.split_off(APPENDING);
    Ok((Sessions::new(all), Sessions::new(other)))
}

impl Sessions {
    fn new(sessions: Vec<ClientSession>) -> Sessions {
        Sessions {
            permits: Semaphore::new(sessions.len()),
            free: Mutex::new(sessions),
        }
    }

    /// Lends a session with a snapshot-isolated, durably committed transaction started on it.
    pub async fn begin(&self) -> Result<Lease<'_>, mongodb::error::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let session = self.free.lock().expect("not poisoned").pop();
        let mut lease = Lease {
            sessions: self,
            session: Some(session.expect("a free session per permit")),
            _permit: permit,
        };
        // What a failed attempt left open (an error, or a cancelled future) is aborted first; on a
        // session with no open transaction this is a local no-op.
        let _ = lease.abort_transaction().await;
        super::transaction::start(&mut lease).await?;
        Ok(lease)
    }
}

impl Deref for Lease<'_> {
    type Target = ClientSession;
    fn deref(&self) -> &ClientSession {
        self.session.as_ref().expect("present until dropped")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut ClientSession {
        self.session.as_mut().expect("present until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.sessions.free.lock().expect("not poisoned").push(s);
        }
    }
}

/// Ends the sessions recorded under `node` (aborting their open transactions).
async fn end_previous(
    client: &mongodb::Client,
    nodes: &mongodb::Collection<BsonDoc>,
    node: &str,
) -> Result<(), StoreError> {
    let Some(record) = nodes.find_one(doc! {"_id": node}).await.map_err(codec::backend)? else {
        return Ok(());
    };
    let ids = match record.get_array("sessions") {
        Ok(ids) if !ids.is_empty() => ids.clone(),
        _ => return Ok(()),
    };
    let n = ids.len();
    match client
        .database("admin")
        .run_command(doc! {"killSessions": ids})
        .await
    {
        Ok(_) => tracing::info!(
            node,
            sessions = n,
            "ended the sessions of this node's previous run"
        ),
        // Not fatal: MongoDB reaps what they left open after transactionLifetimeLimitSeconds.
        Err(e) => tracing::warn!(node, error = %e, "cannot end the sessions of this node's previous run"),
    }
    Ok(())
}
