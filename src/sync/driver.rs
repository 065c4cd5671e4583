//! The session driver: one loop that runs a sync session over any transport —
//! **hello → subscribe → catch-up → live → re-sync → acknowledgement flush**.
//!
//! A transport ([`Transport`]: the WebSocket in `api/ws.rs`, SSE in `api/sse.rs`) only frames and
//! parses, and keeps its own timers (how long a write may block, what its heartbeat does); the
//! driver decides everything else, with the sans-IO [`Session`] keeping the state. It is generic
//! over the transport, not `dyn`: fan-out to thousands of sockets runs this loop once per live
//! batch per connection, with no boxing or dynamic dispatch per event.
//!
//! Three places see everything, and are where authorization is: [`super::open::accept`] every
//! hello (its token, its subscriptions), [`forward`] every live event (through [`Session::live`],
//! which skips documents the token may not read), [`Writes::start`] every write. An `auth` message
//! replaces the session's principal (same subject only) and narrows or widens what the session
//! reads; a token that runs out without one ends the session (close 4401). With `--auth none`
//! the principal never expires and the loop has no timer for it.
//!
//! One task per connection, one `biased` `select!`: the shutdown token, the client's messages, the
//! hub, finished writes, the heartbeat and the acknowledgement flush. Live events are fed in batches
//! of up to [`SEND_BATCH`] with one flush. A session that falls behind the hub (`Lagged`) or finds a
//! gap drops what was queued and re-plans its catch-up from the store: lossless, since the log and
//! not the hub is the source of truth.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::open::{accept, open, read_catch_up, Accepted, Opened, Start, SyncContext};
use super::presence::Ephemeral;
use super::protocol::{ClientMessage, ServerMessage};
use super::session::{validate_vector, Live, ProtocolError, Recheck, Session, Unsubscribed};
use super::writes::{Writer, Writes};
use super::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_RATE_LIMITED, CLOSE_TIMEOUT, CLOSE_UNAUTHENTICATED,
    HELLO_TIMEOUT, MAX_VIOLATIONS, SEND_BATCH, VECTOR_FLUSH_INTERVAL,
};
use crate::auth::{Access, Principal};
use crate::error::ErrorCode;
use crate::hub::{LiveEvent, Subscription};
use crate::scope::Scope;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed or vanished (or a write to it did not finish in time).
    Gone,
    /// The server ends it, with this close code and reason (a transport without close frames just
    /// ends).
    Close(u16, &'static str),
}

/// What a transport read from its client.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "moved once, from the transport to the driver; boxing would allocate per message"
)]
pub enum Incoming {
    Message(ClientMessage),
    /// Not a message (bad JSON, a binary frame, ...): answered with `error`, counted as a violation.
    Refused(ProtocolError),
    /// A sign of life and nothing else (a WebSocket ping or pong).
    Noise,
}

/// One connection's way to its client. Writes are bounded by the transport (a client that stops
/// reading must not hold its session forever): `Err(End::Gone)` when one does not finish in time.
pub trait Transport: Send {
    /// Its name in metrics (`ws`, `sse`).
    const NAME: &'static str;
    /// Whether what was written counts as acknowledged — a transport with no back channel (SSE).
    const ACKS_WHAT_IT_SENDS: bool;

    /// Queues a server message; [`Transport::flush`] makes sure it is written.
    fn feed(&mut self, msg: &ServerMessage) -> impl Future<Output = Result<(), End>> + Send;
    /// Queues a message of a catch-up that comes in parts: as [`Transport::feed`], except that
    /// nothing in it may name a position (an SSE event's `id:`) — the parts' events do not only
    /// grow in sequence across parts, so only the closing `synced` says where the client is.
    fn feed_unnumbered(&mut self, msg: &ServerMessage) -> impl Future<Output = Result<(), End>> + Send {
        self.feed(msg)
    }
    /// Queues a live event, in its pre-serialized wire form.
    fn feed_live(&mut self, event: &LiveEvent) -> impl Future<Output = Result<(), End>> + Send;
    fn flush(&mut self) -> impl Future<Output = Result<(), End>> + Send;
    /// The client's next message. Must be cancel-safe: the loop drops it whenever another branch
    /// wins.
    fn receive(&mut self) -> impl Future<Output = Result<Incoming, End>> + Send;
    /// How often [`Transport::heartbeat`] runs once the session is live.
    fn heartbeat_period(&self) -> Duration;
    /// The transport's own heartbeat; `idle` is how long since the last sign of life (a message
    /// received, or live events the client's socket took).
    fn heartbeat(&mut self, idle: Duration) -> impl Future<Output = Result<(), End>> + Send;
}

