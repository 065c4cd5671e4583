//! # EventSync's Rust client
//!
//! A [`Replica`] of what the client subscribes to — whole collections, or [`Scope`]s that narrow
//! one — kept current over WebSocket or SSE by a background task that reconnects on its own.
//!
//! [`Client::connect`] spawns the task and returns at once. The task connects, says `hello` with the
//! replica's state vector (empty for a new client), applies the catch-up (`snapshot`s and `event`s)
//! and the live events by the protocol's rules (`replica.rs`), acknowledges what it applied (`ack`
//! after each `synced`, then at most once per [`ClientOptions::ack_interval`]), and on any disconnect
//! or error reconnects with exponential backoff and full jitter, resuming from its vector. A gap
//! (an event beyond the next version) makes it resync: a `sync` with its vector over WebSocket, a
//! reconnect (with `state_vector` and `Last-Event-ID`) over SSE.
//!
//! The replica is shared (`std::sync::Mutex`, never held across an `.await`): read it with
//! [`Client::with_replica`] or [`Client::replica`], wait for a condition with
//! [`Client::wait_until`], follow applied changes with [`Client::changes`]. Writes go over the
//! WebSocket (`write` → `result`) or, with SSE, over the REST API; either way they answer a
//! [`ResultMessage`] and are retried across reconnects under the same `op_id` (so applied at most
//! once) until [`ClientOptions::write_timeout`].
//!
//! **Subscriptions.** [`ClientOptions::subscribe`] is the starting set: collection names (the
//! whole collection; the name is the subscription's id) and [`Scope`]s — a collection narrowed by
//! `ids`, an id `prefix`, a `where` filter (a MongoDB subset) and/or the `latest` N documents,
//! under an id the client chooses ([`scope`] starts one). [`Client::subscribe`] and
//! [`Client::unsubscribe`] change the set while the client runs: over a live WebSocket as
//! `subscribe` / `unsubscribe` messages (the scope's catch-up, then a `synced` naming it —
//! [`Change::Synced`] with `subscription: Some(id)`); over SSE by reopening the stream; offline
//! by the next `hello`. Every (re)connection's `hello` carries the current set
//! ([`Client::subscriptions`]). [`Client::subscription_synced`] and
//! [`Client::wait_subscription_synced`] tell when one's catch-up is applied; its documents are
//! in its collection's map ([`Replica::collection`]), which every subscription of that collection
//! shares. A document that leaves every scope (a write made it stop matching, or its
//! subscription ended) arrives as `removed`: the replica drops it and its vector entry
//! ([`Change::Removed`]; not a delete — should it match again, it comes back as a snapshot).
//! Over SSE, a set with any scope opens with `POST /sync/sse` (the hello as JSON, answered with a
//! single-use resume id), then `GET /sync/sse?resume=<id>`, on every connection; a set of whole
//! collections keeps the plain `GET` with its query. Runtime changes are not persisted with the
//! replica: a new process starts from [`ClientOptions::subscribe`].
//!
//! **Presence** (PROTOCOL.md §12). [`Client::join`] a channel — a collection or `collection/id` the
//! token may read — with a small public state; [`Client::members`] is who is there as the server
//! last said, and each change comes as [`Change::Presence`]; [`Client::set_presence`] replaces the
//! state, [`Client::broadcast`] sends the others an ephemeral message ([`Change::Broadcast`] on
//! their side), [`Client::leave`] leaves. Nothing of it is stored: every new connection joins the
//! channels again with their last state (a WebSocket after its `hello`, an SSE stream over its back
//! channel once its first frame names it); a broadcast made while no connection is live is lost.
//!
//! For a server with `--auth jwt`, give [`ClientOptions::token`] (replace it with
//! [`Client::set_token`]) or a [`ClientOptions::token_provider`], which is asked before every
//! connection and, on a WebSocket, before the token runs out (the session is re-authenticated in
//! place with `auth`). The token goes in `hello` and as `Authorization: Bearer` on SSE and REST.
//!
//! ```no_run
//! use std::time::Duration;
//! use eventsync_client::{Client, ClientOptions, Transport};
//! use eventsync_client::{new_op_id, Change};
//! use eventsync_client::protocol::messages::{WriteMessage, WriteOp};
//!
//! # async fn demo() -> Result<(), eventsync_client::ClientError> {
//! let mut options = ClientOptions::new("http://127.0.0.1:8080", "player-1", ["games"]);
//! options.transport = Transport::WebSocket; // or Transport::Sse
//! let client = Client::connect(options).await?;
//! client.wait_synced(Duration::from_secs(10)).await?;
//!
//! let mut changes = client.changes();
//! let result = client
//!     .write(WriteMessage {
//!         op_id: new_op_id(),
//!         op: WriteOp::Patch,
//!         collection: "games".into(),
//!         id: Some("g1".into()),
//!         data: None,
//!         patch: Some(serde_json::json!([{"op": "replace", "path": "/gold", "value": 120}])),
//!         expected_version: None,
//!     })
//!     .await?;
//! if let Some(version) = result.version.filter(|_| result.ok) {
//!     // Our own write comes back as an event; wait until the replica has it.
//!     client
//!         .wait_until(|r| r.version("games", "g1") >= version, Duration::from_secs(5))
//!         .await?;
//! }
//! let gold = client.with_replica(|r| r.document("games", "g1").and_then(|d| d.get("gold").cloned()));
//! println!("gold: {gold:?}");
//! while let Ok(change) = changes.try_recv() {
//!     if let Change::Event(event) = change {
//!         println!("applied seq {} ({}/{} v{})", event.seq, event.collection, event.id, event.version);
//!     }
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Scopes, and subscribing while running:
//!
//! ```no_run
//! use std::time::Duration;
//! use eventsync_client::{scope, Change, Client, ClientOptions, Scope};
//!
//! # async fn demo() -> Result<(), eventsync_client::ClientError> {
//! let high = Scope {
//!     filter: Some(serde_json::json!({"level": {"$gte": 5}})),
//!     ..scope("high", "games")
//! };
//! let options = ClientOptions::new("http://127.0.0.1:8080", "player-1", [high]);
//! let (client, mut changes) = Client::connect_with_changes(options).await?;
//! client.wait_synced(Duration::from_secs(10)).await?;
//!
//! // Two more documents of another collection: returns once they are in the replica.
//! let mine = Scope { ids: Some(vec!["p1".into(), "p2".into()]), ..scope("mine", "players") };
//! client.subscribe(mine).await?;
//! let players = client.with_replica(|r| r.collection("players").map(|docs| docs.len()));
//! println!("{players:?} players");
//!
//! while let Ok(change) = changes.try_recv() {
//!     if let Change::Removed(r) = change {
//!         println!("{}/{} left every scope", r.collection, r.id);
//!     }
//! }
//! client.unsubscribe("mine").await?; // its documents are dropped
//! # Ok(())
//! # }
//! ```

