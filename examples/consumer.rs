//! Consumer: N sync clients in parallel, each with its own replica, reconnecting on its own and
//! dropping duplicates; optionally every unique event stored in SQLite; periodic stats.
//!
//! ```sh
//! cargo run --release --example consumer -- --url http://127.0.0.1:8080 --clients 10 \
//!     --transport ws --subscribe games --sqlite /tmp/events.db --seconds 60
//! ```
//!
//! Every `--stats-every` seconds it prints, summed over the clients: events applied, duplicates
//! dropped, snapshots, gaps, resyncs, (re)connects, how many clients are live and the range of
//! their positions. `--sqlite` stores each applied event in `events(seq PRIMARY KEY, client,
//! collection, id, version, op, patch, ts)` with `INSERT OR IGNORE` (one row per event, whichever
//! client stored it first; the counts of rows inserted and ignored are printed).
//!
//! Runs until Ctrl-C or `--seconds`; then closes the clients, prints the final stats (and whether
//! replicas at the same position agree) and exits 1 if any replica applied an event twice or is
//! inconsistent (0 otherwise).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use eventsync::model::Event;
use eventsync_client::{Change, Client, ClientOptions, ClientStats, Counters, Status, Transport};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "consumer", about = "Parallel EventSync sync clients with stats")]
struct Opts {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Clients to run in parallel.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// `ws` (WebSocket) or `sse` (Server-Sent Events).
    #[arg(long, default_value = "ws", value_parser = ["ws", "sse"])]
    transport: String,
    /// Collections to follow (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', default_value = "games")]
    subscribe: Vec<String>,
    /// Store each unique event in this SQLite file.
    #[arg(long)]
    sqlite: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 5.0)]
    stats_every: f64,
    /// Client ids are `<prefix>-<i>` [default: consumer-<random>].
    #[arg(long)]
    client_prefix: Option<String>,
    /// Keep each client's replica in `<dir>/<client id>.json` (resumes from it on the next run).
    #[arg(long)]
    persist_dir: Option<PathBuf>,
}

/// What the change readers count.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    lagged: AtomicU64,
}

/// One row for SQLite.
struct Row {
    client: Arc<str>,
    event: Arc<Event>,
}

#[derive(Default)]
struct SqliteCounts {
    inserted: AtomicU64,
    ignored: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVENTSYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = Opts::parse();
    if opts.clients == 0 || opts.clients > 100_000 {
        eprintln!("consumer: --clients must be 1..=100000");
        return ExitCode::from(2);
    }
    let positive = |s: f64| s > 0.0 && s.is_finite();
    if opts.seconds.is_some_and(|s| !positive(s)) || !positive(opts.stats_every) {
        eprintln!("consumer: --seconds and --stats-every must be positive");
        return ExitCode::from(2);
    }
    let transport = if opts.transport == "sse" {
        Transport::Sse
    } else {
        Transport::WebSocket
    };
    let prefix = opts
        .client_prefix
        .clone()
        .unwrap_or_else(|| format!("consumer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));

    // SQLite: one writer thread, fed through a bounded channel.
    let counts = Arc::new(SqliteCounts::default());
    let (rows_tx, sqlite_thread) = match &opts.sqlite {
        Some(path) => match open_db(path) {
            Ok(db) => {
                let (tx, rx) = mpsc::channel::<Row>(65_536);
                let counts = counts.clone();
                (
                    Some(tx),
                    Some(std::thread::spawn(move || store_rows(db, rx, &counts))),
                )
            }
            Err(e) => {
                eprintln!("consumer: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => (None, None),
    };

    let seen = Arc::new(Seen::default());
    let mut clients = Vec::with_capacity(opts.clients);
    let mut readers = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let mut o = ClientOptions::new(&opts.url, format!("{prefix}-{i}"), opts.subscribe.clone());
        o.transport = transport;
        if let Some(dir) = &opts.persist_dir {
            o.persist = Some(dir.join(format!("{prefix}-{i}.json")));
        }
        let (client, mut changes) = match Client::connect_with_changes(o).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("consumer: {e}");
                return ExitCode::from(2);
            }
        };
        let name: Arc<str> = Arc::from(client.client_id());
        let seen = seen.clone();
        let rows = rows_tx.clone();
        readers.push(tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(Change::Event(event)) => {
                        seen.events.fetch_add(1, Ordering::Relaxed);
                        if let Some(rows) = &rows {
                            let row = Row {
                                client: name.clone(),
                                event,
                            };
                            if rows.send(row).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        seen.lagged.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }));
        clients.push(client);
    }
    drop(rows_tx);
    println!(
        "consumer: {} {} client(s) {prefix}-0.. following {:?} at {}",
        opts.clients, opts.transport, opts.subscribe, opts.url
    );

    let start = Instant::now();
    let deadline = opts
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let mut every = tokio::time::interval(Duration::from_secs_f64(opts.stats_every));
    every.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sleep_until(deadline) => break,
            _ = every.tick() => {
                let t = totals(&clients);
                let now = Instant::now();
                let rate = (t.replica.events_applied - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, t.replica.events_applied);
                println!("[{:>7.1}s] {} ({rate:.0} events/s){}", start.elapsed().as_secs_f64(), t.line(),
                         sqlite_line(&opts, &counts));
            }
        }
    }