/// A deadline that never comes, for a timer that is never polled.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

async fn send<T: Transport>(t: &mut T, msg: &ServerMessage) -> Result<(), End> {
    t.feed(msg).await?;
    t.flush().await
}

/// A whole session over a transport whose client says `hello` first (the WebSocket), from `peer`.
/// Once the hello is accepted, the session takes one of its client's sockets
/// (`--max-sockets-per-client`) for as long as it lives; over the limit: `error` `rate_limited`,
/// close 4429.
pub async fn serve<T: Transport>(ctx: &SyncContext, t: &mut T, peer: Option<IpAddr>) -> End {
    let accepted = match await_hello(ctx, t).await {
        Ok(accepted) => accepted,
        Err(end) => return end,
    };
    let _slot = match ctx.limits.socket(accepted.principal.limit_key(peer).as_deref()) {
        Ok(slot) => slot,
        Err(over) => {
            let _ = send(t, &ServerMessage::error(ErrorCode::RateLimited, over.message())).await;
            return End::Close(CLOSE_RATE_LIMITED, "too many sessions for this client");
        }
    };
    match open(ctx, accepted, Start::Hello).await {
        Ok(opened) => run(ctx, t, opened, peer).await,
        Err(_) => End::Close(CLOSE_INTERNAL, "store unavailable"),
    }
}

/// Waits up to [`HELLO_TIMEOUT`] for a valid `hello`; anything else before it is a violation. A
/// hello whose token is refused ends the connection: `error` `unauthenticated`, close 4401.
async fn await_hello<T: Transport>(ctx: &SyncContext, t: &mut T) -> Result<Accepted, End> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut strikes = 0;
    loop {
        let refusal = match tokio::time::timeout_at(deadline, t.receive()).await {
            Err(_) => return Err(End::Close(CLOSE_TIMEOUT, "no hello in time")),
            Ok(incoming) => match incoming? {
                Incoming::Noise => continue,
                Incoming::Refused(e) => e,
                Incoming::Message(ClientMessage::Hello(h)) => match accept(&ctx.auth, h) {
                    Ok(accepted) => return Ok(accepted),
                    Err(e) if e.code == ErrorCode::Unauthenticated => {
                        send(t, &e.into_message()).await?;
                        return Err(End::Close(CLOSE_UNAUTHENTICATED, "unauthenticated"));
                    }
                    Err(e) => e,
                },
                Incoming::Message(_) => {
                    ProtocolError::new(ErrorCode::HelloRequired, "the first message must be a hello")
                }
            },
        };
        send(t, &refusal.into_message()).await?;
        strikes += 1;
        if strikes >= MAX_VIOLATIONS {
            return Err(End::Close(CLOSE_POLICY, "too many bad messages"));
        }
    }
}

/// Who a session is for: its current principal, what limits count it as, when its token stops
/// counting, and the presence channels it is in (left when the connection ends).
struct Conn {
    principal: Arc<Principal>,
    limit_key: Option<String>,
    expires: Option<tokio::time::Instant>,
    eph: Ephemeral,
}

impl Conn {
    fn new(principal: Arc<Principal>, peer: Option<IpAddr>, eph: Ephemeral) -> Conn {
        Conn {
            limit_key: principal.limit_key(peer),
            expires: deadline(&principal),
            principal,
            eph,
        }
    }
}

fn deadline(p: &Principal) -> Option<tokio::time::Instant> {
    p.expires_in().map(|d| tokio::time::Instant::now() + d)
}

