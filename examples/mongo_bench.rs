//! MongoDB backend benchmark: two EventSync nodes on one database — durable write throughput, and
//! how long a write on one node takes to reach a WebSocket subscriber on the other.
//!
//! ```sh
//! cargo build --release --bin eventsync --example mongo_bench
//! target/release/examples/mongo_bench                  # 32 writers over 1000 docs; 50 writes/s for latency
//! ```
//!
//! The database is the one `MONGODB_URI` names (its path replaced by a fresh database name), or
//! else the MongoDB-wire-compatible stand-in the tests use (SecantusDB, in memory, started as a
//! child process on a free loopback port; `./test.sh` installs it into `.tools/secantus`). Then:
//!
//! 1. start two nodes, A and B: `target/release/eventsync --listen 127.0.0.1:0 --data-dir <temp>
//!    --store mongodb://127.0.0.1:PORT/<fresh db>?directConnection=true` (same database);
//! 2. **writes** (`--phases both,one`): create `--docs` documents `bench/b-<i>` `{"n":0}`, then run
//!    `--writers` closed-loop writers, each sending `PATCH /api/bench/b-<random>`
//!    (`application/merge-patch+json`, `{"n":<unique counter>}`) and waiting for the answer (an
//!    acknowledged write is a committed majority/journaled transaction) before the next; writer `i`
//!    uses node A if `i` is even and B if odd (`both`), or always A (`one`). `--warmup` s, then
//!    `--seconds` s measured: throughput counts 200s completed in the window, latency is from
//!    sending the request to having the whole answer. Afterwards the log must have grown by exactly
//!    the number of acknowledged writes, and both nodes' change-stream followers must reach its end;
//! 3. **delivery latency** (`--phases latency`): create `--latency-docs` documents `lat/l-<i>`
//!    `{"t":0}`, open one WebSocket subscriber on B and one on A (`hello` subscribing to `lat`, wait
//!    for `synced`), then a writer on its own thread sends `PATCH /api/lat/l-<k mod docs>`
//!    `{"t":<µs>}` to **A** at `--rate` per second, open loop (each PATCH on its own task), for
//!    `--warmup` + `--latency-seconds` s. `<µs>` is the send time since an `Instant` shared with the
//!    subscribers (one process, one clock); latency = the subscriber's receive time − `<µs>`, for
//!    writes sent in the window. Every acknowledged write (by the `seq` in its answer) must reach
//!    both subscribers exactly once.
//!
//! CPU times of the nodes, the stand-in, this load generator and the whole machine are read from
//! /proc at the start and the end of each measured window. Every child process is killed at exit
//! (also when this process dies: `PR_SET_PDEATHSIG`). Exit status: 0 when every check passed, 1
//! when one failed, 2 on a setup error.

mod support;

#[path = "../tests/common/mongo.rs"]
#[allow(dead_code)]
mod mongo;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use support::{
    clock_ticks, http_client, machine_ticks, micros_u32, percentile, process_ticks, server_command,
    temp_data_dir, ws_connect, ServerProc, Ws,
};

/// A request that takes longer than this fails (counted as an error).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes' followers may take to publish the end of the log after a write phase.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60);
/// After the latency writer stops: how long the subscribers may take to receive the last event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A subscriber's connect + hello → synced.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The values the write phases set, unique over the whole run: a merge patch that sets the value a
/// document already has changes nothing, and writes no event.
static NEXT_VALUE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Parser)]
#[command(
    name = "mongo_bench",
    about = "Two EventSync nodes on one MongoDB database: durable writes/s and cross-node delivery latency"
)]
struct Opts {
    /// EventSync server binary to start (twice).
    #[arg(long, default_value = "target/release/eventsync")]
    server_bin: PathBuf,
    /// What to run, in order: `both` (writers spread over both nodes), `one` (all writers on node
    /// A), `latency` (delivery latency, cross-node and same-node).
    #[arg(long, value_delimiter = ',', default_value = "both,one,latency")]
    phases: Vec<String>,
    /// Closed-loop writers in the write phases.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Documents the writers update (each write picks one at random).
    #[arg(long, default_value_t = 1000)]
    docs: usize,
    /// Measured seconds per write phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before each measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Writes per second in the latency phase (open loop, all on node A).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Measured seconds of the latency phase.
    #[arg(long, default_value_t = 10.0)]
    latency_seconds: f64,
    /// Documents the latency writer updates in turn.
    #[arg(long, default_value_t = 10)]
    latency_docs: usize,
    /// Extra flag for both nodes, repeatable (e.g. --server-arg=--max-batch=256).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    WritesBoth,
    WritesOne,
    Latency,
}

