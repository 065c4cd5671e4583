//! The HTTP API — thin handlers over the store. See the README's API section for every route.

pub mod auth;
mod documents;
mod events;
mod extract;
mod files;
mod history;
mod sse;
mod sync;
mod ws;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::limits::ClientLimits;
use crate::auth::origin::{self, Origins};
use crate::auth::Auth;
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::hub::Hub;
use crate::store::Store;
use crate::sync::SyncContext;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down: sync sessions close (WebSocket 1001, SSE streams end).
    pub shutdown: CancellationToken,
    /// The sync sessions, so that shutdown can wait for them to finish.
    pub sessions: TaskTracker,
    /// Who a token names and what it allows (`--auth`).
    pub auth: Arc<Auth>,
    /// Per-client write rate, open sockets and streams.
    pub limits: Arc<ClientLimits>,
    /// SSE openings registered with `POST /sync/sse`, waiting for their stream.
    pub registrations: Arc<sse::Registrations>,
    /// The open SSE streams' back channels.
    pub streams: Arc<sse::Streams>,
    /// Presence channels (ephemeral: this node's memory only).
    pub presence: Arc<crate::sync::presence::Presence>,
    /// The document reads filtered sessions share.
    pub rechecks: Arc<crate::sync::recheck::Rechecks>,
}

impl AppState {
    /// What the sync sessions need of it.
    pub fn sync(&self) -> SyncContext {
        SyncContext {
            store: Arc::clone(&self.store),
            hub: self.hub.clone(),
            shutdown: self.shutdown.clone(),
            page: self.config.limits.max_page,
            catch_up_bytes: self.config.limits.max_catch_up_bytes as u64,
            auth: Arc::clone(&self.auth),
            limits: Arc::clone(&self.limits),
            presence: Arc::clone(&self.presence),
            rechecks: Arc::clone(&self.rechecks),
            heartbeat_timeout: self.config.limits.heartbeat_timeout,
        }
    }
}

/// The whole HTTP surface: the API under `/api`, the UI at `/`.
pub fn router(state: AppState) -> Router {
    let limits = state.config.limits;
    let origins = Arc::new(Origins::from_config(&state.config.access).unwrap_or_else(|e| {
        // The server's start refuses a malformed list before it gets here; should one slip
        // through, allow no other origin rather than guess.
        tracing::error!("{e}; allowing only same-origin requests");
        Origins::same_origin_only()
    }));
    let api = Router::new()
        .route("/health", get(health))
        .route("/events", get(events::list))
        .route("/sync", axum::routing::post(sync::manual))
        .route("/clients/{client_id}", get(sync::client))
        .route("/{collection}", get(documents::list).post(documents::create))
        .route(
            "/{collection}/{id}",
            get(documents::get)
                .put(documents::replace)
                .patch(documents::patch)
                .delete(documents::delete),
        )
        .route("/{collection}/{id}/history", get(history::history))
        .route("/{collection}/{id}/snapshots", get(history::snapshots))
        .route("/{collection}/{id}/versions/{version}", get(history::version))
        .fallback(|| async { ApiError::not_found("no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
        });
    let buffer_total = limits
        .body_buffer_bytes
        .min(tokio::sync::Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    let body_limits = BodyLimits {
        max_bytes: limits.max_body_bytes,
        timeout: limits.body_timeout,
        buffer: Arc::new(tokio::sync::Semaphore::new(buffer_total)),
        buffer_total,
    };
    let ui = files::StaticDir::new(&state.config.static_dir);
    // Of the client's directory, only its module is published.
    let client_module = state.config.client_dir.join("eventsync.js");
    let router = Router::new()
        .nest("/api", api)
        .route("/sync/ws", get(ws::upgrade))
        .route("/sync/sse", get(sse::stream).post(sse::register))
        .route("/sync/sse/{stream}", axum::routing::post(sse::post))
        .route(
            "/client/eventsync.js",
            get(move |request: axum::extract::Request| files::serve_file(client_module.clone(), request)),
        )
        .fallback(move |request: axum::extract::Request| ui.clone().serve(request))
        .with_state(state)
        // Each `layer` wraps the ones before it: the body limit is innermost, the JSON error
        // rewrite outermost (so it also sees the timeout's and the panic catcher's responses).
        // CORS and the origin check come before any limit or handler: a request from an origin
        // that is not allowed is refused before it costs anything (the WebSocket upgrade and SSE
        // included), and a preflight is answered by the CORS layer itself.
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(ErrorCode::Internal, "internal error").into_response()
        }))
        // Outside the concurrency limit: a body still arriving, or refused, takes no request slot.
        .layer(axum::middleware::from_fn_with_state(body_limits, receive_body))
        .layer(origins.cors_layer())
        .layer(axum::middleware::from_fn_with_state(origins, origin::check))
        .layer(axum::middleware::map_response(json_errors));
    files::security_headers()
        .into_iter()
        .fold(router, |router, layer| router.layer(layer))
}

