//! Configuration: one struct, [`Config`], from flags, `EVENTSYNC_*` environment variables and an
//! optional file (`--config FILE`, TOML, or JSON when the name ends in `.json`), in that order of
//! precedence, then the defaults.
//!
//! ## An option is declared once
//!
//! Each option is one field below with one `#[arg]` attribute, which names its flag
//! (`--max-batch`), its variable (`EVENTSYNC_MAX_BATCH`), its default and its parser; its doc
//! comment is its `--help` text, and its id (`max_batch`) is its key in the file. Adding an option
//! is adding a field, then using it. The tests hold every option to that one naming rule and to
//! the names deployments already use.
//!
//! ## Why clap carries all three layers
//!
//! clap already puts a command line over environment variables over defaults, and `--help` must
//! come from it anyway. The file sits between the variables and the defaults, so its values are
//! handed to clap *as the defaults* (`file.rs`), and one parse applies the whole precedence
//! (`layers.rs`). Every value, wherever it was given, then goes through the same parser
//! (`values.rs`) and fails with the same error, named by its key.
//!
//! The alternatives bring back a second declaration or a second parser. A layered-config crate (figment) merges
//! serde values, so telling a flag from a default needs a mirror struct of `Option` fields beside
//! this one; deriving serde here as well gives every type a second parser for the file
//! (durations, stores), and serde's `flatten` (which the nested [`LimitsConfig`] and
//! [`SnapshotConfig`] would need) cannot refuse unknown keys.
//!
//! Two defaults depend on other options and are filled in once those are known: `max_body_bytes`
//! (the document limit plus 64 KiB) and `node_id` (`HOST:PORT` when the port is fixed).

mod file;
mod layers;
mod values;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::sqlite::Durability;

