//! Catch-up benchmark: how long a reconnecting WebSocket client that is B events behind on one
//! document takes to be current, for histories of N events (and whether that grows with N).
//!
//! ```sh
//! cargo build --release --bin eventsync --examples
//! target/release/examples/catchup_bench --history 1000,10000,100000 --behind 10,1000,10000
//! ```
//!
//! It starts `target/release/eventsync --listen 127.0.0.1:0 --data-dir <fresh temp dir>` once, creates
//! `games/h` (`{"n":0,"pad":"xxx…"}`, about `--doc-bytes` of JSON), and grows its history in stages:
//! for each N in `--history` (ascending) it sends PATCHes (`replace /n`, over `--writers` keep-alive
//! connections in parallel) until the document is at version N (the create is version 1), then
//! measures, for each B in `--behind` (capped at N − 1), `--reconnects` fresh connections:
//!
//! - `vector`: `hello` with `state_vector: {"games": {"h": N − B}}` (what a client that kept its
//!   vector sends; the server also saves it as the client's vector);
//! - `resume`: `hello` without a vector, for a client id whose saved vector is N − B (the server
//!   loads it; nothing is written).
//!
//! The time is from sending `hello` (on an open WebSocket: TCP connect and upgrade are not counted)
//! to receiving `synced`. Nothing is written while measuring.

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use support::{
    clock_ticks, cpu_delta, http_client, micros_u32, percentile, sample_cpu, server_args, server_command,
    temp_data_dir, ws_connect, CpuDelta, ServerProc, Ws,
};

/// One catch-up (hello → synced), or one connect.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole history build of one stage.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
#[command(
    name = "catchup_bench",
    about = "Catch-up benchmark for EventSync's WebSocket sync"
)]
struct Opts {
    /// Server binary to start.
    #[arg(long, default_value = "target/release/eventsync")]
    server_bin: PathBuf,
    /// History lengths N (the document's version), built in ascending order on one document.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    history: Vec<u64>,
    /// How far behind the measured clients are (capped at N − 1: a client at version 1).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    behind: Vec<u64>,
    /// Measured reconnects per row.
    #[arg(long, default_value_t = 50)]
    reconnects: usize,
    /// Unmeasured reconnects before each row.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Parallel keep-alive connections building the history.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Approximate size of the document's JSON body (a `pad` string makes up the rest). It decides
    /// where events stop being cheaper than a snapshot: (body + 80) / 160 + 1 events.
    #[arg(long, default_value_t = 4096)]
    doc_bytes: usize,
    /// Passed to the server: `full` (fsync per group commit) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    durability: String,
    /// Where the server's temporary data directory is created [default: the system temp directory].
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Extra flag for the server, repeatable.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

fn main() -> ExitCode {
    let mut opts = Opts::parse();
    opts.history.sort_unstable();
    opts.history.dedup();
    if opts.history.is_empty() || opts.history[0] < 2 || opts.history.iter().any(|&n| n > 10_000_000) {
        eprintln!("catchup_bench: --history values must be in [2, 10000000]");
        return ExitCode::from(2);
    }
    if opts.behind.is_empty()
        || opts.behind.contains(&0)
        || opts.reconnects == 0
        || opts.reconnects > 100_000
        || opts.writers == 0
        || opts.writers > 1024
    {
        eprintln!("catchup_bench: --behind values ≥ 1, --reconnects in [1, 100000], --writers in [1, 1024]");
        return ExitCode::from(2);
    }
    let rt = support::runtime();
    support::exit_code("catchup_bench", rt.block_on(run(opts)))
}

// ---------------------------------------------------------------------------------------------
// The server process

fn start_server(opts: &Opts) -> Result<ServerProc, String> {
    let data = temp_data_dir("catchup-bench-", opts.tmp_dir.as_deref())?;
    let child = server_command(&opts.server_bin)
        .args(server_args(data.path(), &opts.durability, &opts.server_arg))
        .spawn()
        .map_err(|e| {
            format!(
                "starting {}: {e} (build it with `cargo build --release --bin eventsync`)",
                opts.server_bin.display()
            )
        })?;
    ServerProc::wait_listening(child, Some(data)).map_err(|e| format!("{} {e}", opts.server_bin.display()))
}

// ---------------------------------------------------------------------------------------------
// Building the history

/// The document's current version.
async fn doc_version(client: &reqwest::Client, addr: SocketAddr) -> Result<u64, String> {
    let resp = client
        .get(format!("http://{addr}/api/games/h"))
        .send()
        .await
        .map_err(|e| format!("GET games/h: {e}"))?;
    let body: serde_json::Value = resp.json().await.map_err(|e| format!("GET games/h: {e}"))?;
    body.get("version")
        .or_else(|| body.pointer("/document/version"))
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| format!("GET games/h: no version in {body}"))
}