/// An opened session (of a client at `peer`): the refused subscriptions, its catch-up, then live
/// until it ends; what the client acknowledged is flushed to the store either way.
pub async fn run<T: Transport>(ctx: &SyncContext, t: &mut T, opened: Opened, peer: Option<IpAddr>) -> End {
    let Opened {
        mut session,
        mut live,
        principal,
        refusals,
    } = opened;
    let eph = Ephemeral::new(Arc::clone(&ctx.presence), session.client_id());
    let mut conn = Conn::new(principal, peer, eph);
    let mut end = None;
    for r in &refusals {
        if let Err(e) = t.feed(r).await {
            end = Some(e);
            break;
        }
    }
    let end = match end {
        Some(end) => end,
        None => match catch_up(ctx, t, &mut session).await {
            Ok(()) => live_loop(ctx, t, &mut session, &mut conn, &mut live).await,
            Err(end) => end,
        },
    };
    flush_acks(ctx, &mut session).await;
    end
}

/// Sends what brings the client from its session vector to current, then `synced`. A catch-up
/// larger than its byte budget (`--max-catch-up-bytes`) is read and sent in parts, each planned
/// from the vector the previous one brought the client to and going on from where it was cut
/// (reading only what changed before that point), so no more than one part is in memory at a
/// time; only the last is followed by `synced` (counting every part's messages).
async fn catch_up<T: Transport>(ctx: &SyncContext, t: &mut T, session: &mut Session) -> Result<(), End> {
    let started = Instant::now();
    let (mut snapshots, mut events) = (0, 0);
    let mut in_parts = false;
    let mut resume = None;
    loop {
        let mut c = read_catch_up(ctx, session, resume.take()).await.map_err(|e| {
            tracing::warn!(error = %e, "catch-up failed");
            End::Close(CLOSE_INTERNAL, "catch-up failed")
        })?;
        in_parts |= !c.complete;
        for m in &c.messages {
            if in_parts {
                t.feed_unnumbered(m).await?;
            } else {
                t.feed(m).await?;
            }
        }
        t.flush().await?;
        session.caught_up(&c);
        resume = c.resume.take();
        if T::ACKS_WHAT_IT_SENDS {
            // A stream that dies with frames in flight is corrected on reconnect (see `resume`).
            session.ack(c.position);
        }
        snapshots += c.snapshots;
        events += c.events;
        if c.complete {
            (c.snapshots, c.events) = (snapshots, events);
            let synced = session.lend_synced(&c);
            let sent = send(t, &synced).await;
            session.synced_sent(synced);
            sent?;
            crate::metrics::caught_up(started.elapsed(), snapshots, events);
            return Ok(());
        }
    }
}

/// The catch-up of one collection's scopes, in parts as [`catch_up`]'s: a live `subscribe`'s
/// (ended by a `synced` naming `subscription`), or the check an `unsubscribe` makes of what is
/// still in scope (its `removed` messages, no `synced`).
async fn catch_up_scope<T: Transport>(
    ctx: &SyncContext,
    t: &mut T,
    session: &mut Session,
    collection: &str,
    subscription: Option<&Scope>,
) -> Result<(), End> {
    let (mut snapshots, mut events) = (0, 0);
    let mut resume = None;
    loop {
        let read = super::catch_up(
            &*ctx.store,
            session,
            ctx.catch_up_bytes,
            Some(collection),
            resume.take(),
        );
        let mut c = read.await.map_err(|e| {
            tracing::warn!(error = %e, "catch-up failed");
            End::Close(CLOSE_INTERNAL, "catch-up failed")
        })?;
        for m in &c.messages {
            t.feed_unnumbered(m).await?;
        }
        session.caught_up_scope(collection, &c);
        resume = c.resume.take();
        snapshots += c.snapshots;
        events += c.events;
        if c.complete {
            (c.snapshots, c.events) = (snapshots, events);
            if let Some(s) = subscription {
                t.feed(&session.synced_subscription(&c, s)).await?;
            }
            return t.flush().await;
        }
        t.flush().await?;
    }
}

