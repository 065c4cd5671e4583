//! The in-process tier: the library's server ([`Server::start`]) on `127.0.0.1:0`, inside the test
//! process, configured from the same flags a process would get.
//!
//! It runs on a thread of its own with its own multi-threaded runtime (like the binary's
//! `#[tokio::main]`), not on the test's: a test's runtime may be current-thread, and tests block
//! (`block_in_place`, `std::thread::sleep`, a blocking drop), none of which may starve the server.
//! Dropped, it shuts down as the binary does on SIGTERM ([`Server::shutdown`], then
//! [`Server::wait`], bounded) and its thread is joined; a shutdown that fails or overruns fails the
//! test, since a process test would have seen the same server hang or exit non-zero.
//!
//! Its logs (at `EVENTSYNC_LOG`, `warn` unless set) go to the test's captured output, so they are
//! shown with the test that failed.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use eventsync::config::Config;
use eventsync::server::Server;
use tokio::sync::oneshot;

/// Longest a server may take to open its store and accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a graceful shutdown may take: twice the server's own default deadline (10 s), as the
/// binary allows on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the runtime waits, once the server has stopped, for tasks that outlived it.
const RUNTIME_TEARDOWN: Duration = Duration::from_secs(1);

/// The server's configuration from command-line `flags`, read by the binary's own parser (with
/// the `EVENTSYNC_*` environment, as a spawned binary would read it). The one call into it.
pub fn config_from_flags(flags: Vec<std::ffi::OsString>) -> Config {
    Config::from_args_iter(flags).unwrap_or_else(|e| panic!("bad test server configuration: {e}"))
}

/// A server running on its own thread; stopped when dropped.
pub struct InProcess {
    /// Where its metrics are served (`--metrics-listen`), if anywhere.
    pub metrics: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    /// Returns how the shutdown went.
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl InProcess {
    /// Starts a server with `config` on `127.0.0.1:0`; returns once it accepts connections.
    pub fn start(config: Config) -> (SocketAddr, InProcess) {
        init_logging();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("eventsync-server".into())
            .spawn(move || serve(config, ready_tx, stop_rx))
            .expect("spawn the server's thread");
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok((addr, metrics))) => {
                let server = InProcess {
                    metrics,
                    stop: Some(stop_tx),
                    thread: Some(thread),
                };
                (addr, server)
            }
            Ok(Err(e)) => panic!("the in-process server did not start: {e}"),
            // Not joined: it may never return. Dropping `stop_tx` stops it if it ever starts.
            Err(_) => panic!("the in-process server did not start within {START_TIMEOUT:?}"),
        }
    }

    /// Shuts the server down gracefully and joins its thread; what went wrong, if anything.
    fn stop(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the server's thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            if std::thread::panicking() {
                eprintln!("in-process server: {e}");
            } else {
                panic!("in-process server: {e}");
            }
        }
    }
}

/// The server's thread: start, report the address (or why not), serve until told to stop, stop.
fn serve(
    config: Config,
    ready: mpsc::Sender<Result<(SocketAddr, Option<SocketAddr>), String>>,
    stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("eventsync-server-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(format!("its runtime: {e}")));
            return Ok(());
        }
    };
    let stopped = runtime.block_on(async move {
        let server = match start(config).await {
            Ok(server) => server,
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(());
            }
        };
        let _ = ready.send(Ok((server.addr, server.metrics_addr)));
        // A dropped sender (the test gave up on the start) also means stop.
        let _ = stop.await;
        server.shutdown();
        match tokio::time::timeout(STOP_TIMEOUT, server.wait()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("shutdown failed: {e}")),
            Err(_) => Err(format!("did not shut down within {STOP_TIMEOUT:?}")),
        }
    });
    runtime.shutdown_timeout(RUNTIME_TEARDOWN);
    stopped
}

async fn start(config: Config) -> Result<Server, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:0: {e}"))?;
    Server::start(listener, config).await.map_err(|e| e.to_string())
}

/// The binary's logging, once per test process, into the tests' captured output.
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("EVENTSYNC_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
