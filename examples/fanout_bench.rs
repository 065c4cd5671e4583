//! Fan-out benchmark: one document updated at a fixed rate, N WebSocket subscribers receiving every
//! update, end-to-end latency measured from the writer's send to each subscriber's receive; the same
//! measurement against a trivial WebSocket relay (`examples/relay.rs`) as the baseline. With
//! `--idle-memory N` it measures server memory per idle WebSocket instead.
//!
//! ```sh
//! cargo build --release --bin eventsync --examples
//! target/release/examples/fanout_bench                       # 1000 subs @ 100/s, 10000 subs @ 10/s
//! target/release/examples/fanout_bench --idle-memory 10000
//! ```
//!
//! Per level and target (EventSync, then the relay), with a fresh process each:
//!
//! 1. start `target/release/eventsync --listen 127.0.0.1:0 --data-dir <fresh temp dir>` (or the relay)
//!    through `sh -c 'ulimit -n 65536; exec ...'`, and create `games/fanout` `{"t":0}`;
//! 2. open N subscribers (`GET /sync/ws`, `hello` with client_id `sub-<i>`, `subscribe: ["games"]`,
//!    `state_vector: {}`), waiting for each one's `synced`;
//! 3. measure the server's idle CPU with N subscribers for `--idle-seconds`;
//! 4. one writer sends `PATCH /api/games/fanout` `[{"op":"replace","path":"/t","value":<µs>}]` at
//!    `--rate` per second (the relay: the same `event` message, as EventSync would send it, over a
//!    publisher WebSocket) for warm-up + `--seconds` + 0.5 s; `<µs>` is the send time in µs since an
//!    `Instant` shared by the writer and all subscribers (one process);
//! 5. every subscriber, for every `event`, records latency = receive time − the `<µs>` in it, and
//!    checks that versions arrive contiguously, exactly once;
//! 6. the measured window is the `--seconds` after warm-up: events *sent* in it count, and CPU times
//!    (server, load generator, machine) are read from /proc at its start and end.
//!
//! All subscribers share one thread (a `current_thread` tokio runtime); its CPU is reported.

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use support::{
    clock_ticks, cpu_delta, hello_token, http_client, micros_u32, percentile, rss_kib, sample_cpu,
    server_args, server_command, temp_data_dir, ws_connect, CpuDelta, ServerProc, Ws,
};

/// One subscriber's connect + handshake + hello → synced.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// After the writer stops: how long subscribers may take to receive the last event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The writer keeps writing this long after the window, so that the window is steady state.
const COOLDOWN: Duration = Duration::from_millis(500);
/// Set in the environment of the re-executed benchmark (after raising its open-files limit).
const REEXEC_ENV: &str = "FANOUT_BENCH_NOFILE_RAISED";