impl Phase {
    fn parse(s: &str) -> Option<Phase> {
        match s {
            "both" => Some(Phase::WritesBoth),
            "one" => Some(Phase::WritesOne),
            "latency" => Some(Phase::Latency),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let mut phases = Vec::new();
    for p in &opts.phases {
        match Phase::parse(p) {
            Some(p) => phases.push(p),
            None => {
                eprintln!("mongo_bench: unknown phase {p:?} (both, one, latency)");
                return ExitCode::from(2);
            }
        }
    }
    let secs_ok = |s: f64| s > 0.0 && s <= 300.0;
    if !(secs_ok(opts.seconds) && secs_ok(opts.latency_seconds) && (0.0..=60.0).contains(&opts.warmup)) {
        eprintln!("mongo_bench: --seconds and --latency-seconds in (0, 300], --warmup in [0, 60]");
        return ExitCode::from(2);
    }
    let sizes_ok = (1..=1024).contains(&opts.writers)
        && (1..=100_000).contains(&opts.docs)
        && (1..=1000).contains(&opts.latency_docs);
    if !(sizes_ok && opts.rate > 0.0 && opts.rate <= 2000.0) {
        eprintln!(
            "mongo_bench: --writers in [1, 1024], --docs in [1, 100000], --latency-docs in [1, 1000], \
             --rate in (0, 2000]"
        );
        return ExitCode::from(2);
    }
    let rt = support::runtime();
    let result = rt.block_on(run(&opts, &phases));
    drop(rt);
    support::exit_code("mongo_bench", result)
}

async fn run(opts: &Opts, phases: &[Phase]) -> Result<bool, String> {
    let ticks = clock_ticks();
    let database = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    let started = Instant::now();
    // The launcher panics when it cannot start the stand-in: on a thread of its own, that is an error.
    let uri = std::thread::spawn(move || mongo::uri(&database))
        .join()
        .map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            msg.unwrap_or_else(|| "starting the MongoDB stand-in failed".into())
        })?;
    let external = std::env::var("MONGODB_URI").is_ok_and(|u| !u.trim().is_empty());
    eprintln!(
        "mongo_bench: {} at {uri} ({:.1} s)",
        if external { "MONGODB_URI" } else { "stand-in" },
        started.elapsed().as_secs_f64()
    );
    let a = start_node(opts, &uri)?;
    let b = start_node(opts, &uri)?;
    eprintln!(
        "mongo_bench: node A {} (pid {}), node B {} (pid {})",
        a.addr, a.pid, b.addr, b.pid
    );
    let pids = Pids {
        nodes: [a.pid, b.pid],
    };
    let nodes = [a.addr, b.addr];