async fn live_loop<T: Transport>(
    ctx: &SyncContext,
    t: &mut T,
    session: &mut Session,
    conn: &mut Conn,
    live: &mut Subscription,
) -> End {
    let mut writes: Option<Writes> = None;
    let start = tokio::time::Instant::now();
    // When the token runs out. Without an expiry (`--auth none`) the branch is disabled and the
    // timer never registered; it is reset only when an `auth` message changes the deadline.
    let expiry = tokio::time::sleep_until(conn.expires.unwrap_or(start + NEVER));
    tokio::pin!(expiry);
    let period = t.heartbeat_period();
    let mut heartbeat = tokio::time::interval_at(start + period, period);
    let mut flush = tokio::time::interval_at(start + VECTOR_FLUSH_INTERVAL, VECTOR_FLUSH_INTERVAL);
    let mut last_seen = Instant::now();
    let cancelled = ctx.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        // `biased`: no random branch order per wake-up (this loop wakes once per live event).
        tokio::select! {
            biased;
            _ = &mut cancelled => return End::Close(CLOSE_GOING_AWAY, "server shutting down"),
            incoming = t.receive() => {
                last_seen = Instant::now();
                let before = conn.expires;
                if let Err(end) = on_incoming(ctx, t, session, conn, incoming, &mut writes, live).await {
                    return end;
                }
                if conn.expires != before {
                    expiry.as_mut().reset(conn.expires.unwrap_or(start + NEVER));
                }
            }
            _ = &mut expiry, if conn.expires.is_some() => {
                let _ = send(t, &ServerMessage::error(ErrorCode::Unauthenticated, "the token expired")).await;
                return End::Close(CLOSE_UNAUTHENTICATED, "token expired");
            }
            // Handled inline, not in a function of its own: this branch runs once per live batch
            // on every connection, and each `async fn` layer is one more state machine polled and
            // dropped per batch (measured under callgrind: 0.8 % of a fan-out run's instructions).
            received = live.recv() => {
                let forwarded = match received {
                    Ok(first) => forward(ctx, t, session, first, live).await,
                    Err(RecvError::Lagged(_)) => Ok(Forwarded { sent: false, resync: Some("lagged") }),
                    Err(RecvError::Closed) => Err(End::Gone),
                };
                match forwarded {
                    Ok(Forwarded { sent, resync }) => {
                        if sent {
                            // The client's socket took the data: it is reading, so it is alive
                            // (its pong may be queued behind what we sent).
                            last_seen = Instant::now();
                        }
                        if let Some(reason) = resync {
                            // Behind the hub, or a gap: re-plan from the store, from now on.
                            crate::metrics::resynced(reason);
                            live.skip_to_now();
                            if let Err(end) = Box::pin(catch_up(ctx, t, session)).await {
                                return end;
                            }
                        }
                    }
                    Err(end) => return end,
                }
            }
            Some(news) = conn.eph.next() => {
                if let Err(end) = send(t, &news).await {
                    return end;
                }
            }
            Some(result) = Writes::next(&mut writes) => {
                if let Err(end) = send(t, &ServerMessage::Result(result)).await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if let Err(end) = t.heartbeat(last_seen.elapsed()).await {
                    return end;
                }
            }
            _ = flush.tick(), if session.has_acked() => flush_acks(ctx, session).await,
        }
    }
}

/// What the client sent: handled, or refused and counted as a violation.
async fn on_incoming<T: Transport>(
    ctx: &SyncContext,
    t: &mut T,
    session: &mut Session,
    conn: &mut Conn,
    incoming: Result<Incoming, End>,
    writes: &mut Option<Writes>,
    live: &mut Subscription,
) -> Result<(), End> {
    let refusal = match incoming? {
        Incoming::Message(msg) => Box::pin(handle(ctx, t, session, conn, msg, writes, live)).await?,
        Incoming::Refused(e) => Some(e),
        Incoming::Noise => None,
    };
    if let Some(refusal) = refusal {
        send(t, &refusal.into_message()).await?;
        if session.violation() {
            return Err(End::Close(CLOSE_POLICY, "too many bad messages"));
        }
    }
    Ok(())
}

/// What [`forward`] did.
struct Forwarded {
    /// Something was written to the client.
    sent: bool,
    /// The session fell behind (`lagged`) or found a `gap`: re-plan its catch-up.
    resync: Option<&'static str>,
}

