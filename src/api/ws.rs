//! `GET /sync/ws`: the WebSocket transport. It drives a [`Session`] — hello, catch-up, live events,
//! writes, acks, heartbeats — and owns nothing but the socket.
//!
//! One task per connection, one `select!` loop: the shutdown token, the client's frames, the hub,
//! finished writes, the ping timer and the vector-flush timer. Sends are bounded by
//! [`SEND_TIMEOUT`]; live events are fed in batches of up to [`SEND_BATCH`] and flushed once. A
//! client that falls behind the hub (its socket full) lags, and is then re-synced from the store.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, Semaphore};

use super::sync::{commit_write, initial_vector, ProtocolError};
use super::AppState;
use crate::error::{ErrorBody, ErrorCode};
use crate::hub::LiveEvent;
use crate::sync::protocol::{ClientMessage, ResultMessage, ServerMessage};
use crate::sync::session::{validate_hello, validate_vector, Live, Session};
use crate::sync::{
    CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TIMEOUT, CLOSE_TOO_BIG, HELLO_TIMEOUT,
    MAX_INFLIGHT_WRITES, PING_INTERVAL, PONG_TIMEOUT, SEND_BATCH, SEND_TIMEOUT, VECTOR_FLUSH_INTERVAL,
};

/// Bytes read from the socket at a time (tungstenite's default is 128 KiB per connection).
const READ_BUFFER: usize = 1024;
/// Bytes buffered before a write reaches the socket (a flush writes sooner).
const WRITE_BUFFER: usize = 16 * 1024;

pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    let limit = state.config.limits.max_body_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + limit)
        .on_upgrade(move |socket| {
            let sessions = state.sessions.clone();
            sessions.track_future(run(socket, state))
        })
}

/// What [`Connection::forward`] did.
struct Forwarded {
    /// Something was written to the socket.
    sent: bool,
    /// The session fell behind or found a gap: re-plan its catch-up.
    resync: bool,
}

/// Why a connection ended.
enum End {
    /// The client closed or vanished.
    Gone,
    /// We close with this code and reason.
    Close(u16, &'static str),
}

struct Connection {
    /// Unsplit: the loop reads only inside `select!` and writes only in its branch bodies, so no
    /// lock between a read half and a write half is needed.
    socket: WebSocket,
    state: AppState,
}

impl Connection {
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    async fn send_message(&mut self, msg: &ServerMessage) -> Result<(), End> {
        self.send(Message::Text(Utf8Bytes::from(msg.to_json()))).await
    }

    async fn error(&mut self, code: ErrorCode, message: impl Into<String>) -> Result<(), End> {
        self.send_message(&ServerMessage::error(code, message)).await
    }

    /// Sends what brings the client from its session vector to current, then `synced`.
    async fn catch_up(&mut self, session: &mut Session) -> Result<(), End> {
        let c = match crate::sync::catch_up(&*self.state.store, session.collections(), session.vector()).await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "catch-up failed");
                return Err(End::Close(CLOSE_INTERNAL, "catch-up failed"));
            }
        };
        let feed = async {
            for m in &c.messages {
                self.socket
                    .feed(Message::Text(Utf8Bytes::from(m.to_json())))
                    .await?;
            }
            self.socket.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, feed).await {
            Ok(Ok(())) => {}
            _ => return Err(End::Gone),
        }
        session.caught_up(&c);
        let synced = session.synced(&c);
        self.send_message(&synced).await
    }

    /// Forwards `first` and whatever else is already waiting (up to a batch), with one flush.
    async fn forward(
        &mut self,
        session: &mut Session,
        first: Arc<LiveEvent>,
        rx: &mut tokio::sync::broadcast::Receiver<Arc<LiveEvent>>,
    ) -> Result<Forwarded, End> {
        let mut batch = vec![first];
        let mut lagged = false;
        while batch.len() < SEND_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(TryRecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut gap = false;
        let mut any = false;
        for e in &batch {
            match session.live(e) {
                Live::Send => {
                    any = true;
                    let fed =
                        tokio::time::timeout(SEND_TIMEOUT, self.socket.feed(Message::Text(e.ws_text())))
                            .await;
                    if !matches!(fed, Ok(Ok(()))) {
                        return Err(End::Gone);
                    }
                }
                Live::Skip => {}
                Live::Gap => {
                    gap = true;
                    break;
                }
            }
        }
        if any
            && !matches!(
                tokio::time::timeout(SEND_TIMEOUT, self.socket.flush()).await,
                Ok(Ok(()))
            )
        {
            return Err(End::Gone);
        }
        Ok(Forwarded {
            sent: any,
            resync: lagged || gap,
        })
    }

    async fn flush_acks(&mut self, session: &mut Session) {
        super::sync::flush_acks(&self.state, session).await;
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Close(Some(frame)))).await;
    }
}

