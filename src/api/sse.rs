//! `GET /sync/sse`: the Server-Sent Events transport of the [session driver](crate::sync::driver)
//! — the same messages as the WebSocket, one way.
//!
//! `?client_id=...&subscribe=games,other&state_vector=<JSON>` starts a session. Events carry
//! `id: <seq>`, and so does `synced` (its position); snapshots carry none and come before any event of
//! their catch-up, whose events are in sequence order. So ids only grow along a stream,
//! `Last-Event-ID` names a point up to which the client has every message, and a browser's automatic
//! reconnect resumes from there ([`crate::sync::resume`]). With no back channel, what was written to
//! the stream counts as acknowledged; `Last-Event-ID` corrects for frames lost in flight.
//!
//! The token: `Authorization: Bearer` (non-browser clients, and the JS client, which reads SSE
//! with `fetch`), else `?token=` (for `EventSource`, which cannot set headers — query strings land
//! in proxy and access logs, so use short-lived tokens there). A missing or refused token is a 401
//! before the stream starts; a client over `--max-streams-per-client` gets 429. When the token
//! runs out the stream ends (after an `error` `unauthenticated` frame): the client reconnects with
//! a fresh one. Subscriptions the token cannot read come first as `event: error` frames.
//!
//! **Registered openings.** A query string cannot carry scopes (`where` filters) or a large vector
//! (a vector of 100,000 documents would be megabytes of URL, refused long before by any proxy).
//! So `POST /sync/sse` takes the opening as a JSON body — the same fields as a WebSocket `hello`
//! — checks it as a hello is checked (token first), and answers `201 {"resume": "<id>",
//! "expires_in_ms": ...}`; `GET /sync/sse?resume=<id>` (with a token of the same subject) then
//! opens the stream from exactly that opening. An id is single-use and lives [`RESUME_TTL`]; at
//! most [`MAX_REGISTERED`] openings of at most [`MAX_REGISTERED_BYTES`] in all wait at once
//! (beyond: 503, retry). Such a stream resumes only by registering again with the client's own
//! vector: a registered opening ignores `Last-Event-ID` (the vector it carries is the client's
//! word, fresher than any position).
//!
//! **A back channel.** A stream's first frame is `event: stream` with its id; the client posts
//! any protocol message but `hello` — `subscribe`, `unsubscribe`, `join`, `broadcast`, `sync`,
//! `write`, ... — to `POST /sync/sse/{stream}` (a token of the stream's subject), answered `202`
//! once queued (at most [`POSTED_QUEUE`] messages of [`POSTED_BYTES`] wait; beyond, `429`). The
//! answers come down the stream, as over a WebSocket.
//!
//! This file owns the framing (`event:`, `id:`, `data:`), the query and the header, the response's
//! frame queue and the keep-alive comments; the session is the driver's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::auth::bearer;
use super::extract::{JsonBody, Query};
use super::ws::peer_of;
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::hub::LiveEvent;
use crate::model::Seq;
use crate::sync::driver::{self, End, Incoming, Transport};
use crate::sync::open::{accept, open, Start};
use crate::sync::protocol::{ClientMessage, Hello, ServerMessage, StateVector, Subscription};
use crate::sync::{SEND_TIMEOUT, SSE_KEEPALIVE};

/// Frames queued for one SSE response before the session waits (and, if it stays full, lags).
const SSE_QUEUE: usize = 64;
/// Bytes of frames queued for one SSE response: a frame waits for its share (a frame larger than
/// this takes all of it), and each share is given back as hyper takes the frame to write.
const SSE_QUEUE_BYTES: usize = 256 * 1024;

/// Messages posted to one stream and not yet handled by its session.
pub const POSTED_QUEUE: usize = 64;
/// Bytes (of their JSON bodies) of the messages posted to one stream and not yet handled: a
/// message is answered `202` only once it has its share (a message larger than this takes all of
/// it), so what waits for a session is bounded in bytes too, not only by [`POSTED_QUEUE`].
pub const POSTED_BYTES: usize = 4 * 1024 * 1024;

/// A posted message and its share of the stream's [`POSTED_BYTES`] (given back when the session
/// takes it).
type Posted = (ClientMessage, OwnedSemaphorePermit);

