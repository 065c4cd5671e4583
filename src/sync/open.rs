//! The opening step every sync path shares — a WebSocket's `hello`, an SSE stream's query, a
//! `POST /api/sync` body: **accept the hello → subscribe → starting vector → catch-up**.
//!
//! [`accept`] is the only way to an [`Accepted`] hello, and nothing opens without one: it
//! authenticates the hello's token, checks the hello, and decides for each subscription what the
//! token may read of it (decision order: authenticate → validate → authorize). A transport that
//! finds its token elsewhere (SSE's `Authorization` header, `POST /api/sync`'s) puts it in
//! `hello.token` before: there is one acceptance, whatever the way in. [`open`] then subscribes to
//! the hub *before* it reads anything from the store (so nothing committed meanwhile is missed) and
//! finds where the session starts; [`read_catch_up`] is the one read of what brings a client
//! current, for every transport and for `POST /api/sync` ([`once`]).
//!
//! A client's remembered vector is always read and written under `principal.client_key(client_id)`
//! (`alice/tab-1`): no subject can read, resume from or overwrite another's.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::protocol::{Hello, ServerMessage, StateVector};
use super::resume::vector_at;
use super::session::restrict;
use super::session::{compile, validate_hello, ProtocolError, Session};
use super::CatchUp;
use crate::auth::{Access, Principal};
use crate::hub::{Hub, Subscription};
use crate::model::Seq;
use crate::plan::Resume;
use crate::scope::Scope;
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
    /// The byte budget of one part of a catch-up (`--max-catch-up-bytes`).
    pub catch_up_bytes: u64,
    /// Checks a hello's (or an `auth` message's) token.
    pub auth: Arc<crate::auth::Auth>,
    /// Per-client write rate (protocol writes count like REST ones).
    pub limits: Arc<crate::auth::limits::ClientLimits>,
    /// This node's presence channels.
    pub presence: Arc<super::presence::Presence>,
    /// The document reads filtered sessions share.
    pub rechecks: Arc<super::recheck::Rechecks>,
    /// How long a WebSocket may show no sign of life (`--heartbeat-timeout`).
    pub heartbeat_timeout: std::time::Duration,
}

/// A hello that passed [`accept`]: who it is from, what it may follow, and what it was refused.
#[derive(Debug)]
pub struct Accepted {
    pub client_id: String,
    pub state_vector: Option<StateVector>,
    pub principal: Arc<Principal>,
    /// The subscriptions the token may read (some or all of), with what it may read of each
    /// one's collection.
    pub subscriptions: Vec<(Scope, Access)>,
    /// `error` `forbidden` messages, one per subscription the token cannot read at all: sent
    /// before the catch-up; the other subscriptions proceed.
    pub refusals: Vec<ServerMessage>,
}

/// Checks a hello: its token (`unauthenticated`), then its client id, subscriptions and vector,
/// then what the token may read of each subscription.
pub fn accept(auth: &crate::auth::Auth, hello: Hello) -> Result<Accepted, ProtocolError> {
    let principal = auth
        .authenticate(hello.token.as_deref())
        .map_err(|e| ProtocolError::new(e.code, e.message))?;
    validate_hello(&hello)?;
    let mut subscriptions = Vec::with_capacity(hello.subscribe.len());
    let mut refusals = Vec::new();
    for scope in compile(&hello.subscribe)? {
        match principal.check_read_collection(&scope.collection) {
            Ok(access) => subscriptions.push((scope, access)),
            Err(e) => refusals.push(ServerMessage::refused(&scope.id, e.code, e.message)),
        }
    }
    Ok(Accepted {
        client_id: hello.client_id,
        state_vector: hello.state_vector,
        principal,
        subscriptions,
        refusals,
    })
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
    pub live: Subscription,
    pub principal: Arc<Principal>,
    /// Sent before the catch-up (refused subscriptions).
    pub refusals: Vec<ServerMessage>,
}

/// Subscribes, then finds the session's starting vector.
pub async fn open(ctx: &SyncContext, accepted: Accepted, start: Start) -> Result<Opened, StoreError> {
    let Parts {
        mut session,
        vector,
        principal,
        refusals,
    } = session_of(accepted);
    // Before anything is read: what is committed from here on reaches the session.
    let live = ctx.hub.subscribe_to(session.interest());
    match start {
        Start::Hello => match vector {
            Some(v) => {
                session.reset_vector(v);
                ctx.store
                    .save_client(session.key(), 0, session.vector(), true)
                    .await?;
            }
            None => session.reset_vector(remembered(ctx, session.key()).await?),
        },
        Start::ReceivedUpTo(received) => {
            let v = vector_at(&*ctx.store, session.collections(), received, ctx.page).await?;
            session.reset_vector(v);
            ctx.store
                .save_client(session.key(), received, session.vector(), true)
                .await?;
        }
    }
    Ok(Opened {
        session,
        live,
        principal,
        refusals,
    })
}

/// A one-off catch-up (`POST /api/sync`): from the hello's vector or the remembered one, the
/// refusals first — or, going on from a part before (`resume`), from the vector that part
/// answered. Nothing is remembered for the client — a plain HTTP answer may be lost, so it
/// acknowledges nothing. Returns the catch-up and the vector it brings the client to (for the
/// session's collections).
pub async fn once(
    ctx: &SyncContext,
    accepted: Accepted,
    resume: Option<Resume>,
) -> Result<(CatchUp, StateVector), StoreError> {
    let Parts {
        mut session,
        vector,
        refusals,
        ..
    } = session_of(accepted);
    let v = match vector {
        Some(v) => v,
        None => remembered(ctx, session.key()).await?,
    };
    session.reset_vector(v);
    let mut c = read_catch_up(ctx, &session, resume).await?;
    session.caught_up(&c);
    c.messages.splice(0..0, refusals);
    let vector = restrict(session.vector(), session.collections());
    Ok((c, vector))
}

/// An accepted hello's parts: its session (with an empty vector yet), the hello's vector, the
/// principal and the refusals.
struct Parts {
    session: Session,
    vector: Option<StateVector>,
    principal: Arc<Principal>,
    refusals: Vec<ServerMessage>,
}

fn session_of(a: Accepted) -> Parts {
    let key = a.principal.client_key(&a.client_id);
    let session = Session::new(a.client_id, a.subscriptions, StateVector::new()).with_key(key);
    Parts {
        session,
        vector: a.state_vector,
        principal: a.principal,
        refusals: a.refusals,
    }
}

/// What brings the session's client from its vector to current, for its collections (and only
/// the documents it may read).
/// A part of it goes on from the one before (`resume`).
pub async fn read_catch_up(
    ctx: &SyncContext,
    session: &Session,
    resume: Option<Resume>,
) -> Result<CatchUp, StoreError> {
    super::catch_up(&*ctx.store, session, ctx.catch_up_bytes, None, resume).await
}

/// The vector remembered under `key` (a `Principal::client_key`).
async fn remembered(ctx: &SyncContext, key: &str) -> Result<StateVector, StoreError> {
    Ok(ctx
        .store
        .load_client(key)
        .await?
        .map(|c| c.state_vector)
        .unwrap_or_default())
}