/// PATCHes `games/h` until it is at version `target`, `writers` requests in flight.
async fn grow(
    client: &reqwest::Client,
    addr: SocketAddr,
    from: u64,
    target: u64,
    writers: usize,
) -> Result<(), String> {
    let url = format!("http://{addr}/api/games/h");
    let patches = target - from;
    let results: Vec<Result<(), String>> = futures::stream::iter(0..patches)
        .map(|k| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                // A value no earlier write used, so that no PATCH is a no-op.
                let body = format!(r#"[{{"op":"replace","path":"/n","value":{}}}]"#, from + k + 1);
                let resp = client
                    .patch(url)
                    .header("content-type", "application/json-patch+json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("PATCH: {e}"))?;
                if resp.status() != reqwest::StatusCode::OK {
                    return Err(format!("PATCH answered {}", resp.status()));
                }
                let _ = resp.bytes().await;
                Ok(())
            }
        })
        .buffer_unordered(writers)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Catching up

/// A WebSocket to the sync endpoint, taking messages of up to 64 MiB.
async fn sync_ws(addr: SocketAddr) -> Result<Ws, String> {
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    ws_connect(addr, "/sync/ws", config).await
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Received {
    snapshots: u64,
    events: u64,
    /// Bytes of the snapshot and event messages.
    bytes: u64,
}

/// One reconnect: connect (untimed), `hello`, read until `synced`. Returns the time from sending the
/// hello to reading `synced`, and what came before it.
async fn catch_up(addr: SocketAddr, hello: &str) -> Result<(Duration, Received), String> {
    let mut ws = tokio::time::timeout(STEP_TIMEOUT, sync_ws(addr))
        .await
        .map_err(|_| "connect timed out".to_string())??;
    let timed = async {
        let started = Instant::now();
        ws.send(Message::text(hello))
            .await
            .map_err(|e| format!("hello: {e}"))?;
        let mut got = Received::default();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if t.starts_with(r#"{"type":"synced""#) {
                        return Ok((started.elapsed(), got));
                    } else if t.starts_with(r#"{"type":"snapshot""#) {
                        got.snapshots += 1;
                        got.bytes += t.len() as u64;
                    } else if t.starts_with(r#"{"type":"event""#) {
                        got.events += 1;
                        got.bytes += t.len() as u64;
                    } else {
                        return Err(format!("unexpected: {}", t.as_str()));
                    }
                }
                Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("connection closed".into()),
            }
        }
    };
    let r = tokio::time::timeout(STEP_TIMEOUT, timed)
        .await
        .map_err(|_| format!("no synced within {STEP_TIMEOUT:?}"))?;
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    r
}

fn hello(client_id: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!(
            r#"{{"type":"hello","client_id":"{client_id}","subscribe":["games"],"state_vector":{{"games":{{"h":{v}}}}}}}"#
        ),
        None => format!(r#"{{"type":"hello","client_id":"{client_id}","subscribe":["games"]}}"#),
    }
}

struct Row {
    history: u64,
    behind: u64,
    /// The `--behind` values this row answers (several when capped at N − 1).
    requested: Vec<u64>,
    mode: &'static str,
    /// Sorted, µs.
    times: Vec<u32>,
    received: Received,
    /// Reconnects that received something else than the first one did.
    inconsistent: usize,
    cpu: CpuDelta,
}