//!
//! It depends on the wire types ([`protocol`], re-exported) and its transports (tokio-tungstenite,
//! reqwest) only — not on the server, SQLite, MongoDB or axum.

pub use eventsync_protocol as protocol;

mod presence;
mod replica;
mod rest;
mod sse;
mod subs;
mod task;
#[cfg(test)]
mod tests;
mod ws;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use reqwest::Url;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use presence::{BroadcastChange, PresenceChange};
pub use replica::{Applied, Counters, Replica};
pub use subs::{scope, IntoSubscription};

use eventsync_protocol::messages::{
    ClientMessage, RemovedMessage, ResultMessage, SnapshotMessage, SyncedMessage, WriteMessage, WriteOp,
};
pub use eventsync_protocol::messages::{Member, PresenceEvent, Scope, Subscription};
use eventsync_protocol::model::{Event, Seq};
use eventsync_protocol::{ErrorBody, ErrorCode};
use serde_json::{Map, Value};

/// How the client receives: a WebSocket (`/sync/ws`, writes over it too) or Server-Sent Events
/// (`/sync/sse`, receive-only; writes go over the REST API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    WebSocket,
    Sse,
}

/// Reconnect delays: attempt `n` (from 0) waits a uniformly random time in
/// `[0, min(max, initial · factor^n)]` ("full jitter"), or exactly that bound without jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub jitter: bool,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl Backoff {
    /// The upper bound of attempt `attempt`'s delay.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let secs = self.initial.as_secs_f64() * factor.powi(attempt.min(64) as i32);
        let max = self.max.as_secs_f64();
        Duration::try_from_secs_f64(secs.min(max)).unwrap_or(self.max)
    }

    /// The delay before attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter && !ceiling.is_zero() {
            rand::rng().random_range(Duration::ZERO..=ceiling)
        } else {
            ceiling
        }
    }
}

