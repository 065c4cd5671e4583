//! Sync — keeping every connected client exactly current: **sync plan → session → WebSocket/SSE**.
//!
//! - [`protocol`]: the messages (`docs/PROTOCOL.md` is their reference).
//! - [`catch_up()`]: what a client with state vector V needs — planned by [`crate::plan`], read by
//!   the store, assembled into messages here.
//! - [`session`]: one connection's state — what it has been sent, what it acknowledged, which live
//!   events to forward. Pure (sans-IO).
//! - [`open`]: the opening step every sync path shares (accept the hello — authenticate its token,
//!   authorize its subscriptions —, subscribe, starting vector, catch-up), over a small
//!   [`SyncContext`]; [`resume`]: an SSE `Last-Event-ID`'s vector.
//! - [`driver`]: the one session loop, over a [`driver::Transport`] — `api/ws.rs` and `api/sse.rs`
//!   only frame, parse and keep their own timers; [`writes`]: protocol writes in flight;
//!   [`recheck`]: the document reads filtered sessions share; [`presence`]: who is online.
//!
//! The order of a session's life is fixed by one rule — **subscribe before you read**: a session
//! subscribes to the hub, *then* reads its catch-up from the store at position P, then forwards live
//! events, skipping those at or below P and any the client already has (by version). No gap, no
//! duplicate. When it falls behind the hub (a slow client), it drops what was queued and re-plans its
//! catch-up from the store — sequence numbers and versions make that lossless.

mod catch_up;
pub mod driver;
pub mod open;
pub mod presence;
pub mod recheck;
pub mod resume;
pub mod session;
pub mod writes;

/// The protocol's messages: the wire crate's, under the name the server has always used.
pub use crate::protocol;

use std::time::Duration;

use crate::auth::Access;
use crate::plan::Resume;
use crate::store::{CatchUpRead, Store, StoreError};

pub use catch_up::CatchUp;
pub use open::SyncContext;

/// What brings the session's client current from its vector for its collections: the messages in
/// sending order and the changes they make to its vector, read at one consistent position of the
/// log. Every transport's catch-up and `POST /api/sync` go through here. Rows of documents the
/// session may not read are dropped before any message is made of them (its vector holds none of
/// them either, see [`Session::reset_vector`](session::Session::reset_vector)).
/// Within `budget` bytes: a catch-up larger than that comes in parts ([`CatchUp::complete`]),
/// each going on from where the one before was cut (`resume`: [`CatchUp::resume`]), once the
/// session has taken that one. With `only`, just that collection (a live `subscribe`'s, or an
/// `unsubscribe`'s check).
pub async fn catch_up(
    store: &dyn Store,
    session: &session::Session,
    budget: u64,
    only: Option<&str>,
    resume: Option<Resume>,
) -> Result<CatchUp, StoreError> {
    let collections = match only {
        Some(c) => vec![c.to_string()],
        None => session.collections().to_vec(),
    };
    let read = CatchUpRead {
        collections,
        vector: session.shared_vector(),
        budget,
        selection: session.selection(),
        resume,
    };
    let mut rows = store.catch_up(read).await?;
    for c in &mut rows.collections {
        let access = session.access(&c.collection);
        if *access != Access::All {
            c.documents.retain(|(id, _)| access.allows(id));
        }
    }
    Ok(CatchUp::assemble(rows))
}

/// How long a new WebSocket may take to send its `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one send to a client may block (its TCP window full) before the connection is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an SSE stream sends a keep-alive comment.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Acknowledged vectors are written to the store at most this often per client.
pub const VECTOR_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Most subscriptions one connection may have.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Bad messages a connection may send before it is closed with [`CLOSE_POLICY`].
pub const MAX_VIOLATIONS: u32 = 10;
/// Writes one connection may have in flight.
pub const MAX_INFLIGHT_WRITES: usize = 64;
/// Live events forwarded per batch (one flush) when a socket is behind.
pub const SEND_BATCH: usize = 64;
/// Sent-but-unacknowledged vector changes remembered per session; older ones are forgotten (the
/// persisted vector then lags, which costs a resend on resume, never a loss).
pub const MAX_UNACKED: usize = 65_536;

/// Close code: the server is going away (shutdown); reconnect, possibly elsewhere.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: too many bad messages.
pub const CLOSE_POLICY: u16 = 4400;
/// Close code: no `hello` in time, or no sign of life within `--heartbeat-timeout`.
pub const CLOSE_TIMEOUT: u16 = 4408;
/// Close code: the server could not serve the session (the store failed); reconnect later.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: a message larger than the limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the hello's token was refused, or the session's token expired without an `auth`
/// replacing it. Reconnect with a fresh token.
pub const CLOSE_UNAUTHENTICATED: u16 = 4401;
/// Close code: the client (its subject, or its address without auth) already has as many
/// WebSocket sessions open as `--max-sockets-per-client` allows.
pub const CLOSE_RATE_LIMITED: u16 = 4429;
