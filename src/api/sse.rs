//! `GET /sync/sse`: the Server-Sent Events transport — the same messages as the WebSocket, one way.
//!
//! `?client_id=...&subscribe=games,other&state_vector=<JSON>` starts a session. Live events carry
//! `id: <seq>`, and so does `synced` (its position); catch-up messages carry none, as they are grouped
//! by document rather than in sequence order. So `Last-Event-ID` always names a point up to which the
//! client has everything, and a browser's automatic reconnect resumes from the vector the server kept
//! for the client, wound back to that point ([`rewind`]). With no back channel, what was written to
//! the stream counts as acknowledged; the rewind corrects for frames lost in flight.

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
use crate::error::ApiError;
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
        .map_err(|e| ApiError::bad_request("invalid_state_vector", format!("state_vector: {e}")))?;
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
                    ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be a sequence number")
                })?,
        ),
    };
    // Subscribe before reading the catch-up (in the session task).
    let rx = state.hub.subscribe();
    let mut vector = initial_vector(&state, &hello).await?;
    if let (Some(received), None) = (last_event_id, &hello.state_vector) {
        vector = rewind(&state, &hello.subscribe, vector, received).await?;
    }
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

/// Most log events read to rewind a reconnecting SSE client; past that it gets a full re-sync.
const MAX_REWIND_EVENTS: usize = 100_000;

/// Winds the remembered (delivered) vector back to what the client says it received: every document
/// changed after `received` goes back to the version before its first such change, so that frames
/// lost in flight when the stream died are sent again. If that takes reading more than
/// [`MAX_REWIND_EVENTS`] events, the client starts from nothing (snapshots) instead — never less.
async fn rewind(
    state: &AppState,
    collections: &[String],
    mut vector: StateVector,
    received: Seq,
) -> Result<StateVector, ApiError> {
    let page = state.config.limits.max_page;
    for collection in collections {
        let mut filter = EventFilter {
            collection: Some(collection.clone()),
            after: received,
            ..EventFilter::default()
        };
        let mut read = 0;
        loop {
            let events = state.store.events(&filter, page).await?;
            read += events.len();
            if read > MAX_REWIND_EVENTS {
                vector.remove(collection);
                break;
            }
            let docs = vector.entry(collection.clone()).or_default();
            for e in &events {
                if let Some(v) = docs.get_mut(&e.id) {
                    *v = (*v).min(e.version.saturating_sub(1));
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
        let c = self
            .state
            .store
            .catch_up(session.collections(), session.vector())
            .await
            .map_err(|e| tracing::warn!(error = %e, "catch-up failed"))?;
        // Catch-up messages carry no `id:` (they are grouped by document, not in sequence order);
        // `synced` does: a client that has it has everything up to that position.
        for m in &c.messages {
            self.send(frame(m, None)).await?;
        }
        session.caught_up(&c);
        let synced = session.synced(&c);
        self.send(frame(&synced, Some(c.position))).await?;
        // No back channel: what reached the response stream counts as acknowledged. A stream that
        // dies with frames in flight is corrected on reconnect by `Last-Event-ID` (see `rewind`).
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
