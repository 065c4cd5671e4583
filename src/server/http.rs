//! Serving HTTP/1.1 connections: hyper's connection driver with the time limits that
//! `axum::serve` leaves unset, and a graceful shutdown of its own.
//!
//! Per connection: the request head (line and headers) must arrive within `--header-timeout`,
//! counted from the connection's start or the end of the previous response — so a keep-alive
//! connection that sits idle is closed after the same time, and one byte a second does not hold
//! a connection; at most [`MAX_HEADERS`] headers and [`MAX_HEAD_BYTES`] of head (hyper answers
//! 431, or 414 for a URI over 64 KiB — in JSON, see [`super::listener`]). The body's deadline is
//! the router's (`api::receive_body`), and every write's progress is the stream's
//! (`--write-timeout`). WebSocket upgrades keep the same stream, and with it the write limit.
//!
//! Shutdown: accepting stops, each connection finishes the request it is serving and closes
//! (hyper's graceful shutdown), and this returns once all have.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::listener::{LimitedListener, Peer};

/// Most headers a request may have.
pub const MAX_HEADERS: usize = 100;
/// Most bytes a request's head may take (hyper's read buffer, per connection: what a client can
/// make the server hold before a request starts).
pub const MAX_HEAD_BYTES: usize = 80 * 1024;

/// Serves `router` on every connection `listener` accepts until `shutdown` is cancelled.
pub async fn serve(
    mut listener: LimitedListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(Peer(addr)));
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|e| match e {})) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_headers(MAX_HEADERS)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if served.is_err_and(|e| e.is_timeout()) {
                        crate::metrics::refused("header_timeout");
                    }
                    return;
                }
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    connections.close();
    connections.wait().await;
}
