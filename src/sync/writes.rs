//! Writes over the protocol: every `write` message a session receives passes through
//! [`Writes::start`] and is then checked and committed on its own task, so a slow write never
//! holds up the connection's live events. The checks are the REST ones, in the same order: the
//! write is built (`wire::from_message`, 400s), authorized (`Principal::authorize_write`:
//! `forbidden`), counted against the client's write rate (`rate_limited`, with `retry_after_ms`),
//! then committed. A refused write changes nothing.
//!
//! At most [`MAX_INFLIGHT_WRITES`] run per connection; one more is answered at once with
//! `too_many_writes` (retryable). Results come back on a channel made with the first write: most
//! sessions never write, and the channel costs ~5 KiB.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use super::open::SyncContext;
use super::protocol::{ResultMessage, WriteMessage};
use super::MAX_INFLIGHT_WRITES;
use crate::auth::limits::{ClientLimits, Over};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::store::Store;
use crate::write::wire;

/// Who writes: the session's principal (as of the write) and what limits count it as.
pub struct Writer<'a> {
    pub principal: &'a Arc<Principal>,
    pub limit_key: Option<&'a str>,
}

/// One connection's writes in flight, and the channel their results come back on.
pub struct Writes {
    inflight: Arc<Semaphore>,
    results_tx: mpsc::Sender<ResultMessage>,
    results: mpsc::Receiver<ResultMessage>,
}

impl Writes {
    fn new() -> Writes {
        let (results_tx, results) = mpsc::channel(MAX_INFLIGHT_WRITES);
        Writes {
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_WRITES)),
            results_tx,
            results,
        }
    }

    /// Starts committing `w` for `client_id` as `writer` (creating `writes` on the first write).
    /// Too many writes in flight: the `result` to answer at once instead.
    pub fn start(
        writes: &mut Option<Writes>,
        ctx: &SyncContext,
        writer: Writer<'_>,
        client_id: &str,
        w: WriteMessage,
    ) -> Option<ResultMessage> {
        let writes = writes.get_or_insert_with(Writes::new);
        let Ok(permit) = Arc::clone(&writes.inflight).try_acquire_owned() else {
            let error = ErrorBody::new(
                ErrorCode::TooManyWrites,
                format!("at most {MAX_INFLIGHT_WRITES} writes may be in flight"),
            );
            return Some(refused(w.op_id, w.id, error));
        };
        let (store, limits, client_id, results) = (
            Arc::clone(&ctx.store),
            Arc::clone(&ctx.limits),
            client_id.to_string(),
            writes.results_tx.clone(),
        );
        let (principal, limit_key) = (Arc::clone(writer.principal), writer.limit_key.map(str::to_string));
        tokio::spawn(async move {
            let who = Who {
                principal: &principal,
                limits: &limits,
                limit_key: limit_key.as_deref(),
            };
            let result = commit(&*store, who, &client_id, w).await;
            let _ = results.send(result).await;
            drop(permit);
        });
        None
    }

    /// The next finished write, or never if none was ever made.
    pub async fn next(writes: &mut Option<Writes>) -> Option<ResultMessage> {
        match writes {
            Some(w) => w.results.recv().await,
            None => std::future::pending().await,
        }
    }
}

struct Who<'a> {
    principal: &'a Principal,
    limits: &'a ClientLimits,
    limit_key: Option<&'a str>,
}

/// Checks and commits a protocol write; its `op_id` is its idempotency key (scoped to the
/// subject), so a retry is applied at most once.
async fn commit(store: &dyn Store, who: Who<'_>, client_id: &str, w: WriteMessage) -> ResultMessage {
    let (op_id, id) = (w.op_id.clone(), w.id.clone());
    let mut write = match wire::from_message(client_id, w) {
        Ok(write) => write,
        Err(e) => return refused(op_id, id, e.body()),
    };
    if let Err(e) = who.principal.authorize_write(&mut write) {
        return refused(op_id, id, ErrorBody::new(e.code, e.message));
    }
    if let Err(over) = who.limits.write(who.limit_key) {
        return refused(op_id, id, rate_limited(over));
    }
    match store.commit(write).await {
        Ok(c) => {
            let (id, version) = match (&c.document, &c.event) {
                (Some(d), _) => (Some(d.id.clone()), Some(d.version)),
                (None, Some(e)) => (Some(e.id.clone()), Some(e.version)),
                (None, None) => (id, None),
            };
            ResultMessage {
                op_id,
                ok: true,
                id,
                version,
                seq: c.event.as_ref().map(|e| e.seq),
                replayed: c.replayed,
                error: None,
            }
        }
        Err(e) => refused(op_id, id, ApiError::from(e).body()),
    }
}

/// Over the write rate: `rate_limited`, with how long to wait in `retry_after_ms`.
fn rate_limited(over: Over) -> ErrorBody {
    let ms = over.retry_after().as_millis().max(1) as u64;
    ErrorBody::new(ErrorCode::RateLimited, over.message()).with("retry_after_ms", ms)
}

fn refused(op_id: String, id: Option<String>, error: ErrorBody) -> ResultMessage {
    ResultMessage {
        op_id,
        ok: false,
        id,
        version: None,
        seq: None,
        replayed: false,
        error: Some(error),
    }
}
