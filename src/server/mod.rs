//! Wiring: open the store, build the router, serve, and shut down as a tree.
//!
//! Shutdown (SIGINT/SIGTERM in the binary, [`Server::shutdown`] in tests): the listener stops
//! accepting, in-flight requests finish (their writes are committed and answered), background tasks
//! stop, and the store closes cleanly (queued writes committed, WAL checkpointed) — all within
//! `shutdown_timeout`.

mod http;
pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::listener::LimitedListener;
use crate::api::{router, AppState};
use crate::auth::limits::ClientLimits;
use crate::auth::Auth;
use crate::config::{Config, StoreKind};
use crate::hub::Hub;
#[cfg(feature = "mongodb")]
use crate::store::mongo::{MongoOptions, MongoStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Store, StoreError};
use crate::write::Limits;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("loading the JWT keys: {0}")]
    Keys(#[from] crate::auth::token::KeyError),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(std::time::Duration),
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served (`--metrics-listen`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Server {
    /// Starts serving on `listener`; returns once the store is open and the socket accepts.
    pub async fn start(listener: TcpListener, config: Config) -> Result<Server, ServerError> {
        let addr = listener.local_addr()?;
        warn_of_missing_directories(&config).await;
        let auth = Arc::new(Auth::from_config(&config.access)?);
        if !auth.is_enabled() && !config.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.listen,
                "--auth none on an address other than loopback: ANYONE WHO REACHES THIS PORT CAN READ, \
                 OVERWRITE AND DELETE EVERY DOCUMENT. Use --auth jwt (docs/AUTH.md)."
            );
        }
        let metrics = match config.metrics_listen {
            Some(at) => {
                // Installed before anything is served, so that the first requests count.
                crate::metrics::handle();
                Some(TcpListener::bind(at).await?)
            }
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(TcpListener::local_addr).transpose()?;
        let client_limits = Arc::new(ClientLimits::from_config(&config.access));
        let hub = Hub::with_bytes(config.limits.hub_capacity, config.limits.hub_bytes);
        let store = open_store(&config, hub.clone()).await?;
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let sessions = TaskTracker::new();
        let state = AppState {
            store: Arc::clone(&store),
            hub: hub.clone(),
            config: Arc::clone(&config),
            shutdown: shutdown.clone(),
            sessions: sessions.clone(),
            auth,
            limits: Arc::clone(&client_limits),
            registrations: Default::default(),
            presence: Default::default(),
            rechecks: Default::default(),
            streams: Default::default(),
        };
        let tasks = TaskTracker::new();
        tasks.spawn(forget_idle_clients(client_limits, shutdown.child_token()));
        if let Some(listener) = metrics {
            tasks.spawn(serve_metrics(
                listener,
                Arc::clone(&store),
                Arc::clone(&config),
                shutdown.child_token(),
            ));
        }
        tasks.spawn(crate::maintenance::run(
            Arc::clone(&store),
            config.snapshots,
            config.limits.idempotency_ttl,
            shutdown.child_token(),
        ));
        let listener = LimitedListener::new(
            listener,
            config.limits.max_connections,
            config.limits.write_timeout,
        );
        let serve = http::serve(
            listener,
            router(state),
            config.limits.header_timeout,
            shutdown.clone(),
        );
        let task = tokio::spawn(serve_then_close(
            serve,
            Arc::clone(&store),
            [sessions, tasks],
            shutdown.clone(),
            config,
        ));
        Ok(Server {
            addr,
            metrics_addr,
            hub,
            store,
            shutdown,
            task,
        })
    }

    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped (after [`Server::shutdown`], or a fatal error).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .unwrap_or_else(|e| Err(ServerError::Io(std::io::Error::other(e.to_string()))))
    }
}

