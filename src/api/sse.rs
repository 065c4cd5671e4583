//! `GET /sync/sse`: the Server-Sent Events transport — the same messages as the WebSocket, one way.
//!
//! `?client_id=...&subscribe=games,other&state_vector=<JSON>` starts a session. Events carry
//! `id: <seq>`, and so does `synced` (its position); snapshots carry none and come before any event of
//! their catch-up, whose events are in sequence order. So ids only grow along a stream,
//! `Last-Event-ID` names a point up to which the client has every message, and a browser's automatic
//! reconnect resumes from the vector the server kept for the client, wound back to that point
//! ([`vector_at`]). With no back channel, what was written to
//! the stream counts as acknowledged; `Last-Event-ID` corrects for frames lost in flight.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::extract::Query;
use super::sync::initial_vector;
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::model::Seq;
use crate::store::EventFilter;
use crate::sync::protocol::{Hello, ServerMessage, StateVector};
use crate::sync::session::{validate_hello, Live, Session};
use crate::sync::{SEND_TIMEOUT, SSE_KEEPALIVE, VECTOR_FLUSH_INTERVAL};

/// Frames queued for one SSE response before the session waits (and, if it stays full, lags).
const SSE_QUEUE: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SseQuery {
    client_id: String,
    /// Comma-separated collections.
    #[serde(default)]
    subscribe: Option<String>,
    /// The state vector as JSON.
    #[serde(default)]
    state_vector: Option<String>,
    /// Reserved for authentication.
    #[serde(default)]
    token: Option<String>,
}

fn frame(msg: &ServerMessage, id: Option<Seq>) -> Bytes {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    Bytes::from(format!("event: {}\n{id}data: {}\n\n", msg.kind(), msg.to_json()))
}

pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SseQuery>,
) -> Result<Response, ApiError> {
    let subscribe: Vec<String> = q
        .subscribe
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let state_vector = q
        .state_vector
        .map(|s| serde_json::from_str::<StateVector>(&s))
        .transpose()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidStateVector, format!("state_vector: {e}")))?;
    let hello = Hello {
        client_id: q.client_id,
        subscribe,
        state_vector,
        token: q.token,
    };
    validate_hello(&hello).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<Seq>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidLastEventId,
                        "Last-Event-ID must be a sequence number",
                    )
                })?,
        ),
    };
    // Subscribe before reading the catch-up (in the session task).
    let rx = state.hub.subscribe();
    let vector = match last_event_id {
        // A reconnect: the client has every message up to `received` — whatever vector its URL
        // still carries from when the stream was first opened (a browser reuses the URL).
        Some(received) => {
            let v = vector_at(&state, &hello.subscribe, received).await?;
            state
                .store
                .save_client(&hello.client_id, received, &v, true)
                .await?;
            v
        }
        None => initial_vector(&state, &hello).await?,
    };
    let (tx, frames) = mpsc::channel::<Bytes>(SSE_QUEUE);
    let session = Session::new(hello.client_id, &hello.subscribe, vector);
    let sessions = state.sessions.clone();
    sessions.spawn(run(state, session, rx, tx));
    let body = Body::from_stream(ReceiverStream::new(frames).map(Ok::<_, Infallible>));
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

/// A version no document has: the catch-up answers it with the document's snapshot or deletion.
const RESET: u64 = u64::MAX;

/// Most documents or log events read to rebuild a reconnecting SSE client's vector; past that it
/// gets a full re-sync.
const MAX_REWIND_EVENTS: usize = 100_000;

