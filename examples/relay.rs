//! The fan-out benchmark's baseline: a trivial WebSocket relay, nothing else.
//!
//! ```sh
//! cargo build --release --example relay
//! target/release/examples/relay --listen 127.0.0.1:0     # prints `listening on http://ADDR`
//! ```
//!
//! - `GET /sync/ws`: a subscriber. Its first text message (whatever it is: the benchmark sends the
//!   same `hello` it sends EventSync) is answered with a fixed `{"type":"synced",...}`; from then on
//!   it receives every message published, as sent.
//! - `GET /publish`: a publisher. Every text message it sends is forwarded to every subscriber.
//!
//! Built like EventSync's live path so that the difference is what EventSync does on top: the same
//! stack (axum WebSocket on tokio, multi-threaded runtime, mimalloc), one `tokio::sync::broadcast`
//! channel of shared `Utf8Bytes` (one buffer per message, shared by all sockets, like `hub.rs`), one
//! task per socket, the same socket buffer sizes. No store, no sessions, no parsing, no pings.
//!
//! It exits when its standard input reaches end of file (its parent, the benchmark, exited) or after
//! `--max-seconds`, so it never outlives a benchmark run.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages a subscriber may fall behind before it lags (EventSync's hub capacity).
const CAPACITY: usize = 16_384;
/// Socket buffer sizes, as in EventSync's `api/ws.rs`.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
const MAX_MESSAGE: usize = 1024 * 1024;
const SYNCED: &str = r#"{"type":"synced","seq":0,"state_vector":{},"snapshots":0,"events":0}"#;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    about = "A trivial WebSocket relay (baseline for fanout_bench)"
)]
struct Opts {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Exit after this long regardless.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
    /// Keep running when standard input closes (by default that means the parent is gone).
    #[arg(long)]
    ignore_stdin: bool,
}

#[derive(Clone)]
struct Relay {
    tx: broadcast::Sender<Utf8Bytes>,
    lagged: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() {
    let opts = Opts::parse();
    let (tx, _) = broadcast::channel(CAPACITY);
    let relay = Relay {
        tx,
        lagged: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/sync/ws", get(subscriber))
        .route("/publish", get(publisher))
        .with_state(relay.clone());
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay: cannot listen on {}: {e}", opts.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().expect("local address");
    println!("listening on http://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    if !opts.ignore_stdin {
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = stop_tx.send(());
        });
    } else {
        std::mem::forget(stop_tx);
    }
    let max = Duration::from_secs(opts.max_seconds);
    let serve = axum::serve(listener, app);
    tokio::select! {
        r = serve => if let Err(e) = r { eprintln!("relay: {e}") },
        _ = stop_rx => {}
        _ = tokio::time::sleep(max) => eprintln!("relay: --max-seconds reached"),
    }
    let lagged = relay.lagged.load(Ordering::Relaxed);
    if lagged > 0 {
        eprintln!("relay: subscribers lagged, {lagged} messages dropped");
    }
}

fn configure(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + MAX_MESSAGE)
}

async fn subscriber(ws: WebSocketUpgrade, State(relay): State<Relay>) -> Response {
    configure(ws).on_upgrade(move |socket| subscribe(socket, relay))
}

async fn subscribe(socket: WebSocket, relay: Relay) {
    let (mut sink, mut stream) = socket.split();
    // The first text message is the hello; answer it, then forward.
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            Some(Ok(_)) => {}
        }
    }
    let mut rx = relay.tx.subscribe();
    if sink
        .send(Message::Text(Utf8Bytes::from_static(SYNCED)))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    relay.lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn publisher(ws: WebSocketUpgrade, State(relay): State<Relay>) -> Response {
    configure(ws).on_upgrade(move |socket| publish(socket, relay))
}

async fn publish(mut socket: WebSocket, relay: Relay) {
    while let Some(Ok(msg)) = socket.next().await {
        match msg {
            Message::Text(text) => {
                let _ = relay.tx.send(text);
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}