/// `GET /metrics` on its own address: the Prometheus text format of [`crate::metrics`], with
/// the follower lag read at each scrape. Nothing else is served there.
async fn serve_metrics(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    stop: CancellationToken,
) {
    use axum::http::header;
    use axum::response::IntoResponse;
    let Some(handle) = crate::metrics::handle() else {
        return;
    };
    let scrape = move || {
        let store = Arc::clone(&store);
        async move {
            if let (Some(published), Ok(last)) = (store.published_seq(), store.last_seq().await) {
                crate::metrics::follower_lag(last.saturating_sub(published));
            }
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                handle.render(),
            )
                .into_response()
        }
    };
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async { crate::error::ApiError::not_found("metrics are at /metrics") });
    let listener = LimitedListener::new(listener, METRICS_CONNECTIONS, config.limits.write_timeout);
    http::serve(listener, router, config.limits.header_timeout, stop).await;
}

/// Connections the metrics address takes at once (scrapers, not clients).
const METRICS_CONNECTIONS: usize = 16;

/// Every minute, the write limiter forgets clients whose allowance is full again.
async fn forget_idle_clients(limits: Arc<ClientLimits>, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => limits.forget_idle(),
        }
    }
}

/// The UI and the JavaScript client are served from directories that default to paths relative to
/// the working directory; started elsewhere, the server would answer 404 there without a word.
async fn warn_of_missing_directories(config: &Config) {
    for (dir, meaning) in [
        (&config.static_dir, "no UI will be served at /"),
        (
            &config.client_dir,
            "no JavaScript client will be served at /client/",
        ),
    ] {
        if !tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir()) {
            tracing::warn!(path = %dir.display(), "not a directory: {meaning}");
        }
    }
}

async fn open_store(config: &Config, hub: Hub) -> Result<Arc<dyn Store>, ServerError> {
    let limits = Limits {
        max_document_bytes: config.limits.max_document_bytes,
        max_depth: config.limits.max_json_depth,
    };
    match &config.store {
        #[cfg(feature = "mongodb")]
        StoreKind::MongoDb { uri } => {
            let opts = MongoOptions {
                uri: uri.clone(),
                write_queue: config.limits.write_queue,
                max_batch: config.limits.max_batch,
                limits,
                snapshot_every: config.snapshots.every,
                node_id: config.node_id.clone(),
            };
            Ok(Arc::new(MongoStore::open(opts, hub).await?))
        }
        #[cfg(not(feature = "mongodb"))]
        StoreKind::MongoDb { .. } => {
            Err(StoreError::backend("this build has no MongoDB store (cargo feature `mongodb`)").into())
        }
        StoreKind::Embedded => {
            let opts = SqliteOptions {
                path: config.database_path(),
                durability: config.durability,
                write_queue: config.limits.write_queue,
                max_batch: config.limits.max_batch,
                limits,
                snapshot_every: config.snapshots.every,
            };
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(opts, hub))
                .await
                .map_err(|e| StoreError::backend_source("the store's open task", e))??;
            Ok(Arc::new(store))
        }
    }
}

async fn serve_then_close(
    serve: impl std::future::Future<Output = ()>,
    store: Arc<dyn Store>,
    trees: [TaskTracker; 2],
    shutdown: CancellationToken,
    config: Arc<Config>,
) -> Result<(), ServerError> {
    serve.await;
    // Whatever stopped the server (a signal or an error), stop everything else with it.
    shutdown.cancel();
    let deadline = config.shutdown_timeout;
    // Sync sessions first (they flush acknowledged vectors), then background tasks, then the store.
    let finish = async {
        for tasks in &trees {
            tasks.close();
            tasks.wait().await;
        }
        store.close().await
    };
    let closed = tokio::time::timeout(deadline, finish)
        .await
        .map_err(|_| ServerError::ShutdownTimeout(deadline))?;
    closed?;
    Ok(())
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully. What `main` runs.
pub async fn run(listener: TcpListener, config: Config) -> Result<(), ServerError> {
    let deadline = config.shutdown_timeout;
    let server = Server::start(listener, config).await?;
    println!("listening on http://{}", server.addr);
    if let Some(metrics) = server.metrics_addr {
        println!("metrics on http://{metrics}");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown();
    // In-flight requests get the deadline; the store's close gets its own inside `wait`.
    tokio::time::timeout(deadline * 2, server.wait())
        .await
        .map_err(|_| ServerError::ShutdownTimeout(deadline))?
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
