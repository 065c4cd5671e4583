//! How every MongoDB transaction of this store runs, written once: on one of a node's recorded
//! sessions ([`super::sessions`]), snapshot-isolated, committed durably, and **retried whole** on
//! transient errors (write conflicts with another node, a primary election) with jittered
//! backoff, until a deadline — then it fails with `Overloaded`.
//!
//! The writer's batches ([`super::writer`]) and every other transaction (catch-ups, client vectors,
//! maintenance steps) go through [`transaction!`]; they differ only in their [`Retry`] settings: how
//! long to keep trying, and whether a write stuck on its own document may be **parked** — the
//! retries then end at once with [`Halt::Park`], so the writer can take that write out of its batch.
//!
//! A macro, not a function taking an async closure: the body borrows both the session and its
//! arguments, and the compiler cannot yet prove such a closure's future `Send` for every borrow
//! (a limit of higher-ranked auto-trait checks), while every store future must be `Send`. What
//! the macro does besides running the body — the retry decision — is the plain function
//! [`after_attempt`].

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use mongodb::ClientSession;
use rand::Rng;

use super::codec;
use crate::store::StoreError;

/// How long a write batch is retried on transient errors before its writes fail with `Overloaded`.
pub const RETRY_FOR: Duration = Duration::from_secs(20);
/// How long a read transaction (catch-up, client vector) or a maintenance step is retried.
pub const READ_RETRY_FOR: Duration = Duration::from_secs(10);
/// How many times a commit whose outcome is unknown is retried.
const COMMIT_RETRIES: usize = 5;

/// Why a transaction attempt failed.
pub enum Abort {
    /// Retry the transaction: a transient database error, or a condition that another node's
    /// commit invalidated.
    Retry(String),
    /// The write at this index of a batch hit a transient conflict on its own records (another
    /// transaction holds its document).
    Stuck(usize, String),
    /// Fail the transaction.
    Fail(StoreError),
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

/// How a transaction is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// What the transaction is, for the log ("a write batch").
    pub what: &'static str,
    /// Retries stop once this long has passed since the first attempt.
    pub deadline: Duration,
    /// Whether an [`Abort::Stuck`] ends the retries with [`Halt::Park`] (else it is retried).
    pub may_park: bool,
}

/// Reads, client vectors and maintenance steps: retried for [`READ_RETRY_FOR`], never parked.
pub const READ: Retry = Retry {
    what: "a transaction",
    deadline: READ_RETRY_FOR,
    may_park: false,
};

/// How a retried transaction ended without committing.
#[derive(Debug)]
pub enum Halt {
    /// It failed, or kept conflicting past its deadline (`Overloaded`).
    Failed(StoreError),
    /// The write at this index of the batch is stuck on its own document (see [`Retry::may_park`]).
    Park(usize),
}

/// A halt as the caller of a store operation sees it: a write left parked is one that could not
/// be committed in time.
impl From<Halt> for StoreError {
    fn from(h: Halt) -> StoreError {
        match h {
            Halt::Failed(e) => e,
            Halt::Park(_) => StoreError::Overloaded,
        }
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

/// Decides what follows an attempt that `started` the retries: the end (committed, failed, parked,
/// or out of time), or another attempt — `attempt` is then its number, to back off by.
pub fn after_attempt<T>(
    outcome: Result<T, Abort>,
    retry: Retry,
    started: Instant,
    attempt: &mut u32,
) -> ControlFlow<Result<T, Halt>> {
    let why = match outcome {
        Ok(out) => return ControlFlow::Break(Ok(out)),
        Err(Abort::Stuck(i, _)) if retry.may_park => return ControlFlow::Break(Err(Halt::Park(i))),
        Err(Abort::Retry(why) | Abort::Stuck(_, why)) => why,
        Err(Abort::Fail(e)) => return ControlFlow::Break(Err(Halt::Failed(e))),
    };
    if started.elapsed() >= retry.deadline {
        tracing::warn!(attempt = *attempt, %why, "{} kept conflicting; refusing it", retry.what);
        return ControlFlow::Break(Err(Halt::Failed(StoreError::Overloaded)));
    }
    *attempt += 1;
    tracing::debug!(attempt = *attempt, %why, "retrying {}", retry.what);
    ControlFlow::Continue(())
}

/// Runs `$body` (a future using the session `$s`) in a transaction on one of `$sessions` and
/// commits it; on a transient failure the whole transaction runs again, as the [`Retry`] `$retry`
/// says. Evaluates to `Result<T, Halt>`.
macro_rules! transaction {
    ($sessions:expr, $retry:expr, |$s:ident| $body:expr) => {{
        use $crate::store::mongo::transaction as tx;
        let retry: tx::Retry = $retry;
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let outcome: Result<_, tx::Abort> = async {
                let mut lease = $sessions.begin().await?;
                let out = {
                    let $s: &mut mongodb::ClientSession = &mut lease;
                    $body
                }
                .await?;
                tx::commit(&mut lease).await?;
                Ok(out)
            }
            .await;
            match tx::after_attempt(outcome, retry, started, &mut attempt) {
                std::ops::ControlFlow::Break(done) => break done,
                std::ops::ControlFlow::Continue(()) => tx::backoff(attempt).await,
            }
        }
    }};
}
pub(super) use transaction;

#[cfg(test)]
mod tests {
    use super::*;

    const PARKING: Retry = Retry {
        what: "a write batch",
        deadline: Duration::from_secs(20),
        may_park: true,
    };

    fn next(
        outcome: Result<u8, Abort>,
        retry: Retry,
        started: Instant,
    ) -> (ControlFlow<Result<u8, Halt>>, u32) {
        let mut attempt = 3;
        (after_attempt(outcome, retry, started, &mut attempt), attempt)
    }

    #[test]
    fn a_commit_or_a_failure_ends_the_retries() {
        let now = Instant::now();
        assert!(matches!(next(Ok(7), READ, now).0, ControlFlow::Break(Ok(7))));
        let fail = Abort::Fail(StoreError::Closed);
        assert!(matches!(
            next(Err(fail), READ, now).0,
            ControlFlow::Break(Err(Halt::Failed(StoreError::Closed)))
        ));
    }

    #[test]
    fn transient_errors_are_retried_until_the_deadline() {
        let now = Instant::now();
        let (flow, attempt) = next(Err(Abort::Retry("conflict".into())), READ, now);
        assert!(matches!(flow, ControlFlow::Continue(())));
        assert_eq!(attempt, 4);
        let long_ago = now - READ_RETRY_FOR;
        assert!(matches!(
            next(Err(Abort::Retry("conflict".into())), READ, long_ago).0,
            ControlFlow::Break(Err(Halt::Failed(StoreError::Overloaded)))
        ));
    }

    #[test]
    fn a_stuck_write_is_parked_only_where_parking_is_allowed() {
        let now = Instant::now();
        let stuck = || Err(Abort::Stuck(2, "held".into()));
        assert!(matches!(
            next(stuck(), PARKING, now).0,
            ControlFlow::Break(Err(Halt::Park(2)))
        ));
        assert!(matches!(next(stuck(), READ, now).0, ControlFlow::Continue(())));
        assert_eq!(StoreError::from(Halt::Park(2)), StoreError::Overloaded);
    }
}
