//! Scope benchmark: what narrow subscriptions (docs/PROTOCOL.md §11) cost the server per write.
//!
//! ```sh
//! cargo build --release --bin eventsync --examples
//! target/release/examples/scope_bench                                  # both modes, defaults
//! target/release/examples/scope_bench --modes own-doc --sessions 10000 --rate 1000 --rounds 2
//! target/release/examples/scope_bench --modes filters --seed-docs 20000 --filter-baseline
//! ```
//!
//! Every round starts `target/release/eventsync --listen 127.0.0.1:0 --data-dir <fresh temp dir>`
//! (through `sh -c 'ulimit -n N; exec ...'`), seeds its documents with parallel `POST /api/games`,
//! opens the sessions (`GET /sync/ws`, a `hello` with one scope and `state_vector: {}`, read up to
//! its `synced`) from one `current_thread` runtime, measures the server's idle CPU, then writes at a
//! fixed rate from a writer thread of its own (open loop: every `PATCH /api/games/d<j>` on its own
//! task, over the keep-alive connections of one client's pool — as many as are in flight). Server
//! CPU (utime + stime from /proc) is read at the start and end of the measured window (`--seconds`
//! after `--warmup`); writes count in it when their `200` arrives in it, deliveries when they are
//! received in it. After the writer stops, every session must reach exactly the state the writes
//! left (computed from the versions the PATCHes answered), within `--drain-timeout`.
//!
//! **own-doc**: `--sessions` N documents `d0..d<N-1>` (`{"t":0}`); session i subscribes only
//! `{"id":"mine","collection":"games","ids":["d<i>"]}`; the writer does `--rate` writes/s round-robin
//! over the N documents (`replace /t`). Each session must receive its document's snapshot, then
//! exactly its document's events, versions contiguous, and nothing else. The same writes are then run
//! with **one session in total** (subscribed to `d0`, the N documents still there), in alternation
//! A/B/A/B (`--rounds`), so that the ratio of server CPU per write is robust to drift in machine
//! noise. Every write in A delivers one event, in B one write in N does: the ratio is the price of a
//! delivery plus whatever the 9,999 idle sessions cost per write (with routing by document: nothing).
//!
//! **filters**: `--seed-docs` D documents `{"band":j % F,"n":0}`; `--filter-sessions` S sessions over
//! `--filters` F distinct filters, session i subscribing `{"id":"f","collection":"games",
//! "where":{"band":i % F}}`. Equality bands rather than `{"level":{"$gte":i % F}}`: with `$gte` a
//! session matches half the collection on average, so opening 1,000 sessions on 100,000 documents
//! would send 50 million snapshots and every write would reach ~half the sessions — a test of
//! snapshot bandwidth, not of the routing. With bands each session holds D/F documents (its
//! catch-up at open is D/F snapshots) and a write that moves a document from band a to band b is
//! `removed` for the S/F sessions of a and a `snapshot` for the S/F of b, while every other session
//! must still decide it (the write touches the filtered path: a recheck). The writer picks a random
//! document and a new band different from its current one (so it always moves); with
//! `--unfiltered-share p` that share of writes replaces `/n` instead (an `event` for the holders,
//! decided without reading the document). Deliveries = events + snapshots + removed received.
//! `--filter-baseline` also runs the same writes with no session at all.
//!
//! Bounded: seeding, each session's opening, the drain and the whole opening phase have timeouts;
//! the program exits by itself (0: every check passed, 1: a check failed, 2: an error).

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use support::{
    clock_ticks, cpu_delta, hello_token, http_client, micros_u32, percentile, rss_kib, sample_cpu,
    server_args, server_command, temp_data_dir, ws_connect, CpuDelta, ServerProc, Ws,
};

/// Seeding a round's documents, all of them.
const SEED_TIMEOUT: Duration = Duration::from_secs(900);
/// Opening all of a round's sessions.
const OPEN_ALL_TIMEOUT: Duration = Duration::from_secs(1800);
/// The writer keeps writing this long after the window, so that the window is steady state.
const COOLDOWN: Duration = Duration::from_millis(500);
/// Set in the environment of the re-executed benchmark (after raising its open-files limit).
const REEXEC_ENV: &str = "SCOPE_BENCH_NOFILE_RAISED";

#[derive(Debug, Parser)]
#[command(
    name = "scope_bench",
    about = "Server CPU per write with narrow subscriptions (ids scopes, where filters)"
)]
struct Opts {
    /// EventSync server binary to start (a fresh server and data directory per round).
    #[arg(long, default_value = "target/release/eventsync")]
    server_bin: PathBuf,
    /// What to measure, in order: `own-doc`, `filters`.
    #[arg(long, value_delimiter = ',', default_value = "own-doc,filters")]
    modes: Vec<String>,

    /// own-doc: sessions (and documents), one `ids:[d<i>]` scope each.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// own-doc: writes per second, round-robin over the documents.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// own-doc: A/B rounds (A: all sessions, B: one session), alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,

    /// filters: sessions, one `where` scope each.
    #[arg(long, default_value_t = 1000)]
    filter_sessions: usize,
    /// filters: distinct filters (bands); session i follows band i % F.
    #[arg(long, default_value_t = 100)]
    filters: usize,
    /// filters: documents in the collection (seeded before the sessions open).
    #[arg(long, alias = "docs", default_value_t = 100_000)]
    seed_docs: usize,
    /// filters: writes per second to random documents.
    #[arg(long, default_value_t = 1000.0)]
    filter_rate: f64,
    /// filters: share of writes that replace the unfiltered `/n` instead of `/band`.
    #[arg(long, default_value_t = 0.0)]
    unfiltered_share: f64,
    /// filters: rounds.
    #[arg(long, default_value_t = 1)]
    filter_rounds: usize,
    /// filters: after each round, the same writes with no session (the cost of the write alone).
    #[arg(long)]
    filter_baseline: bool,

