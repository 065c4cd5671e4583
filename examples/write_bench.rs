//! Write benchmark: closed-loop PATCH writers against the real server, over loopback.
//!
//! ```sh
//! cargo build --release --bin eventsync --example write_bench
//! target/release/examples/write_bench --writers 1,16,64 --seconds 10
//! ```
//!
//! For each concurrency level it starts `target/release/eventsync` on `127.0.0.1:0` with a fresh data
//! directory (or uses `--url`), creates one document per writer (`games/bench-<i>`), runs a 1 s
//! warm-up and then a measured window in which every writer sends `PATCH /api/games/bench-<i>`
//! (`replace /gold`) over its own keep-alive HTTP/1.1 connection and waits for each answer before
//! sending the next. Afterwards (outside the window) it reads every document back and checks that its
//! version is exactly 1 + the number of writes acknowledged with 200 for it.
//!
//! The load generator runs on one thread with a hand-written HTTP/1.1 client, so it takes as little
//! CPU as possible from the server it shares the machine with; its own CPU time is reported too.

mod support;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{
    clock_ticks, micros_u32, parse_url, percentile, process_ticks, sample_cpu, server_args, server_command,
    temp_data_dir, CpuSample, ServerProc,
};

/// A request that takes longer than this is abandoned (counted as an error, connection reopened).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(name = "write_bench", about = "Closed-loop write benchmark for EventSync")]
struct Opts {
    /// Server binary to start (one fresh server and data directory per level).
    #[arg(long, default_value = "target/release/eventsync")]
    server_bin: PathBuf,
    /// Use an already running server instead of starting one (e.g. http://127.0.0.1:8080); its
    /// documents are then `games/bench-<run>-<i>`, new for every level.
    #[arg(long)]
    url: Option<String>,
    /// With --url: the server's pid, to report its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Passed to the started server: `full` (fsync per group commit) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    durability: String,
    /// Concurrency levels, run in sequence: one closed-loop writer (one connection) each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<usize>,
    /// Measured seconds per level.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up seconds per level, before the measured window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// All writers update one document (`bench-0`) instead of one each.
    #[arg(long)]
    same_doc: bool,
    /// Where the started server's temporary data directory is created [default: the system temp
    /// directory]. Put it on the disk you want to measure: fsync cost depends on it.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// A token sent as `Authorization: Bearer` on every request, for a server started with
    /// `--server-arg=--auth=jwt ...`.
    #[arg(long, env = "EVENTSYNC_BENCH_TOKEN")]
    token: Option<String>,
    /// Extra flag for the started server, repeatable (e.g. --server-arg=--max-batch=1024).
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Some(t) = &opts.token {
        let _ = support::TOKEN.set(t.clone());
    }
    if opts.writers.is_empty() || opts.writers.contains(&0) {
        eprintln!("write_bench: --writers needs levels of at least 1");
        return ExitCode::from(2);
    }
    if !(opts.seconds > 0.0 && opts.seconds <= 3600.0 && (0.0..=600.0).contains(&opts.warmup)) {
        eprintln!("write_bench: --seconds must be in (0, 3600] and --warmup in [0, 600]");
        return ExitCode::from(2);
    }
    // The load generator: one thread, so it competes for the 2 cores as little as possible.
    let rt = support::runtime();
    support::exit_code("write_bench", rt.block_on(run(opts)))
}

async fn run(opts: Opts) -> Result<bool, String> {
    let ticks = clock_ticks();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let mut all_verified = true;
    for &writers in &opts.writers {
        let server = match &opts.url {
            Some(url) => Server::external(url, opts.server_pid)?,
            None => Server::start(&opts, &opts.durability)?,
        };
        eprintln!(
            "write_bench: level {writers}: server {} (pid {}), {}",
            server.addr,
            server.pid.map_or("?".into(), |p| p.to_string()),
            server.data_note
        );
        let level = run_level(&opts, &server, writers).await;
        drop(server); // kills a server we started and removes its data directory
        let level = level?;
        eprintln!("write_bench: level {writers}: {}", level.verify_note);
        all_verified &= level.verified;
        rows.push(level);
    }
    print_report(&opts, &rows, cores, ticks);
    Ok(all_verified)
}

