//! The opening step every sync path shares — a WebSocket's `hello`, an SSE stream's query, a
//! `POST /api/sync` body: **accept the hello → subscribe → starting vector → catch-up**.
//!
//! [`accept`] is the only way to an [`Accepted`] hello, and nothing opens without one: it is where
//! a hello is checked today, and where its token will be checked against the subscriptions it asks
//! for. [`open`] then subscribes to the hub *before* it reads anything from the store (so nothing
//! committed meanwhile is missed) and finds where the session starts; [`read_catch_up`] is the one
//! read of what brings a client current, for every transport and for `POST /api/sync` ([`once`]).

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::protocol::{Hello, StateVector};
use super::resume::vector_at;
use super::session::{restrict, validate_hello, ProtocolError, Session};
use super::CatchUp;
use crate::hub::{Hub, LiveEvent};
use crate::model::Seq;
use crate::store::{Store, StoreError};

/// What sync needs of the server: the store, the hub, the shutdown signal and the page size for
/// store scans. The HTTP layer's state provides it ([`crate::server`] wires both).
#[derive(Clone)]
pub struct SyncContext {
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    /// Cancelled when the server shuts down: sessions flush their acknowledgements and end.
    pub shutdown: CancellationToken,
    /// Most documents or events read per store call (`--max-page`).
    pub page: usize,
    /// Checks a hello's (or an `auth` message's) token.
    pub auth: Arc<crate::auth::Auth>,
    /// Per-client write rate (protocol writes count like REST ones).
    pub limits: Arc<crate::auth::limits::ClientLimits>,
}

/// A hello that passed [`accept`].
#[derive(Debug)]
pub struct Accepted(Hello);

/// Checks a hello: its client id, its subscriptions, its vector.
pub fn accept(hello: Hello) -> Result<Accepted, ProtocolError> {
    validate_hello(&hello)?;
    Ok(Accepted(hello))
}

/// Where a live session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the hello's vector (then remembered as what the client has), or else from the one the
    /// server remembers, or else from nothing.
    Hello,
    /// A reconnecting SSE client that has every message up to this position (its `Last-Event-ID`),
    /// whatever vector its URL still carries.
    ReceivedUpTo(Seq),
}

/// A session, subscribed to the hub, not yet caught up.
pub struct Opened {
    pub session: Session,
    pub live: broadcast::Receiver<Arc<LiveEvent>>,
}

/// Subscribes, then finds the session's starting vector.
pub async fn open(ctx: &SyncContext, accepted: Accepted, start: Start) -> Result<Opened, StoreError> {
    let live = ctx.hub.subscribe();
    let hello = accepted.0;
    let vector = match start {
        Start::Hello => match &hello.state_vector {
            Some(v) => {
                let subscribed = restrict(v, &hello.subscribe);
                ctx.store
                    .save_client(&hello.client_id, 0, &subscribed, true)
                    .await?;
                v.clone()
            }
            None => remembered(ctx, &hello.client_id).await?,
        },
        Start::ReceivedUpTo(received) => {
            let v = vector_at(&*ctx.store, &hello.subscribe, received, ctx.page).await?;
            ctx.store
                .save_client(&hello.client_id, received, &v, true)
                .await?;
            v
        }
    };
    let session = Session::new(hello.client_id, &hello.subscribe, vector);
    Ok(Opened { session, live })
}

/// A one-off catch-up (`POST /api/sync`): from the hello's vector or the remembered one. Nothing is
/// remembered for the client — a plain HTTP answer may be lost, so it acknowledges nothing.
pub async fn once(ctx: &SyncContext, accepted: Accepted) -> Result<CatchUp, StoreError> {
    let hello = accepted.0;
    let vector = match hello.state_vector {
        Some(v) => v,
        None => remembered(ctx, &hello.client_id).await?,
    };
    let session = Session::new(hello.client_id, &hello.subscribe, vector);
    read_catch_up(ctx, &session).await
}

/// What brings the session's client from its vector to current, for its collections.
pub async fn read_catch_up(ctx: &SyncContext, session: &Session) -> Result<CatchUp, StoreError> {
    super::catch_up(&*ctx.store, session.collections(), session.vector()).await
}

async fn remembered(ctx: &SyncContext, client_id: &str) -> Result<StateVector, StoreError> {
    Ok(ctx
        .store
        .load_client(client_id)
        .await?
        .map(|c| c.state_vector)
        .unwrap_or_default())
}