/// Every live event passes here: `first` and whatever else is already waiting (up to a batch),
/// each decided by the session, then one flush.
async fn forward<T: Transport>(
    ctx: &SyncContext,
    t: &mut T,
    session: &mut Session,
    first: Arc<LiveEvent>,
    live: &mut Subscription,
) -> Result<Forwarded, End> {
    let mut batch = vec![first];
    let mut lagged = false;
    while batch.len() < SEND_BATCH {
        match live.try_recv() {
            Ok(e) => batch.push(e),
            Err(TryRecvError::Lagged(_)) => {
                lagged = true;
                break;
            }
            Err(_) => break,
        }
    }
    let mut gap = false;
    let mut sent = 0;
    for e in &batch {
        match session.live(e) {
            Live::Send => {
                sent += 1;
                t.feed_live(e).await?;
                if T::ACKS_WHAT_IT_SENDS {
                    session.ack(e.seq);
                }
            }
            Live::Skip => {}
            Live::Gap => {
                gap = true;
                break;
            }
            Live::Remove => {
                sent += 1;
                t.feed(&session.removed(e)).await?;
                if T::ACKS_WHAT_IT_SENDS {
                    session.ack(e.seq);
                }
            }
            Live::Recheck => {
                // The write may have moved the document in or out of a filtered scope: its body
                // now decides (read after the event was committed, so at its version or later;
                // once per event for every session that asks).
                let stored = match ctx.rechecks.read(&*ctx.store, e).await {
                    Ok(stored) => stored,
                    Err(err) => {
                        tracing::warn!(error = %err, "reading a document to recheck its scope failed");
                        return Err(End::Close(CLOSE_INTERNAL, "store unavailable"));
                    }
                };
                let out = match session.rechecked(e, stored.as_deref()) {
                    Recheck::Event => t.feed_live(e).await.map(|()| true),
                    Recheck::Send(m) => t.feed(&m).await.map(|()| true),
                    Recheck::Nothing => Ok(false),
                };
                if out? {
                    sent += 1;
                    if T::ACKS_WHAT_IT_SENDS {
                        session.ack(e.seq);
                    }
                }
            }
        }
    }
    if sent > 0 {
        t.flush().await?;
        crate::metrics::delivered(T::NAME, sent);
    }
    Ok(Forwarded {
        sent: sent > 0,
        resync: if lagged {
            Some("lagged")
        } else {
            gap.then_some("gap")
        },
    })
}

/// Handles one message after the hello; `Ok(Some(refusal))` is a bad message to answer with `error`.
async fn handle<T: Transport>(
    ctx: &SyncContext,
    t: &mut T,
    session: &mut Session,
    conn: &mut Conn,
    msg: ClientMessage,
    writes: &mut Option<Writes>,
    live: &mut Subscription,
) -> Result<Option<ProtocolError>, End> {
    match msg {
        ClientMessage::Hello(_) => {
            return Ok(Some(ProtocolError::new(
                ErrorCode::AlreadyHello,
                "hello was already received",
            )))
        }
        ClientMessage::Sync { state_vector } => {
            if let Some(v) = state_vector {
                if let Err(e) = validate_vector(&v) {
                    return Ok(Some(e.into()));
                }
                session.reset_vector(v);
                // The client's own word for what it has: remembered as acknowledged, like a hello's.
                if let Err(e) = ctx
                    .store
                    .save_client(session.key(), 0, session.vector(), true)
                    .await
                {
                    tracing::warn!(error = %e, "saving a sync's vector failed");
                }
            }
            catch_up(ctx, t, session).await?;
        }
        ClientMessage::Subscribe { subscription } => {
            let id = subscription.id().to_string();
            let scope = match Scope::parse(&subscription) {
                Ok(scope) => scope,
                Err(e) => {
                    let e = ProtocolError::new(ErrorCode::InvalidSubscription, e);
                    return Ok(Some(e.refusing(&id)));
                }
            };
            let access = match conn.principal.check_read_collection(&scope.collection) {
                Ok(access) => access,
                Err(e) => return Ok(Some(ProtocolError::new(e.code, e.message).refusing(&id))),
            };
            if let Err(e) = session.subscribe(scope.clone(), access) {
                return Ok(Some(e.refusing(&id)));
            }
            // Subscribe before you read: the hub wakes the session for the new scope first.
            live.set_interest(session.interest());
            catch_up_scope(ctx, t, session, &scope.collection, Some(&scope)).await?;
        }
        ClientMessage::Unsubscribe { id } => {
            match session.unsubscribe(&id) {
                Err(e) => return Ok(Some(e)),
                Ok(Unsubscribed::Left(removed)) => {
                    for r in removed {
                        t.feed(&ServerMessage::Removed(r)).await?;
                    }
                }
                Ok(Unsubscribed::Recheck(collection)) => {
                    catch_up_scope(ctx, t, session, &collection, None).await?;
                }
                Ok(Unsubscribed::Nothing) => {}
            }
            live.set_interest(session.interest());
            send(t, &ServerMessage::Unsubscribed { id }).await?;
        }
        ClientMessage::Join { channel, state } => match conn.eph.join(&conn.principal, &channel, state) {
            Ok(members) => send(t, &members).await?,
            Err(e) => return Ok(Some(e)),
        },
        // Over the rate is answered, not counted as a bad message (like a write over its rate).
        ClientMessage::Presence { channel, state } => match conn.eph.update(&channel, state) {
            Err(e) if e.code == ErrorCode::RateLimited => send(t, &e.into_message()).await?,
            Err(e) => return Ok(Some(e)),
            Ok(()) => {}
        },
        ClientMessage::Broadcast { channel, data } => match conn.eph.broadcast(&channel, data) {
            Err(e) if e.code == ErrorCode::RateLimited => send(t, &e.into_message()).await?,
            Err(e) => return Ok(Some(e)),
            Ok(()) => {}
        },
        ClientMessage::Leave { channel } => {
            if let Err(e) = conn.eph.leave(&channel) {
                return Ok(Some(e));
            }
        }
        ClientMessage::Ack { seq } => session.ack(seq),
        ClientMessage::Ping { id } => send(t, &ServerMessage::Pong { id }).await?,
        ClientMessage::Write(w) => {
            let writer = Writer {
                principal: &conn.principal,
                limit_key: conn.limit_key.as_deref(),
            };
            if let Some(refused) = Writes::start(writes, ctx, writer, session.client_id(), w) {
                send(t, &ServerMessage::Result(refused)).await?;
            }
        }
        ClientMessage::Auth { token } => {
            reauthenticate(ctx, t, session, conn, &token).await?;
            live.set_interest(session.interest());
            let principal = Arc::clone(&conn.principal);
            for c in conn.eph.reauthorize(&principal) {
                let msg = format!("this token may not read '{c}': left the channel");
                send(t, &ServerMessage::error(ErrorCode::Forbidden, msg)).await?;
            }
        }
    }
    Ok(None)
}