    /// Measured seconds per round.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of writing before the measured window (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds with all sessions open and no writes, to measure the server's idle CPU.
    #[arg(long, default_value_t = 2.0)]
    idle_seconds: f64,
    /// POSTs in flight while seeding.
    #[arg(long, default_value_t = 64)]
    seed_concurrency: usize,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Seconds one session may take from connect to `synced`.
    #[arg(long, default_value_t = 120.0)]
    open_timeout: f64,
    /// Seconds after the writer stops for every session to reach the final state.
    #[arg(long, default_value_t = 60.0)]
    drain_timeout: f64,
    /// Sessions acknowledge (`{"type":"ack","seq":S}`) every this many deliveries with a seq; 0: never.
    #[arg(long, default_value_t = 0)]
    ack_every: u64,
    /// Seed of the filters mode's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Passed to the started server.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    durability: String,
    /// Where the started server's temporary data directory is created [default: the system temp
    /// directory].
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Extra flag for the started server, repeatable (e.g. --server-arg=--max-batch=1024).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// A token to present (in each `hello`, and as `Authorization` on writes).
    #[arg(long, env = "EVENTSYNC_BENCH_TOKEN")]
    token: Option<String>,
    /// Open-files limit for the started server (and this process, if its own is lower than needed).
    #[arg(long, default_value_t = 65536)]
    nofile: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    OwnDoc,
    Filters,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "own-doc" => Some(Mode::OwnDoc),
            "filters" => Some(Mode::Filters),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Some(t) = &opts.token {
        let _ = support::TOKEN.set(t.clone());
    }
    if let Err(e) = check(&opts) {
        eprintln!("scope_bench: {e}");
        return ExitCode::from(2);
    }
    if let Some(code) = raise_own_nofile(&opts) {
        return code;
    }
    let rt = support::runtime();
    let result = rt.block_on(run(&opts));
    drop(rt);
    support::exit_code("scope_bench", result)
}

fn check(opts: &Opts) -> Result<(), String> {
    for m in &opts.modes {
        Mode::parse(m).ok_or_else(|| format!("unknown mode {m:?} (own-doc, filters)"))?;
    }
    let rate_ok = |r: f64| r > 0.0 && r <= 100_000.0;
    if !rate_ok(opts.rate) || !rate_ok(opts.filter_rate) {
        return Err("--rate and --filter-rate must be in (0, 100000]".into());
    }
    if opts.sessions == 0 || opts.rounds == 0 || opts.filter_rounds == 0 {
        return Err("--sessions, --rounds and --filter-rounds must be at least 1".into());
    }
    if opts.filters < 2 || opts.seed_docs < opts.filters {
        return Err("--filters must be at least 2, and --seed-docs at least --filters".into());
    }
    if !(0.0..=1.0).contains(&opts.unfiltered_share) {
        return Err("--unfiltered-share must be in [0, 1]".into());
    }
    let secs_ok = opts.seconds > 0.0 && opts.seconds <= 600.0;
    if !secs_ok
        || !(0.0..=60.0).contains(&opts.warmup)
        || !(0.0..=60.0).contains(&opts.idle_seconds)
        || !(1.0..=3600.0).contains(&opts.open_timeout)
        || !(1.0..=3600.0).contains(&opts.drain_timeout)
        || opts.connect_concurrency == 0
        || opts.seed_concurrency == 0
    {
        return Err("--seconds in (0, 600], --warmup/--idle-seconds in [0, 60], --open-timeout/--drain-timeout in [1, 3600], concurrencies ≥ 1".into());
    }
    Ok(())
}

/// If this process may not open enough files, re-runs it through `sh -c 'ulimit -n N; exec ...'`.
fn raise_own_nofile(opts: &Opts) -> Option<ExitCode> {
    let need = opts.sessions.max(opts.filter_sessions) as u64 + 1024;
    support::raise_own_nofile("scope_bench", REEXEC_ENV, need, opts.nofile)
}

/// Starts the server (its open-files limit raised to `--nofile`) and waits for it to listen.
fn start_server(opts: &Opts) -> Result<ServerProc, String> {
    let bin = &opts.server_bin;
    if !bin.exists() {
        return Err(format!(
            "{} not found (build with `cargo build --release --bin eventsync --examples`)",
            bin.display()
        ));
    }
    let data = temp_data_dir("scope-bench-", opts.tmp_dir.as_deref())?;
    let args = server_args(data.path(), &opts.durability, &opts.server_arg);
    let mut cmd = server_command("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n {0} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\"",
            opts.nofile
        ))
        .arg(bin)
        .args(&args);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    ServerProc::wait_listening(child, Some(data)).map_err(|e| format!("{}: {e}", bin.display()))
}

// ---------------------------------------------------------------------------------------------
// Messages, parsed without a JSON parser (the load generator shares the machine with the server)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Snapshot,
    Removed,
    Synced,
    Error,
    Other,
}

fn kind(text: &str) -> Kind {
    let Some(rest) = text.strip_prefix(r#"{"type":""#) else {
        return Kind::Other;
    };
    let name = rest.split('"').next().unwrap_or("");
    match name {
        "event" => Kind::Event,
        "snapshot" => Kind::Snapshot,
        "removed" => Kind::Removed,
        "synced" => Kind::Synced,
        "error" => Kind::Error,
        _ => Kind::Other,
    }
}

