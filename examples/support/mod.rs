//! Support code shared by the benchmark examples (`write_bench`, `fanout_bench`, `catchup_bench`,
//! `scope_bench`, ...):
//! starting a server as a child process, CPU accounting from /proc, latency percentiles and the
//! clients they have in common. Each example includes it with `mod support;`.

// Each example uses only part of this module (`write_bench` has no WebSocket or reqwest client).
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// How long a started process may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Running

/// If this process may not open `need` files, re-runs it through `sh -c 'ulimit -n N; exec ...'`
/// (N: `nofile`, at least `need`), once (`reexec_env` marks the re-run); `Some` is the re-run's
/// exit code, `None` means go on here.
pub fn raise_own_nofile(name: &str, reexec_env: &str, need: u64, nofile: u64) -> Option<ExitCode> {
    let soft = open_files_limit().unwrap_or(u64::MAX);
    if soft >= need || std::env::var_os(reexec_env).is_some() {
        if soft < need {
            eprintln!("{name}: warning: open-files limit {soft} < {need} needed");
        }
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let limit = nofile.max(need);
    eprintln!("{name}: open-files limit {soft} < {need}: re-running under `ulimit -n {limit}`");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {limit} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\""
        ))
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(reexec_env, "1")
        .status();
    Some(match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(2).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("{name}: re-running under sh: {e}");
            ExitCode::from(2)
        }
    })
}

/// The soft "Max open files" of this process, from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Connections opened in parallel, `(index, result)` in any order: the opened ones in index order,
/// or an error naming how many of them failed (`what`: "sessions") and the first three (`label`).
pub fn all_opened<T>(
    mut opened: Vec<(usize, Result<T, String>)>,
    what: &str,
    label: impl Fn(usize) -> String,
) -> Result<Vec<T>, String> {
    let n = opened.len();
    opened.sort_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for (i, r) in opened {
        match r {
            Ok(c) => out.push(c),
            Err(e) => failures.push(format!("{}: {e}", label(i))),
        }
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} of {n} {what} failed to open, e.g. {}",
            failures.len(),
            failures[..failures.len().min(3)].join("; ")
        ));
    }
    Ok(out)
}

/// A `current_thread` tokio runtime: the load generator runs on one thread, so that it takes as
/// little CPU as possible from the server it shares the machine with.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The exit status of a benchmark run: 0 when every check passed, 1 when one failed, 2 on an error
/// (printed as `NAME: error`).
pub fn exit_code(name: &str, result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes

/// A fresh temporary data directory named `<prefix>…`, in `tmp_dir` or the system temp directory.
pub fn temp_data_dir(prefix: &str, tmp_dir: Option<&Path>) -> Result<tempfile::TempDir, String> {
    match tmp_dir {
        Some(dir) => tempfile::Builder::new().prefix(prefix).tempdir_in(dir),
        None => tempfile::Builder::new().prefix(prefix).tempdir(),
    }
    .map_err(|e| format!("creating the data directory: {e}"))
}

/// EventSync's flags for a benchmark server: `--listen 127.0.0.1:0 --data-dir DATA --durability D`,
/// then `extra`.
pub fn server_args(data: &Path, durability: &str, extra: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.into(),
        "--durability".into(),
        durability.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// A command for a process that prints `listening on http://ADDR`: stdin null, stdout piped (for
/// [`ServerProc::wait_listening`]), stderr inherited, and `EVENTSYNC_LOG=warn` unless it is set.
pub fn server_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if std::env::var_os("EVENTSYNC_LOG").is_none() {
        cmd.env("EVENTSYNC_LOG", "warn");
    }
    cmd
}

/// A started server (or relay) process, killed when dropped; its data directory is removed after.
pub struct ServerProc {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Option<Child>,
    /// Kept open: the relay exits when it closes.
    _stdin: Option<ChildStdin>,
    _data: Option<tempfile::TempDir>,
}

impl ServerProc {
    /// Waits for the child's `listening on http://ADDR` line (its stdout must be piped), then keeps
    /// draining its stdout so it never sees EPIPE. On failure the child is stopped (and `data`
    /// removed); the error is `did not print … within …`.
    pub fn wait_listening(mut child: Child, data: Option<tempfile::TempDir>) -> Result<ServerProc, String> {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.trim().strip_prefix("listening on ").and_then(parse_url) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let mut proc = ServerProc {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: child.id(),
            _stdin: child.stdin.take(),
            child: Some(child),
            _data: data,
        };
        // On failure `proc` is dropped here, which stops the process.
        proc.addr = rx
            .recv_timeout(STARTUP_TIMEOUT)
            .map_err(|_| format!("did not print `listening on http://...` within {STARTUP_TIMEOUT:?}"))?;
        Ok(proc)
    }

    /// The data directory, if this process has one.
    pub fn data_dir(&self) -> Option<&Path> {
        self._data.as_ref().map(tempfile::TempDir::path)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `_stdin` and `_data` (the temporary directory) go after the process is gone.
    }
}

/// `http://127.0.0.1:8080` (a trailing `/` or path is ignored) → the socket address.
pub fn parse_url(s: &str) -> Option<SocketAddr> {
    let rest = s.trim().strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    hostport.replace("localhost", "127.0.0.1").parse().ok()
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on every common Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads, live and exited), in ticks. `pid` may also be
/// `self` or `<pid>/task/<tid>`.
pub fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Machine-wide (busy, iowait) ticks summed over all CPUs, from /proc/stat.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already inside user)
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0);
    Some((busy, *v.get(4)?))
}