/// A stream's back channel: the subject it belongs to, its session's queue and the bytes left.
type BackChannel = (Option<String>, mpsc::Sender<Posted>, Arc<Semaphore>);

/// The open streams' back channels, by stream id.
#[derive(Default)]
pub struct Streams {
    inner: Mutex<HashMap<String, BackChannel>>,
}

impl Streams {
    fn open(&self, subject: Option<String>) -> (String, mpsc::Receiver<Posted>) {
        let (tx, rx) = mpsc::channel(POSTED_QUEUE);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let room = Arc::new(Semaphore::new(POSTED_BYTES));
        let mut streams = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        streams.insert(id.clone(), (subject, tx, room));
        (id, rx)
    }

    fn close(&self, id: &str) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    fn sender(&self, id: &str) -> Option<BackChannel> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

/// `POST /sync/sse/{stream}`: a protocol message for the stream's session.
pub async fn post(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let principal = state.auth.authenticate(bearer(&headers)?)?;
    let (subject, tx, room) = state
        .streams
        .sender(&stream)
        .ok_or_else(|| ApiError::not_found("no such SSE stream (it ended, or never was)"))?;
    if subject.as_deref() != principal.subject() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this stream belongs to another subject",
        ));
    }
    let bytes = body.bytes;
    let msg: ClientMessage = serde_json::from_value(body.value)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidMessage, format!("invalid message: {e}")))?;
    let share = u32::try_from(bytes.clamp(1, POSTED_BYTES)).unwrap_or(u32::MAX);
    let permit = room.try_acquire_many_owned(share).map_err(|_| {
        ApiError::new(
            ErrorCode::RateLimited,
            format!("{POSTED_BYTES} bytes of posted messages already wait for this stream's session"),
        )
    })?;
    tx.try_send((msg, permit)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            ErrorCode::RateLimited,
            format!("{POSTED_QUEUE} messages already wait for this stream's session"),
        ),
        mpsc::error::TrySendError::Closed(_) => ApiError::not_found("the stream ended"),
    })?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"accepted": true}))))
}

/// How long a registered opening waits for its `GET /sync/sse?resume=`.
pub const RESUME_TTL: Duration = Duration::from_secs(30);
/// Most registered openings waiting at once.
pub const MAX_REGISTERED: usize = 4096;
/// Most bytes (of their JSON bodies) registered openings hold at once.
pub const MAX_REGISTERED_BYTES: usize = 64 * 1024 * 1024;

/// Openings registered with `POST /sync/sse`, waiting for their `GET`.
#[derive(Default)]
pub struct Registrations {
    inner: Mutex<Registered>,
}

#[derive(Default)]
struct Registered {
    openings: HashMap<String, Opening>,
    bytes: usize,
}

struct Opening {
    hello: Hello,
    /// Who registered it: only a token of the same subject opens it.
    subject: Option<String>,
    bytes: usize,
    expires: Instant,
}

impl Registrations {
    fn register(&self, hello: Hello, subject: Option<String>, bytes: usize) -> Result<String, ApiError> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.purge(Instant::now());
        if r.openings.len() >= MAX_REGISTERED || r.bytes + bytes > MAX_REGISTERED_BYTES {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many SSE openings are waiting for their GET; retry shortly",
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        r.bytes += bytes;
        let opening = Opening {
            hello,
            subject,
            bytes,
            expires: Instant::now() + RESUME_TTL,
        };
        r.openings.insert(id.clone(), opening);
        Ok(id)
    }

    fn take(&self, id: &str) -> Option<Opening> {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.purge(Instant::now());
        let o = r.openings.remove(id)?;
        r.bytes -= o.bytes;
        Some(o)
    }
}