async fn measure(
    server: &ServerProc,
    n: u64,
    behind: u64,
    resume: bool,
    opts: &Opts,
    ticks: f64,
) -> Result<Row, String> {
    let version = n - behind;
    let resume_id = format!("resume-{n}-{behind}");
    if resume {
        // Prime: the server saves this vector for the client; later hellos without one resume it.
        catch_up(server.addr, &hello(&resume_id, Some(version))).await?;
    }
    let mut times = Vec::with_capacity(opts.reconnects);
    let mut first: Option<Received> = None;
    let mut inconsistent = 0;
    let mut a = sample_cpu(server.pid);
    for i in 0..opts.warmup + opts.reconnects {
        if i == opts.warmup {
            a = sample_cpu(server.pid);
        }
        let text = if resume {
            hello(&resume_id, None)
        } else {
            hello(&format!("vector-{n}-{behind}-{i}"), Some(version))
        };
        let (took, got) = catch_up(server.addr, &text).await?;
        if i < opts.warmup {
            continue;
        }
        times.push(micros_u32(took));
        match first {
            None => first = Some(got),
            Some(f) if f != got => inconsistent += 1,
            Some(_) => {}
        }
    }
    let cpu = cpu_delta(a, sample_cpu(server.pid), ticks);
    times.sort_unstable();
    Ok(Row {
        history: n,
        behind,
        requested: Vec::new(),
        mode: if resume { "resume" } else { "vector" },
        times,
        received: first.unwrap_or_default(),
        inconsistent,
        cpu,
    })
}

