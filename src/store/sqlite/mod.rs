//! The embedded store: SQLite (bundled) in WAL mode, the default backend — nothing to install.
//!
//! - Writes go to one writer thread ([`writer`]) that batches them into group commits.
//! - Reads run on a small pool of read-only connections on tokio's blocking pool, so neither ever
//!   blocks the async runtime. WAL lets readers proceed while the writer commits.
//! - The database is one file, `eventsync.db` in the data directory; inspect it with `sqlite3`.

mod rows;
mod schema;
mod writer;

pub use schema::Durability;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use self::writer::{backend, Chunk, Command, DocKey, Writer};
use crate::hub::Hub;
use crate::model::{Document, Event, Seq, Snapshot, SnapshotInfo, StoredDoc, Version};
use crate::plan::CatchUpRows;
use crate::protocol::StateVector;
use crate::store::{
    Budget, CatchUpRead, ClientState, Committed, EventFilter, MaintenanceStats, Paged, Retention, Store,
    StoreError,
};
use crate::time::Timestamp;
use crate::write::{Limits, Policy, Write};

/// Idle read connections kept open; more are opened on demand and closed after use.
const MAX_IDLE_READERS: usize = 8;

/// How to open the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    pub durability: Durability,
    /// Writes that may wait for the writer; beyond this a write fails with `Overloaded`.
    pub write_queue: usize,
    /// Most commands the writer takes into one group commit.
    pub max_batch: usize,
    pub limits: Limits,
    /// Snapshot a document every this many versions.
    pub snapshot_every: u64,
}

pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    readers: Arc<Readers>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
}