impl Registered {
    fn purge(&mut self, now: Instant) {
        let before = self.openings.len();
        if before == 0 {
            return;
        }
        let mut freed = 0;
        self.openings.retain(|_, o| {
            let keep = o.expires > now;
            if !keep {
                freed += o.bytes;
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// `POST /sync/sse`: registers an opening (a hello's fields as JSON), answered with the id that
/// opens it. The token: `Authorization`, else the body's `token`.
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let bytes = body.bytes;
    let (hello, cursor) = super::sync::hello_of(&state, &headers, body)?;
    if cursor.is_some() {
        let msg = "a cursor goes on a POST /api/sync catch-up; an SSE stream sends every part itself";
        return Err(ApiError::bad_request(ErrorCode::InvalidMessage, msg));
    }
    // The subscriptions are kept as sent (at most 64); the vector, which may be megabytes, moves
    // through the acceptance instead of being copied.
    let subscribe = hello.subscribe.clone();
    let accepted = accept(&state.auth, hello)?;
    let subject = accepted.principal.subject().map(str::to_string);
    let hello = Hello {
        client_id: accepted.client_id,
        subscribe,
        state_vector: accepted.state_vector,
        token: None,
    };
    let id = state.registrations.register(hello, subject, bytes)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"resume": id, "expires_in_ms": RESUME_TTL.as_millis() as u64})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    /// Required unless `resume` is given.
    #[serde(default)]
    client_id: Option<String>,
    /// An opening registered with `POST /sync/sse`: the other fields must be absent.
    #[serde(default)]
    resume: Option<String>,
    /// Comma-separated collections.
    #[serde(default)]
    subscribe: Option<String>,
    /// The state vector as JSON.
    #[serde(default)]
    state_vector: Option<String>,
    /// The token, for clients that cannot send `Authorization` (`EventSource`).
    #[serde(default)]
    token: Option<String>,
}

pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(q): Query<SseQuery>,
) -> Result<Response, ApiError> {
    // The header's token, else the query's: handed to `accept` in the hello, the one place both
    // are checked.
    let token = match bearer(&headers)? {
        Some(t) => Some(t.to_string()),
        None => q.token.clone(),
    };
    let (accepted, start) = match q.resume.clone() {
        Some(id) => {
            let principal = state.auth.authenticate(token.as_deref())?;
            if q.client_id.is_some() || q.subscribe.is_some() || q.state_vector.is_some() {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    "with resume, the opening is the registered one: no client_id, subscribe or state_vector",
                ));
            }
            let opening = state.registrations.take(&id).ok_or_else(|| {
                ApiError::not_found("no such SSE opening (unknown, used or expired): POST /sync/sse again")
            })?;
            if opening.subject.as_deref() != principal.subject() {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this opening was registered by another subject",
                ));
            }
            let hello = Hello {
                token,
                ..opening.hello
            };
            (accept(&state.auth, hello)?, Start::Hello)
        }
        None => {
            let mut hello = match hello(q) {
                Ok(h) => h,
                Err(e) => {
                    // Authenticate before validating: a caller without a valid token learns
                    // nothing more.
                    state.auth.authenticate(token.as_deref())?;
                    return Err(e);
                }
            };
            hello.token = token;
            let start = match last_event_id(&headers)? {
                Some(received) => Start::ReceivedUpTo(received),
                None => Start::Hello,
            };
            (accept(&state.auth, hello)?, start)
        }
    };
    let peer = peer_of(&extensions);
    let slot = state
        .limits
        .stream(accepted.principal.limit_key(peer).as_deref())?;
    let ctx = state.sync();
    let subject = accepted.principal.subject().map(str::to_string);
    let opened = open(&ctx, accepted, start).await?;
    let streams = Arc::clone(&state.streams);
    let (stream_id, posted) = streams.open(subject);
    let (tx, frames) = mpsc::channel::<(Bytes, OwnedSemaphorePermit)>(SSE_QUEUE);
    let room = Arc::new(Semaphore::new(SSE_QUEUE_BYTES));
    state.sessions.spawn(async move {
        // The stream's place among its client's is held as long as the session runs.
        let _slot = slot;
        let _open = crate::metrics::SessionGauge::open("sse");
        let mut sse = Sse { tx, room, posted };
        let _ = sse.send(Bytes::from_static(b"retry: 1000\n\n")).await;
        let first = ServerMessage::Stream {
            stream: stream_id.clone(),
        };
        if sse.send(frame(&first)).await.is_ok() {
            // The driver watches shutdown itself; this outer watch covers a session stuck in a
            // send to a client that reads nothing (up to its send timeout), as over a WebSocket.
            tokio::select! {
                biased;
                _ = driver::run(&ctx, &mut sse, opened, peer) => {}
                _ = ctx.shutdown.cancelled() => {}
            }
        }
        streams.close(&stream_id);
    });
    // The share of a frame is given back as hyper takes it (its own buffer is bounded too).
    let body =
        Body::from_stream(ReceiverStream::new(frames).map(|(frame, _share)| Ok::<_, Infallible>(frame)));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// The query as a hello.