/// CPU times at one instant: the server's, this process's and the machine's, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at: Instant,
    pub server: Option<u64>,
    pub me: Option<u64>,
    /// Machine-wide (busy, iowait).
    pub machine: Option<(u64, u64)>,
}

/// Samples the CPU times of the server `server_pid` (if known), this process and the machine.
pub fn sample_cpu(server_pid: impl Into<Option<u32>>) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        server: server_pid.into().and_then(|p| process_ticks(&p.to_string())),
        me: process_ticks("self"),
        machine: machine_ticks(),
    }
}

/// CPU seconds between two samples: (server, load generator, everything else), and the seconds.
/// A time that could not be read is NaN.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuDelta {
    pub secs: f64,
    pub server: f64,
    pub me: f64,
    /// Machine busy time minus server and load generator (noise from other processes).
    pub other: f64,
    /// Machine-wide iowait (CPU idle with disk I/O outstanding; fsync stalls show here).
    pub iowait: f64,
}

pub fn cpu_delta(a: CpuSample, b: CpuSample, ticks: f64) -> CpuDelta {
    let d = |x: Option<u64>, y: Option<u64>| {
        x.zip(y)
            .map_or(f64::NAN, |(x, y)| y.saturating_sub(x) as f64 / ticks)
    };
    let (server, me) = (d(a.server, b.server), d(a.me, b.me));
    let machine = d(a.machine.map(|m| m.0), b.machine.map(|m| m.0));
    let iowait = d(a.machine.map(|m| m.1), b.machine.map(|m| m.1));
    CpuDelta {
        secs: (b.at - a.at).as_secs_f64(),
        server,
        me,
        other: (machine - server - me).max(0.0),
        iowait,
    }
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Latencies

/// The `p`th percentile (nearest rank) of sorted µs latencies, in ms; NaN when there are none.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    f64::from(sorted[rank.min(sorted.len()) - 1]) / 1000.0
}

/// A duration in µs, saturated to `u32`.
pub fn micros_u32(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

// ---------------------------------------------------------------------------------------------
// Clients

/// The HTTP client for setup requests: no proxy, TCP_NODELAY, 30 s timeout.
/// The token the benchmarks present (`--token`, for a server with `--auth jwt`), if any.
pub static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `,"token":"..."` for a hello when a token is set, else nothing.
pub fn hello_token() -> String {
    TOKEN
        .get()
        .map(|t| format!(r#","token":{}"#, serde_json::Value::from(t.as_str())))
        .unwrap_or_default()
}

pub fn http_client() -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = TOKEN.get() {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| e.to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `ws://ADDR/PATH` over a TCP_NODELAY connection.
pub async fn ws_connect(addr: SocketAddr, path: &str, config: WebSocketConfig) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    Ok(ws)
}