pub use self::file::FileError;

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "EVENTSYNC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded store keeps its database (`eventsync.db`).
    #[arg(long, env = "EVENTSYNC_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Which store: `embedded` (SQLite in the data directory) or a MongoDB URI,
    /// `mongodb://HOST/DATABASE` (database `eventsync` when the URI names none).
    #[arg(long, env = "EVENTSYNC_STORE", default_value = "embedded", value_parser = values::store)]
    pub store: StoreKind,
    /// This node's name among the nodes sharing a MongoDB database: unique among running nodes,
    /// the same across restarts of one node, so that a restarted node ends the transactions its
    /// previous run left open [default: HOSTNAME:PORT when the port is fixed; none with port 0].
    #[arg(long, env = "EVENTSYNC_NODE_ID", value_parser = values::node_id)]
    pub node_id: Option<String>,
    /// Directory of the browser UI served at `/`.
    #[arg(long, env = "EVENTSYNC_STATIC_DIR", default_value = "static")]
    pub static_dir: PathBuf,
    /// Directory of the JavaScript client, served at `/client/`.
    #[arg(long, env = "EVENTSYNC_CLIENT_DIR", default_value = "client")]
    pub client_dir: PathBuf,
    /// `full` (fsync every group commit; survives power loss) or `normal` (survives a process
    /// kill).
    #[arg(long, env = "EVENTSYNC_DURABILITY", default_value = "full", value_parser = values::durability)]
    pub durability: Durability,
    /// How long shutdown waits for in-flight requests and the store before giving up.
    #[arg(long, env = "EVENTSYNC_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = values::duration)]
    pub shutdown_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`), apart from the API: e.g.
    /// `127.0.0.1:9090` (off when unset).
    #[arg(long, env = "EVENTSYNC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten, next_help_heading = "Limits")]
    pub limits: LimitsConfig,
    #[command(flatten, next_help_heading = "Snapshots and compaction")]
    pub snapshots: SnapshotConfig,
    #[command(flatten, next_help_heading = "Access: tokens, origins, per-client limits")]
    pub access: AccessConfig,
}

/// Who may connect and do what (`docs/AUTH.md`): the token check, browser origins, and the limits
/// each client (its token's subject, or its IP address without auth) is held to.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct AccessConfig {
    /// `none` (every client may read and write everything; for loopback and development) or `jwt`
    /// (every request and session carries a JSON Web Token; its claims say what it may do).
    #[arg(long, env = "EVENTSYNC_AUTH", default_value = "none", value_parser = values::auth_mode)]
    pub auth: AuthMode,
    /// The HS256 shared secret tokens are signed with (prefer --jwt-secret-file or the variable:
    /// a flag shows in `ps`).
    #[arg(long, env = "EVENTSYNC_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 shared secret (its surrounding whitespace ignored).
    #[arg(long, env = "EVENTSYNC_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Public keys for RS256, ES256 or EdDSA tokens: a PEM file (one key) or a JWKS file (keys
    /// chosen by the token's `kid`).
    #[arg(long, env = "EVENTSYNC_JWT_KEYS")]
    pub jwt_keys: Option<PathBuf>,
    /// The `iss` a token must have (not checked when unset).
    #[arg(long, env = "EVENTSYNC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` a token must have (not checked when unset).
    #[arg(long, env = "EVENTSYNC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// How far `exp` and `nbf` may be off (clock skew between the issuer and this server).
    #[arg(long, env = "EVENTSYNC_JWT_LEEWAY", default_value = "30s", value_parser = values::duration)]
    pub jwt_leeway: std::time::Duration,
    /// Where in the token the permissions are: a top-level claim's name, or a JSON Pointer
    /// (`/https:~1~1example.com~1claims/eventsync`) for a namespaced one.
    #[arg(long, env = "EVENTSYNC_JWT_CLAIM", default_value = "eventsync")]
    pub jwt_claim: String,
    /// A browser origin allowed to call the API and open WebSocket and SSE sessions
    /// (`https://app.example.com`; repeatable, or comma-separated; `*` allows any). The server's
    /// own origin is always allowed.
    #[arg(long, env = "EVENTSYNC_CORS_ORIGIN", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub cors_origin: Vec<String>,
    /// Writes per second one client may make, over REST and the protocol (0: no limit).
    #[arg(long, env = "EVENTSYNC_WRITE_RATE", default_value_t = 1000)]
    pub write_rate: u64,
    /// Writes one client may make at once above its rate, after being idle.
    #[arg(long, env = "EVENTSYNC_WRITE_BURST", default_value_t = 2000)]
    pub write_burst: u64,
    /// WebSocket sessions one client may have open at once (0: no limit).
    #[arg(long, env = "EVENTSYNC_MAX_SOCKETS_PER_CLIENT", default_value_t = 1000)]
    pub max_sockets_per_client: usize,
    /// SSE streams one client may have open at once (0: no limit).
    #[arg(long, env = "EVENTSYNC_MAX_STREAMS_PER_CLIENT", default_value_t = 100)]
    pub max_streams_per_client: usize,
}

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No tokens: every client may do everything.
    None,
    /// JSON Web Tokens (`docs/AUTH.md`).
    Jwt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    /// A MongoDB deployment (a replica set): the URI, whose path names the database.
    MongoDb {
        uri: String,
    },
}