/// An `auth` message: a valid token of the same subject replaces the session's (`authenticated`);
/// what the session reads is recomputed — a collection no longer readable at all is dropped with
/// an `error` `forbidden` naming it, documents no longer readable leave the vector and are never
/// sent again. A bad token is answered `unauthenticated` and the old one stays in force; a token
/// of another subject `forbidden` (a session, and the vector it remembers, is bound to its subject).
async fn reauthenticate<T: Transport>(
    ctx: &SyncContext,
    t: &mut T,
    session: &mut Session,
    conn: &mut Conn,
    token: &str,
) -> Result<(), End> {
    let principal = match ctx.auth.authenticate(Some(token)) {
        Ok(p) => p,
        Err(e) => return send(t, &ServerMessage::error(e.code, e.message)).await,
    };
    if principal.subject() != conn.principal.subject() {
        let msg = "this session is bound to its subject: the token is for another one";
        return send(t, &ServerMessage::error(ErrorCode::Forbidden, msg)).await;
    }
    let dropped = session.reauthorize(|c| principal.check_read_collection(c).unwrap_or(Access::None));
    for c in dropped {
        let msg = format!("this token may not read '{c}': no longer subscribed");
        t.feed(&ServerMessage::error(ErrorCode::Forbidden, msg)).await?;
    }
    conn.expires = deadline(&principal);
    let expires_at = principal.expires_at();
    conn.principal = principal;
    send(t, &ServerMessage::Authenticated { expires_at }).await
}

/// Records what the client acknowledged since the last flush (at most every
/// [`VECTOR_FLUSH_INTERVAL`], and once more when the session ends).
async fn flush_acks(ctx: &SyncContext, session: &mut Session) {
    if let Some((position, entries)) = session.take_acked() {
        if let Err(e) = ctx
            .store
            .save_client(session.key(), position, &entries, false)
            .await
        {
            tracing::warn!(error = %e, client = session.key(), "saving the acknowledged vector failed");
        }
    }
}