/// The value after `key` in `text`, as an unsigned integer.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let mut n: u64 = 0;
    let mut any = false;
    for &b in &text.as_bytes()[start..] {
        if !b.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// The document index `j` of a message about `d<j>` (the first `"id":"`: `client_id` and `op_id`
/// come later, and the bodies have no `id`).
fn doc_of(text: &str) -> Option<usize> {
    let start = text.find(r#""id":"d"#)? + r#""id":"d"#.len();
    let rest = &text[start..];
    let end = rest.find('"')?;
    rest[..end].parse().ok()
}

fn version_of(text: &str) -> Option<u64> {
    number_after(text, r#""version":"#)
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

// ---------------------------------------------------------------------------------------------
// What a session holds, and what it should hold in the end

/// Anomalies and counts of one session.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    events: u64,
    snapshots: u64,
    removed: u64,
    /// Deliveries received inside the measured window, by kind.
    w_events: u64,
    w_snapshots: u64,
    w_removed: u64,
    /// `synced` received while live (a re-planned catch-up: lagged, or a gap).
    resyncs: u64,
    /// A message about a document the session does not follow (own-doc).
    foreign: u64,
    /// Versions skipped by events.
    gaps: u64,
    /// A delivery at or below the version held.
    dups: u64,
    /// An event or `removed` of a document not held, a `removed` in own-doc.
    unexpected: u64,
    unparsed: u64,
}

impl Counts {
    fn deliveries(&self) -> u64 {
        self.events + self.snapshots + self.removed
    }
    fn window(&self) -> u64 {
        self.w_events + self.w_snapshots + self.w_removed
    }
    fn anomalies(&self) -> u64 {
        self.foreign + self.gaps + self.dups + self.unexpected + self.unparsed
    }
    fn add(&mut self, o: &Counts) {
        self.events += o.events;
        self.snapshots += o.snapshots;
        self.removed += o.removed;
        self.w_events += o.w_events;
        self.w_snapshots += o.w_snapshots;
        self.w_removed += o.w_removed;
        self.resyncs += o.resyncs;
        self.foreign += o.foreign;
        self.gaps += o.gaps;
        self.dups += o.dups;
        self.unexpected += o.unexpected;
        self.unparsed += o.unparsed;
    }
}

/// The state the writes left: every document's final version, and (filters) each band's
/// documents with their versions.
struct Truth {
    versions: Vec<u64>,
    bands: Vec<HashMap<usize, u64>>,
}

trait View: Send + 'static {
    /// Applies a snapshot, event or removed (already counted by kind).
    fn apply(&mut self, kind: Kind, text: &str, c: &mut Counts);
    /// Whether the session holds exactly what it should after the writes.
    fn done(&self, truth: &Truth) -> bool;
    /// Called once the session is open (its catch-up applied).
    fn opened(&mut self) {}
    /// Deliveries it should receive live, if that is known in advance of the messages.
    fn expected(&self, _truth: &Truth) -> Option<u64> {
        None
    }
}

/// own-doc: one document, `d<doc>`.
struct Own {
    doc: usize,
    version: u64,
    start: u64,
}

impl View for Own {
    fn apply(&mut self, kind: Kind, text: &str, c: &mut Counts) {
        let (Some(doc), Some(v)) = (doc_of(text), version_of(text)) else {
            c.unparsed += 1;
            return;
        };
        if doc != self.doc {
            c.foreign += 1;
            return;
        }
        match kind {
            Kind::Snapshot if v <= self.version => c.dups += 1,
            Kind::Snapshot => self.version = v,
            Kind::Event if v <= self.version => c.dups += 1,
            Kind::Event => {
                c.gaps += v - self.version - 1;
                self.version = v;
            }
            _ => c.unexpected += 1,
        }
    }
    fn done(&self, truth: &Truth) -> bool {
        self.version >= truth.versions[self.doc]
    }
    fn opened(&mut self) {
        self.start = self.version;
    }
    fn expected(&self, truth: &Truth) -> Option<u64> {
        Some(truth.versions[self.doc].saturating_sub(self.start))
    }
}

/// filters: the documents of one band, with their versions.
struct Band {
    band: usize,
    held: HashMap<usize, u64>,
}

impl View for Band {
    fn apply(&mut self, kind: Kind, text: &str, c: &mut Counts) {
        let (Some(doc), Some(v)) = (doc_of(text), version_of(text)) else {
            c.unparsed += 1;
            return;
        };
        match kind {
            Kind::Snapshot => match self.held.get_mut(&doc) {
                Some(h) if *h >= v => c.dups += 1,
                Some(h) => *h = v,
                None => {
                    self.held.insert(doc, v);
                }
            },
            Kind::Event => match self.held.get_mut(&doc) {
                None => c.unexpected += 1,
                Some(h) if *h >= v => c.dups += 1,
                Some(h) => {
                    c.gaps += v - *h - 1;
                    *h = v;
                }
            },
            _ => {
                if self.held.remove(&doc).is_none() {
                    c.unexpected += 1;
                }
            }
        }
    }
    fn done(&self, truth: &Truth) -> bool {
        self.held == truth.bands[self.band]
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// Connects, sends `hello`, and applies what comes until `synced`.
async fn open_session<V: View>(
    addr: SocketAddr,
    hello: String,
    mut view: V,
    timeout: Duration,
) -> Result<(Ws, V, Counts), String> {
    let open = async move {
        let mut ws = ws_connect(addr, "/sync/ws", ws_config()).await?;
        ws.send(Message::text(hello))
            .await
            .map_err(|e| format!("hello: {e}"))?;
        let mut c = Counts::default();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match kind(&t) {
                    Kind::Synced => {
                        view.opened();
                        return Ok((ws, view, c));
                    }
                    Kind::Error => return Err(format!("server error: {}", t.as_str())),
                    Kind::Other => {}
                    k => {
                        match k {
                            Kind::Event => c.events += 1,
                            Kind::Snapshot => c.snapshots += 1,
                            _ => c.removed += 1,
                        }
                        view.apply(k, &t, &mut c);
                    }
                },
                Some(Ok(Message::Close(c))) => return Err(format!("closed before synced: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("before synced: {e}")),
                None => return Err("closed before synced".into()),
            }
        }
    };
    tokio::time::timeout(timeout, open)
        .await
        .unwrap_or_else(|_| Err(format!("no synced within {timeout:?}")))
}

type Opened<V> = Vec<(Ws, V, Counts)>;

/// Opens every session, `concurrency` at a time, in index order in the result.
async fn open_all<V: View>(
    addr: SocketAddr,
    sessions: Vec<(String, V)>,
    concurrency: usize,
    timeout: Duration,
) -> Result<(Opened<V>, Duration), String> {
    let started = Instant::now();
    let n = sessions.len();
    let all = futures::stream::iter(sessions.into_iter().enumerate())
        .map(|(i, (hello, view))| async move { (i, open_session(addr, hello, view, timeout).await) })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>();
    let opened = tokio::time::timeout(OPEN_ALL_TIMEOUT, all)
        .await
        .map_err(|_| format!("opening {n} sessions took over {OPEN_ALL_TIMEOUT:?}"))?;
    let out = support::all_opened(opened, "sessions", |i| format!("session {i}"))?;
    Ok((out, started.elapsed()))
}

/// What the sessions share with the round.
struct Shared {
    epoch: Instant,
    /// The measured window, in µs since `epoch`: `[w0, w1)`.
    w0: AtomicU64,
    w1: AtomicU64,
    /// Ends all sessions (the drain deadline).
    cancel: CancellationToken,
}

struct SubOut<V> {
    view: V,
    counts: Counts,
    done: bool,
    error: Option<String>,
}

/// Applies what comes until the session holds what the writes left (`truth`, sent when the writer
/// is done), or it is cancelled.
async fn session<V: View>(
    mut ws: Ws,
    mut view: V,
    shared: Arc<Shared>,
    mut truth: watch::Receiver<Option<Arc<Truth>>>,
    ack_every: u64,
) -> SubOut<V> {
    let mut c = Counts::default();
    let mut error = None;
    let is_done = |view: &V, truth: &watch::Receiver<Option<Arc<Truth>>>| {
        truth.borrow().as_ref().is_some_and(|t| view.done(t))
    };
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            changed = truth.changed() => {
                if changed.is_err() || is_done(&view, &truth) {
                    break;
                }
                continue;
            }
            _ = shared.cancel.cancelled() => break,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let now = micros_since(shared.epoch);
                let in_window =
                    now >= shared.w0.load(Ordering::Relaxed) && now < shared.w1.load(Ordering::Relaxed);
                let k = kind(&t);
                match k {
                    Kind::Event => {
                        c.events += 1;
                        c.w_events += u64::from(in_window);
                    }
                    Kind::Snapshot => {
                        c.snapshots += 1;
                        c.w_snapshots += u64::from(in_window);
                    }
                    Kind::Removed => {
                        c.removed += 1;
                        c.w_removed += u64::from(in_window);
                    }
                    Kind::Synced => {
                        c.resyncs += 1;
                        continue;
                    }
                    Kind::Error => {
                        error = Some(format!("server error: {}", t.as_str()));
                        break;
                    }
                    Kind::Other => continue,
                }
                view.apply(k, &t, &mut c);
                if ack_every > 0 && k != Kind::Snapshot && c.deliveries() % ack_every == 0 {
                    if let Some(seq) = number_after(&t, r#""seq":"#) {
                        let ack = format!(r#"{{"type":"ack","seq":{seq}}}"#);
                        if let Err(e) = ws.send(Message::text(ack)).await {
                            error = Some(format!("ack: {e}"));
                            break;
                        }
                    }
                }
                if is_done(&view, &truth) {
                    break;
                }
            }
            Some(Ok(Message::Close(f))) => {
                error = Some(format!("closed by the server: {f:?}"));
                break;
            }
            Some(Ok(_)) => {} // pings are answered by tungstenite
            Some(Err(e)) => {
                error = Some(format!("read: {e}"));
                break;
            }
            None => {
                error = Some("connection closed".into());
                break;
            }
        }
    }
    let done = is_done(&view, &truth);
    SubOut {
        view,
        counts: c,
        done,
        error,
    }
}

// ---------------------------------------------------------------------------------------------
// The writer

/// One write: `PATCH /api/games/d<doc>` with `body`; `band` is the band it sets, if it does.
struct Job {
    doc: usize,
    band: Option<u32>,
    body: String,
}

/// One acknowledged write: the document's version after it.
struct Written {
    doc: usize,
    band: Option<u32>,
    version: u64,
}

#[derive(Default)]
struct WriterOut {
    sent: u64,
    /// Writes whose `200` arrived inside the window.
    acked_window: u64,
    /// Sends more than one interval behind schedule.
    late: u64,
    max_inflight: usize,
    written: Vec<Written>,
    errors: u64,
    first_error: Option<String>,
    /// Round trips (µs) of writes answered inside the window.
    ack_latencies: Vec<u32>,
}

type Plan = Box<dyn FnMut(u64) -> Job + Send>;

/// One PATCH: the document's version after it, when it was answered, and its round trip.
async fn patch(
    client: reqwest::Client,
    url: String,
    body: String,
) -> Result<(u64, Instant, Duration), String> {
    let sent_at = Instant::now();
    let resp = client
        .patch(url)
        .header("content-type", "application/json-patch+json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("PATCH: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("PATCH response: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "PATCH answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let at = Instant::now();
    let body: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("PATCH response: {e}"))?;
    body.pointer("/document/version")
        .and_then(serde_json::Value::as_u64)
        .map(|v| (v, at, at - sent_at))
        .ok_or_else(|| format!("PATCH response without a version: {body}"))
}

/// Writes `plan(1), plan(2), ...` on schedule from `start` until `end` (open loop), on a thread and
/// runtime of its own, so that its sends do not wait behind the sessions' reads.
fn start_writer(
    addr: SocketAddr,
    rate: f64,
    (start, t0, t1, end): (Instant, Instant, Instant, Instant),
    mut plan: Plan,
) -> Result<oneshot::Receiver<WriterOut>, String> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("writer runtime");
            let out = rt.block_on(async move {
                let mut out = WriterOut::default();
                let client = match http_client() {
                    Ok(c) => c,
                    Err(e) => {
                        out.errors = 1;
                        out.first_error = Some(format!("writer: {e}"));
                        return out;
                    }
                };
                let inflight = Arc::new(AtomicUsize::new(0));
                let interval = Duration::from_secs_f64(1.0 / rate);
                let mut tasks = Vec::new();
                let mut k: u32 = 0;
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
                    let job = plan(u64::from(k));
                    let url = format!("http://{addr}/api/games/d{}", job.doc);
                    let running = inflight.fetch_add(1, Ordering::Relaxed) + 1;
                    out.max_inflight = out.max_inflight.max(running);
                    let (client, inflight) = (client.clone(), Arc::clone(&inflight));
                    let body = job.body;
                    let task = tokio::spawn(async move {
                        let r = patch(client, url, body).await;
                        inflight.fetch_sub(1, Ordering::Relaxed);
                        r
                    });
                    tasks.push((job.doc, job.band, task));
                    out.sent += 1;
                }
                for (doc, band, task) in tasks {
                    let r = task.await.unwrap_or_else(|e| Err(format!("PATCH task: {e}")));
                    match r {
                        Ok((version, at, took)) => {
                            out.written.push(Written { doc, band, version });
                            if at >= t0 && at < t1 {
                                out.acked_window += 1;
                                out.ack_latencies.push(micros_u32(took));
                            }
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                        }
                    }
                }
                out
            });
            let _ = tx.send(out);
        })
        .map_err(|e| format!("starting the writer thread: {e}"))?;
    Ok(rx)
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// One round