/// Bounds on what clients may send and how much may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct LimitsConfig {
    /// Largest document body (serialized JSON), in bytes.
    #[arg(long, env = "EVENTSYNC_MAX_DOCUMENT_BYTES", default_value_t = 1024 * 1024)]
    pub max_document_bytes: usize,
    /// Largest request body, in bytes [default: max_document_bytes + 64 KiB].
    #[arg(long, env = "EVENTSYNC_MAX_BODY_BYTES", required = false)]
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted (at most 128).
    #[arg(long, env = "EVENTSYNC_MAX_JSON_DEPTH", default_value_t = crate::json::DEFAULT_MAX_DEPTH)]
    pub max_json_depth: usize,
    /// Requests served at once; more wait in the accept queue.
    #[arg(long, env = "EVENTSYNC_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Open client connections; more wait in the kernel's accept backlog.
    #[arg(long, env = "EVENTSYNC_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Longest a request may take before it is answered 503.
    #[arg(long, env = "EVENTSYNC_REQUEST_TIMEOUT", default_value = "30s", value_parser = values::duration)]
    pub request_timeout: Duration,
    /// Writes that may queue for the store's writer before writes are refused with 503.
    #[arg(long, env = "EVENTSYNC_WRITE_QUEUE", default_value_t = 8192)]
    pub write_queue: usize,
    /// Most writes committed together in one group commit.
    #[arg(long, env = "EVENTSYNC_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,
    /// Largest page a listing returns.
    #[arg(long, env = "EVENTSYNC_MAX_PAGE", default_value_t = 1000)]
    pub max_page: usize,
    /// Most bytes of documents or events one page of a listing (documents, the event log) holds:
    /// the page ends early, with a cursor, before the item that would pass it (a page always
    /// holds at least one item).
    #[arg(long, env = "EVENTSYNC_MAX_PAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_page_bytes: usize,
    /// Most bytes of documents and events one part of a catch-up holds (a session's, an SSE
    /// stream's, `POST /api/sync`'s): a larger catch-up comes in parts, each planned from the
    /// vector the previous one brought the client to.
    #[arg(long, env = "EVENTSYNC_MAX_CATCH_UP_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_catch_up_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    #[arg(long, env = "EVENTSYNC_IDEMPOTENCY_TTL", default_value = "24h", value_parser = values::duration)]
    pub idempotency_ttl: Duration,
    /// Live events a sync session may fall behind before it is re-synced from the store.
    #[arg(long, env = "EVENTSYNC_HUB_CAPACITY", default_value_t = 16_384)]
    pub hub_capacity: usize,
    /// Most bytes of live events (their wire forms) kept for sessions that have not sent them
    /// yet; a session behind by more is re-synced from the store.
    #[arg(long, env = "EVENTSYNC_HUB_BYTES", default_value_t = crate::hub::DEFAULT_RETAINED_BYTES)]
    pub hub_bytes: usize,
    /// How long a client has to send a request's head (the request line and headers), counted
    /// from the connection's start or the end of the previous response; an idle keep-alive
    /// connection is closed after it too.
    #[arg(long, env = "EVENTSYNC_HEADER_TIMEOUT", default_value = "15s", value_parser = values::duration)]
    pub header_timeout: Duration,
    /// How long a client has to send a request's whole body (408 `body_timeout` after it).
    #[arg(long, env = "EVENTSYNC_BODY_TIMEOUT", default_value = "30s", value_parser = values::duration)]
    pub body_timeout: Duration,
    /// Request bodies the server holds at once (from their first byte to their answer), in bytes,
    /// over all requests: a body that finds no room is refused 503 `overloaded` at once.
    #[arg(long, env = "EVENTSYNC_BODY_BUFFER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub body_buffer_bytes: usize,
    /// How long a connection's write may wait for the client to take a byte before the
    /// connection is closed (REST responses, SSE streams, WebSocket frames).
    #[arg(long, env = "EVENTSYNC_WRITE_TIMEOUT", default_value = "30s", value_parser = values::duration)]
    pub write_timeout: Duration,
    /// How long a WebSocket may show no sign of life (a message, a pong, or live events its
    /// socket took) before it is closed with 4408 — and, with it, leaves its presence channels.
    /// The server pings every third of it.
    #[arg(long, env = "EVENTSYNC_HEARTBEAT_TIMEOUT", default_value = "45s", value_parser = values::duration)]
    pub heartbeat_timeout: Duration,
}

/// When snapshots are taken and how much history compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct SnapshotConfig {
    /// Snapshot a document every N events.
    #[arg(
        long = "snapshot-every",
        id = "snapshot_every",
        value_name = "SNAPSHOT_EVERY",
        env = "EVENTSYNC_SNAPSHOT_EVERY",
        default_value_t = 100
    )]
    pub every: u64,
    /// Also snapshot every changed document this often.
    #[arg(
        long = "snapshot-interval",
        id = "snapshot_interval",
        value_name = "SNAPSHOT_INTERVAL",
        env = "EVENTSYNC_SNAPSHOT_INTERVAL",
        default_value = "60s",
        value_parser = values::duration
    )]
    pub interval: Duration,
    /// Run compaction this often.
    #[arg(long, env = "EVENTSYNC_COMPACT_INTERVAL", default_value = "60s", value_parser = values::duration)]
    pub compact_interval: Duration,
    /// Keep at least the last K events per document.
    #[arg(long, env = "EVENTSYNC_RETAIN_EVENTS", default_value_t = 100)]
    pub retain_events: u64,
    /// Keep every event younger than this.
    #[arg(long, env = "EVENTSYNC_RETAIN_FOR", default_value = "1h", value_parser = values::duration)]
    pub retain_for: Duration,
}