// ---------------------------------------------------------------------------------------------
// The server process

struct Server {
    addr: SocketAddr,
    pid: Option<u32>,
    data_note: String,
    /// The server we started, if any: stopped on drop, then its data directory is removed.
    _proc: Option<ServerProc>,
}

impl Server {
    fn external(url: &str, pid: Option<u32>) -> Result<Server, String> {
        let addr = parse_url(url).ok_or_else(|| format!("--url {url}: expected http://HOST:PORT"))?;
        Ok(Server {
            addr,
            pid,
            data_note: "external".into(),
            _proc: None,
        })
    }

    fn start(opts: &Opts, durability: &str) -> Result<Server, String> {
        let data = temp_data_dir("write-bench-", opts.tmp_dir.as_deref())?;
        let data_note = format!("data dir {} ({})", data.path().display(), fs_type(data.path()));
        let child = server_command(&opts.server_bin)
            .args(server_args(data.path(), durability, &opts.server_arg))
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {}: {e} (build it with `cargo build --release --bin eventsync`, or \
                     pass --server-bin / --url)",
                    opts.server_bin.display()
                )
            })?;
        let proc = ServerProc::wait_listening(child, Some(data))
            .map_err(|e| format!("{} {e}", opts.server_bin.display()))?;
        Ok(Server {
            addr: proc.addr,
            pid: Some(proc.pid),
            data_note,
            _proc: Some(proc),
        })
    }
}

/// The filesystem type under `path`, from /proc/mounts (longest matching mount point).
fn fs_type(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{ty} on {dev}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown filesystem".into(), |(_, s)| s)
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc

/// utime + stime of a process's threads whose name starts with `prefix`, in ticks.
fn thread_ticks(pid: u32, prefix: &str) -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            let tid = entry.file_name().to_string_lossy().into_owned();
            let ticks = process_ticks(&format!("{pid}/task/{tid}"));
            total = Some(total.unwrap_or(0) + ticks.unwrap_or(0));
        }
    }
    total
}

/// CPU ticks of the store's writer thread (`eventsync-writer`, named `eventsync-write` by the kernel).
fn writer_thread_ticks(server_pid: Option<u32>) -> Option<u64> {
    server_pid.and_then(|p| thread_ticks(p, "eventsync-writ"))
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time.

struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data read from the socket.
    filled: usize,
    /// Start of unconsumed data in `buf`.
    pos: usize,
    /// The last response's body, as a range of `buf` (or in `chunked` for a chunked body).
    body: (usize, usize),
    chunked: Option<Vec<u8>>,
    /// The server asked to close the connection after the last response.
    must_close: bool,
}