    let mut write_rows = Vec::new();
    let mut latency = None;
    let mut all_ok = true;
    let mut docs_created = false;
    for &phase in phases {
        match phase {
            Phase::WritesBoth | Phase::WritesOne => {
                if !docs_created {
                    create_docs(nodes, ("bench", "b"), opts.docs, r#""n":0"#, opts.writers).await?;
                    docs_created = true;
                }
                let row = write_phase(opts, phase, nodes, &pids, ticks).await?;
                all_ok &= row.verified;
                write_rows.push(row);
            }
            Phase::Latency => {
                let l = latency_phase(opts, nodes, &pids, ticks).await?;
                all_ok &= l.complete();
                latency = Some(l);
            }
        }
    }
    print_report(opts, &uri, external, &write_rows, latency.as_ref());
    drop((a, b));
    Ok(all_ok)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Starts one node on the shared database; it dies with this process.
fn start_node(opts: &Opts, uri: &str) -> Result<ServerProc, String> {
    let data = temp_data_dir("mongo-bench-", None)?;
    let mut cmd = server_command(&opts.server_bin);
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data.path())
        .arg("--store")
        .arg(uri)
        .args(&opts.server_arg);
    // SIGKILL for the node when this process's main thread (which spawns the nodes) exits.
    mongo::die_with_this_thread(&mut cmd);
    let child = cmd.spawn().map_err(|e| {
        format!(
            "starting {}: {e} (build it with `cargo build --release --bin eventsync`)",
            opts.server_bin.display()
        )
    })?;
    ServerProc::wait_listening(child, Some(data)).map_err(|e| format!("{} {e}", opts.server_bin.display()))
}

struct Pids {
    nodes: [u32; 2],
}

impl Pids {
    /// This process's children other than the nodes (and their children): the stand-in, if we
    /// started it.
    fn stand_in(&self) -> Vec<u32> {
        let me = std::process::id();
        let mut parent_of = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let ppid = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(ppid) = ppid {
                    parent_of.insert(pid, ppid);
                }
            }
        }
        let mut out: Vec<u32> = parent_of
            .iter()
            .filter(|(pid, ppid)| **ppid == me && !self.nodes.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        let mut i = 0;
        while i < out.len() {
            let p = out[i];
            out.extend(parent_of.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
            i += 1;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

#[derive(Clone)]
struct Cpu {
    at: Instant,
    nodes: [Option<u64>; 2],
    /// `None` when there is no stand-in child (MONGODB_URI).
    stand_in: Option<u64>,
    me: Option<u64>,
    machine: Option<(u64, u64)>,
}

fn sample(pids: &Pids) -> Cpu {
    let stand_in = pids.stand_in();
    Cpu {
        at: Instant::now(),
        nodes: pids.nodes.map(|p| process_ticks(&p.to_string())),
        stand_in: (!stand_in.is_empty()).then(|| {
            stand_in
                .iter()
                .filter_map(|p| process_ticks(&p.to_string()))
                .sum()
        }),
        me: process_ticks("self"),
        machine: machine_ticks(),
    }
}

/// CPU seconds over a window.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    secs: f64,
    a: f64,
    b: f64,
    stand_in: f64,
    me: f64,
    other: f64,
}

fn cpu_use(x: &Cpu, y: &Cpu, ticks: f64) -> CpuUse {
    let d = |p: Option<u64>, q: Option<u64>| {
        p.zip(q)
            .map_or(f64::NAN, |(p, q)| q.saturating_sub(p) as f64 / ticks)
    };
    let (a, b) = (d(x.nodes[0], y.nodes[0]), d(x.nodes[1], y.nodes[1]));
    let stand_in = d(x.stand_in, y.stand_in);
    let me = d(x.me, y.me);
    let machine = d(x.machine.map(|m| m.0), y.machine.map(|m| m.0));
    let known = a + b + me + if stand_in.is_nan() { 0.0 } else { stand_in };
    CpuUse {
        secs: (y.at - x.at).as_secs_f64(),
        a,
        b,
        stand_in,
        me,
        other: (machine - known).max(0.0),
    }
}

impl CpuUse {
    fn cores(&self, s: f64) -> f64 {
        s / self.secs
    }
}

// ---------------------------------------------------------------------------------------------
// Setup requests

fn doc_url(addr: SocketAddr, collection: &str, id: &str) -> String {
    format!("http://{addr}/api/{collection}/{id}")
}

/// Creates `<collection>/<prefix>-<i>` for i < n, `concurrency` at a time, alternating nodes.
async fn create_docs(
    nodes: [SocketAddr; 2],
    (collection, prefix): (&str, &str),
    n: usize,
    body_fields: &str,
    concurrency: usize,
) -> Result<(), String> {
    let started = Instant::now();
    let client = http_client()?;
    let results: Vec<Result<(), String>> = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let resp = client
                    .post(format!("http://{}/api/{collection}", nodes[i % 2]))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"id":"{prefix}-{i}",{body_fields}}}"#))
                    .send()
                    .await
                    .map_err(|e| format!("creating {collection}/{prefix}-{i}: {e}"))?;
                let status = resp.status();
                if status != reqwest::StatusCode::CREATED {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(format!("creating {collection}/{prefix}-{i}: {status}: {body}"));
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.clamp(1, 64))
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    eprintln!(
        "mongo_bench: created {n} documents in {collection} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `GET /api/health` → (last_seq, published_seq).
async fn health(client: &reqwest::Client, addr: SocketAddr) -> Result<(u64, u64), String> {
    let body: Value = client
        .get(format!("http://{addr}/api/health"))
        .send()
        .await
        .map_err(|e| format!("health of {addr}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("health of {addr}: {e}"))?;
    let field = |k: &str| {
        body[k]
            .as_u64()
            .ok_or_else(|| format!("health of {addr}: no {k} in {body}"))
    };
    Ok((field("last_seq")?, field("published_seq")?))
}

/// Waits until both nodes have published `seq`.
async fn wait_published(client: &reqwest::Client, nodes: [SocketAddr; 2], seq: u64) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let mut behind = None;
        for addr in nodes {
            let (_, published) = health(client, addr).await?;
            if published < seq {
                behind = Some((addr, published));
            }
        }
        match behind {
            None => return Ok(()),
            Some((addr, published)) if started.elapsed() > FOLLOW_TIMEOUT => {
                return Err(format!(
                    "node {addr} published only up to {published} of {seq} after {FOLLOW_TIMEOUT:?}"
                ))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write phases

#[derive(Default)]
struct WriterOut {
    /// Latencies (µs) of 200s completed inside the window.
    window: Vec<u32>,
    /// 200s, whole run.
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn closed_loop_writer(
    client: reqwest::Client,
    addr: SocketAddr,
    docs: usize,
    seed: u64,
    t0: Instant,
    t1: Instant,
) -> WriterOut {
    let mut out = WriterOut::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while Instant::now() < t1 {
        let d = rng.random_range(0..docs);
        let n = NEXT_VALUE.fetch_add(1, Ordering::Relaxed) + 1;
        let sent = Instant::now();
        let result = client
            .patch(doc_url(addr, "bench", &format!("b-{d}")))
            .header("content-type", "application/merge-patch+json")
            .body(format!(r#"{{"n":{n}}}"#))
            .send()
            .await;
        let error = match result {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                // The whole answer: the write is acknowledged once it is read.
                let _ = resp.bytes().await;
                let done = Instant::now();
                out.ok += 1;
                if done >= t0 && done < t1 {
                    out.window.push(micros_u32(done - sent));
                }
                None
            }
            Ok(resp) => {
                let status = resp.status();
                Some(format!("{status}: {}", resp.text().await.unwrap_or_default()))
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = error {
            out.errors += 1;
            out.first_error.get_or_insert(e);
        }
    }
    out
}

struct WriteRow {
    phase: Phase,
    writers: usize,
    ok_window: usize,
    errors: u64,
    /// Sorted µs.
    latencies: Vec<u32>,
    cpu: CpuUse,
    /// Log growth vs acknowledged writes (whole run).
    log_growth: u64,
    acknowledged: u64,
    /// How long after the last answer both nodes had published the end of the log.
    follow_lag: Duration,
    verified: bool,
}

async fn write_phase(
    opts: &Opts,
    phase: Phase,
    nodes: [SocketAddr; 2],
    pids: &Pids,
    ticks: f64,
) -> Result<WriteRow, String> {
    let setup = http_client()?;
    let (start_seq, _) = health(&setup, nodes[0]).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(opts.writers)
        .build()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let t0 = start + Duration::from_secs_f64(opts.warmup);
    let t1 = t0 + Duration::from_secs_f64(opts.seconds);
    eprintln!(
        "mongo_bench: writes ({}), {} writers over {} documents: {} s warm-up + {} s",
        phase_name(phase),
        opts.writers,
        opts.docs,
        opts.warmup,
        opts.seconds
    );
    let handles: Vec<_> = (0..opts.writers)
        .map(|i| {
            let addr = match phase {
                Phase::WritesBoth => nodes[i % 2],
                _ => nodes[0],
            };
            tokio::spawn(closed_loop_writer(
                client.clone(),
                addr,
                opts.docs,
                i as u64 + 1,
                t0,
                t1,
            ))
        })
        .collect();
    tokio::time::sleep_until(t0.into()).await;
    let c0 = sample(pids);
    tokio::time::sleep_until(t1.into()).await;
    let c1 = sample(pids);
    let mut latencies = Vec::new();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for h in handles {
        let out = h.await.map_err(|e| format!("writer task: {e}"))?;
        latencies.extend(out.window);
        ok += out.ok;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    let answered = Instant::now();
    if let Some(e) = &first_error {
        eprintln!("mongo_bench: {errors} write(s) failed, e.g. {e}");
    }
    latencies.sort_unstable();
    let (end_seq, _) = health(&setup, nodes[0]).await?;
    wait_published(&setup, nodes, end_seq).await?;
    let follow_lag = answered.elapsed();
    let log_growth = end_seq - start_seq;
    // A failed request may still have committed (e.g. a timeout): then only "at least" holds.
    let verified = if errors == 0 {
        log_growth == ok
    } else {
        log_growth >= ok && log_growth <= ok + errors
    };
    eprintln!(
        "mongo_bench: {} acknowledged writes, the log grew by {log_growth}: {}; both nodes published \
         its end {:.0} ms after the last answer",
        ok,
        if verified { "ok" } else { "MISMATCH" },
        follow_lag.as_secs_f64() * 1000.0
    );
    Ok(WriteRow {
        phase,
        writers: opts.writers,
        ok_window: latencies.len(),
        errors,
        latencies,
        cpu: cpu_use(&c0, &c1, ticks),
        log_growth,
        acknowledged: ok,
        follow_lag,
        verified,
    })
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::WritesBoth => "writers spread over A and B",
        Phase::WritesOne => "all writers on A",
        Phase::Latency => "latency",
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery latency

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20))
}

/// Connects, sends `hello` subscribing to `lat`, reads until `synced`.
async fn open_subscriber(addr: SocketAddr, client_id: &str) -> Result<Ws, String> {
    let open = async {
        let mut ws = ws_connect(addr, "/sync/ws", ws_config()).await?;
        let hello = format!(
            r#"{{"type":"hello","client_id":"{client_id}","subscribe":["lat"],"state_vector":{{}}}}"#
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
        .unwrap_or_else(|_| Err(format!("{client_id}: no synced within {OPEN_TIMEOUT:?}")))
}

#[derive(Default)]
struct SubOut {
    /// seq → (the `t` in the event, receive time in µs since the epoch).
    events: HashMap<u64, (u64, u64)>,
    duplicates: u64,
    out_of_order: u64,
    error: Option<String>,
}

/// Reads events until it has seen `until` (sent on the watch once the writer is done) or the
/// deadline passes.
async fn subscriber(mut ws: Ws, epoch: Instant, mut until: tokio::sync::watch::Receiver<u64>) -> SubOut {
    let mut out = SubOut::default();
    let mut last_seq = 0;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let target = *until.borrow();
        if target != 0 && last_seq >= target {
            break;
        }
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            changed = until.changed(), if deadline.is_none() => {
                if changed.is_ok() {
                    deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                } else {
                    deadline = Some(tokio::time::Instant::now());
                }
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                out.error = Some("did not receive the last event in time".into());
                break;
            }
        };
        let now = epoch.elapsed().as_micros() as u64;
        match msg {
            Some(Ok(Message::Text(t))) => {
                if !t.starts_with(r#"{"type":"event""#) {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    out.error
                        .get_or_insert_with(|| format!("unparsable event: {}", t.as_str()));
                    continue;
                };
                let seq = v["seq"].as_u64().unwrap_or(0);
                let sent = v["patch"]
                    .as_array()
                    .and_then(|ops| ops.iter().find(|op| op["path"] == "/t"))
                    .and_then(|op| op["value"].as_u64());
                let Some(sent) = sent else {
                    out.error
                        .get_or_insert_with(|| format!("event without /t: {}", t.as_str()));
                    continue;
                };
                if seq <= last_seq {
                    out.out_of_order += 1;
                }
                last_seq = last_seq.max(seq);
                if out.events.insert(seq, (sent, now)).is_some() {
                    out.duplicates += 1;
                }
            }
            Some(Ok(Message::Close(c))) => {
                out.error = Some(format!("closed by the server: {c:?}"));
                break;
            }
            Some(Ok(_)) => {}
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

/// One acknowledged latency write.
struct Acked {
    seq: u64,
    t: u64,
    ack_us: u32,
    in_window: bool,
}

struct LatencyWriterOut {
    acked: Vec<Acked>,
    sent: u64,
    late: u64,
    errors: u64,
    first_error: Option<String>,
}

/// One PATCH: the `seq` of its event and the round trip.
async fn latency_patch(client: reqwest::Client, url: String, t: u64) -> Result<(u64, Duration), String> {
    let sent = Instant::now();
    let resp = client
        .patch(url)
        .header("content-type", "application/merge-patch+json")
        .body(format!(r#"{{"t":{t}}}"#))
        .send()
        .await
        .map_err(|e| format!("PATCH: {e}"))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "PATCH answered {status}: {}",
            resp.text().await.unwrap_or_default()
        ));
    }
    let body: Value = resp.json().await.map_err(|e| format!("PATCH answer: {e}"))?;
    let took = sent.elapsed();
    body.pointer("/event/seq")
        .and_then(Value::as_u64)
        .map(|s| (s, took))
        .ok_or_else(|| format!("PATCH answer without event.seq: {body}"))
}

/// Open loop at `rate` from `start` to `end`, to node `addr`.
async fn latency_writer(
    addr: SocketAddr,
    docs: usize,
    rate: f64,
    epoch: Instant,
    (start, t0, t1): (Instant, Instant, Instant),
) -> LatencyWriterOut {
    let mut out = LatencyWriterOut {
        acked: Vec::new(),
        sent: 0,
        late: 0,
        errors: 0,
        first_error: None,
    };
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(e);
            return out;
        }
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    let mut last_t = 0;
    for k in 0u32.. {
        let due = start + interval * k;
        if due >= t1 {
            break;
        }
        let now = Instant::now();
        if now < due {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > interval {
            out.late += 1;
        }
        let now = Instant::now();
        let t = (now - epoch).as_micros() as u64;
        let t = t.max(last_t + 1);
        last_t = t;
        let in_window = now >= t0 && now < t1;
        let url = doc_url(addr, "lat", &format!("l-{}", k as usize % docs));
        tasks.push((t, in_window, tokio::spawn(latency_patch(client.clone(), url, t))));
        out.sent += 1;
    }
    for (t, in_window, h) in tasks {
        match h.await {
            Ok(Ok((seq, took))) => out.acked.push(Acked {
                seq,
                t,
                ack_us: micros_u32(took),
                in_window,
            }),
            Ok(Err(e)) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("PATCH task: {e}"));
            }
        }
    }
    out
}

struct LatencyRow {
    subscriber: &'static str,
    /// Acknowledged writes sent in the window / of them, received.
    expected: usize,
    received: usize,
    /// Sorted µs.
    latencies: Vec<u32>,
    missing_total: usize,
    duplicates: u64,
    out_of_order: u64,
    wrong_payload: u64,
    error: Option<String>,
}

struct Latency {
    rate: f64,
    sent: u64,
    late: u64,
    errors: u64,
    /// Sorted PATCH round trips (µs) of writes sent in the window.
    ack: Vec<u32>,
    rows: Vec<LatencyRow>,
    cpu: CpuUse,
}

impl Latency {
    fn complete(&self) -> bool {
        self.errors == 0
            && self.rows.iter().all(|r| {
                r.error.is_none()
                    && r.missing_total == 0
                    && r.duplicates == 0
                    && r.out_of_order == 0
                    && r.wrong_payload == 0
                    && r.received == r.expected
            })
    }
}

async fn latency_phase(
    opts: &Opts,
    nodes: [SocketAddr; 2],
    pids: &Pids,
    ticks: f64,
) -> Result<Latency, String> {
    create_docs(nodes, ("lat", "l"), opts.latency_docs, r#""t":0"#, 8).await?;
    // B: the other node; A: the node written to.
    let ws_b = open_subscriber(nodes[1], "lat-on-b").await?;
    let ws_a = open_subscriber(nodes[0], "lat-on-a").await?;
    let epoch = Instant::now();
    let (until_tx, until_rx) = tokio::sync::watch::channel(0u64);
    let sub_b = tokio::spawn(subscriber(ws_b, epoch, until_rx.clone()));
    let sub_a = tokio::spawn(subscriber(ws_a, epoch, until_rx));

    let start = Instant::now() + Duration::from_millis(200);
    let t0 = start + Duration::from_secs_f64(opts.warmup);
    let t1 = t0 + Duration::from_secs_f64(opts.latency_seconds);
    eprintln!(
        "mongo_bench: latency: {}/s to A, subscribers on B and A: {} s warm-up + {} s",
        opts.rate, opts.warmup, opts.latency_seconds
    );
    // The writer has a thread and runtime of its own: its sends must not wait behind the
    // subscribers' reads.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (addr, docs, rate) = (nodes[0], opts.latency_docs, opts.rate);
    std::thread::Builder::new()
        .name("latency-writer".into())
        .spawn(move || {
            let rt = support::runtime();
            let out = rt.block_on(latency_writer(addr, docs, rate, epoch, (start, t0, t1)));
            let _ = done_tx.send(out);
        })
        .map_err(|e| format!("starting the writer thread: {e}"))?;
    tokio::time::sleep_until(t0.into()).await;
    let c0 = sample(pids);
    tokio::time::sleep_until(t1.into()).await;
    let c1 = sample(pids);
    let writer = done_rx
        .await
        .map_err(|_| "the latency writer thread died".to_string())?;
    if let Some(e) = &writer.first_error {
        eprintln!("mongo_bench: {} latency write(s) failed, e.g. {e}", writer.errors);
    }
    let last = writer.acked.iter().map(|a| a.seq).max().unwrap_or(0);
    // 0 would mean "not yet": with nothing acknowledged the subscribers wait for seq 1, and time out.
    let _ = until_tx.send(last.max(1));
    let outs = [
        (
            "B (other node)",
            sub_b.await.map_err(|e| format!("subscriber: {e}"))?,
        ),
        (
            "A (same node)",
            sub_a.await.map_err(|e| format!("subscriber: {e}"))?,
        ),
    ];
    let mut ack: Vec<u32> = writer
        .acked
        .iter()
        .filter(|a| a.in_window)
        .map(|a| a.ack_us)
        .collect();
    ack.sort_unstable();
    let mut rows = Vec::new();
    for (name, out) in outs {
        let mut latencies = Vec::new();
        let (mut expected, mut missing_total, mut wrong_payload) = (0, 0, 0);
        for a in &writer.acked {
            expected += usize::from(a.in_window);
            match out.events.get(&a.seq) {
                Some(&(t, _)) if t != a.t => wrong_payload += 1,
                Some(&(_, received)) => {
                    if a.in_window {
                        latencies.push(received.saturating_sub(a.t).min(u64::from(u32::MAX)) as u32);
                    }
                }
                None => missing_total += 1,
            }
        }
        latencies.sort_unstable();
        if let Some(e) = &out.error {
            eprintln!("mongo_bench: subscriber on {name}: {e}");
        }
        rows.push(LatencyRow {
            subscriber: name,
            expected,
            received: latencies.len(),
            latencies,
            missing_total,
            duplicates: out.duplicates,
            out_of_order: out.out_of_order,
            wrong_payload,
            error: out.error,
        });
    }
    Ok(Latency {
        rate: opts.rate,
        sent: writer.sent,
        late: writer.late,
        errors: writer.errors,
        ack,
        rows,
        cpu: cpu_use(&c0, &c1, ticks),
    })
}

// ---------------------------------------------------------------------------------------------
// Report

fn ms_stats(sorted: &[u32]) -> String {
    format!(
        "{:.1} | {:.1} | {:.1} | {:.1}",
        percentile(sorted, 50.0),
        percentile(sorted, 90.0),
        percentile(sorted, 99.0),
        percentile(sorted, 100.0)
    )
}

fn cores(cpu: &CpuUse) -> String {
    let f = |s: f64| {
        if s.is_finite() {
            format!("{:.2}", cpu.cores(s))
        } else {
            "n/a".into()
        }
    };
    format!(
        "{} | {} | {} | {} | {}",
        f(cpu.a),
        f(cpu.b),
        f(cpu.stand_in),
        f(cpu.me),
        f(cpu.other)
    )
}

fn print_report(opts: &Opts, uri: &str, external: bool, writes: &[WriteRow], latency: Option<&Latency>) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### MongoDB backend, two nodes: {} on {} ({uri})\n",
        opts.server_bin.display(),
        if external {
            "MONGODB_URI"
        } else {
            "the SecantusDB stand-in"
        },
    );
    if !writes.is_empty() {
        let _ = writeln!(
            s,
            "Durable writes: {} closed-loop writers, merge-patch updates of {} random documents, {} s \
             after {} s warm-up. CPU in cores over the window.\n",
            opts.writers, opts.docs, opts.seconds, opts.warmup
        );
        let _ = writeln!(
            s,
            "| writers on | writers | ok in window | errors | writes/s | p50 ms | p90 ms | p99 ms | max ms | \
             node A CPU | node B CPU | stand-in CPU | loadgen CPU | other CPU | log growth = acknowledged | \
             followers caught up (ms after last answer) |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        );
        for r in writes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} = {} {} | {:.0} |",
                match r.phase {
                    Phase::WritesBoth => "A and B",
                    _ => "A only",
                },
                r.writers,
                r.ok_window,
                r.errors,
                r.ok_window as f64 / opts.seconds,
                ms_stats(&r.latencies),
                cores(&r.cpu),
                r.log_growth,
                r.acknowledged,
                if r.verified { "(yes)" } else { "(NO)" },
                r.follow_lag.as_secs_f64() * 1000.0
            );
        }
    }
    if let Some(l) = latency {
        let _ = writeln!(
            s,
            "\nDelivery latency: {}/s merge-patch writes to node A (open loop, {} s after {} s warm-up; \
             {} sent, {} late, {} failed); write answered p50 / p99 {:.1} / {:.1} ms. Latency = send of \
             the PATCH on A → its `event` read by the subscriber.\n",
            l.rate,
            opts.latency_seconds,
            opts.warmup,
            l.sent,
            l.late,
            l.errors,
            percentile(&l.ack, 50.0),
            percentile(&l.ack, 99.0)
        );
        let _ = writeln!(
            s,
            "| subscriber on | writes in window | received | p50 ms | p90 ms | p99 ms | max ms | missing (whole run) | duplicates | out of order |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &l.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.subscriber,
                r.expected,
                r.received,
                ms_stats(&r.latencies),
                r.missing_total,
                r.duplicates,
                r.out_of_order
            );
        }
        let _ = writeln!(
            s,
            "\nCPU over the latency window (cores): node A / node B / stand-in / loadgen / other: {}",
            cores(&l.cpu).replace(" | ", " / ")
        );
    }
    print!("{s}");
}