/// What [`Client::connect`] needs. [`ClientOptions::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server's base URL: `http://host:port` (a path prefix is kept).
    pub url: String,
    pub transport: Transport,
    /// Who the client is (the server's idea of what it has is kept per client id). Like a document
    /// id: 1-128 of `[A-Za-z0-9_.:@-]`.
    pub client_id: String,
    /// What to follow from the start: whole collections ([`Subscription::Collection`]) and scopes
    /// ([`Subscription::Scope`]). [`Client::subscribe`] and [`Client::unsubscribe`] change the set
    /// while the client runs ([`Client::subscriptions`] reads it); every (re)connection's `hello`
    /// carries the current set.
    pub subscribe: Vec<Subscription>,
    pub reconnect: Backoff,
    /// Keep the replica in this JSON file: loaded at connect (unless `initial` is given), saved at
    /// most once per second while it changes and at [`Client::close`].
    pub persist: Option<PathBuf>,
    /// Start from this replica (its vector goes into the first `hello`) instead of an empty one.
    pub initial: Option<Replica>,
    /// How long [`Client::write`] waits for its result (retrying across reconnects meanwhile).
    pub write_timeout: Duration,
    /// How long a connection (TCP + WebSocket/HTTP handshake) may take.
    pub connect_timeout: Duration,
    /// Acknowledge applied events at most this often (a `synced` is acknowledged at once).
    pub ack_interval: Duration,
    /// WebSocket: send a `ping` after this long without a message from the server.
    pub ping_interval: Duration,
    /// Reconnect after this long without anything from the server (a message, a pong, an SSE
    /// comment).
    pub idle_timeout: Duration,
    /// Largest message accepted from the server (a WebSocket message, an SSE event, a REST answer).
    pub max_message_bytes: usize,
    /// Capacity of the [`Client::changes`] channel; a receiver further behind gets `Lagged`.
    pub changes_capacity: usize,
    /// Most writes waiting for their result at once; beyond, [`ClientError::TooManyWrites`].
    pub max_pending_writes: usize,
    /// WebSocket: most writes sent and unanswered at once (the server refuses more than 64 with
    /// `too_many_writes`); the others wait their turn, in order.
    pub max_inflight_writes: usize,
    /// The token for a server with `--auth jwt`: sent in `hello` (WebSocket) and as
    /// `Authorization: Bearer` (SSE, REST writes). Replace it before it expires with
    /// [`Client::set_token`]; a refused token (close 4401, HTTP 401) is retried with backoff, so a
    /// replacement set meanwhile is used at the next attempt.
    pub token: Option<Token>,
    /// Asked for a token before every connection attempt (so after a refusal too) and, on a
    /// WebSocket, again before the current one runs out (at 80 % of its lifetime, at least 10 s
    /// before its `exp`), the answer replacing it in place with `auth`. Overrides `token`.
    pub token_provider: Option<TokenProvider>,
}

/// What [`TokenProvider`]'s function returns.
pub type TokenFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;

/// A function that fetches a token (from an identity provider, a file, ...).
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    pub fn new<F, Fut>(f: F) -> TokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(f())))
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// A JWT's `exp` (unix seconds), read without verifying it (the server does that).
pub fn token_expiry(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

/// When to replace a token valid `left` more: at 80 % of it, at least 10 s before the end, and
/// not sooner than in a second.
pub fn refresh_delay(left: Duration) -> Duration {
    left.mul_f64(0.8)
        .min(left.saturating_sub(Duration::from_secs(10)))
        .max(Duration::from_secs(1))
}

/// A bearer token; its `Debug` does not show it (options get logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl<T: Into<String>> From<T> for Token {
    fn from(t: T) -> Token {
        Token(t.into())
    }
}

impl ClientOptions {
    /// Options with the defaults. `subscribe` takes collection names (`["games", "chat"]`, strings
    /// of any kind), [`Subscription`]s or [`Scope`]s (see [`scope`]) — anything
    /// [`IntoSubscription`].
    pub fn new(
        url: impl Into<String>,
        client_id: impl Into<String>,
        subscribe: impl IntoIterator<Item = impl IntoSubscription>,
    ) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            transport: Transport::WebSocket,
            client_id: client_id.into(),
            subscribe: subscribe
                .into_iter()
                .map(IntoSubscription::into_subscription)
                .collect(),
            reconnect: Backoff::default(),
            persist: None,
            initial: None,
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ack_interval: Duration::from_secs(1),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_message_bytes: 16 << 20,
            changes_capacity: 4096,
            max_pending_writes: 1024,
            max_inflight_writes: 64,
            token: None,
            token_provider: None,
        }
    }
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Opening a connection.
    Connecting,
    /// Connected, catching up (after `hello` or `sync`, before `synced`).
    Syncing,
    /// Current, receiving live events.
    Live,
    /// Not connected: waiting to reconnect, or [`Client::disconnect`]ed.
    Offline,
    /// [`Client::close`]d (or every handle dropped): the task has stopped.
    Closed,
}

/// A change applied to the replica, as [`Client::changes`] reports it.
#[derive(Debug, Clone)]
pub enum Change {
    /// An event was applied (duplicates and gaps are not reported).
    Event(Arc<Event>),
    /// A snapshot replaced (or, `deleted`, removed) a document.
    Snapshot(Arc<SnapshotMessage>),
    /// A catch-up completed: the hello's or a `sync`'s (`subscription` is `None`: every
    /// subscription is current), or a live [`Client::subscribe`]'s (`subscription` names it).
    Synced(Arc<SyncedMessage>),
    /// A document left every scope of the client (a write made it stop matching a filter, or a
    /// subscription ended): it was dropped from the replica, with its vector entry. Not a delete:
    /// the document may still exist, and arrives again as a snapshot if it comes back in scope.
    Removed(Arc<RemovedMessage>),
    /// A presence channel the client joined ([`Client::join`]) changed: the members after it.
    Presence(Arc<PresenceChange>),
    /// Another member of a joined channel broadcast something ([`Client::broadcast`]).
    Broadcast(Arc<BroadcastChange>),
}