async fn run(socket: WebSocket, state: AppState) {
    let shutdown = state.shutdown.clone();
    let mut conn = Connection { socket, state };
    // The session loop watches the token itself (so it can flush acknowledgements first); this
    // outer watch covers a session stuck elsewhere, e.g. in a send.
    let end = tokio::select! {
        biased;
        end = session(&mut conn) => end,
        _ = shutdown.cancelled() => End::Close(CLOSE_GOING_AWAY, "server shutting down"),
    };
    if let End::Close(code, reason) = end {
        conn.close(code, reason).await;
    }
}

/// A frame from the client, as the session sees it.
enum Incoming {
    Text(Utf8Bytes),
    /// Pings and pongs (tungstenite answers pings itself): a sign of life, nothing to do.
    Noise,
    /// A frame that is not a message (binary): answered with an error, counted as a violation.
    Bad(ProtocolError),
}

/// Reads the next frame; `Err` ends the connection.
async fn next_frame(socket: &mut WebSocket) -> Result<Incoming, End> {
    match socket.next().await {
        None | Some(Ok(Message::Close(_))) => Err(End::Gone),
        Some(Err(e)) => Err(read_error(e)),
        Some(Ok(Message::Text(t))) => Ok(Incoming::Text(t)),
        Some(Ok(Message::Binary(_))) => Ok(Incoming::Bad(ProtocolError::new(
            ErrorCode::BinaryNotSupported,
            "messages are JSON text frames",
        ))),
        Some(Ok(_)) => Ok(Incoming::Noise),
    }
}

fn read_error(e: axum::Error) -> End {
    let text = e.to_string();
    if text.contains("too long")
        || text.contains("too big")
        || text.contains("Space limit")
        || text.contains("capacity")
    {
        End::Close(CLOSE_TOO_BIG, "message too big")
    } else {
        End::Gone
    }
}

fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
        } else {
            ProtocolError::new(ErrorCode::InvalidMessage, e.to_string())
        }
    })
}

async fn session(conn: &mut Connection) -> End {
    match session_inner(conn).await {
        Ok(()) => End::Gone,
        Err(end) => end,
    }
}