/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// A thread that runs passive WAL checkpoints, so that the writer thread never has to: a passive
/// checkpoint does not block the writer, and this way its work (and its fsync of the database file)
/// runs on the other core instead of between two group commits.
struct Checkpointer {
    /// Dropping it stops the thread.
    stop: std::sync::mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    fn start(path: &std::path::Path) -> Result<Checkpointer, StoreError> {
        let conn = schema::open_checkpointer(path).map_err(backend)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("eventsync-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(error = %e, "background checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::backend_source("spawning the checkpointer", e))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer thread. Blocking: call it at
    /// startup or from `spawn_blocking`.
    pub fn open(opts: SqliteOptions, hub: Hub) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::backend_source(dir.display().to_string(), e))?;
        }
        let conn = schema::open_writer(&opts.path, opts.durability).map_err(backend)?;
        let next_seq = rows::last_seq(&conn).map_err(backend)? + 1;
        let (tx, rx) = mpsc::channel(opts.write_queue.max(1));
        let writer = Writer {
            conn,
            cache: Default::default(),
            hub,
            next_seq,
            policy: Policy {
                limits: opts.limits,
                snapshot_every: opts.snapshot_every,
            },
            max_batch: opts.max_batch.max(1),
        };
        let checkpointer = Checkpointer::start(&opts.path)?;
        let handle = std::thread::Builder::new()
            .name("eventsync-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::backend_source("spawning the writer thread", e))?;
        Ok(SqliteStore {
            commands: tx,
            readers: Arc::new(Readers {
                path: opts.path,
                idle: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }

    async fn send<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Command) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a maintenance command chunk by chunk until it has covered every document.
    async fn chunked(
        &self,
        make: impl Fn(Option<DocKey>, writer::Reply<Chunk>) -> Command,
    ) -> Result<MaintenanceStats, StoreError> {
        let mut total = MaintenanceStats::default();
        let mut after = None;
        loop {
            let (stats, next) = self.send(|reply| make(after.take(), reply)).await?;
            total += stats;
            match next {
                Some(key) => after = Some(key),
                None => return Ok(total),
            }
        }
    }
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Set by `close()`: later reads fail with `Closed` instead of reopening the database.
    closed: AtomicBool,
}

impl Readers {
    async fn run<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let pooled = this.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => schema::open_reader(&this.path)?,
            };
            let out = f(&conn);
            let mut idle = this.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::backend_source("reader task", e))?
        .map_err(backend)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, write: Write) -> Result<Committed, StoreError> {
        let result = self.send(|reply| Command::Write(Box::new(write), reply)).await;
        if matches!(result, Err(StoreError::Overloaded)) {
            crate::metrics::write("overloaded");
        }
        result
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.readers.run(move |conn| rows::get_doc(conn, &c, &i)).await
    }

    async fn list_page(
        &self,
        collection: &str,
        after: Option<&str>,
        budget: Budget,
    ) -> Result<Paged<Document>, StoreError> {
        let (c, a) = (collection.to_string(), after.map(str::to_string));
        self.readers
            .run(move |conn| rows::list_docs(conn, &c, a.as_deref(), budget))
            .await
    }

    async fn events_page(&self, filter: &EventFilter, budget: Budget) -> Result<Paged<Event>, StoreError> {
        let f = filter.clone();
        self.readers.run(move |conn| rows::events(conn, &f, budget)).await
    }

    async fn document_events_page(
        &self,
        collection: &str,
        id: &str,
        from: Version,
        to: Version,
        budget: Budget,
    ) -> Result<Paged<Event>, StoreError> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.readers
            .run(move |conn| rows::document_events_within(conn, &c, &i, from, to, budget))
            .await
    }

    async fn snapshots(&self, collection: &str, id: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.readers.run(move |conn| rows::snapshots(conn, &c, &i)).await
    }

    async fn snapshot_at_or_before(
        &self,
        collection: &str,
        id: &str,
        version: Version,
    ) -> Result<Option<Snapshot>, StoreError> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.readers
            .run(move |conn| rows::snapshot_at_or_before(conn, &c, &i, version))
            .await
    }

    async fn snapshot_changed(&self) -> Result<MaintenanceStats, StoreError> {
        self.chunked(|after, reply| Command::SnapshotChanged { after, reply })
            .await
    }

    async fn compact(
        &self,
        retention: Retention,
        idempotency_ttl_ms: i64,
        now: Timestamp,
    ) -> Result<MaintenanceStats, StoreError> {
        let mut stats = self
            .chunked(|after, reply| Command::Compact {
                retention,
                now,
                after,
                reply,
            })
            .await?;
        let before = now.saturating_sub_ms(idempotency_ttl_ms);
        loop {
            let n = self
                .send(|reply| Command::ExpireIdempotency { before, reply })
                .await?;
            stats.idempotency_keys_expired += n;
            if n < writer::IDEMPOTENCY_EXPIRY_CHUNK as u64 {
                return Ok(stats);
            }
        }
    }

    async fn catch_up(&self, read: CatchUpRead) -> Result<CatchUpRows, StoreError> {
        self.readers.run(move |conn| rows::catch_up(conn, &read)).await
    }

    async fn load_client(&self, client_id: &str) -> Result<Option<ClientState>, StoreError> {
        let id = client_id.to_string();
        self.readers.run(move |conn| rows::load_client(conn, &id)).await
    }

    async fn save_client(
        &self,
        client_id: &str,
        position: Seq,
        entries: &StateVector,
        replace: bool,
    ) -> Result<(), StoreError> {
        self.send(|reply| {
            Command::SaveClient(Box::new(writer::SaveClient {
                client_id: client_id.to_string(),
                position,
                entries: entries.clone(),
                replace,
                reply,
            }))
        })
        .await
    }

    async fn last_seq(&self) -> Result<Seq, StoreError> {
        self.readers.run(rows::last_seq).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let checkpointer = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = checkpointer {
            tokio::task::spawn_blocking(move || c.stop())
                .await
                .map_err(|e| StoreError::backend_source("closing the store", e))?;
        }
        let (tx, rx) = oneshot::channel();
        // `send` (not `try_send`): closing waits for room behind the queued writes.
        self.commands
            .send(Command::Close(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?;
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| StoreError::backend_source("closing the store", e))?
                .map_err(|_| StoreError::backend("the writer thread panicked"))?;
        }
        self.readers.closed.store(true, Ordering::Release);
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}