async fn run(opts: Opts) -> Result<bool, String> {
    let ticks = clock_ticks();
    let server = start_server(&opts)?;
    eprintln!("catchup_bench: server pid {} on {}", server.pid, server.addr);
    let client = http_client()?;
    let pad = "x".repeat(opts.doc_bytes.saturating_sub(40).max(1));
    let body = format!(r#"{{"id":"h","n":0,"pad":"{pad}"}}"#);
    let resp = client
        .post(format!("http://{}/api/games", server.addr))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("creating games/h: {e}"))?;
    if resp.status() != reqwest::StatusCode::CREATED {
        return Err(format!("creating games/h: {}", resp.status()));
    }
    let mut version = doc_version(&client, server.addr).await?;
    let mut builds = Vec::new();
    let mut rows = Vec::new();
    let mut ok = true;
    for &n in &opts.history {
        let started = Instant::now();
        let a = sample_cpu(server.pid);
        tokio::time::timeout(
            BUILD_TIMEOUT,
            grow(&client, server.addr, version, n, opts.writers),
        )
        .await
        .map_err(|_| format!("building the history to {n} took over {BUILD_TIMEOUT:?}"))??;
        let took = started.elapsed();
        let cpu = cpu_delta(a, sample_cpu(server.pid), ticks);
        let now = doc_version(&client, server.addr).await?;
        if now != n {
            return Err(format!("games/h is at version {now} after building to {n}"));
        }
        eprintln!(
            "catchup_bench: history {version} → {n} in {:.1} s ({:.0} PATCH/s, other CPU {:.2} cores)",
            took.as_secs_f64(),
            (n - version) as f64 / took.as_secs_f64(),
            cpu.other / cpu.secs
        );
        builds.push((version, n, took, cpu));
        version = n;
        let mut behinds: Vec<u64> = opts.behind.iter().map(|&b| b.min(n - 1)).collect();
        behinds.sort_unstable();
        behinds.dedup();
        for &b in &behinds {
            let requested: Vec<u64> = opts
                .behind
                .iter()
                .copied()
                .filter(|&r| r.min(n - 1) == b)
                .collect();
            for resume in [false, true] {
                let mut row = measure(&server, n, b, resume, &opts, ticks).await?;
                row.requested = requested.clone();
                eprintln!(
                    "catchup_bench: N={n} behind={b} {}: p50 {:.2} ms p99 {:.2} ms ({} snapshot(s), {} event(s))",
                    row.mode,
                    percentile(&row.times, 50.0),
                    percentile(&row.times, 99.0),
                    row.received.snapshots,
                    row.received.events
                );
                ok &= row.inconsistent == 0;
                rows.push(row);
            }
        }
    }
    drop(server);
    print_report(&opts, &builds, &rows);
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// Report

type Build = (u64, u64, Duration, CpuDelta);

fn print_report(opts: &Opts, builds: &[Build], rows: &[Row]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Catch-up: {} --durability {}, one document of ~{} bytes, {} reconnects per row (after {} unmeasured)\n",
        opts.server_bin.display(),
        opts.durability,
        opts.doc_bytes,
        opts.reconnects,
        opts.warmup
    );
    let _ = writeln!(
        s,
        "| history N | behind | hello | received | bytes | p50 ms | p90 ms | p99 ms | max ms | mean ms | server CPU ms / catch-up | other CPU (cores) |"
    );
    let _ = writeln!(s, "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let mean =
            r.times.iter().map(|&t| u64::from(t)).sum::<u64>() as f64 / r.times.len().max(1) as f64 / 1000.0;
        let what = match (r.received.snapshots, r.received.events) {
            (0, 0) => "nothing".to_string(),
            (s, 0) => format!("{s} snapshot"),
            (0, e) => format!("{e} events"),
            (s, e) => format!("{s} snapshot + {e} events"),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}{} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.history,
            r.behind,
            r.mode,
            what,
            if r.inconsistent > 0 {
                format!(" (**{} differed**)", r.inconsistent)
            } else {
                String::new()
            },
            r.received.bytes,
            percentile(&r.times, 50.0),
            percentile(&r.times, 90.0),
            percentile(&r.times, 99.0),
            percentile(&r.times, 100.0),
            mean,
            r.cpu.server * 1000.0 / r.times.len().max(1) as f64,
            r.cpu.other / r.cpu.secs,
        );
    }
    let _ = writeln!(s);
    for (from, to, took, cpu) in builds {
        let _ = writeln!(
            s,
            "- history {from} → {to}: {} PATCHes over {} connections in {:.1} s ({:.0}/s, server {:.0} \
             CPU µs per PATCH, other CPU {:.2} cores)",
            to - from,
            opts.writers,
            took.as_secs_f64(),
            (to - from) as f64 / took.as_secs_f64(),
            cpu.server * 1e6 / (to - from) as f64,
            cpu.other / cpu.secs
        );
    }

    // Targets.
    let _ = writeln!(s, "\nTargets:");
    let vector_rows = || rows.iter().filter(|r| r.mode == "vector");
    for r in vector_rows().filter(|r| r.behind >= 9_999) {
        let (p50, p99) = (percentile(&r.times, 50.0), percentile(&r.times, 99.0));
        let _ = writeln!(
            s,
            "- N = {}, {} behind: current in p50 {p50:.2} ms / p99 {p99:.2} ms; < 5 ms: **{}** (p50), **{}** (p99)",
            r.history,
            r.behind,
            if p50 < 5.0 { "met" } else { "NOT met" },
            if p99 < 5.0 { "met" } else { "NOT met" },
        );
    }
    let mut requested: Vec<u64> = opts.behind.clone();
    requested.sort_unstable();
    requested.dedup();
    for b in requested {
        let same: Vec<&Row> = vector_rows().filter(|r| r.requested.contains(&b)).collect();
        if same.len() < 2 {
            continue;
        }
        let list: Vec<String> = same
            .iter()
            .map(|r| {
                format!(
                    "N={} ({} behind): {:.2} ms",
                    r.history,
                    r.behind,
                    percentile(&r.times, 50.0)
                )
            })
            .collect();
        let (lo, hi) = (same[0], same[same.len() - 1]);
        let ratio = percentile(&hi.times, 50.0) / percentile(&lo.times, 50.0);
        let _ = writeln!(
            s,
            "- `--behind {b}`, `vector` p50 by history length: {} (×{ratio:.2} from N={} to N={})",
            list.join(", "),
            lo.history,
            hi.history
        );
    }
    let _ = writeln!(
        s,
        "\nTime: from sending `hello` on an open WebSocket to reading `synced` (TCP connect and \
         upgrade not counted), one client at a time, nothing else running against the server. \
         `vector`: the hello carries the client's vector (the server saves it before planning: a \
         store write, group-committed); `resume`: no vector, the server loads the one it saved. \
         `bytes`: the snapshot/event messages (not `synced`). `server CPU ms / catch-up`: server CPU \
         over the row's measured reconnects (connect and upgrade included) / reconnects, 10 ms ticks, \
         so rough. `other CPU`: machine busy time minus server and load generator, in cores of the \
         {cores} available (noise)."
    );
    print!("{s}");
}