async fn session_inner(conn: &mut Connection) -> Result<(), End> {
    // 1. hello, within the deadline; anything else before it is a violation.
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut strikes = 0;
    let hello = loop {
        let refusal = match tokio::time::timeout_at(deadline, next_frame(&mut conn.socket)).await {
            Err(_) => return Err(End::Close(CLOSE_TIMEOUT, "no hello in time")),
            Ok(frame) => match frame? {
                Incoming::Noise => continue,
                Incoming::Bad(e) => e,
                Incoming::Text(text) => match parse(&text) {
                    Ok(ClientMessage::Hello(h)) => match validate_hello(&h) {
                        Ok(()) => break h,
                        Err(e) => ProtocolError::new(e.code(), e.to_string()),
                    },
                    Ok(_) => {
                        ProtocolError::new(ErrorCode::HelloRequired, "the first message must be a hello")
                    }
                    Err(e) => e,
                },
            },
        };
        conn.error(refusal.code, refusal.message).await?;
        strikes += 1;
        if strikes >= crate::sync::MAX_VIOLATIONS {
            return Err(End::Close(CLOSE_POLICY, "too many bad messages"));
        }
    };

    // 2. Subscribe before reading the catch-up: nothing committed in between can be missed.
    let mut rx = conn.state.hub.subscribe();
    let vector = initial_vector(&conn.state, &hello)
        .await
        .map_err(|_| End::Close(CLOSE_INTERNAL, "store unavailable"))?;
    let mut session = Session::new(hello.client_id.clone(), &hello.subscribe, vector);
    conn.catch_up(&mut session).await?;

    // 3. Live.
    // Created on the first write: most sessions never write, and the channel costs ~5 KiB.
    let mut writes: Option<Writes> = None;
    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + PING_INTERVAL, PING_INTERVAL);
    let mut flush = tokio::time::interval_at(start + VECTOR_FLUSH_INTERVAL, VECTOR_FLUSH_INTERVAL);
    let mut last_seen = Instant::now();
    let shutdown = conn.state.shutdown.clone();
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let outcome = loop {
        // `biased`: no random branch order per wake-up (this loop wakes once per live event).
        tokio::select! {
            biased;
            _ = &mut cancelled => break Err(End::Close(CLOSE_GOING_AWAY, "server shutting down")),
            frame = next_frame(&mut conn.socket) => {
                last_seen = Instant::now();
                let handled = match frame {
                    Ok(Incoming::Text(text)) => match parse(&text) {
                        Ok(msg) => Box::pin(handle(conn, &mut session, msg, &mut writes)).await,
                        Err(e) => Ok(Some(e)),
                    },
                    Ok(Incoming::Noise) => continue,
                    Ok(Incoming::Bad(e)) => Ok(Some(e)),
                    Err(end) => break Err(end),
                };
                match handled {
                    Ok(None) => {}
                    Ok(Some(refusal)) => {
                        if let Err(end) = conn.error(refusal.code, refusal.message).await {
                            break Err(end);
                        }
                        if session.violation() {
                            break Err(End::Close(CLOSE_POLICY, "too many bad messages"));
                        }
                    }
                    Err(end) => break Err(end),
                }
            }
            received = rx.recv() => {
                let resync = match received {
                    Ok(first) => match conn.forward(&mut session, first, &mut rx).await {
                        Ok(Forwarded { sent, resync }) => {
                            if sent {
                                // The client's TCP window took the data: it is reading, so it is
                                // alive (its pong may be queued behind what we sent).
                                last_seen = Instant::now();
                            }
                            resync
                        }
                        Err(end) => break Err(end),
                    },
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => break Ok(()),
                };
                if resync {
                    if let Err(end) = Box::pin(conn.catch_up(&mut session)).await {
                        break Err(end);
                    }
                }
            }
            Some(result) = next_result(&mut writes) => {
                if let Err(end) = conn.send_message(&ServerMessage::Result(result)).await {
                    break Err(end);
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > PONG_TIMEOUT {
                    break Err(End::Close(CLOSE_TIMEOUT, "no sign of life"));
                }
                if let Err(end) = conn.send(Message::Ping(bytes::Bytes::new())).await {
                    break Err(end);
                }
            }
            _ = flush.tick(), if session.has_acked() => conn.flush_acks(&mut session).await,
        }
    };
    conn.flush_acks(&mut session).await;
    outcome
}

/// Writes in flight on one connection, and the channel their results come back on.
struct Writes {
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
}

/// The next finished write, or never if none was ever made.
async fn next_result(writes: &mut Option<Writes>) -> Option<ResultMessage> {
    match writes {
        Some(w) => w.results.recv().await,
        None => std::future::pending().await,
    }
}

/// Handles one message after hello; `Ok(Some(refusal))` is a bad message to answer with `error`.
async fn handle(
    conn: &mut Connection,
    session: &mut Session,
    msg: ClientMessage,
    writes: &mut Option<Writes>,
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
                    return Ok(Some(ProtocolError::new(e.code(), e.to_string())));
                }
                session.reset_vector(v);
                // The client's own word for what it has: remembered as acknowledged, like a hello's.
                let store = &conn.state.store;
                if let Err(e) = store
                    .save_client(session.client_id(), 0, session.vector(), true)
                    .await
                {
                    tracing::warn!(error = %e, "saving a sync's vector failed");
                }
            }
            conn.catch_up(session).await?;
        }
        ClientMessage::Ack { seq } => session.ack(seq),
        ClientMessage::Ping { id } => conn.send_message(&ServerMessage::Pong { id }).await?,
        ClientMessage::Write(w) => {
            let writes = writes.get_or_insert_with(Writes::new);
            let Ok(permit) = Arc::clone(&writes.inflight).try_acquire_owned() else {
                let refused = ResultMessage {
                    op_id: w.op_id,
                    ok: false,
                    id: w.id,
                    version: None,
                    seq: None,
                    replayed: false,
                    error: Some(ErrorBody::new(
                        ErrorCode::TooManyWrites,
                        format!("at most {MAX_INFLIGHT_WRITES} writes may be in flight"),
                    )),
                };
                conn.send_message(&ServerMessage::Result(refused)).await?;
                return Ok(None);
            };
            let (state, client_id, results) = (
                conn.state.clone(),
                session.client_id().to_string(),
                writes.results_tx.clone(),
            );
            tokio::spawn(async move {
                let result = commit_write(&state, &client_id, w).await;
                let _ = results.send(result).await;
                drop(permit);
            });
        }
    }
    Ok(None)
}