struct Head {
    status: u16,
    /// Offset in `buf` where the body starts.
    body_start: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Conn {
    async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: vec![0; 16 * 1024],
            filled: 0,
            pos: 0,
            body: (0, 0),
            chunked: None,
            must_close: false,
        })
    }

    async fn reopen(&mut self) -> io::Result<()> {
        *self = Conn::open(self.addr).await?;
        Ok(())
    }

    /// Sends one complete request and reads the whole response; returns its status.
    async fn roundtrip(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.must_close {
            self.reopen().await?;
        }
        // Keep only unconsumed bytes (there are none in a closed loop, but be exact).
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
        }
        self.stream.write_all(request).await?;
        let head = loop {
            if let Some(head) = self.parse_head()? {
                break head;
            }
            self.fill().await?;
        };
        self.chunked = None;
        if head.chunked {
            let body = self.read_chunked(head.body_start).await?;
            self.chunked = Some(body);
        } else {
            let len = head
                .content_length
                .ok_or_else(|| bad("response without Content-Length"))?;
            while self.filled - head.body_start < len {
                self.fill().await?;
            }
            self.body = (head.body_start, head.body_start + len);
            self.pos = head.body_start + len;
        }
        self.must_close = head.close;
        Ok(head.status)
    }

    fn body(&self) -> &[u8] {
        match &self.chunked {
            Some(b) => b,
            None => &self.buf[self.body.0..self.body.1],
        }
    }

    /// Reads more bytes from the socket into `buf`, growing it when full.
    async fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= 64 * 1024 * 1024 {
                return Err(bad("response larger than 64 MiB"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.filled..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        self.filled += n;
        Ok(())
    }

    /// The response head, once all of it is in `buf`.
    fn parse_head(&self) -> io::Result<Option<Head>> {
        let data = &self.buf[self.pos..self.filled];
        let Some(end) = find(data, b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = &data[..end];
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next().unwrap_or_default();
        if !status_line.starts_with(b"HTTP/1.") || status_line.len() < 12 {
            return Err(bad("malformed status line"));
        }
        let status = std::str::from_utf8(&status_line[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed status code"))?;
        let mut out = Head {
            status,
            body_start: self.pos + end + 4,
            content_length: None,
            chunked: false,
            close: status_line.starts_with(b"HTTP/1.0"),
        };
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("malformed Content-Length"))?;
                out.content_length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                out.chunked = contains_ignore_case(value, b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                out.close = contains_ignore_case(value, b"close");
            }
        }
        Ok(Some(out))
    }

    /// Decodes a chunked body starting at `start` (no trailers expected).
    async fn read_chunked(&mut self, start: usize) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut p = start;
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf[p..self.filled], b"\r\n") {
                    break p + i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[p..line_end]).map_err(|_| bad("chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            p = line_end + 2;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = find(&self.buf[p..self.filled], b"\r\n") {
                        if i == 0 {
                            self.pos = p + 2;
                            return Ok(body);
                        }
                        p += i + 2;
                    } else {
                        self.fill().await?;
                    }
                }
            }
            while self.filled - p < size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[p..p + size]);
            p += size + 2;
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Appends the decimal digits of `n` (no allocation).
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

// ---------------------------------------------------------------------------------------------
// One level

struct Level {
    writers: usize,
    /// 200 responses that completed inside the measured window.
    ok: u64,
    /// Other responses and failed requests that completed inside the window.
    errors: u64,
    window: Duration,
    /// Latencies (µs) of the window's 200 responses, sorted.
    latencies: Vec<u32>,
    cpu: (CpuSample, CpuSample),
    /// The store's writer thread, at the same two instants.
    writer_thread: (Option<u64>, Option<u64>),
    /// Non-200 statuses over the whole level (warm-up included), and transport failures.
    statuses: Vec<(u16, u64)>,
    io_errors: u64,
    verified: bool,
    verify_note: String,
}

#[derive(Default)]
struct WriterOut {
    /// 200 responses over the whole run (warm-up included): what verification counts.
    ok_total: u64,
    /// Requests whose outcome is unknown (transport failure or timeout): the write may have landed.
    unknown_total: u64,
    /// Non-200 responses over the whole run.
    rejected_total: u64,
    ok_window: u64,
    errors_window: u64,
    latencies: Vec<u32>,
    statuses: Vec<(u16, u64)>,
}

struct Window {
    t0: Instant,
    t1: Instant,
}

/// The ids of the level's documents: `bench-<i>` on a server we started (fresh per level); with
/// `--url`, `bench-<run>-<i>` (`<run>`: the start time in ms), so runs never collide.
fn doc_ids(opts: &Opts, docs: usize) -> Vec<String> {
    let run = opts.url.as_ref().map(|_| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{ms}-")
    });
    (0..docs)
        .map(|i| format!("bench-{}{i}", run.as_deref().unwrap_or("")))
        .collect()
}