    let t = totals(&clients);
    for c in &clients {
        c.close().await;
    }
    for r in readers {
        let _ = r.await;
    }
    if let Some(t) = sqlite_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    println!(
        "final after {:.1}s: {}{}",
        start.elapsed().as_secs_f64(),
        t.line(),
        sqlite_line(&opts, &counts)
    );
    println!(
        "changes seen by readers: {} (lagged: {})",
        seen.events.load(Ordering::Relaxed),
        seen.lagged.load(Ordering::Relaxed)
    );
    // Replicas at the same position should hold the same vector.
    let mut distinct = std::collections::HashMap::new();
    for c in &clients {
        let (seq, vector) = c.with_replica(|r| {
            (
                r.last_seq(),
                serde_json::to_string(r.vector()).unwrap_or_default(),
            )
        });
        distinct
            .entry(seq)
            .or_insert_with(std::collections::HashSet::new)
            .insert(vector);
    }
    let disagreeing = distinct.values().filter(|v| v.len() > 1).count();
    println!(
        "positions: {} distinct; replicas at the same position disagreeing: {disagreeing}",
        distinct.len()
    );
    let mut failed = false;
    for c in &clients {
        if let Err(e) = c.with_replica(|r| r.check()) {
            eprintln!("consumer: {}: {e}", c.client_id());
            failed = true;
        }
    }
    if disagreeing > 0 {
        // Not a failure by itself: a client may have stopped while catching up.
        eprintln!("consumer: warning: replicas at the same position hold different vectors");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Totals {
    replica: Counters,
    stats: ClientStats,
    live: usize,
    clients: usize,
    min_seq: u64,
    max_seq: u64,
    documents: usize,
}

impl Totals {
    fn line(&self) -> String {
        let (r, s) = (&self.replica, &self.stats);
        format!(
            "live {}/{} | applied {} dup-dropped {} snapshots {} gaps {} invalid {} twice {} | \
             connects {} reconnects {} failures {} resyncs {} garbage {} | seq {}..{} docs {}",
            self.live,
            self.clients,
            r.events_applied,
            r.duplicates,
            r.snapshots,
            r.gaps,
            r.invalid,
            r.applied_twice,
            s.connects,
            s.reconnects,
            s.connect_failures,
            s.resyncs,
            s.garbage,
            self.min_seq,
            self.max_seq,
            self.documents,
        )
    }
}

fn totals(clients: &[Client]) -> Totals {
    let mut t = Totals {
        replica: Counters::default(),
        stats: ClientStats::default(),
        live: 0,
        clients: clients.len(),
        min_seq: u64::MAX,
        max_seq: 0,
        documents: 0,
    };
    for c in clients {
        let (counters, seq, docs) = c.with_replica(|r| (r.counters(), r.last_seq(), r.len()));
        let r = &mut t.replica;
        r.events_applied += counters.events_applied;
        r.duplicates += counters.duplicates;
        r.gaps += counters.gaps;
        r.snapshots += counters.snapshots;
        r.synced += counters.synced;
        r.resets += counters.resets;
        r.invalid += counters.invalid;
        r.applied_twice += counters.applied_twice;
        let s = c.stats();
        let x = &mut t.stats;
        x.connects += s.connects;
        x.connect_failures += s.connect_failures;
        x.reconnects += s.reconnects;
        x.resyncs += s.resyncs;
        x.garbage += s.garbage;
        x.server_errors += s.server_errors;
        if c.status() == Status::Live {
            t.live += 1;
        }
        t.min_seq = t.min_seq.min(seq);
        t.max_seq = t.max_seq.max(seq);
        t.documents = t.documents.max(docs);
    }
    if clients.is_empty() {
        t.min_seq = 0;
    }
    t
}

fn sqlite_line(opts: &Opts, counts: &SqliteCounts) -> String {
    if opts.sqlite.is_none() {
        return String::new();
    }
    format!(
        " | sqlite inserted {} ignored {} errors {}",
        counts.inserted.load(Ordering::Relaxed),
        counts.ignored.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed)
    )
}

fn open_db(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let db = rusqlite::Connection::open(path)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
             seq INTEGER PRIMARY KEY,
             client TEXT NOT NULL,
             collection TEXT NOT NULL,
             id TEXT NOT NULL,
             version INTEGER NOT NULL,
             op TEXT NOT NULL,
             patch TEXT NOT NULL,
             ts TEXT NOT NULL
         )",
    )?;
    Ok(db)
}

/// The SQLite thread: batches of rows, one transaction each, `INSERT OR IGNORE`.
fn store_rows(mut db: rusqlite::Connection, mut rx: mpsc::Receiver<Row>, counts: &SqliteCounts) {
    let mut batch = Vec::with_capacity(1024);
    while let Some(row) = rx.blocking_recv() {
        batch.push(row);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        if let Err(e) = insert(&mut db, &batch, counts) {
            eprintln!("consumer: sqlite: {e}");
            counts.errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        batch.clear();
    }
}

fn insert(db: &mut rusqlite::Connection, rows: &[Row], counts: &SqliteCounts) -> rusqlite::Result<()> {
    let tx = db.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (seq, client, collection, id, version, op, patch, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for row in rows {
            let e = &row.event;
            let patch = serde_json::to_string(&e.patch).unwrap_or_default();
            let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
            let version = i64::try_from(e.version).unwrap_or(i64::MAX);
            let n = stmt.execute(rusqlite::params![
                seq,
                &*row.client,
                e.collection,
                e.id,
                version,
                e.op.as_str(),
                patch,
                e.ts.to_rfc3339()
            ])?;
            if n == 1 {
                counts.inserted.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tx.commit()
}