/// What the connection side has seen (the replica's own counters are in [`Replica::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections established (handshake completed).
    pub connects: u64,
    /// Connection attempts that failed before the handshake completed.
    pub connect_failures: u64,
    /// Times an established or attempted connection was followed by another attempt.
    pub reconnects: u64,
    /// `sync` requests sent (WebSocket) or reconnects made to resync (SSE), gaps' included.
    pub resyncs: u64,
    /// `synced` messages received.
    pub synced: u64,
    /// `error` messages from the server.
    pub server_errors: u64,
    /// Messages that were not valid protocol messages (each ends the connection).
    pub garbage: u64,
    /// Messages of a type this client does not know (ignored).
    pub unknown: u64,
    /// `ack`s sent, and the last position acknowledged.
    pub acks: u64,
    pub last_ack: Seq,
    /// Writes sent (retries included) and results received.
    pub writes_sent: u64,
    pub results: u64,
    /// Times the server refused the token (close 4401, HTTP 401 on the SSE stream).
    pub unauthenticated: u64,
    /// `authenticated` answers to a replaced token.
    pub authenticated: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("timed out")]
    Timeout,
    #[error("the client is closed")]
    Closed,
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    #[error("too many writes waiting for their result")]
    TooManyWrites,
    #[error("transport: {0}")]
    Transport(String),
    #[error("persisted replica: {0}")]
    Persist(String),
    /// A subscription refused: by the client itself (malformed, an id already taken by another
    /// subscription, an unknown id to unsubscribe; code `invalid_subscription`), or by the server
    /// (its `error`: `invalid_subscription`, `forbidden`, ...). Nothing changed.
    #[error("subscription refused: {0}")]
    Subscription(ErrorBody),
    /// A presence request the server would refuse (a channel not joined, a state or broadcast
    /// over its size, too many channels). Nothing was sent.
    #[error("presence: {0}")]
    Presence(String),
}

impl ClientError {
    pub(crate) fn subscription(message: impl Into<String>) -> ClientError {
        ClientError::Subscription(ErrorBody::new(ErrorCode::InvalidSubscription, message))
    }
}

/// A fresh `op_id` for a write.
pub fn new_op_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Commands from the handles to the task.
#[derive(Debug)]
pub(crate) enum Command {
    Write(
        Box<WriteMessage>,
        oneshot::Sender<Result<ResultMessage, ClientError>>,
    ),
    Sync,
    Disconnect,
    Reconnect,
    /// The token was replaced ([`Shared::token`]): re-authenticate the session.
    Auth,
    /// [`Client::subscribe`] / [`Client::unsubscribe`]: answered once in effect.
    Subscribe(Box<Subscription>, subs::Reply),
    Unsubscribe(String, subs::Reply),
    /// A presence message (`join`, `presence`, `leave`, `broadcast`) for the live connection;
    /// dropped when there is none (the next one joins again: [`presence`]).
    Ephemeral(Box<ClientMessage>),
}

/// What the handles and the task share.
pub(crate) struct Shared {
    pub options: ClientOptions,
    pub base: Url,
    pub replica: Mutex<Replica>,
    pub state: Mutex<State>,
    /// The presence channels joined, and their members.
    pub presence: Mutex<presence::Channels>,
    /// Bumped on every change of the replica or the state, so waiters re-check.
    pub notify: watch::Sender<u64>,
    /// `None` once the task has stopped, so that receivers end.
    changes: Mutex<Option<broadcast::Sender<Change>>>,
    /// The current token ([`ClientOptions::token`], then [`Client::set_token`]'s or the
    /// provider's), and when the provider should be asked for the next one.
    token: Mutex<(Option<String>, Option<tokio::time::Instant>)>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub status: Option<Status>,
    pub stats: ClientStats,
    /// Replica modifications (for persistence).
    pub modified: u64,
    /// Times the client became live (a `synced` that left nothing missing).
    pub live: u64,
    /// The current subscriptions, each with whether its catch-up on this connection is applied.
    /// Changed by the task only.
    pub subscriptions: Vec<subs::SubState>,
}