#[derive(Debug, Clone, Copy)]
struct Spec {
    mode: Mode,
    round: usize,
    sessions: usize,
    docs: usize,
    rate: f64,
}

struct RoundOut {
    spec: Spec,
    seed_time: Duration,
    open_time: Duration,
    /// Snapshots received by the sessions' catch-ups when they opened, and anomalies in them.
    open_counts: Counts,
    /// Server RSS (KiB) before and after opening the sessions.
    rss: (Option<u64>, Option<u64>),
    idle: CpuDelta,
    window: CpuDelta,
    writer: WriterOut,
    /// Live counts, summed over sessions.
    counts: Counts,
    /// own-doc: live deliveries that should have arrived.
    expected: Option<u64>,
    /// Sessions that did not reach the final state (with an example).
    not_done: usize,
    failure: Option<String>,
    /// An inconsistency in the PATCH answers.
    write_check: Option<String>,
    drain: Duration,
}

impl RoundOut {
    fn complete(&self) -> bool {
        self.writer.errors == 0
            && self.write_check.is_none()
            && self.not_done == 0
            && self.counts.anomalies() == 0
            && self.open_counts.anomalies() == 0
            && self.expected.is_none_or(|e| e == self.counts.deliveries())
    }
    fn writes_per_sec(&self) -> f64 {
        self.writer.acked_window as f64 / self.window.secs
    }
    fn us_per_write(&self) -> f64 {
        self.window.server * 1e6 / self.writer.acked_window as f64
    }
}