/// What [`receive_body`] holds to.
#[derive(Clone)]
struct BodyLimits {
    max_bytes: usize,
    timeout: std::time::Duration,
    /// The bytes of bodies being received, over all requests (`--body-buffer-bytes`).
    buffer: Arc<tokio::sync::Semaphore>,
    /// The semaphore's size: the most one body's share can be.
    buffer_total: usize,
}

/// Receives a request's body whole before the request takes a request slot, within
/// `--body-timeout` and the byte limits — so slow uploads hold no slot, only their connection,
/// and for a bounded time; the handlers then read a body that is already here.
///
/// - A body declared larger than the limit (`Content-Length`) is refused at once, before a byte
///   of it is read — and so, with `Expect: 100-continue`, the client gets 413 instead of
///   `100 Continue` (hyper sends that only when the body is first read).
/// - From its first byte to its answer a body holds its share of `--body-buffer-bytes` (its
///   declared length, or the limit when it is chunked); a request whose share is not free is answered 503
///   `overloaded` at once (with `Retry-After`), rather than held waiting.
/// - A body that has not arrived whole within `--body-timeout`: 408 `body_timeout`.
async fn receive_body(
    State(limits): State<BodyLimits>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let max = limits.max_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the request body is larger than {max} bytes"),
        )
        .with("limit", max)
        .into_response()
    };
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let share = match declared {
        Some(n) => n as usize,
        None if chunked => max,
        None => 0,
    };
    if share == 0 {
        return next.run(request).await;
    }
    let share = u32::try_from(share.min(limits.buffer_total)).unwrap_or(u32::MAX);
    let Ok(permit) = Arc::clone(&limits.buffer).try_acquire_many_owned(share) else {
        return ApiError::new(
            ErrorCode::Overloaded,
            "too many request bodies are arriving at once; retry shortly",
        )
        .into_response();
    };
    let (parts, body) = request.into_parts();
    let received = tokio::time::timeout(
        limits.timeout,
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, max)),
    )
    .await;
    let bytes = match received {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => {
            return ApiError::new(ErrorCode::BadRequest, "the request body could not be read").into_response()
        }
        Err(_) => {
            return ApiError::new(
                ErrorCode::BodyTimeout,
                format!("the request body did not arrive within {:?}", limits.timeout),
            )
            .into_response()
        }
    };
    // The share is held until the answer: a body waiting for a request slot is still held.
    let response = next
        .run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(permit);
    response
}

async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let last_seq = state.store.last_seq().await?;
    let mut body = json!({ "status": "ok", "last_seq": last_seq });
    if let Some(published) = state.store.published_seq() {
        // Several nodes: how far this node's live stream has got (it trails `last_seq` briefly).
        body["published_seq"] = published.into();
    }
    Ok(Json(body))
}

/// Gives error responses produced outside our handlers (a timeout, the static files' 404, ...) the
/// API's JSON error body.
async fn json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        return ApiError::from_status(status).into_response();
    }
    response
}