impl Shared {
    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        // A panic while holding the lock cannot leave the replica half-changed in a way that
        // matters more than stopping would; keep going with what is there.
        self.replica.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn presence(&self) -> MutexGuard<'_, presence::Channels> {
        self.presence.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bump(&self) {
        self.notify.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn status(&self) -> Status {
        self.state().status.unwrap_or(Status::Connecting)
    }

    pub fn set_status(&self, status: Status) {
        let changed = {
            let mut st = self.state();
            let changed = st.status != Some(status);
            st.status = Some(status);
            changed
        };
        if changed {
            tracing::debug!(client = %self.options.client_id, ?status, "status");
            self.bump();
        }
    }

    /// Sends a change to the [`Client::changes`] receivers, if there are any (`change` is only
    /// built then).
    pub fn publish(&self, change: impl FnOnce() -> Option<Change>) {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = changes.as_ref().filter(|s| s.receiver_count() > 0) {
            if let Some(change) = change() {
                let _ = sender.send(change);
            }
        }
    }

    /// Ends every [`Client::changes`] receiver (after what was sent).
    pub fn close_changes(&self) {
        self.changes.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn token(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub fn set_token(&self, token: Option<String>) {
        let refresh_at = match (
            &self.options.token_provider,
            token.as_deref().and_then(token_expiry),
        ) {
            (Some(_), Some(exp)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let left = Duration::from_secs(exp).saturating_sub(now);
                Some(tokio::time::Instant::now() + refresh_delay(left))
            }
            _ => None,
        };
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = (token, refresh_at);
    }

    /// With a provider: asks it for a token (bounded by the connect timeout) and keeps the answer.
    /// Returns the token to use now.
    pub async fn fresh_token(&self) -> Option<String> {
        if let Some(provider) = &self.options.token_provider {
            match tokio::time::timeout(self.options.connect_timeout, (provider.0)()).await {
                Ok(token) => self.set_token(token),
                Err(_) => tracing::warn!(client = %self.options.client_id, "the token provider timed out"),
            }
        }
        self.token()
    }

    /// Whether the provider should be asked for a replacement now.
    pub fn refresh_due(&self) -> bool {
        let at = self.token.lock().unwrap_or_else(|e| e.into_inner()).1;
        at.is_some_and(|at| tokio::time::Instant::now() >= at)
    }

    /// The current subscriptions.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.state()
            .subscriptions
            .iter()
            .map(|s| s.subscription.clone())
            .collect()
    }

    pub fn stat(&self, f: impl FnOnce(&mut ClientStats)) {
        f(&mut self.state().stats);
        self.bump();
    }
}

struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    http: reqwest::Client,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A handle to a sync client; clones share it. The background task stops at [`Client::close`] or
/// when the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.shared.options.client_id)
            .field("status", &self.status())
            .finish()
    }
}