async fn seed(client: &reqwest::Client, addr: SocketAddr, spec: &Spec, opts: &Opts) -> Result<(), String> {
    let url = format!("http://{addr}/api/games");
    let filters = opts.filters;
    let mode = spec.mode;
    let posts = futures::stream::iter(0..spec.docs)
        .map(|j| {
            let body = match mode {
                Mode::OwnDoc => format!(r#"{{"id":"d{j}","t":0}}"#),
                Mode::Filters => format!(r#"{{"id":"d{j}","band":{},"n":0}}"#, j % filters),
            };
            let req = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            async move {
                let resp = req.send().await.map_err(|e| format!("seeding d{j}: {e}"))?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status != reqwest::StatusCode::CREATED {
                    return Err(format!("seeding d{j}: {status}: {text}"));
                }
                Ok(())
            }
        })
        .buffer_unordered(opts.seed_concurrency)
        .collect::<Vec<Result<(), String>>>();
    let results = tokio::time::timeout(SEED_TIMEOUT, posts)
        .await
        .map_err(|_| format!("seeding {} documents took over {SEED_TIMEOUT:?}", spec.docs))?;
    results.into_iter().collect()
}

/// The final state, from the versions the PATCHes answered (writes to a document are serialized:
/// its last write is the one with the highest version).
fn truth(spec: &Spec, filters: usize, written: &[Written]) -> (Truth, Option<String>) {
    let mut versions = vec![1u64; spec.docs];
    let mut writes = vec![0u64; spec.docs];
    let mut band_at: Vec<(u64, u32)> = (0..spec.docs).map(|j| (1, (j % filters) as u32)).collect();
    for w in written {
        versions[w.doc] = versions[w.doc].max(w.version);
        writes[w.doc] += 1;
        if let Some(b) = w.band {
            if w.version > band_at[w.doc].0 {
                band_at[w.doc] = (w.version, b);
            }
        }
    }
    let mut check = None;
    let mut bands = Vec::new();
    match spec.mode {
        Mode::OwnDoc => {
            // Every write changes its document: its versions must be exactly 2, 3, ...
            if let Some(j) = (0..spec.docs).find(|&j| versions[j] != 1 + writes[j]) {
                check = Some(format!(
                    "d{j} is at version {} after {} write(s): another writer?",
                    versions[j], writes[j]
                ));
            }
        }
        Mode::Filters => {
            bands = vec![HashMap::new(); filters];
            for (j, (_, b)) in band_at.iter().enumerate() {
                bands[*b as usize].insert(j, versions[j]);
            }
        }
    }
    (Truth { versions, bands }, check)
}

async fn run_round(opts: &Opts, spec: Spec, ticks: f64) -> Result<RoundOut, String> {
    let proc = start_server(opts)?;
    eprintln!(
        "scope_bench: {:?} round {} (pid {} on {}): seeding {} documents",
        spec.mode, spec.round, proc.pid, proc.addr, spec.docs
    );
    let client = http_client()?;
    let started = Instant::now();
    seed(&client, proc.addr, &spec, opts).await?;
    let seed_time = started.elapsed();
    eprintln!(
        "scope_bench: seeded in {:.1} s ({:.0} docs/s); opening {} sessions",
        seed_time.as_secs_f64(),
        spec.docs as f64 / seed_time.as_secs_f64(),
        spec.sessions
    );
    let token = hello_token();
    match spec.mode {
        Mode::OwnDoc => {
            let sessions = (0..spec.sessions)
                .map(|i| {
                    let hello = format!(
                        r#"{{"type":"hello","client_id":"own-{i}","subscribe":[{{"id":"mine","collection":"games","ids":["d{i}"]}}],"state_vector":{{}}{token}}}"#
                    );
                    (hello, Own { doc: i, version: 0, start: 0 })
                })
                .collect();
            let docs = spec.docs as u64;
            let plan: Plan = Box::new(move |k| Job {
                doc: ((k - 1) % docs) as usize,
                band: None,
                body: format!(r#"[{{"op":"replace","path":"/t","value":{k}}}]"#),
            });
            drive(opts, spec, proc, ticks, seed_time, sessions, plan).await
        }
        Mode::Filters => {
            let f = opts.filters;
            let sessions = (0..spec.sessions)
                .map(|i| {
                    let hello = format!(
                        r#"{{"type":"hello","client_id":"flt-{i}","subscribe":[{{"id":"f","collection":"games","where":{{"band":{}}}}}],"state_vector":{{}}{token}}}"#,
                        i % f
                    );
                    (hello, Band { band: i % f, held: HashMap::new() })
                })
                .collect();
            let docs = spec.docs;
            let share = opts.unfiltered_share;
            let mut bands: Vec<u32> = (0..docs).map(|j| (j % f) as u32).collect();
            // The same writes in a round and its baseline.
            let mut rng = Rng(opts.seed.wrapping_add(spec.round as u64));
            let plan: Plan = Box::new(move |k| {
                let doc = rng.below(docs as u64) as usize;
                if share > 0.0 && rng.unit() < share {
                    return Job {
                        doc,
                        band: None,
                        body: format!(r#"[{{"op":"replace","path":"/n","value":{k}}}]"#),
                    };
                }
                // Uniform over the other bands: the document always moves.
                let mut b = rng.below(f as u64 - 1) as u32;
                if b >= bands[doc] {
                    b += 1;
                }
                bands[doc] = b;
                Job {
                    doc,
                    band: Some(b),
                    body: format!(r#"[{{"op":"replace","path":"/band","value":{b}}}]"#),
                }
            });
            drive(opts, spec, proc, ticks, seed_time, sessions, plan).await
        }
    }
}

async fn drive<V: View>(
    opts: &Opts,
    spec: Spec,
    proc: ServerProc,
    ticks: f64,
    seed_time: Duration,
    sessions: Vec<(String, V)>,
    plan: Plan,
) -> Result<RoundOut, String> {
    let pid = proc.pid.to_string();
    let rss_before = rss_kib(&pid);
    let timeout = Duration::from_secs_f64(opts.open_timeout);
    let (opened, open_time) = open_all(proc.addr, sessions, opts.connect_concurrency, timeout).await?;
    let mut open_counts = Counts::default();
    for (_, _, c) in &opened {
        open_counts.add(c);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(&pid);
    eprintln!(
        "scope_bench: {} sessions synced in {:.1} s ({} snapshots); server RSS {} → {} KiB; idle {} s",
        spec.sessions,
        open_time.as_secs_f64(),
        open_counts.snapshots,
        rss_before.unwrap_or(0),
        rss_after.unwrap_or(0),
        opts.idle_seconds
    );

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        w0: AtomicU64::new(u64::MAX),
        w1: AtomicU64::new(u64::MAX),
        cancel: CancellationToken::new(),
    });
    let (truth_tx, truth_rx) = watch::channel(None::<Arc<Truth>>);
    let handles: Vec<_> = opened
        .into_iter()
        .map(|(ws, view, _)| {
            tokio::spawn(session(
                ws,
                view,
                Arc::clone(&shared),
                truth_rx.clone(),
                opts.ack_every,
            ))
        })
        .collect();
    drop(truth_rx);

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
    let done_rx = start_writer(proc.addr, spec.rate, (start, t0, t1, t1 + COOLDOWN), plan)?;
    tokio::time::sleep_until(t0.into()).await;
    let a = sample_cpu(proc.pid);
    tokio::time::sleep_until(t1.into()).await;
    let window = cpu_delta(a, sample_cpu(proc.pid), ticks);
    let writer = done_rx.await.map_err(|_| "the writer thread died".to_string())?;
    if let Some(e) = &writer.first_error {
        eprintln!("scope_bench: writer: {} error(s), e.g. {e}", writer.errors);
    }

    let (truth, write_check) = truth(&spec, opts.filters, &writer.written);
    let truth = Arc::new(truth);
    let drain_start = Instant::now();
    let _ = truth_tx.send(Some(Arc::clone(&truth)));
    let cancel = shared.cancel.clone();
    let drain = Duration::from_secs_f64(opts.drain_timeout);
    let deadline = tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        cancel.cancel();
    });
    let mut counts = Counts::default();
    let mut expected: Option<u64> = None;
    let (mut not_done, mut failure) = (0, None);
    for (i, h) in handles.into_iter().enumerate() {
        let o = h.await.map_err(|e| format!("session task: {e}"))?;
        counts.add(&o.counts);
        if let Some(e) = o.view.expected(&truth) {
            *expected.get_or_insert(0) += e;
        }
        if !o.done {
            not_done += 1;
            failure.get_or_insert_with(|| {
                format!(
                    "session {i}: {}",
                    o.error
                        .unwrap_or_else(|| "did not reach the final state in time".into())
                )
            });
        }
    }
    let drain = drain_start.elapsed();
    deadline.abort();
    drop(truth_tx);
    drop(proc); // stops the server before the sockets close
    let out = RoundOut {
        spec,
        seed_time,
        open_time,
        open_counts,
        rss: (rss_before, rss_after),
        idle,
        window,
        writer,
        counts,
        expected,
        not_done,
        failure,
        write_check,
        drain,
    };
    eprintln!(
        "scope_bench: {:?} round {}, {} sessions: {:.0} writes/s, {:.1} µs/write, {} live deliveries ({} in window), {}",
        spec.mode,
        spec.round,
        spec.sessions,
        out.writes_per_sec(),
        out.us_per_write(),
        out.counts.deliveries(),
        out.counts.window(),
        if out.complete() { "complete" } else { "INCOMPLETE" }
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Running and reporting

async fn run(opts: &Opts) -> Result<bool, String> {
    let ticks = clock_ticks();
    let mut ok = true;
    let modes: Vec<Mode> = opts.modes.iter().filter_map(|m| Mode::parse(m)).collect();
    for mode in modes {
        let mut rows = Vec::new();
        match mode {
            Mode::OwnDoc => {
                for round in 1..=opts.rounds {
                    for sessions in [opts.sessions, 1] {
                        let spec = Spec {
                            mode,
                            round,
                            sessions,
                            docs: opts.sessions,
                            rate: opts.rate,
                        };
                        rows.push(run_round(opts, spec, ticks).await?);
                        // Let the closed sockets clear before the next round opens thousands more.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                print_own(opts, &rows);
            }
            Mode::Filters => {
                for round in 1..=opts.filter_rounds {
                    let with = [opts.filter_sessions, 0];
                    let levels = if opts.filter_baseline {
                        &with[..]
                    } else {
                        &with[..1]
                    };
                    for &sessions in levels {
                        let spec = Spec {
                            mode,
                            round,
                            sessions,
                            docs: opts.seed_docs,
                            rate: opts.filter_rate,
                        };
                        rows.push(run_round(opts, spec, ticks).await?);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                print_filters(opts, &rows);
            }
        }
        ok &= rows.iter().all(RoundOut::complete);
    }
    Ok(ok)
}

fn acks(r: &RoundOut) -> String {
    let mut a = r.writer.ack_latencies.clone();
    a.sort_unstable();
    if a.is_empty() {
        return "n/a".into();
    }
    format!("{:.2} / {:.2}", percentile(&a, 50.0), percentile(&a, 99.0))
}

fn problems(r: &RoundOut) -> String {
    if r.complete() {
        return String::new();
    }
    let c = r.counts;
    let mut s = format!(
        " — **INCOMPLETE**: {} session(s) short{}; live: {} foreign, {} gaps, {} duplicates, {} unexpected, {} unparsed; at open: {} anomalies",
        r.not_done,
        r.failure.as_ref().map(|f| format!(" (e.g. {f})")).unwrap_or_default(),
        c.foreign,
        c.gaps,
        c.dups,
        c.unexpected,
        c.unparsed,
        r.open_counts.anomalies()
    );
    if r.writer.errors > 0 {
        let _ = write!(
            s,
            "; {} write error(s), e.g. {}",
            r.writer.errors,
            r.writer.first_error.as_deref().unwrap_or("?")
        );
    }
    if let Some(w) = &r.write_check {
        let _ = write!(s, "; {w}");
    }
    s
}

fn rss_per_session(r: &RoundOut) -> String {
    match r.rss {
        (Some(a), Some(b)) if r.spec.sessions > 0 => {
            format!("{:.1}", (b as f64 - a as f64) / r.spec.sessions as f64)
        }
        _ => "n/a".into(),
    }
}

fn print_own(opts: &Opts, rows: &[RoundOut]) {
    let n = opts.sessions;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### own-doc: {n} sessions, each `ids:[\"d<i>\"]`, vs 1 session (`d0`); {} writes/s round-robin over {n} documents; {} s measured after {} s warm-up; {} --durability {}\n",
        opts.rate,
        opts.seconds,
        opts.warmup,
        opts.server_bin.display(),
        opts.durability
    );
    let _ = writeln!(
        s,
        "| round | mode | sessions | writes/s achieved | server CPU µs/write | ratio to 1-subscriber | live deliveries expected | received | complete | server idle CPU (cores) | loadgen CPU (cores) | other CPU (cores) | write ack p50 / p99 ms | open s | server RSS KiB/session |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    let one = |round: usize| {
        rows.iter()
            .find(|r| r.spec.round == round && r.spec.sessions == 1)
            .map(RoundOut::us_per_write)
    };
    for r in rows {
        let ratio = one(r.spec.round).map_or("n/a".into(), |b| format!("{:.2}", r.us_per_write() / b));
        let _ =
            writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {:.3} | {:.2} | {:.2} | {} | {:.1} | {} |",
            r.spec.round,
            if r.spec.sessions == 1 { "own-doc, 1 subscriber" } else { "own-doc" },
            r.spec.sessions,
            r.writes_per_sec(),
            r.us_per_write(),
            ratio,
            r.expected.map_or("n/a".into(), |e| e.to_string()),
            r.counts.deliveries(),
            if r.complete() { "yes" } else { "**NO**" },
            r.idle.server / r.idle.secs,
            r.window.me / r.window.secs,
            r.window.other / r.window.secs,
            acks(r),
            r.open_time.as_secs_f64(),
            rss_per_session(r),
        );
    }
    let mean = |many: bool| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| (r.spec.sessions > 1) == many)
            .map(RoundOut::us_per_write)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (a, b) = (mean(true), mean(false));
    let _ = writeln!(
        s,
        "\nMean over rounds: {n} sessions {a:.1} µs/write, 1 subscriber {b:.1} µs/write: ratio **{:.2}** \
         (each row's ratio is to the 1-subscriber run of its round). Writes count when their 200 \
         arrives in the window; server CPU is utime + stime over the window.",
        a / b
    );
    for r in rows {
        let _ = writeln!(
            s,
            "- round {} {} sessions: seeded in {:.1} s; {} writes sent ({} late, at most {} in flight); \
             {} resync(s); last session done {:.0} ms after the writer{}",
            r.spec.round,
            r.spec.sessions,
            r.seed_time.as_secs_f64(),
            r.writer.sent,
            r.writer.late,
            r.writer.max_inflight,
            r.counts.resyncs,
            r.drain.as_secs_f64() * 1000.0,
            problems(r)
        );
    }
    print!("{s}");
}

fn print_filters(opts: &Opts, rows: &[RoundOut]) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### filters: {} sessions over {} filters `where: {{\"band\": i % {}}}`, {} documents, {} writes/s to random documents ({:.0} % move band, {:.0} % replace /n); {} s measured after {} s warm-up; --durability {}\n",
        opts.filter_sessions,
        opts.filters,
        opts.filters,
        opts.seed_docs,
        opts.filter_rate,
        (1.0 - opts.unfiltered_share) * 100.0,
        opts.unfiltered_share * 100.0,
        opts.seconds,
        opts.warmup,
        opts.durability
    );
    let _ = writeln!(
        s,
        "| round | sessions | filters | documents | writes/s achieved | deliveries in window | events / snapshots / removed | deliveries per write | server CPU µs/write | server CPU µs/delivery | complete | resyncs | server idle CPU (cores) | loadgen CPU (cores) | other CPU (cores) | write ack p50 / p99 ms | seed s | open s (snapshots) | server RSS KiB/session |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let c = r.counts;
        let per_delivery = if c.window() > 0 {
            format!("{:.2}", r.window.server * 1e6 / c.window() as f64)
        } else {
            "n/a".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} / {} / {} | {:.2} | {:.1} | {} | {} | {} | {:.3} | {:.2} | {:.2} | {} | {:.1} | {:.1} ({}) | {} |",
            r.spec.round,
            r.spec.sessions,
            opts.filters,
            r.spec.docs,
            r.writes_per_sec(),
            c.window(),
            c.w_events,
            c.w_snapshots,
            c.w_removed,
            c.window() as f64 / r.writer.acked_window.max(1) as f64,
            r.us_per_write(),
            per_delivery,
            if r.complete() { "yes" } else { "**NO**" },
            c.resyncs,
            r.idle.server / r.idle.secs,
            r.window.me / r.window.secs,
            r.window.other / r.window.secs,
            acks(r),
            r.seed_time.as_secs_f64(),
            r.open_time.as_secs_f64(),
            r.open_counts.snapshots,
            rss_per_session(r),
        );
    }
    let _ = writeln!(
        s,
        "\nDeliveries are counted at the sessions when received inside the window; writes when their \
         200 arrives inside it. `complete`: every session ended holding exactly its band's documents \
         at their final versions, with no gap, duplicate or unexpected message on the way."
    );
    for r in rows {
        let _ = writeln!(
            s,
            "- round {} {} sessions: seeded {} documents in {:.1} s ({:.0}/s); {} writes sent ({} late, at most {} in flight); {} live deliveries in all; last session done {:.0} ms after the writer{}",
            r.spec.round,
            r.spec.sessions,
            r.spec.docs,
            r.seed_time.as_secs_f64(),
            r.spec.docs as f64 / r.seed_time.as_secs_f64(),
            r.writer.sent,
            r.writer.late,
            r.writer.max_inflight,
            r.counts.deliveries(),
            r.drain.as_secs_f64() * 1000.0,
            problems(r)
        );
    }
    print!("{s}");
}