#[derive(Debug, Parser)]
#[command(
    name = "fanout_bench",
    about = "Fan-out benchmark for EventSync's WebSocket sync"
)]
struct Opts {
    /// EventSync server binary to start (a fresh server and data directory per level).
    #[arg(long, default_value = "target/release/eventsync")]
    server_bin: PathBuf,
    /// The relay binary [default: `relay` next to this benchmark's executable].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// What to measure, in order: `eventsync`, `relay`.
    #[arg(long, value_delimiter = ',', default_value = "eventsync,relay")]
    targets: Vec<String>,
    /// Subscriber counts, one level each (paired with --rate).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    subscribers: Vec<usize>,
    /// Updates per second, one per level (a single value applies to every level).
    #[arg(long, value_delimiter = ',', default_value = "100,10")]
    rate: Vec<f64>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of writing before the measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds with all subscribers connected and no writes, to measure the server's idle CPU.
    #[arg(long, default_value_t = 2.0)]
    idle_seconds: f64,
    /// Instead of fan-out: open this many idle WebSockets and report server memory per socket.
    #[arg(long)]
    idle_memory: Option<usize>,
    /// With --idle-memory: seconds to wait after the last `synced` before reading memory (the
    /// server's idle CPU is measured over this time too).
    #[arg(long, default_value_t = 5.0)]
    idle_hold: f64,
    /// Subscribers acknowledge (`{"type":"ack","seq":S}`) every this many events; 0: never (the
    /// server then remembers every unacknowledged event per session, up to its limit).
    #[arg(long, default_value_t = 0)]
    ack_every: u64,
    /// Subscribers being opened at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Passed to the started EventSync server.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    durability: String,
    /// Where the started server's temporary data directory is created [default: the system temp
    /// directory].
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Extra flag for the started EventSync server, repeatable (e.g. --server-arg=--max-batch=1024).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// A token to present (in each `hello`, and as `Authorization` on writes) to a server started
    /// with `--server-arg=--auth=jwt ...`.
    #[arg(long, env = "EVENTSYNC_BENCH_TOKEN")]
    token: Option<String>,
    /// Open-files limit for the started processes (and this one, if its own is lower than needed).
    #[arg(long, default_value_t = 65536)]
    nofile: u64,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Some(t) = &opts.token {
        let _ = support::TOKEN.set(t.clone());
    }
    if let Some(code) = raise_own_nofile(&opts) {
        return code;
    }
    if opts.subscribers.is_empty() || opts.subscribers.contains(&0) || opts.idle_memory == Some(0) {
        eprintln!("fanout_bench: subscriber counts must be at least 1");
        return ExitCode::from(2);
    }
    let rates_paired = opts.rate.len() == 1 || opts.rate.len() == opts.subscribers.len();
    let rate_ok = |r: &f64| *r > 0.0 && *r <= 100_000.0;
    if !rates_paired || !opts.rate.iter().all(rate_ok) {
        eprintln!("fanout_bench: --rate needs one value in (0, 100000], or one per --subscribers level");
        return ExitCode::from(2);
    }
    let seconds_ok = opts.seconds > 0.0 && opts.seconds <= 600.0;
    if !seconds_ok
        || !(0.0..=60.0).contains(&opts.warmup)
        || !(0.0..=60.0).contains(&opts.idle_seconds)
        || !(0.0..=600.0).contains(&opts.idle_hold)
        || opts.connect_concurrency == 0
    {
        eprintln!("fanout_bench: --seconds in (0, 600], --warmup/--idle-seconds in [0, 60], --idle-hold in [0, 600], --connect-concurrency ≥ 1");
        return ExitCode::from(2);
    }
    for t in &opts.targets {
        if Target::parse(t).is_none() {
            eprintln!("fanout_bench: unknown target {t:?} (eventsync, relay)");
            return ExitCode::from(2);
        }
    }
    // All subscribers, the writer and the bookkeeping on one thread.
    let rt = support::runtime();
    let result = match opts.idle_memory {
        Some(n) => rt.block_on(run_idle_memory(&opts, n)),
        None => rt.block_on(run_fanout(&opts)),
    };
    // Subscriber tasks still parked on the runtime are dropped with it.
    drop(rt);
    support::exit_code("fanout_bench", result)
}

/// If this process may not open enough files, re-runs it through `sh -c 'ulimit -n N; exec ...'`.
fn raise_own_nofile(opts: &Opts) -> Option<ExitCode> {
    let most = opts
        .idle_memory
        .unwrap_or(0)
        .max(opts.subscribers.iter().copied().max().unwrap_or(0));
    let need = most as u64 + 512;
    support::raise_own_nofile("fanout_bench", REEXEC_ENV, need, opts.nofile)
}

// ---------------------------------------------------------------------------------------------
// Targets: the server under test and the relay baseline, each a child process.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    EventSync,
    Relay,
}

impl Target {
    fn parse(s: &str) -> Option<Target> {
        match s {
            "eventsync" => Some(Target::EventSync),
            "relay" => Some(Target::Relay),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::EventSync => "EventSync",
            Target::Relay => "relay",
        }
    }
}

/// Starts the target (its open-files limit raised to `--nofile`) and waits for it to listen.
fn start_target(opts: &Opts, target: Target) -> Result<ServerProc, String> {
    let (bin, args, data) = match target {
        Target::EventSync => {
            let data = temp_data_dir("fanout-bench-", opts.tmp_dir.as_deref())?;
            let args = server_args(data.path(), &opts.durability, &opts.server_arg);
            (opts.server_bin.clone(), args, Some(data))
        }
        Target::Relay => {
            let bin = match &opts.relay_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()
                    .map_err(|e| format!("locating the relay: {e}"))?
                    .with_file_name("relay"),
            };
            (bin, vec!["--listen".into(), "127.0.0.1:0".into()], None)
        }
    };
    if !bin.exists() {
        return Err(format!(
            "{} not found (build with `cargo build --release --bin eventsync --examples`)",
            bin.display()
        ));
    }
    let mut cmd = server_command("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n {0} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\"",
            opts.nofile
        ))
        .arg(&bin)
        .args(&args);
    if target == Target::Relay {
        // The relay exits when its stdin closes: `ServerProc` keeps it open.
        cmd.stdin(Stdio::piped());
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    // `exec` keeps the pid: the child's pid is the target's.
    ServerProc::wait_listening(child, data).map_err(|e| format!("{}: {e}", bin.display()))
}

// ---------------------------------------------------------------------------------------------
// Subscribers

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