impl Client {
    /// Starts the client's background task (which connects, and reconnects, on its own) and
    /// returns at once. Must be called within a Tokio runtime.
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        Ok(Client::connect_with_changes(options).await?.0)
    }

    /// [`Client::connect`], with a [`Client::changes`] receiver subscribed before the task starts:
    /// it misses nothing, the first catch-up included.
    pub async fn connect_with_changes(
        mut options: ClientOptions,
    ) -> Result<(Client, broadcast::Receiver<Change>), ClientError> {
        let base = base_url(&options.url)?;
        eventsync_protocol::model::validate_id(&options.client_id)
            .map_err(|e| ClientError::InvalidOptions(format!("client_id: {e}")))?;
        if options.max_message_bytes < 1024
            || options.changes_capacity == 0
            || options.max_pending_writes == 0
            || options.max_inflight_writes == 0
        {
            return Err(ClientError::InvalidOptions(
                "max_message_bytes must be at least 1024; changes_capacity, max_pending_writes and \
                 max_inflight_writes at least 1"
                    .into(),
            ));
        }
        let subscriptions = subs::initial(&options.subscribe)?;
        let replica = match (options.initial.take(), &options.persist) {
            (Some(r), _) => r,
            (None, Some(path)) => task::load(path).await?,
            (None, None) => Replica::new(),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let (changes, first_receiver) = broadcast::channel(options.changes_capacity);
        let shared = Arc::new(Shared {
            base,
            replica: Mutex::new(replica),
            state: Mutex::new(State {
                status: Some(Status::Connecting),
                subscriptions,
                ..State::default()
            }),
            presence: Mutex::default(),
            notify: watch::channel(0).0,
            changes: Mutex::new(Some(changes)),
            token: Mutex::new((options.token.as_ref().map(|t| t.0.clone()), None)),
            options,
        });
        let (commands, command_rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(task::run(
            shared.clone(),
            command_rx,
            cancel.clone(),
            http.clone(),
        ));
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                commands,
                cancel,
                task: Mutex::new(Some(task)),
                http,
            }),
        };
        Ok((client, first_receiver))
    }

    pub fn client_id(&self) -> &str {
        &self.inner.shared.options.client_id
    }

    pub fn status(&self) -> Status {
        self.inner.shared.status()
    }

    pub fn stats(&self) -> ClientStats {
        self.inner.shared.state().stats
    }

    /// A copy of the replica.
    pub fn replica(&self) -> Replica {
        self.inner.shared.replica().clone()
    }

    /// Runs `f` on the replica (under its lock: keep it short, and do not call back into the client).
    pub fn with_replica<T>(&self, f: impl FnOnce(&Replica) -> T) -> T {
        f(&self.inner.shared.replica())
    }

    /// Applied changes, from now on. A receiver that falls more than
    /// [`ClientOptions::changes_capacity`] behind gets `RecvError::Lagged` (the replica itself is
    /// unaffected); once the client is closed, receivers get `RecvError::Closed`.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        let changes = self
            .inner
            .shared
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &*changes {
            Some(sender) => sender.subscribe(),
            // Closed: a receiver that ends at once.
            None => broadcast::channel(1).1,
        }
    }

    /// Waits until `predicate` holds for the replica (checked now and after every change).
    pub async fn wait_until(
        &self,
        mut predicate: impl FnMut(&Replica) -> bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.wait(|shared| Ok(predicate(&shared.replica())), timeout)
            .await
    }

    /// Waits until the client is [`Status::Live`] (connected and caught up).
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_status(|s| s == Status::Live, timeout).await
    }

    /// Waits until the connection statistics satisfy `predicate`.
    pub async fn wait_stats(
        &self,
        mut predicate: impl FnMut(&ClientStats) -> bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.wait(|shared| Ok(predicate(&shared.state().stats)), timeout)
            .await
    }

    /// Waits until the status satisfies `predicate`.
    pub async fn wait_status(
        &self,
        mut predicate: impl FnMut(Status) -> bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.wait(|shared| Ok(predicate(shared.status())), timeout).await
    }

    async fn wait(
        &self,
        mut check: impl FnMut(&Shared) -> Result<bool, ClientError>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let shared = &self.inner.shared;
        let mut rx = shared.notify.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Subscribed before checking: a change after the check wakes us.
            rx.borrow_and_update();
            if check(shared)? {
                return Ok(());
            }
            if shared.status() == Status::Closed {
                return Err(ClientError::Closed);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(Err(_)) => return Err(ClientError::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    /// A manual resync: over WebSocket a `sync` with the current vector; over SSE a reconnect.
    /// Returns once the resulting `synced` has been applied (or after `timeout`).
    pub async fn sync(&self, timeout: Duration) -> Result<(), ClientError> {
        let before = self.inner.shared.state().live;
        self.command(Command::Sync, timeout).await?;
        self.wait(|shared| Ok(shared.state().live > before), timeout)
            .await
    }

    /// The current subscriptions (those of [`ClientOptions::subscribe`], as changed by
    /// [`Client::subscribe`] and [`Client::unsubscribe`]).
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.inner.shared.subscriptions()
    }

    /// Whether the subscription with this id (a collection's name for a whole collection) has its
    /// catch-up applied on the current connection: `None` when there is no such subscription.
    /// Reset at every (re)connection, set by the `synced` that covers it (the hello's, a `sync`'s,
    /// or the one naming it after a live [`Client::subscribe`]).
    pub fn subscription_synced(&self, id: &str) -> Option<bool> {
        subs::synced(&self.inner.shared, id)
    }

    /// Waits until the subscription with this id is synced ([`Client::subscription_synced`]).
    /// [`ClientError::Subscription`] when there is no such subscription (or it ends meanwhile).
    pub async fn wait_subscription_synced(&self, id: &str, timeout: Duration) -> Result<(), ClientError> {
        self.wait(
            |shared| match subs::synced(shared, id) {
                Some(synced) => Ok(synced),
                None => Err(ClientError::subscription(format!(
                    "no subscription with the id '{id}'"
                ))),
            },
            timeout,
        )
        .await
    }

    /// Adds a subscription — a collection's name for the whole collection, or a [`Scope`] — and
    /// returns once its catch-up is applied (its documents are in the replica, their collection's
    /// map: [`Replica::documents`]). Over a live WebSocket it is a `subscribe` message, answered by
    /// the scope's catch-up and a `synced` naming it; over SSE (which has no back channel) the
    /// stream is reopened with the new set; while offline the next connection's `hello` carries
    /// it. Every later reconnection's `hello` carries it too.
    ///
    /// Adding a subscription that is already there (the same id, the same definition) does
    /// nothing. [`ClientError::Subscription`] when it is refused — by the client (malformed, or
    /// its id taken by a different subscription) or by the server (`invalid_subscription`,
    /// `forbidden`): nothing changed then. [`ClientError::Timeout`] after
    /// [`ClientOptions::write_timeout`]: the subscription stays in the set and its catch-up may
    /// still come ([`Client::wait_subscription_synced`]); unsubscribe to undo it.
    pub async fn subscribe(&self, subscription: impl IntoSubscription) -> Result<(), ClientError> {
        let subscription = subscription.into_subscription();
        subs::check(&subscription)?;
        let command = |reply| Command::Subscribe(Box::new(subscription), reply);
        self.subscription_command(command).await
    }

    /// Ends the subscription with this id (a collection's name for a whole collection) and returns
    /// once the replica dropped what it alone brought: documents that left every remaining
    /// subscription arrive as [`Change::Removed`] (a WebSocket's `removed` messages, then
    /// `unsubscribed`); over SSE or offline, documents of a collection no subscription follows any
    /// more are dropped at once, the others by the next connection's catch-up. Errors as
    /// [`Client::subscribe`]'s (an unknown id is [`ClientError::Subscription`]).
    pub async fn unsubscribe(&self, id: &str) -> Result<(), ClientError> {
        let id = id.to_string();
        self.subscription_command(|reply| Command::Unsubscribe(id, reply))
            .await
    }

    /// Joins the presence channel `channel` — a collection (`"chat"`) or a document
    /// (`"games/g1"`) the token may read — with a small public `state` (at most 1 KiB), or replaces
    /// the state in one already joined. Returns once it is on its way: the members come as
    /// [`Change::Presence`] (the first with every member, this client included) and in
    /// [`Client::members`]. Every new connection joins again with the last state; joined offline,
    /// it takes effect on the next connection. A refusal by the server (`forbidden`,
    /// `rate_limited`) arrives as an `error` message, counted in [`ClientStats::server_errors`].
    pub async fn join(&self, channel: &str, state: Map<String, Value>) -> Result<(), ClientError> {
        let message = self.inner.shared.presence().join(channel, state)?;
        self.ephemeral(message).await
    }

    /// Replaces this client's state in a joined channel (the others get an `update`).
    pub async fn set_presence(&self, channel: &str, state: Map<String, Value>) -> Result<(), ClientError> {
        let message = self.inner.shared.presence().update(channel, state)?;
        self.ephemeral(message).await
    }

    /// Leaves a channel (the others get a `leave`, as they do when the connection ends).
    pub async fn leave(&self, channel: &str) -> Result<(), ClientError> {
        let message = self.inner.shared.presence().leave(channel);
        match message {
            Some(message) => self.ephemeral(message).await,
            None => Ok(()),
        }
    }

    /// Sends `data` (at most 4 KiB) to a joined channel's other members, as a
    /// [`Change::Broadcast`] on their side; never stored, and lost if no connection is live.
    pub async fn broadcast(&self, channel: &str, data: Value) -> Result<(), ClientError> {
        let message = self.inner.shared.presence().broadcast(channel, data)?;
        self.ephemeral(message).await
    }

    /// The members of a joined channel as the server last said (empty until its answer; `None`
    /// for a channel not joined).
    pub fn members(&self, channel: &str) -> Option<Vec<Member>> {
        self.inner.shared.presence().members(channel)
    }

    async fn ephemeral(&self, message: ClientMessage) -> Result<(), ClientError> {
        if self.status() == Status::Closed {
            return Err(ClientError::Closed);
        }
        let timeout = self.inner.shared.options.write_timeout;
        self.command(Command::Ephemeral(Box::new(message)), timeout).await
    }

    async fn subscription_command(
        &self,
        command: impl FnOnce(subs::Reply) -> Command,
    ) -> Result<(), ClientError> {
        if self.status() == Status::Closed {
            return Err(ClientError::Closed);
        }
        let timeout = self.inner.shared.options.write_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        self.command(command(tx), timeout).await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(answer)) => answer,
        }
    }

    /// Writes through the server: over the WebSocket (awaiting the `result` with the same `op_id`),
    /// or with SSE over the REST API (the answer mapped to a [`ResultMessage`]). A refused write is
    /// `Ok` with `ok: false` and the server's `error`; `Err` means no answer within
    /// [`ClientOptions::write_timeout`] (the write may or may not have been applied: retry with the
    /// same `op_id` to find out, it is applied at most once).
    pub async fn write(&self, write: WriteMessage) -> Result<ResultMessage, ClientError> {
        check_write(&write)?;
        let shared = &self.inner.shared;
        let timeout = shared.options.write_timeout;
        if self.status() == Status::Closed {
            return Err(ClientError::Closed);
        }
        match shared.options.transport {
            Transport::Sse => {
                let client_id = &shared.options.client_id;
                rest::write(&self.inner.http, shared, client_id, &write, timeout).await
            }
            Transport::WebSocket => {
                let deadline = tokio::time::Instant::now() + timeout;
                let (tx, rx) = oneshot::channel();
                self.command(Command::Write(Box::new(write), tx), timeout).await?;
                match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => Err(ClientError::Timeout),
                    Ok(Err(_)) => Err(ClientError::Closed),
                    Ok(Ok(answer)) => answer,
                }
            }
        }
    }

    /// Replaces the token: a live WebSocket session is re-authenticated in place (`auth`; its
    /// answer counts in [`ClientStats::authenticated`]), an SSE stream is reopened with it, and the
    /// next connection and REST write use it.
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), ClientError> {
        self.inner.shared.set_token(Some(token.into()));
        self.command(Command::Auth, Duration::from_secs(5)).await
    }

    /// Drops the connection and stays offline until [`Client::reconnect`] (writes made meanwhile
    /// wait, up to their timeout).
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.command(Command::Disconnect, Duration::from_secs(5)).await?;
        self.wait_status(|s| s == Status::Offline, Duration::from_secs(5))
            .await
    }

    /// Ends a [`Client::disconnect`], or cuts a backoff wait short: connect now.
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.command(Command::Reconnect, Duration::from_secs(5)).await
    }

    /// Stops the task (closing the connection, saving the replica if persisted) and waits for it.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        let task = self.inner.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn command(&self, command: Command, timeout: Duration) -> Result<(), ClientError> {
        match tokio::time::timeout(timeout, self.inner.commands.send(command)).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// The base URL: `http://` (or `ws://`, taken as the same server), no query or fragment.