impl Default for Config {
    /// The declared defaults: what an empty command line gives with no environment and no file.
    /// No node id: that default depends on the machine (see [`Config::from_args_iter`]).
    fn default() -> Self {
        let command = layers::command().mut_args(|arg| arg.env(None));
        layers::layered(command, &[layers::PROGRAM.into()]).expect("the declared defaults are valid")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A malformed command line, or `--help` or `--version`: clap's own error, which knows how to
    /// print itself and with which exit code ([`clap::Error::exit`]).
    #[error(transparent)]
    Usage(clap::Error),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: FileError },
    /// A value refused, by its parser or by `Config::validate`, named by its key.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Config {
    /// Reads flags (and their environment variables) from the process, then the `--config` file.
    pub fn from_env_and_args() -> Result<Config, ConfigError> {
        Config::from_args_iter(std::env::args_os().skip(1))
    }

    /// Reads `args` (flags without the program's name, e.g. `["--listen", "127.0.0.1:0"]`) exactly
    /// as the binary reads its command line: with the `EVENTSYNC_*` variables, the `--config` file
    /// and the defaults under them, then checked. What starts an in-process server from the flags
    /// the binary takes.
    pub fn from_args_iter<I>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        let argv: Vec<OsString> = std::iter::once(layers::PROGRAM.into())
            .chain(args.into_iter().map(Into::into))
            .collect();
        let mut config = layers::layered(layers::command(), &argv)?;
        if config.node_id.is_none() {
            config.node_id = values::default_node_id(config.listen);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive: [(&'static str, u64); 14] = [
            ("max_page_bytes", l.max_page_bytes as u64),
            ("hub_bytes", l.hub_bytes as u64),
            ("max_catch_up_bytes", l.max_catch_up_bytes as u64),
            ("body_buffer_bytes", l.body_buffer_bytes as u64),
            ("hub_capacity", l.hub_capacity as u64),
            ("max_connections", l.max_connections as u64),
            ("max_document_bytes", l.max_document_bytes as u64),
            ("max_body_bytes", l.max_body_bytes as u64),
            ("max_json_depth", l.max_json_depth as u64),
            ("max_concurrent_requests", l.max_concurrent_requests as u64),
            ("write_queue", l.write_queue as u64),
            ("max_batch", l.max_batch as u64),
            ("max_page", l.max_page as u64),
            ("snapshot_every", self.snapshots.every),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_json_depth > 128 {
            return Err(invalid(
                "max_json_depth",
                "at most 128 (the JSON parser's own limit)",
            ));
        }
        for (key, d) in [
            ("request_timeout", l.request_timeout),
            ("header_timeout", l.header_timeout),
            ("body_timeout", l.body_timeout),
            ("write_timeout", l.write_timeout),
            ("heartbeat_timeout", l.heartbeat_timeout),
            ("snapshot_interval", self.snapshots.interval),
            ("compact_interval", self.snapshots.compact_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0"));
            }
        }
        if l.heartbeat_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "heartbeat_timeout",
                "at least 1s (the server pings every third of it)",
            ));
        }
        let a = &self.access;
        if a.auth == AuthMode::Jwt
            && a.jwt_secret.is_none()
            && a.jwt_secret_file.is_none()
            && a.jwt_keys.is_none()
        {
            return Err(invalid(
                "auth",
                "jwt needs --jwt-secret, --jwt-secret-file or --jwt-keys",
            ));
        }
        crate::auth::origin::Origins::from_config(a).map_err(|e| invalid("cors_origin", e))?;
        Ok(())
    }

    /// The embedded store's database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("eventsync.db")
    }
}

/// A duration as every option takes it (`500ms`, `30s`, `5m`, `1h`, `2d`, or seconds), for the
/// commands beside the server (`eventsync token --ttl`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    values::duration(s).map_err(|e| e.to_string())
}
