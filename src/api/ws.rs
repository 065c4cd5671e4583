//! `GET /sync/ws`: the WebSocket transport of the [session driver](crate::sync::driver). It owns
//! the socket and nothing else: text frames in and out, the frame-size limit (1009), close frames,
//! how long a write may block, and its heartbeat — a ping every third of `--heartbeat-timeout`
//! (45 s), and a close (4408) when the client has shown no sign of life for all of it.
//!
//! The socket stays unsplit: the driver's loop reads only inside its `select!` and writes only in
//! its branch bodies, so no lock between a read half and a write half is needed, and no second task.

use std::future::Future;
use std::time::Duration;

use std::net::IpAddr;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::Extensions;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;

use super::AppState;
use crate::error::ErrorCode;
use crate::hub::LiveEvent;
use crate::sync::driver::{self, End, Incoming, Transport};
use crate::sync::protocol::{ClientMessage, ServerMessage};
use crate::sync::session::ProtocolError;
use crate::sync::{SyncContext, CLOSE_GOING_AWAY, CLOSE_TIMEOUT, CLOSE_TOO_BIG, SEND_TIMEOUT};

/// Bytes read from the socket at a time (tungstenite's default is 128 KiB per connection).
const READ_BUFFER: usize = 1024;
/// Bytes buffered before a write reaches the socket (a flush writes sooner).
const WRITE_BUFFER: usize = 16 * 1024;

/// The peer's address, when the server was started with connection info (what per-client
/// limits count without auth).
pub(crate) fn peer_of(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<crate::server::listener::Peer>>()
        .map(|c| c.0 .0.ip())
}

/// The token travels in the `hello` (browsers cannot set a WebSocket's headers), so the upgrade
/// itself is not authenticated: the session's first message is.
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    extensions: Extensions,
) -> Response {
    let peer = peer_of(&extensions);
    let limit = state.config.limits.max_body_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // No cap of tungstenite's own: the sink's backpressure keeps what it buffers near
        // WRITE_BUFFER plus the one frame being written — a frame the server already holds in
        // memory, whatever its size (a `synced` carries the client's vector: about 20 bytes per
        // document it holds, more than any request body for a client of 100,000 documents).
        // With a cap, a larger frame failed the write and the session ended before its `synced`.
        .max_write_buffer_size(usize::MAX)
        .on_upgrade(move |socket| state.sessions.track_future(run(socket, state.sync(), peer)))
}

async fn run(socket: WebSocket, ctx: SyncContext, peer: Option<IpAddr>) {
    let mut ws = Ws {
        socket,
        fed_by: None,
        heartbeat_timeout: ctx.heartbeat_timeout,
    };
    let _open = crate::metrics::SessionGauge::open("ws");
    // The driver watches the token itself (so it can flush acknowledgements first); this outer
    // watch covers a session stuck elsewhere, e.g. in a send.
    let end = tokio::select! {
        biased;
        end = driver::serve(&ctx, &mut ws, peer) => end,
        _ = ctx.shutdown.cancelled() => End::Close(CLOSE_GOING_AWAY, "server shutting down"),
    };
    if let End::Close(code, reason) = end {
        ws.close(code, reason).await;
    }
}

struct Ws {
    socket: WebSocket,
    /// When the server messages fed since the last flush must have reached the socket: a
    /// catch-up goes out within one [`SEND_TIMEOUT`] as a whole. Live events and flushes without
    /// such messages have a timeout each.
    fed_by: Option<Instant>,
    /// `--heartbeat-timeout`: no sign of life for this long closes the session.
    heartbeat_timeout: Duration,
}

/// `op` within `deadline`, or the client is gone.
async fn bounded(deadline: Instant, op: impl Future<Output = Result<(), axum::Error>>) -> Result<(), End> {
    match tokio::time::timeout_at(deadline, op).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Gone),
    }
}

impl Ws {
    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = bounded(
            Instant::now() + SEND_TIMEOUT,
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

impl Transport for Ws {
    const NAME: &'static str = "ws";
    const ACKS_WHAT_IT_SENDS: bool = false;

    /// A ping every third of the timeout: two may be lost before the client is given up.
    fn heartbeat_period(&self) -> Duration {
        self.heartbeat_timeout / 3
    }

    async fn feed(&mut self, msg: &ServerMessage) -> Result<(), End> {
        let deadline = *self.fed_by.get_or_insert_with(|| Instant::now() + SEND_TIMEOUT);
        let text = Message::Text(Utf8Bytes::from(msg.to_json()));
        bounded(deadline, self.socket.feed(text)).await
    }

    async fn feed_live(&mut self, event: &LiveEvent) -> Result<(), End> {
        bounded(
            Instant::now() + SEND_TIMEOUT,
            self.socket.feed(Message::Text(event.ws_text())),
        )
        .await
    }

    async fn flush(&mut self) -> Result<(), End> {
        let deadline = self
            .fed_by
            .take()
            .unwrap_or_else(|| Instant::now() + SEND_TIMEOUT);
        bounded(deadline, self.socket.flush()).await
    }

    async fn receive(&mut self) -> Result<Incoming, End> {
        match self.socket.next().await {
            None | Some(Ok(Message::Close(_))) => Err(End::Gone),
            Some(Err(e)) => Err(read_error(e)),
            Some(Ok(Message::Text(text))) => Ok(match parse(&text) {
                Ok(msg) => Incoming::Message(msg),
                Err(e) => Incoming::Refused(e),
            }),
            Some(Ok(Message::Binary(_))) => Ok(Incoming::Refused(ProtocolError::new(
                ErrorCode::BinaryNotSupported,
                "messages are JSON text frames",
            ))),
            // Pings and pongs (tungstenite answers pings itself).
            Some(Ok(_)) => Ok(Incoming::Noise),
        }
    }

    async fn heartbeat(&mut self, idle: Duration) -> Result<(), End> {
        if idle > self.heartbeat_timeout {
            return Err(End::Close(CLOSE_TIMEOUT, "no sign of life"));
        }
        bounded(
            Instant::now() + SEND_TIMEOUT,
            self.socket.send(Message::Ping(bytes::Bytes::new())),
        )
        .await
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
    let message = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
        } else {
            ProtocolError::new(ErrorCode::InvalidMessage, e.to_string())
        }
    })?;
    // A repeated member or a number that would change: refused like a REST body.
    crate::json::check_strict(text.as_bytes())
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, e.to_string()))?;
    Ok(message)
}