async fn run_level(opts: &Opts, server: &Server, writers: usize) -> Result<Level, String> {
    let host = server.addr.to_string();
    let docs = if opts.same_doc { 1 } else { writers };
    let ids = doc_ids(opts, docs);

    // Create the documents (outside any measurement).
    let mut setup = Conn::open(server.addr)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    let auth = auth_line();
    for id in &ids {
        let body = format!(r#"{{"id":"{id}","gold":0,"log":0}}"#);
        let req = format!(
            "POST /api/games HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let status = setup
            .roundtrip(req.as_bytes())
            .await
            .map_err(|e| format!("creating {id}: {e}"))?;
        if status != 201 {
            return Err(format!(
                "creating {id}: status {status}: {} (the ids must not exist yet)",
                String::from_utf8_lossy(setup.body())
            ));
        }
    }
    let mut conns = Vec::with_capacity(writers);
    for _ in 0..writers {
        conns.push(
            Conn::open(server.addr)
                .await
                .map_err(|e| format!("connecting to {host}: {e}"))?,
        );
    }

    let start = Instant::now();
    let t0 = start + Duration::from_secs_f64(opts.warmup);
    let window = Rc::new(Window {
        t0,
        t1: t0 + Duration::from_secs_f64(opts.seconds),
    });
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let id = ids[if opts.same_doc { 0 } else { i }].clone();
            let w = Rc::clone(&window);
            local.spawn_local(writer(i, writers, conn, host.clone(), id, w))
        })
        .collect();
    let server_pid = server.pid;
    let w = Rc::clone(&window);
    let cpu = local
        .run_until(async move {
            tokio::time::sleep_until(w.t0.into()).await;
            let before = (sample_cpu(server_pid), writer_thread_ticks(server_pid));
            tokio::time::sleep_until(w.t1.into()).await;
            let after = (sample_cpu(server_pid), writer_thread_ticks(server_pid));
            let mut outs = Vec::with_capacity(handles.len());
            for h in handles {
                outs.push(h.await.expect("writer task"));
            }
            ((before, after), outs)
        })
        .await;
    let ((before, after), outs) = cpu;

    // Merge.
    let mut latencies = Vec::new();
    let (mut ok, mut errors, mut io_errors) = (0, 0, 0);
    let mut statuses: Vec<(u16, u64)> = Vec::new();
    for o in &outs {
        ok += o.ok_window;
        errors += o.errors_window;
        io_errors += o.unknown_total;
        latencies.extend_from_slice(&o.latencies);
        for &(s, n) in &o.statuses {
            match statuses.iter_mut().find(|(x, _)| *x == s) {
                Some(e) => e.1 += n,
                None => statuses.push((s, n)),
            }
        }
    }
    latencies.sort_unstable();

    // Verify, outside the window: every acknowledged write landed exactly once.
    let mut expected_ok = vec![0u64; docs];
    let mut unknown = vec![0u64; docs];
    for (i, o) in outs.iter().enumerate() {
        let d = if opts.same_doc { 0 } else { i };
        expected_ok[d] += o.ok_total;
        // A non-200 response may still have committed (a 503 from the request timeout fires after
        // the write was queued); a transport failure may too.
        unknown[d] += o.unknown_total + o.rejected_total;
    }
    let mut verified = true;
    let mut problems = Vec::new();
    let mut acknowledged = 0;
    let auth = auth_line();
    for (d, id) in ids.iter().enumerate() {
        acknowledged += expected_ok[d];
        let req = format!("GET /api/games/{id} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n");
        let status = match setup.roundtrip(req.as_bytes()).await {
            Ok(s) => s,
            Err(_) => {
                setup = Conn::open(server.addr)
                    .await
                    .map_err(|e| format!("reconnecting to verify: {e}"))?;
                setup
                    .roundtrip(req.as_bytes())
                    .await
                    .map_err(|e| format!("reading {id}: {e}"))?
            }
        };
        let version = serde_json::from_slice::<Value>(setup.body())
            .ok()
            .and_then(|v| v.get("version").and_then(Value::as_u64));
        let want = 1 + expected_ok[d];
        match (status, version) {
            (200, Some(v)) if v == want => {}
            (200, Some(v)) if unknown[d] > 0 && v > want && v <= want + unknown[d] => {
                // Acknowledged writes all landed; some unacknowledged ones did too.
            }
            (200, Some(v)) => {
                verified = false;
                problems.push(format!(
                    "{id}: version {v}, expected {want} (1 + {} acknowledged)",
                    expected_ok[d]
                ));
            }
            _ => {
                verified = false;
                problems.push(format!("{id}: GET answered {status}"));
            }
        }
    }
    let verify_note = if verified {
        let unknown_total: u64 = unknown.iter().sum();
        format!(
            "verified: {docs} doc(s), each at version 1 + its acknowledged writes ({acknowledged} \
             acknowledged writes, warm-up included, each landed exactly once{})",
            if unknown_total > 0 {
                format!("; {unknown_total} unacknowledged request(s) allowed to have landed")
            } else {
                String::new()
            }
        )
    } else {
        let shown: Vec<_> = problems.iter().take(5).cloned().collect();
        format!(
            "VERIFICATION FAILED on {} of {docs} doc(s): {}",
            problems.len(),
            shown.join("; ")
        )
    };

    Ok(Level {
        writers,
        ok,
        errors,
        window: window.t1 - window.t0,
        latencies,
        cpu: (before.0, after.0),
        writer_thread: (before.1, after.1),
        statuses,
        io_errors,
        verified,
        verify_note,
    })
}