/// Connects, sends `hello`, and reads until `synced`.
async fn open_subscriber(addr: SocketAddr, i: usize) -> Result<Ws, String> {
    let open = async {
        let mut ws = ws_connect(addr, "/sync/ws", ws_config()).await?;
        let hello = format!(
            r#"{{"type":"hello","client_id":"sub-{i}","subscribe":["games"],"state_vector":{{}}{}}}"#,
            hello_token()
        );
        ws.send(Message::text(hello))
            .await
            .map_err(|e| format!("hello: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"synced""#) => return Ok(ws),
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"error""#) => {
                    return Err(format!("server error: {}", t.as_str()))
                }
                Some(Ok(Message::Close(c))) => return Err(format!("closed before synced: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("before synced: {e}")),
                None => return Err("closed before synced".into()),
            }
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| Err(format!("no synced within {OPEN_TIMEOUT:?}")))
}

/// Opens `n` subscribers, `concurrency` at a time. Returns them and the time it took.
async fn open_all(
    addr: SocketAddr,
    ids: std::ops::Range<usize>,
    concurrency: usize,
) -> Result<(Vec<Ws>, Duration), String> {
    let started = Instant::now();
    let opened: Vec<(usize, Result<Ws, String>)> = futures::stream::iter(ids)
        .map(|i| async move { (i, open_subscriber(addr, i).await) })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let out = support::all_opened(opened, "subscribers", |i| format!("sub-{i}"))?;
    Ok((out, started.elapsed()))
}

/// What the subscribers share with the writer.
struct Shared {
    epoch: Instant,
    /// The measured window, in µs since `epoch` (send times): `[w0, w1)`.
    w0: AtomicU64,
    w1: AtomicU64,
    /// Ends all subscribers (the drain deadline).
    cancel: CancellationToken,
}

#[derive(Default)]
struct SubOut {
    /// Events received (whole run).
    received: u64,
    /// Events whose version was not the previous one + 1 (missing versions counted), and repeats.
    missing: u64,
    duplicates: u64,
    last_version: u64,
    /// Latencies (µs) of events sent inside the window.
    latencies: Vec<u32>,
    unparsed: u64,
    error: Option<String>,
}

/// The value after `key` in `text`, as an unsigned integer.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = &text.as_bytes()[start..];
    let mut n: u64 = 0;
    let mut any = false;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// (version, send time µs) of an `event` message, without parsing the JSON.
fn parse_event(text: &str) -> Option<(u64, u64)> {
    let version = number_after(text, r#""version":"#)?;
    let t = number_after(text, r#""path":"/t","value":"#)?;
    Some((version, t))
}

/// Reads events until it has `final_version` (learned from `last`), or the deadline.
async fn subscriber(
    mut ws: Ws,
    shared: Arc<Shared>,
    start_version: u64,
    mut last: tokio::sync::watch::Receiver<u64>,
    expected_in_window: usize,
    ack_every: u64,
) -> SubOut {
    let mut out = SubOut {
        last_version: start_version,
        latencies: Vec::with_capacity(expected_in_window),
        ..SubOut::default()
    };
    let done = |out: &SubOut, last: &tokio::sync::watch::Receiver<u64>| {
        let f = *last.borrow();
        f != 0 && out.last_version >= f
    };
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            changed = last.changed() => {
                if changed.is_err() || done(&out, &last) {
                    break;
                }
                continue;
            }
            _ = shared.cancel.cancelled() => {
                out.error = Some("did not receive the last event in time".into());
                break;
            }
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let now = micros_since(shared.epoch);
                if !t.starts_with(r#"{"type":"event""#) {
                    continue;
                }
                let Some((version, sent)) = parse_event(&t) else {
                    out.unparsed += 1;
                    continue;
                };
                out.received += 1;
                if ack_every > 0 && out.received % ack_every == 0 {
                    if let Some(seq) = number_after(&t, r#""seq":"#) {
                        let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
                        if let Err(e) = ws.send(Message::text(ack)).await {
                            out.error = Some(format!("ack: {e}"));
                            break;
                        }
                    }
                }
                if version <= out.last_version {
                    out.duplicates += 1;
                } else {
                    out.missing += version - out.last_version - 1;
                    out.last_version = version;
                }
                let (w0, w1) = (
                    shared.w0.load(Ordering::Relaxed),
                    shared.w1.load(Ordering::Relaxed),
                );
                if sent >= w0 && sent < w1 {
                    out.latencies
                        .push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                }
                if done(&out, &last) {
                    break;
                }
            }
            Some(Ok(Message::Close(c))) => {
                out.error = Some(format!("closed by the server: {c:?}"));
                break;
            }
            Some(Ok(_)) => {} // pings are answered by tungstenite
            Some(Err(e)) => {
                out.error = Some(format!("read: {e}"));
                break;
            }
            None => {
                out.error = Some("connection closed".into());
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Writers

/// What the writer did.
struct WriterOut {
    /// The version of the last event written (the relay: the last message's counter).
    final_version: u64,
    /// Events sent, whole run / inside the window.
    sent: u64,
    sent_window: u64,
    /// Sends more than one interval behind schedule.
    late: u64,
    /// EventSync: most PATCHes in flight at once.
    max_inflight: usize,
    /// EventSync: PATCH round-trip times (µs) of writes sent inside the window.
    ack_latencies: Vec<u32>,
    error: Option<String>,
}

/// A message shaped exactly like the `event` EventSync sends for the benchmark's PATCH.
fn relay_event(seq: u64, version: u64, t: u64) -> String {
    format!(
        r#"{{"type":"event","seq":{seq},"collection":"games","id":"fanout","version":{version},"op":"update","patch":[{{"op":"replace","path":"/t","value":{t}}}],"client_id":"server","op_id":"0190f7c4-5c3e-7b1a-9f2e-3d4c5b6a7980","ts":"2026-11-22T12:00:00.000Z"}}"#
    )
}

enum Sender {
    Http { client: reqwest::Client, url: String },
    Ws(Box<Ws>),
}

type PatchTask = tokio::task::JoinHandle<Result<(u64, Duration), String>>;

/// One PATCH: the document's version after it, and its round trip.
async fn patch(client: reqwest::Client, url: String, t: u64) -> Result<(u64, Duration), String> {
    let sent_at = Instant::now();
    let resp = client
        .patch(url)
        .header("content-type", "application/json-patch+json")
        .body(format!(r#"[{{"op":"replace","path":"/t","value":{t}}}]"#))
        .send()
        .await
        .map_err(|e| format!("PATCH: {e}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("PATCH answered {}", resp.status()));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| format!("PATCH response: {e}"))?;
    let took = sent_at.elapsed();
    body.pointer("/document/version")
        .and_then(serde_json::Value::as_u64)
        .map(|v| (v, took))
        .ok_or_else(|| format!("PATCH response without a version: {body}"))
}

/// Sends on schedule (open loop: PATCHes do not wait for each other, each on its own task and
/// keep-alive connection from the client's pool), from `start` until `end`.
async fn writer(
    mut sender: Sender,
    shared: Arc<Shared>,
    start_version: u64,
    rate: f64,
    start: Instant,
    end: Instant,
) -> WriterOut {
    let mut out = WriterOut {
        final_version: start_version,
        sent: 0,
        sent_window: 0,
        late: 0,
        max_inflight: 0,
        ack_latencies: Vec::new(),
        error: None,
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    // (sent inside the window, the PATCH's task)
    let mut inflight: Vec<(bool, PatchTask)> = Vec::new();
    let mut k: u32 = 0;
    let mut last_t = 0;
    loop {
        let due = start + interval * k;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now < due {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > interval {
            out.late += 1;
        }
        k += 1;
        // Strictly increasing: two sends in the same microsecond would make the second PATCH a
        // no-op (the same value), which writes no event.
        let t = micros_since(shared.epoch).max(last_t + 1);
        last_t = t;
        let in_window = t >= shared.w0.load(Ordering::Relaxed) && t < shared.w1.load(Ordering::Relaxed);
        match &mut sender {
            Sender::Http { client, url } => {
                let running = inflight.iter().filter(|(_, h)| !h.is_finished()).count() + 1;
                out.max_inflight = out.max_inflight.max(running);
                inflight.push((in_window, tokio::spawn(patch(client.clone(), url.clone(), t))));
            }
            Sender::Ws(ws) => {
                let v = out.final_version + 1;
                if let Err(e) = ws.send(Message::text(relay_event(v, v, t))).await {
                    out.error = Some(format!("publish: {e}"));
                    return out;
                }
                out.final_version = v;
            }
        }
        out.sent += 1;
        out.sent_window += u64::from(in_window);
    }
    if inflight.is_empty() {
        return out;
    }
    // EventSync: every PATCH must have succeeded, and their versions must be exactly the next ones.
    let mut versions = Vec::with_capacity(inflight.len());
    for (in_window, h) in inflight {
        match h.await {
            Ok(Ok((v, took))) => {
                versions.push(v);
                if in_window {
                    out.ack_latencies.push(micros_u32(took));
                }
            }
            Ok(Err(e)) => {
                out.error.get_or_insert(e);
            }
            Err(e) => {
                out.error.get_or_insert(format!("PATCH task: {e}"));
            }
        }
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (start_version + 1..=start_version + versions.len() as u64).collect();
    if versions != expected && out.error.is_none() {
        out.error = Some("PATCH versions are not exactly the next ones: another writer?".into());
    }
    out.final_version = versions.last().copied().unwrap_or(start_version);
    out
}

// ---------------------------------------------------------------------------------------------
// One fan-out run

struct Run {
    target: Target,
    subscribers: usize,
    rate: f64,
    open_time: Duration,
    /// Server RSS (KiB) before opening the subscribers and after all were synced.
    rss: (Option<u64>, Option<u64>),
    /// Server RSS (KiB) just before the writer started and at the end of the window.
    rss_writing: (Option<u64>, Option<u64>),
    idle: CpuDelta,
    window: CpuDelta,
    writer: WriterOut,
    /// Σ over subscribers.
    expected_total: u64,
    received_total: u64,
    missing: u64,
    duplicates: u64,
    unparsed: u64,
    failed_subscribers: Vec<String>,
    /// Sorted latencies (µs) of deliveries of events sent inside the window.
    latencies: Vec<u32>,
    drain: Duration,
}

impl Run {
    fn expected_window(&self) -> u64 {
        self.writer.sent_window * self.subscribers as u64
    }
    fn complete(&self) -> bool {
        self.writer.error.is_none()
            && self.failed_subscribers.is_empty()
            && self.missing == 0
            && self.duplicates == 0
            && self.unparsed == 0
            && self.received_total == self.expected_total
            && self.latencies.len() as u64 == self.expected_window()
    }
}

async fn create_doc(client: &reqwest::Client, addr: SocketAddr) -> Result<u64, String> {
    let resp = client
        .post(format!("http://{addr}/api/games"))
        .header("content-type", "application/json")
        .body(r#"{"id":"fanout","t":0}"#)
        .send()
        .await
        .map_err(|e| format!("creating games/fanout: {e}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("creating games/fanout: {e}"))?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("creating games/fanout: {status}: {body}"));
    }
    body.pointer("/document/version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("creating games/fanout: no version in {body}"))
}

async fn run_one(opts: &Opts, target: Target, n: usize, rate: f64, ticks: f64) -> Result<Run, String> {
    let proc = start_target(opts, target)?;
    let pid = proc.pid.to_string();
    eprintln!(
        "fanout_bench: {} (pid {}) on {}: opening {n} subscribers",
        target.name(),
        proc.pid,
        proc.addr
    );
    let client = http_client()?;
    let start_version = match target {
        Target::EventSync => create_doc(&client, proc.addr).await?,
        Target::Relay => 0,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_kib(&pid);
    let (sockets, open_time) = open_all(proc.addr, 0..n, opts.connect_concurrency).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(&pid);
    eprintln!(
        "fanout_bench: {n} subscribers synced in {:.1} s; idle for {} s",
        open_time.as_secs_f64(),
        opts.idle_seconds
    );

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        w0: AtomicU64::new(u64::MAX),
        w1: AtomicU64::new(u64::MAX),
        cancel: CancellationToken::new(),
    });
    let (last_tx, last_rx) = tokio::sync::watch::channel(0u64);
    let per_sub = (rate * opts.seconds * 1.1) as usize + 16;
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|ws| {
            tokio::spawn(subscriber(
                ws,
                Arc::clone(&shared),
                start_version,
                last_rx.clone(),
                per_sub,
                opts.ack_every,
            ))
        })
        .collect();
    drop(last_rx);

    // Idle: subscribers connected, nothing written.
    let a = sample_cpu(proc.pid);
    tokio::time::sleep(Duration::from_secs_f64(opts.idle_seconds)).await;
    let idle = cpu_delta(a, sample_cpu(proc.pid), ticks);

    let start = Instant::now() + Duration::from_millis(200);
    let t0 = start + Duration::from_secs_f64(opts.warmup);
    let t1 = t0 + Duration::from_secs_f64(opts.seconds);
    shared
        .w0
        .store((t0 - shared.epoch).as_micros() as u64, Ordering::Relaxed);
    shared
        .w1
        .store((t1 - shared.epoch).as_micros() as u64, Ordering::Relaxed);
    // The writer has a thread (and runtime) of its own: its sends and timestamps must not wait
    // behind the subscribers' reads on the load generator's main thread.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (w_shared, addr) = (Arc::clone(&shared), proc.addr);
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("writer runtime");
            let out = rt.block_on(async move {
                let sender = match target {
                    Target::EventSync => http_client().map(|client| Sender::Http {
                        client,
                        url: format!("http://{addr}/api/games/fanout"),
                    }),
                    Target::Relay => ws_connect(addr, "/publish", ws_config())
                        .await
                        .map(|ws| Sender::Ws(Box::new(ws))),
                };
                match sender {
                    Ok(sender) => writer(sender, w_shared, start_version, rate, start, t1 + COOLDOWN).await,
                    Err(e) => WriterOut {
                        final_version: start_version,
                        sent: 0,
                        sent_window: 0,
                        late: 0,
                        max_inflight: 0,
                        ack_latencies: Vec::new(),
                        error: Some(format!("writer: {e}")),
                    },
                }
            });
            let _ = done_tx.send(out);
        })
        .map_err(|e| format!("starting the writer thread: {e}"))?;
    let rss_writer_start = rss_kib(&pid);
    tokio::time::sleep_until(t0.into()).await;
    let a = sample_cpu(proc.pid);
    tokio::time::sleep_until(t1.into()).await;
    let window = cpu_delta(a, sample_cpu(proc.pid), ticks);
    let rss_window_end = rss_kib(&pid);
    let writer_out = done_rx.await.map_err(|_| "the writer thread died".to_string())?;
    if let Some(e) = &writer_out.error {
        eprintln!("fanout_bench: writer: {e}");
    }

    // Drain: every subscriber should get to the last version.
    let drain_start = Instant::now();
    let _ = last_tx.send(writer_out.final_version.max(start_version + 1));
    let cancel = shared.cancel.clone();
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        cancel.cancel();
    });
    let mut run = Run {
        target,
        subscribers: n,
        rate,
        open_time,
        rss: (rss_before, rss_after),
        rss_writing: (rss_writer_start, rss_window_end),
        idle,
        window,
        expected_total: (writer_out.final_version - start_version) * n as u64,
        writer: writer_out,
        received_total: 0,
        missing: 0,
        duplicates: 0,
        unparsed: 0,
        failed_subscribers: Vec::new(),
        latencies: Vec::with_capacity(per_sub * n),
        drain: Duration::ZERO,
    };
    for (i, h) in handles.into_iter().enumerate() {
        let o = h.await.map_err(|e| format!("subscriber task: {e}"))?;
        run.received_total += o.received;
        run.missing += o.missing;
        run.duplicates += o.duplicates;
        run.unparsed += o.unparsed;
        run.latencies.extend_from_slice(&o.latencies);
        let short = o.last_version < run.writer.final_version;
        if let Some(e) = o.error.filter(|_| short) {
            run.failed_subscribers.push(format!("sub-{i}: {e}"));
        } else if short {
            run.failed_subscribers
                .push(format!("sub-{i}: stopped at version {}", o.last_version));
        }
    }
    run.drain = drain_start.elapsed();
    deadline.abort();
    run.latencies.sort_unstable();
    drop(proc); // stops the target before the sockets close
    eprintln!(
        "fanout_bench: {} {n} subs @ {rate}/s: {} of {} deliveries, p99 {:.2} ms, {}",
        target.name(),
        run.received_total,
        run.expected_total,
        percentile(&run.latencies, 99.0),
        if run.complete() { "complete" } else { "INCOMPLETE" }
    );
    Ok(run)
}

async fn run_fanout(opts: &Opts) -> Result<bool, String> {
    let ticks = clock_ticks();
    let targets: Vec<Target> = opts.targets.iter().filter_map(|t| Target::parse(t)).collect();
    let mut runs = Vec::new();
    for (i, &n) in opts.subscribers.iter().enumerate() {
        let rate = opts.rate[if opts.rate.len() == 1 { 0 } else { i }];
        for &target in &targets {
            runs.push(run_one(opts, target, n, rate, ticks).await?);
            // Let the closed sockets of this run clear before the next opens thousands more.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    print_report(opts, &runs, ticks);
    Ok(runs.iter().all(Run::complete))
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_report(opts: &Opts, runs: &[Run], ticks: f64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Fan-out: {} --durability {}, {} s measured after {} s warm-up, {}\n",
        opts.server_bin.display(),
        opts.durability,
        opts.seconds,
        opts.warmup,
        if opts.ack_every == 0 {
            "subscribers never ack".to_string()
        } else {
            format!("subscribers ack every {} event(s)", opts.ack_every)
        }
    );
    let _ = writeln!(
        s,
        "| target | subscribers | updates/s | events in window | deliveries expected | received | complete | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | server CPU s | server µs/delivery | server idle CPU (cores) | loadgen CPU s | loadgen µs/delivery | other CPU (cores) | iowait (cores) | write ack p50 / p99 ms | server RSS KiB/subscriber | server RSS growth while writing MiB |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let deliveries = r.latencies.len() as f64;
        let per = |cpu: f64| {
            if deliveries > 0.0 && cpu.is_finite() {
                format!("{:.2}", cpu * 1e6 / deliveries)
            } else {
                "n/a".into()
            }
        };
        let mut acks = r.writer.ack_latencies.clone();
        acks.sort_unstable();
        let ack = if acks.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.2} / {:.2}", percentile(&acks, 50.0), percentile(&acks, 99.0))
        };
        let rss = match r.rss {
            (Some(a), Some(b)) => format!("{:.1}", (b as f64 - a as f64) / r.subscribers as f64),
            _ => "n/a".into(),
        };
        let growth = match r.rss_writing {
            (Some(a), Some(b)) => format!("{:.1}", (b as f64 - a as f64) / 1024.0),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {} | {} |",
            r.target.name(),
            r.subscribers,
            r.rate,
            r.writer.sent_window,
            r.expected_window(),
            r.latencies.len(),
            if r.complete() { "yes" } else { "**NO**" },
            deliveries / r.window.secs,
            percentile(&r.latencies, 50.0),
            percentile(&r.latencies, 90.0),
            percentile(&r.latencies, 99.0),
            percentile(&r.latencies, 100.0),
            r.window.server,
            per(r.window.server),
            r.idle.server / r.idle.secs,
            r.window.me,
            per(r.window.me),
            r.window.other / r.window.secs,
            r.window.iowait / r.window.secs,
            ack,
            rss,
            growth,
        );
    }
    let _ = writeln!(s);
    for r in runs {
        let _ = write!(
            s,
            "- {} {} subs @ {}/s: subscribers opened in {:.1} s; whole run (warm-up and cool-down \
             included): {} events written, {} deliveries expected, {} received",
            r.target.name(),
            r.subscribers,
            r.rate,
            r.open_time.as_secs_f64(),
            r.writer.sent,
            r.expected_total,
            r.received_total
        );
        if r.complete() {
            let _ = write!(
                s,
                " — every subscriber got every event exactly once, in version order"
            );
        } else {
            let _ = write!(
                s,
                " — **INCOMPLETE**: {} missing, {} duplicates, {} unparsed, {} subscriber(s) short{}{}",
                r.missing,
                r.duplicates,
                r.unparsed,
                r.failed_subscribers.len(),
                r.failed_subscribers
                    .first()
                    .map(|f| format!(" (e.g. {f})"))
                    .unwrap_or_default(),
                r.writer
                    .error
                    .as_ref()
                    .map(|e| format!("; writer: {e}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            s,
            "; last subscriber done {:.0} ms after the writer; {} late send(s), at most {} PATCH(es) \
             in flight; idle window other CPU {:.2} cores",
            r.drain.as_secs_f64() * 1000.0,
            r.writer.late,
            r.writer.max_inflight,
            r.idle.other / r.idle.secs
        );
    }

    // Targets.
    let _ = writeln!(s, "\nTargets:");
    let find = |t: Target, n: usize| runs.iter().find(|r| r.target == t && r.subscribers == n);
    let met = |b: bool| if b { "met" } else { "NOT met" };
    for r in runs.iter().filter(|r| r.target == Target::EventSync) {
        let p99 = percentile(&r.latencies, 99.0);
        let per = r.window.server * 1e6 / r.latencies.len().max(1) as f64;
        if r.subscribers == 1000 {
            let _ = writeln!(
                s,
                "- 1,000 subscribers: EventSync p99 {p99:.2} ms < 10 ms: **{}**",
                met(p99 < 10.0)
            );
        }
        if let Some(relay) = find(Target::Relay, r.subscribers) {
            let rp99 = percentile(&relay.latencies, 99.0);
            let _ = writeln!(
                s,
                "- {} subscribers: EventSync p99 {p99:.2} ms vs relay p99 {rp99:.2} ms ({:+.0} %), \
                 within 10 %: **{}**{}",
                r.subscribers,
                (p99 / rp99 - 1.0) * 100.0,
                met(p99 <= rp99 * 1.1),
                if r.subscribers == 10_000 {
                    " (target at 10,000)"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            s,
            "- {} subscribers: EventSync server CPU {per:.2} µs per delivery ≤ 1.5 µs: **{}**",
            r.subscribers,
            met(per <= 1.5)
        );
    }
    let _ = writeln!(
        s,
        "\nLatency: from the writer taking the timestamp (just before sending the PATCH / publishing) \
         to a subscriber reading the event, for events sent inside the window; all subscribers \
         are read by one thread of this process. `deliveries/s`: window deliveries / window \
         seconds. `server µs/delivery` and `loadgen µs/delivery`: CPU over the window / window \
         deliveries. `server idle CPU`: with all subscribers connected and no writes, over {} s. \
         `other CPU`: machine-wide busy time minus the server's and the load generator's, in cores \
         of the {cores} available (noise); `iowait`: machine-wide, in cores (fsync stalls). `write ack`: PATCH round trip (EventSync only). \
         `server RSS KiB/subscriber`: (VmRSS after all synced − before) / subscribers; `server RSS \
         growth while writing`: VmRSS at the end of the window − just before the writer started. \
         CPU from /proc (tick = {:.0} ms).",
        opts.idle_seconds,
        1000.0 / ticks
    );
    print!("{s}");
}

// ---------------------------------------------------------------------------------------------
// Idle memory

struct MemRow {
    target: Target,
    open_time: Duration,
    /// VmRSS (KiB): before opening, after the first `first` sockets, after all were synced, after
    /// the hold.
    before: u64,
    first: usize,
    at_first: u64,
    synced: u64,
    after: u64,
    hwm: Option<u64>,
    cpu: CpuDelta,
    alive: usize,
}

async fn run_idle_memory(opts: &Opts, n: usize) -> Result<bool, String> {
    let ticks = clock_ticks();
    let targets: Vec<Target> = opts.targets.iter().filter_map(|t| Target::parse(t)).collect();
    let mut rows = Vec::new();
    for &target in &targets {
        let proc = start_target(opts, target)?;
        let pid = proc.pid.to_string();
        let client = http_client()?;
        if target == Target::EventSync {
            create_doc(&client, proc.addr).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(&pid).ok_or("reading VmRSS")?;
        eprintln!(
            "fanout_bench: {} (pid {}): VmRSS {before} KiB; opening {n} idle WebSockets",
            target.name(),
            proc.pid
        );
        // The first 10 % separately: what they cost includes one-time growth (thread pools, caches,
        // allocator arenas); the rest is the marginal cost of a socket.
        let first = (n / 10).max(1).min(n);
        let (mut sockets, t1) = open_all(proc.addr, 0..first, opts.connect_concurrency).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let at_first = rss_kib(&pid).ok_or("reading VmRSS")?;
        let (rest, t2) = open_all(proc.addr, first..n, opts.connect_concurrency).await?;
        sockets.extend(rest);
        let synced = rss_kib(&pid).ok_or("reading VmRSS")?;
        // Keep the sockets read (so pings get their pongs) while holding.
        let cancel = CancellationToken::new();
        let readers: Vec<_> = sockets
            .into_iter()
            .map(|mut ws| {
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            m = ws.next() => if !matches!(m, Some(Ok(_))) { return false },
                            _ = cancel.cancelled() => return true,
                        }
                    }
                })
            })
            .collect();
        let a = sample_cpu(proc.pid);
        tokio::time::sleep(Duration::from_secs_f64(opts.idle_hold)).await;
        let cpu = cpu_delta(a, sample_cpu(proc.pid), ticks);
        let after = rss_kib(&pid).ok_or("reading VmRSS")?;
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            });
        cancel.cancel();
        let mut alive = 0;
        for r in readers {
            alive += usize::from(r.await.unwrap_or(false));
        }
        drop(proc);
        eprintln!(
            "fanout_bench: {}: {alive} of {n} still open after {} s; VmRSS {after} KiB",
            target.name(),
            opts.idle_hold
        );
        rows.push(MemRow {
            target,
            open_time: t1 + t2,
            before,
            first,
            at_first,
            synced,
            after,
            hwm,
            cpu,
            alive,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Idle WebSockets: {n} (hello + synced, then idle {} s), opened {} at a time\n",
        opts.idle_hold, opts.connect_concurrency
    );
    let _ = writeln!(
        s,
        "| target | sockets | open s | VmRSS before KiB | after first 10 % KiB | at last synced KiB | after hold KiB | VmHWM KiB | KiB per socket (all) | KiB per socket (last 90 %) | still open | server idle CPU (cores) | other CPU (cores) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut ok = true;
    let per = |r: &MemRow| (r.after as f64 - r.before as f64) / n as f64;
    let marginal = |r: &MemRow| (r.after as f64 - r.at_first as f64) / (n - r.first).max(1) as f64;
    for r in &rows {
        ok &= r.alive == n;
        let _ = writeln!(
            s,
            "| {} | {n} | {:.1} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.3} | {:.2} |",
            r.target.name(),
            r.open_time.as_secs_f64(),
            r.before,
            r.at_first,
            r.synced,
            r.after,
            r.hwm.map_or("n/a".into(), |h| h.to_string()),
            per(r),
            marginal(r),
            r.alive,
            r.cpu.server / r.cpu.secs,
            r.cpu.other / r.cpu.secs,
        );
    }
    let _ = writeln!(s);
    for r in rows.iter().filter(|r| r.target == Target::EventSync) {
        let (all, last) = (per(r), marginal(r));
        let met = |x: f64| if x <= 8.0 { "met" } else { "NOT met" };
        let _ = writeln!(
            s,
            "Target (≤ 8 KiB per idle WebSocket): EventSync {all:.2} KiB over all {n} sockets: **{}**; \
             {last:.2} KiB marginal (last 90 %): **{}**",
            met(all),
            met(last)
        );
    }
    let _ = writeln!(
        s,
        "\nKiB per socket (all) = (VmRSS after the hold − VmRSS before opening) / sockets; (last 90 %) \
         = (VmRSS after the hold − VmRSS after the first 10 %) / the other 90 %. User-space memory \
         only (kernel socket buffers are not in RSS). `server idle CPU`: over the hold, in cores of \
         the {cores} available; `other CPU`: machine busy time minus server and load generator."
    );
    print!("{s}");
    Ok(ok)
}