fn hello(q: SseQuery) -> Result<Hello, ApiError> {
    let subscribe = q
        .subscribe
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Subscription::from)
        .collect();
    let state_vector = q
        .state_vector
        .map(|s| {
            let vector = serde_json::from_str::<StateVector>(&s).map_err(|e| e.to_string())?;
            // A repeated member or a number that would change: refused like a WebSocket hello's.
            crate::json::check_strict(s.as_bytes()).map_err(|e| e.to_string())?;
            Ok::<_, String>(vector)
        })
        .transpose()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidStateVector, format!("state_vector: {e}")))?;
    let client_id = q
        .client_id
        .ok_or_else(|| ApiError::bad_request(ErrorCode::InvalidQuery, "client_id (or resume) is required"))?;
    Ok(Hello {
        client_id,
        subscribe,
        state_vector,
        token: q.token,
    })
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<Seq>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<Seq>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidLastEventId,
                "Last-Event-ID must be a sequence number",
            )
        })
}

/// `event: <type>`, then `id: <seq>` for events and `synced` (the position it brings the client
/// to), then `data: <json>`.
fn frame(msg: &ServerMessage) -> Bytes {
    let id = match msg {
        ServerMessage::Event(e) => format!("id: {}\n", e.seq),
        ServerMessage::Synced(s) => format!("id: {}\n", s.seq),
        _ => String::new(),
    };
    Bytes::from(format!("event: {}\n{id}data: {}\n\n", msg.kind(), msg.to_json()))
}

/// `event: <type>`, `data: <json>`: a frame that names no position (a catch-up in parts).
fn frame_without_id(msg: &ServerMessage) -> Bytes {
    Bytes::from(format!("event: {}\ndata: {}\n\n", msg.kind(), msg.to_json()))
}

/// One response's frame queue, bounded in frames and in bytes.
struct Sse {
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    /// What the client posted to `POST /sync/sse/{stream}`.
    posted: mpsc::Receiver<Posted>,
}

impl Sse {
    /// Queues a frame, waiting at most [`SEND_TIMEOUT`] for room.
    async fn send(&mut self, bytes: Bytes) -> Result<(), End> {
        let share = bytes.len().clamp(1, SSE_QUEUE_BYTES) as u32;
        let queued = async {
            let permit = Arc::clone(&self.room).acquire_many_owned(share).await.ok()?;
            self.tx.send((bytes, permit)).await.ok()
        };
        match tokio::time::timeout(SEND_TIMEOUT, queued).await {
            Ok(Some(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }
}

impl Transport for Sse {
    const NAME: &'static str = "sse";
    const ACKS_WHAT_IT_SENDS: bool = true;

    fn heartbeat_period(&self) -> Duration {
        SSE_KEEPALIVE
    }

    async fn feed(&mut self, msg: &ServerMessage) -> Result<(), End> {
        self.send(frame(msg)).await
    }

    async fn feed_unnumbered(&mut self, msg: &ServerMessage) -> Result<(), End> {
        self.send(frame_without_id(msg)).await
    }

    async fn feed_live(&mut self, event: &LiveEvent) -> Result<(), End> {
        self.send(event.sse_frame()).await
    }

    /// Every frame is queued as it is fed.
    async fn flush(&mut self) -> Result<(), End> {
        Ok(())
    }

    /// What the client posted, or that the response was dropped.
    async fn receive(&mut self) -> Result<Incoming, End> {
        tokio::select! {
            _ = self.tx.closed() => Err(End::Gone),
            // Taken: its share of the stream's bytes goes back.
            m = self.posted.recv() => m.map(|(msg, _share)| Incoming::Message(msg)).ok_or(End::Gone),
        }
    }

    async fn heartbeat(&mut self, _idle: Duration) -> Result<(), End> {
        self.send(Bytes::from_static(b": keepalive\n\n")).await
    }
}