/// The vector of a client that has every message of its subscriptions up to log position `received`:
/// each live document at its current version, except that every document changed after `received`
/// goes back to the version before its first such change. That is exact while the log still holds
/// the events after `received` (see `--retain-for`). Where the version before is "nothing", or the
/// scan would pass [`MAX_REWIND_EVENTS`], the catch-up is made to reset instead (a snapshot or the
/// deletion) — more data, never less.
async fn vector_at(state: &AppState, collections: &[String], received: Seq) -> Result<StateVector, ApiError> {
    let page = state.config.limits.max_page;
    let mut vector = StateVector::new();
    for collection in collections {
        let docs = vector.entry(collection.clone()).or_default();
        let mut after: Option<String> = None;
        loop {
            let live = state.store.list(collection, after.as_deref(), page).await?;
            docs.extend(live.iter().map(|d| (d.id.clone(), d.version)));
            match live.last() {
                Some(last) if live.len() == page && docs.len() <= MAX_REWIND_EVENTS => {
                    after = Some(last.id.clone())
                }
                _ => break,
            }
        }
        let mut filter = EventFilter {
            collection: Some(collection.clone()),
            after: received,
            ..EventFilter::default()
        };
        let mut seen = std::collections::HashSet::new();
        let mut read = 0;
        loop {
            let events = state.store.events(&filter, page).await?;
            read += events.len();
            if read > MAX_REWIND_EVENTS || docs.len() > MAX_REWIND_EVENTS {
                docs.clear();
                break;
            }
            for e in &events {
                if seen.insert(e.id.clone()) {
                    let before = e.version.saturating_sub(1);
                    docs.insert(e.id.clone(), if before == 0 { RESET } else { before });
                }
            }
            match events.last() {
                Some(last) if events.len() == page => filter.after = last.seq,
                _ => break,
            }
        }
    }
    Ok(vector)
}

struct Stream {
    state: AppState,
    tx: mpsc::Sender<Bytes>,
}

impl Stream {
    async fn send(&self, bytes: Bytes) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(bytes)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn catch_up(&self, session: &mut Session) -> Result<(), ()> {
        let c = crate::sync::catch_up(&*self.state.store, session.collections(), session.vector())
            .await
            .map_err(|e| tracing::warn!(error = %e, "catch-up failed"))?;
        // Snapshots first, then events in sequence order (see `order_messages`): the ids a client
        // sees only grow, so its `Last-Event-ID` means "everything up to here".
        for m in &c.messages {
            let id = match m {
                ServerMessage::Event(e) => Some(e.seq),
                _ => None,
            };
            self.send(frame(m, id)).await?;
        }
        session.caught_up(&c);
        let synced = session.synced(&c);
        self.send(frame(&synced, Some(c.position))).await?;
        // No back channel: what reached the response stream counts as acknowledged. A stream that
        // dies with frames in flight is corrected on reconnect by `Last-Event-ID` (see `vector_at`).
        session.ack(c.position);
        Ok(())
    }

    async fn flush_acks(&self, session: &mut Session) {
        super::sync::flush_acks(&self.state, session).await;
    }
}

async fn run(
    state: AppState,
    mut session: Session,
    mut rx: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::hub::LiveEvent>>,
    tx: mpsc::Sender<Bytes>,
) {
    let shutdown = state.shutdown.clone();
    let s = Stream { state, tx };
    let _ = s.send(Bytes::from_static(b"retry: 1000\n\n")).await;
    let start = tokio::time::Instant::now();
    let mut keepalive = tokio::time::interval_at(start + SSE_KEEPALIVE, SSE_KEEPALIVE);
    let mut flush = tokio::time::interval_at(start + VECTOR_FLUSH_INTERVAL, VECTOR_FLUSH_INTERVAL);
    let mut ok = s.catch_up(&mut session).await.is_ok();
    while ok {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = s.tx.closed() => break,
            received = rx.recv() => {
                let resync = match received {
                    Ok(e) => match session.live(&e) {
                        Live::Send => {
                            ok = s.send(e.sse_frame()).await.is_ok();
                            if ok {
                                session.ack(e.seq);
                            }
                            false
                        }
                        Live::Skip => false,
                        Live::Gap => true,
                    },
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => break,
                };
                if resync && ok {
                    ok = s.catch_up(&mut session).await.is_ok();
                }
            }
            _ = keepalive.tick() => ok = s.send(Bytes::from_static(b": keepalive\n\n")).await.is_ok(),
            _ = flush.tick() => s.flush_acks(&mut session).await,
        }
    }
    s.flush_acks(&mut session).await;
}