fn base_url(url: &str) -> Result<Url, ClientError> {
    let mut base = Url::parse(url).map_err(|e| ClientError::InvalidOptions(format!("url {url:?}: {e}")))?;
    match base.scheme() {
        "http" => {}
        "ws" => base
            .set_scheme("http")
            .map_err(|_| ClientError::InvalidOptions(format!("url {url:?}")))?,
        other => {
            return Err(ClientError::InvalidOptions(format!(
                "url scheme {other:?}: only http:// (no TLS) is supported"
            )))
        }
    }
    if base.host_str().is_none() {
        return Err(ClientError::InvalidOptions(format!("url {url:?} has no host")));
    }
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// `base` + path segments (each percent-encoded as needed).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The fields a write needs for its op (the server checks everything else).
fn check_write(w: &WriteMessage) -> Result<(), ClientError> {
    let bad = |m: &str| Err(ClientError::InvalidWrite(m.to_string()));
    if w.op_id.is_empty() {
        return bad("op_id is empty");
    }
    if w.collection.is_empty() {
        return bad("collection is empty");
    }
    if w.op != WriteOp::Create && w.id.is_none() {
        return bad("an id is needed for all but create");
    }
    match w.op {
        WriteOp::Create | WriteOp::Replace if w.data.is_none() => bad("create and replace need data"),
        WriteOp::Patch if !w.patch.as_ref().is_some_and(|p| p.is_array()) => {
            bad("patch needs a patch (a JSON array)")
        }
        WriteOp::Merge if !w.patch.as_ref().is_some_and(|p| p.is_object()) => {
            bad("merge needs a patch (a JSON object)")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(3200));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        for attempt in 0..20 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
        }
        let fixed = Backoff {
            jitter: false,
            factor: f64::NAN,
            ..b
        };
        assert_eq!(fixed.delay(10), Duration::from_millis(100));
    }

    #[test]
    fn base_urls_and_endpoints() {
        let b = base_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            endpoint(&b, &["sync", "ws"]).as_str(),
            "http://127.0.0.1:8080/sync/ws"
        );
        let b = base_url("ws://h:1/prefix/?x=1").unwrap();
        assert_eq!(
            endpoint(&b, &["api", "games", "a/b c"]).as_str(),
            "http://h:1/prefix/api/games/a%2Fb%20c"
        );
        assert!(base_url("https://h").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[test]
    fn writes_need_their_fields() {
        let w = WriteMessage {
            op_id: "o".into(),
            op: WriteOp::Patch,
            collection: "games".into(),
            id: Some("g".into()),
            data: None,
            patch: Some(serde_json::json!([])),
            expected_version: None,
        };
        assert!(check_write(&w).is_ok());
        assert!(check_write(&WriteMessage {
            patch: Some(serde_json::json!({})),
            ..w.clone()
        })
        .is_err());
        assert!(check_write(&WriteMessage {
            id: None,
            ..w.clone()
        })
        .is_err());
        assert!(check_write(&WriteMessage {
            op: WriteOp::Merge,
            ..w.clone()
        })
        .is_err());
        assert!(check_write(&WriteMessage {
            op: WriteOp::Create,
            id: None,
            ..w.clone()
        })
        .is_err());
        let create = WriteMessage {
            op: WriteOp::Create,
            id: None,
            data: Some(Default::default()),
            ..w.clone()
        };
        assert!(check_write(&create).is_ok());
        assert!(check_write(&WriteMessage {
            op: WriteOp::Delete,
            patch: None,
            ..w
        })
        .is_ok());
    }
}
