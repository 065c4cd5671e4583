//! The embedded store's tables, and how a connection is opened.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// How durable a commit is. See the README's "Durability" section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsync'd at every commit (group commit shares one fsync among
    /// all writes of a batch). An acknowledged write survives a process kill *and* a power loss.
    Full,
    /// `synchronous=NORMAL`: the WAL is written at every commit but fsync'd only at checkpoints. An
    /// acknowledged write survives a process kill; a power loss may lose the last commits.
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("durability must be 'full' or 'normal', not '{other}'")),
        }
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS documents (
    collection        TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    version           INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    data              TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    deleted           INTEGER NOT NULL DEFAULT 0,
    snapshot_version  INTEGER NOT NULL DEFAULT 0,
    compacted_through INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_compactable ON documents (collection, id)
    WHERE snapshot_version > compacted_through;
-- What changed since a position: a catch-up's later parts (`plan::Resume`).
CREATE INDEX IF NOT EXISTS documents_changed ON documents (collection, seq);

CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    collection TEXT    NOT NULL,
    doc_id     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    op         TEXT    NOT NULL,
    patch      TEXT    NOT NULL,
    client_id  TEXT    NOT NULL,
    op_id      TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    user       TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_document ON events (collection, doc_id, version);

-- Each client's last acknowledged state vector (the seed's state_vectors).
CREATE TABLE IF NOT EXISTS clients (
    client_id  TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_vectors (
    client_id  TEXT    NOT NULL,
    collection TEXT    NOT NULL,
    doc_id     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (client_id, collection, doc_id)
) WITHOUT ROWID;

-- 'last_seq': the highest sequence number ever assigned (kept when compaction drops the newest events).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS snapshots (
    collection TEXT    NOT NULL,
    doc_id     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    data       TEXT    NOT NULL,
    PRIMARY KEY (collection, doc_id, version)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS idempotency (
    client_id   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint INTEGER NOT NULL,
    result      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
"#;

/// Opens the writer's connection: WAL, the chosen durability, and the schema.
pub fn open_writer(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // The checkpointer thread copies the WAL back into the database; the writer checkpoints itself
    // only if that falls far behind (40 MiB of WAL), and the WAL file is trimmed back to 64 MiB.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.execute_batch(SCHEMA)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Brings a database made by an earlier version up to this schema: `events.user` (the writer's
/// token subject) came with authentication; older events have none.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_user = conn
        .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'user'")?
        .exists([])?;
    if !has_user {
        conn.execute_batch("ALTER TABLE events ADD COLUMN user TEXT")?;
    }
    Ok(())
}

/// WAL pages after which the writer checkpoints on its own (the checkpointer normally does it first).
const WRITER_CHECKPOINT_PAGES: i64 = 10_000;

/// Opens the checkpointer's connection.
pub fn open_checkpointer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    Ok(conn)
}

/// Opens a read-only connection for the reader pool.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    Ok(conn)
}