/// One closed-loop writer: PATCH, wait for the whole response, repeat, until the window ends.
async fn writer(
    i: usize,
    writers: usize,
    mut conn: Conn,
    host: String,
    id: String,
    w: Rc<Window>,
) -> WriterOut {
    let mut out = WriterOut {
        latencies: Vec::with_capacity(1 << 16),
        ..WriterOut::default()
    };
    let auth = auth_line();
    let head = format!(
        "PATCH /api/games/{id} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json-patch+json\r\nContent-Length: "
    );
    const BODY_START: &[u8] = br#"[{"op":"replace","path":"/gold","value":"#;
    const BODY_END: &[u8] = b"}]";
    let mut req: Vec<u8> = Vec::with_capacity(head.len() + 128);
    let mut digits = Vec::with_capacity(24);
    let mut counter: u64 = 0;
    loop {
        if Instant::now() >= w.t1 {
            break;
        }
        // A value no other write to the same document uses (so no write is a no-op, even with
        // --same-doc), and never 0, the initial value.
        counter += 1;
        let value = counter * writers as u64 + i as u64 + 1;
        digits.clear();
        push_u64(&mut digits, value);
        req.clear();
        req.extend_from_slice(head.as_bytes());
        push_u64(
            &mut req,
            (BODY_START.len() + digits.len() + BODY_END.len()) as u64,
        );
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(BODY_START);
        req.extend_from_slice(&digits);
        req.extend_from_slice(BODY_END);

        let sent = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, conn.roundtrip(&req)).await;
        let done = Instant::now();
        let in_window = done >= w.t0 && done < w.t1;
        match result {
            Ok(Ok(200)) => {
                out.ok_total += 1;
                if in_window {
                    out.ok_window += 1;
                    out.latencies.push(micros_u32(done - sent));
                }
            }
            Ok(Ok(status)) => {
                out.rejected_total += 1;
                out.errors_window += u64::from(in_window);
                match out.statuses.iter_mut().find(|(s, _)| *s == status) {
                    Some(e) => e.1 += 1,
                    None => out.statuses.push((status, 1)),
                }
            }
            Ok(Err(_)) | Err(_) => {
                out.unknown_total += 1;
                out.errors_window += u64::from(in_window);
                // Reconnect (with a short pause on failure) until the window is over.
                while Instant::now() < w.t1 {
                    match conn.reopen().await {
                        Ok(()) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Report

fn mean_ms(latencies: &[u32]) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    latencies.iter().map(|&l| u64::from(l)).sum::<u64>() as f64 / latencies.len() as f64 / 1000.0
}

fn print_report(opts: &Opts, rows: &[Level], cores: usize, ticks: f64) {
    let mut s = String::new();
    let target = match &opts.url {
        Some(u) => format!("external server {u}"),
        None => format!("{} --durability {}", opts.server_bin.display(), opts.durability),
    };
    let _ = writeln!(
        s,
        "\n### Writes: {target}, {}, {} s measured after {} s warm-up per level\n",
        if opts.same_doc {
            "all writers on one document"
        } else {
            "one document per writer"
        },
        opts.seconds,
        opts.warmup
    );
    let _ = writeln!(
        s,
        "| writers | ok | errors | updates/s | mean ms | p50 ms | p90 ms | p99 ms | max ms | server CPU s | server µs/update | writer thread busy (cores) | loadgen CPU s | loadgen µs/update | other CPU (cores) | iowait (cores) |"
    );
    let _ = writeln!(
        s,
        "|--------:|---:|-------:|----------:|--------:|-------:|-------:|-------:|-------:|-------------:|-----------------:|---------------------------:|--------------:|------------------:|------------------:|---------------:|"
    );
    for r in rows {
        let (a, b) = r.cpu;
        let secs = (b.at - a.at).as_secs_f64();
        let server = a.server.zip(b.server).map(|(x, y)| (y - x) as f64 / ticks);
        let (wa, wb) = r.writer_thread;
        let writer = wa.zip(wb).map(|(x, y)| (y - x) as f64 / ticks / secs);
        let me = a.me.zip(b.me).map(|(x, y)| (y - x) as f64 / ticks);
        let machine = a.machine.zip(b.machine).map(|(x, y)| {
            (
                (y.0.saturating_sub(x.0)) as f64 / ticks,
                (y.1.saturating_sub(x.1)) as f64 / ticks,
            )
        });
        let per = |cpu: Option<f64>| match cpu {
            Some(c) if r.ok > 0 => format!("{:.1}", c * 1e6 / r.ok as f64),
            _ => "n/a".into(),
        };
        let secs_of = |cpu: Option<f64>| cpu.map_or("n/a".into(), |c| format!("{c:.2}"));
        // Busy time of everything else on the machine (other builds, tests, the kernel's own work
        // not charged to either process), in cores.
        let other = match (machine, me) {
            (Some((busy, _)), Some(me)) => {
                format!("{:.2}", ((busy - me - server.unwrap_or(0.0)) / secs).max(0.0))
            }
            _ => "n/a".into(),
        };
        let iowait = machine.map_or("n/a".into(), |(_, io)| format!("{:.2}", io / secs));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            r.writers,
            r.ok,
            r.errors,
            r.ok as f64 / r.window.as_secs_f64(),
            mean_ms(&r.latencies),
            percentile(&r.latencies, 50.0),
            percentile(&r.latencies, 90.0),
            percentile(&r.latencies, 99.0),
            percentile(&r.latencies, 100.0),
            secs_of(server),
            per(server),
            writer.map_or("n/a".into(), |w| format!("{w:.2}")),
            secs_of(me),
            per(me),
            other,
            iowait,
        );
    }
    let _ = writeln!(s);
    for r in rows {
        let (a, b) = r.cpu;
        let server = a.server.zip(b.server).map(|(x, y)| (y - x) as f64 / ticks);
        let me = a.me.zip(b.me).map(|(x, y)| (y - x) as f64 / ticks);
        if let (Some(server), Some(me)) = (server, me) {
            if r.ok > 0 && server + me > 0.0 {
                let per = (server + me) * 1e6 / r.ok as f64;
                let _ = writeln!(
                    s,
                    "- {} writer(s): server + load generator = {per:.1} CPU µs per update, so {cores} \
                     fully used cores would allow at most ~{:.0} updates/s at this cost; \
                     Little's law: {} writers / {:.2} ms mean latency = {:.0}/s",
                    r.writers,
                    cores as f64 * 1e6 / per,
                    r.writers,
                    mean_ms(&r.latencies),
                    r.writers as f64 / (mean_ms(&r.latencies) / 1000.0),
                );
            }
        }
    }
    for r in rows {
        let _ = write!(s, "- {} writer(s): {}", r.writers, r.verify_note);
        if !r.statuses.is_empty() || r.io_errors > 0 {
            let list: Vec<String> = r.statuses.iter().map(|(st, n)| format!("{n}× {st}")).collect();
            let _ = write!(
                s,
                "; non-200 answers (whole level): [{}], transport failures/timeouts: {}",
                list.join(", "),
                r.io_errors
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "\nLatency: from writing the request to reading the whole response, 200s only. `other CPU`: \
         machine-wide busy time minus the server's and the load generator's, in cores of the {cores} \
         available (noise from other processes). `writer thread busy`: CPU time of the store's single \
         writer thread per second of the window (1.00 = a whole core, its ceiling). CPU from /proc \
         (tick = {:.0} ms).",
        1000.0 / ticks
    );
    print!("{s}");
}

/// The `Authorization` header line for `--token`, or nothing.
fn auth_line() -> String {
    support::TOKEN
        .get()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default()
}
