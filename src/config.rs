//! Configuration: one struct, from flags, `EVENTSYNC_*` environment variables and an optional TOML
//! file (`--config`), in that order of precedence, then the defaults below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::store::sqlite::Durability;

/// Everything the server needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its database.
    pub data_dir: PathBuf,
    /// Which store: `embedded` (SQLite in `data_dir`) or MongoDB.
    pub store: StoreKind,
    /// This node's name among the nodes sharing a MongoDB database: unique among running nodes,
    /// the same across restarts of one node. With it, a restarted node ends the transactions its
    /// previous run left open (see `store::mongo::sessions`). Defaults to `HOST:PORT` when the
    /// listen port is fixed; none when it is 0.
    pub node_id: Option<String>,
    /// Directory of the browser UI served at `/`.
    pub static_dir: PathBuf,
    /// Directory of the JavaScript client, served at `/client/`.
    pub client_dir: PathBuf,
    pub durability: Durability,
    pub limits: LimitsConfig,
    pub snapshots: SnapshotConfig,
    /// How long shutdown waits for in-flight requests and the store before giving up.
    pub shutdown_timeout: Duration,
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsConfig {
    /// Largest document body (serialized JSON), in bytes.
    pub max_document_bytes: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
    /// Requests served at once; more wait in the accept queue.
    pub max_concurrent_requests: usize,
    /// Open client connections; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Writes that may queue for the store's writer before writes are refused with 503.
    pub write_queue: usize,
    /// Most writes committed together in one group commit.
    pub max_batch: usize,
    /// Largest page a listing returns.
    pub max_page: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Live events a sync session may fall behind before it is re-synced from the store.
    pub hub_capacity: usize,
}

/// When snapshots are taken and how much history compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotConfig {
    /// Snapshot a document every N events.
    pub every: u64,
    /// Also snapshot every changed document this often.
    pub interval: Duration,
    /// Run compaction this often.
    pub compact_interval: Duration,
    /// Keep at least the last K events per document.
    pub retain_events: u64,
    /// Keep every event younger than this.
    pub retain_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            data_dir: PathBuf::from("./data"),
            store: StoreKind::Embedded,
            node_id: None,
            static_dir: PathBuf::from("static"),
            client_dir: PathBuf::from("client"),
            durability: Durability::Full,
            limits: LimitsConfig {
                max_document_bytes: 1024 * 1024,
                max_body_bytes: 1024 * 1024 + 64 * 1024,
                max_json_depth: crate::json::DEFAULT_MAX_DEPTH,
                max_concurrent_requests: 1024,
                max_connections: 20_000,
                request_timeout: Duration::from_secs(30),
                write_queue: 8192,
                max_batch: 512,
                max_page: 1000,
                idempotency_ttl: Duration::from_secs(24 * 3600),
                hub_capacity: 16_384,
            },
            snapshots: SnapshotConfig {
                every: 100,
                interval: Duration::from_secs(60),
                compact_interval: Duration::from_secs(60),
                retain_events: 100,
                retain_for: Duration::from_secs(3600),
            },
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Command-line flags; each also reads an `EVENTSYNC_*` variable. Durations take `500ms`, `30s`,
/// `5m`, `1h`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "eventsync",
    version,
    about = "EventSync: a real-time JSON document sync server"
)]
pub struct Args {
    /// TOML file with any of the keys below (snake_case). Flags and environment override it.
    #[arg(long, env = "EVENTSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long, env = "EVENTSYNC_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory of the embedded store [default: ./data].
    #[arg(long, env = "EVENTSYNC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store: `embedded` (the default) or a MongoDB URI, `mongodb://HOST/DATABASE` (database
    /// `eventsync` when the URI names none).
    #[arg(long, env = "EVENTSYNC_STORE")]
    pub store: Option<String>,
    /// This node's name on a shared MongoDB database: unique among running nodes, stable across
    /// restarts [default: HOSTNAME:PORT when the port is fixed].
    #[arg(long, env = "EVENTSYNC_NODE_ID")]
    pub node_id: Option<String>,
    /// Directory served at `/` [default: static].
    #[arg(long, env = "EVENTSYNC_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Directory served at `/client/` (the JavaScript client) [default: client].
    #[arg(long, env = "EVENTSYNC_CLIENT_DIR")]
    pub client_dir: Option<PathBuf>,
    /// `full` (fsync every group commit; survives power loss; the default) or `normal`.
    #[arg(long, env = "EVENTSYNC_DURABILITY")]
    pub durability: Option<String>,
    /// Largest document in bytes [default: 1048576].
    #[arg(long, env = "EVENTSYNC_MAX_DOCUMENT_BYTES")]
    pub max_document_bytes: Option<usize>,
    /// Largest request body in bytes [default: max_document_bytes + 64 KiB].
    #[arg(long, env = "EVENTSYNC_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Deepest JSON nesting [default: 64].
    #[arg(long, env = "EVENTSYNC_MAX_JSON_DEPTH")]
    pub max_json_depth: Option<usize>,
    /// Requests served at once [default: 1024].
    #[arg(long, env = "EVENTSYNC_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    /// Open connections [default: 20000].
    #[arg(long, env = "EVENTSYNC_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Request deadline [default: 30s].
    #[arg(long, env = "EVENTSYNC_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Writes queued for the writer before 503 [default: 8192].
    #[arg(long, env = "EVENTSYNC_WRITE_QUEUE")]
    pub write_queue: Option<usize>,
    /// Most writes per group commit [default: 512].
    #[arg(long, env = "EVENTSYNC_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Largest page of a listing [default: 1000].
    #[arg(long, env = "EVENTSYNC_MAX_PAGE")]
    pub max_page: Option<usize>,
    /// How long Idempotency-Keys are remembered [default: 24h].
    #[arg(long, env = "EVENTSYNC_IDEMPOTENCY_TTL")]
    pub idempotency_ttl: Option<String>,
    /// Live events a sync session may fall behind before it is re-synced from the store [default: 16384].
    #[arg(long, env = "EVENTSYNC_HUB_CAPACITY")]
    pub hub_capacity: Option<usize>,
    /// Snapshot a document every N events [default: 100].
    #[arg(long, env = "EVENTSYNC_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Snapshot changed documents on this timer [default: 60s].
    #[arg(long, env = "EVENTSYNC_SNAPSHOT_INTERVAL")]
    pub snapshot_interval: Option<String>,
    /// Compact the log on this timer [default: 60s].
    #[arg(long, env = "EVENTSYNC_COMPACT_INTERVAL")]
    pub compact_interval: Option<String>,
    /// Keep at least the last K events per document [default: 100].
    #[arg(long, env = "EVENTSYNC_RETAIN_EVENTS")]
    pub retain_events: Option<u64>,
    /// Keep every event younger than this [default: 1h].
    #[arg(long, env = "EVENTSYNC_RETAIN_FOR")]
    pub retain_for: Option<String>,
    /// Shutdown deadline [default: 10s].
    #[arg(long, env = "EVENTSYNC_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
}

/// The TOML file: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    node_id: Option<String>,
    static_dir: Option<PathBuf>,
    client_dir: Option<PathBuf>,
    durability: Option<String>,
    max_document_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    max_concurrent_requests: Option<usize>,
    max_connections: Option<usize>,
    request_timeout: Option<String>,
    write_queue: Option<usize>,
    max_batch: Option<usize>,
    max_page: Option<usize>,
    idempotency_ttl: Option<String>,
    hub_capacity: Option<usize>,
    snapshot_every: Option<u64>,
    snapshot_interval: Option<String>,
    compact_interval: Option<String>,
    retain_events: Option<u64>,
    retain_for: Option<String>,
    shutdown_timeout: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `HOST:PORT` of this machine when the port is fixed: stable across restarts, unique among the
/// nodes as long as hosts have distinct names. `None` with port 0 (a new port at every start).
fn default_node_id(listen: SocketAddr) -> Option<String> {
    if listen.port() == 0 {
        return None;
    }
    let from_env = ["HOSTNAME", "COMPUTERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok());
    let from_file = || {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
    };
    let host = from_env.or_else(from_file)?;
    let host = host.trim();
    (!host.is_empty()).then(|| format!("{host}:{}", listen.port()))
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `2d`, or a bare number of seconds.
pub fn parse_duration(key: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| invalid(key, format!("'{s}' is not a duration like 500ms, 30s, 5m or 1h")))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(invalid(key, format!("unknown unit '{other}' in '{s}'"))),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| invalid(key, format!("'{s}' is out of range")))
}

impl Config {
    /// Reads flags (and their environment variables) from the process, then the `--config` file.
    pub fn from_env_and_args() -> Result<Config, ConfigError> {
        Config::from_args(Args::parse())
    }

    /// Combines parsed flags with the file they name, over the defaults.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let dur =
            |key, flag: &Option<String>, file: &Option<String>, default| -> Result<Duration, ConfigError> {
                match flag.as_ref().or(file.as_ref()) {
                    Some(s) => parse_duration(key, s),
                    None => Ok(default),
                }
            };
        let store = match args.store.or(file.store).as_deref() {
            None | Some("embedded") | Some("sqlite") => StoreKind::Embedded,
            Some(s) if s.starts_with("mongodb://") || s.starts_with("mongodb+srv://") => {
                StoreKind::MongoDb { uri: s.to_string() }
            }
            Some(other) => {
                return Err(invalid(
                    "store",
                    format!("unknown store '{other}'; use 'embedded' or a mongodb:// URI"),
                ))
            }
        };
        let durability = match args.durability.or(file.durability) {
            Some(s) => s.parse().map_err(|m| invalid("durability", m))?,
            None => d.durability,
        };
        let max_document_bytes = args
            .max_document_bytes
            .or(file.max_document_bytes)
            .unwrap_or(d.limits.max_document_bytes);
        let limits = LimitsConfig {
            max_document_bytes,
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(max_document_bytes.saturating_add(64 * 1024)),
            max_json_depth: args
                .max_json_depth
                .or(file.max_json_depth)
                .unwrap_or(d.limits.max_json_depth),
            max_concurrent_requests: args
                .max_concurrent_requests
                .or(file.max_concurrent_requests)
                .unwrap_or(d.limits.max_concurrent_requests),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.limits.max_connections),
            request_timeout: dur(
                "request_timeout",
                &args.request_timeout,
                &file.request_timeout,
                d.limits.request_timeout,
            )?,
            write_queue: args
                .write_queue
                .or(file.write_queue)
                .unwrap_or(d.limits.write_queue),
            max_batch: args.max_batch.or(file.max_batch).unwrap_or(d.limits.max_batch),
            max_page: args.max_page.or(file.max_page).unwrap_or(d.limits.max_page),
            hub_capacity: args
                .hub_capacity
                .or(file.hub_capacity)
                .unwrap_or(d.limits.hub_capacity),
            idempotency_ttl: dur(
                "idempotency_ttl",
                &args.idempotency_ttl,
                &file.idempotency_ttl,
                d.limits.idempotency_ttl,
            )?,
        };
        let snapshots = SnapshotConfig {
            every: args
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(d.snapshots.every),
            interval: dur(
                "snapshot_interval",
                &args.snapshot_interval,
                &file.snapshot_interval,
                d.snapshots.interval,
            )?,
            compact_interval: dur(
                "compact_interval",
                &args.compact_interval,
                &file.compact_interval,
                d.snapshots.compact_interval,
            )?,
            retain_events: args
                .retain_events
                .or(file.retain_events)
                .unwrap_or(d.snapshots.retain_events),
            retain_for: dur(
                "retain_for",
                &args.retain_for,
                &file.retain_for,
                d.snapshots.retain_for,
            )?,
        };
        let listen = args.listen.or(file.listen).unwrap_or(d.listen);
        let node_id = match args.node_id.or(file.node_id) {
            Some(id) if id.trim().is_empty() || id.len() > 200 => {
                return Err(invalid("node_id", "must be 1 to 200 characters"))
            }
            Some(id) => Some(id),
            None => default_node_id(listen),
        };
        let config = Config {
            listen,
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            store,
            node_id,
            static_dir: args.static_dir.or(file.static_dir).unwrap_or(d.static_dir),
            client_dir: args.client_dir.or(file.client_dir).unwrap_or(d.client_dir),
            durability,
            limits,
            snapshots,
            shutdown_timeout: dur(
                "shutdown_timeout",
                &args.shutdown_timeout,
                &file.shutdown_timeout,
                d.shutdown_timeout,
            )?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive: [(&'static str, u64); 10] = [
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
            ("snapshot_interval", self.snapshots.interval),
            ("compact_interval", self.snapshots.compact_interval),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0"));
            }
        }
        Ok(())
    }

    /// The embedded store's database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("eventsync.db")
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("eventsync").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::from_args(Args::default()).unwrap();
        // The node id defaults to this host's name and the fixed port.
        if let Some(id) = &c.node_id {
            assert!(id.ends_with(":8080"), "{id}");
        }
        let c = Config { node_id: None, ..c };
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.snapshots.every, 100);
        assert_eq!(c.limits.max_document_bytes, 1 << 20);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nsnapshot_every = 7\nretain_for = \"5m\"\n",
        )
        .unwrap();
        let c = Config::from_args(args(&[
            "--config",
            path.to_str().unwrap(),
            "--snapshot-every",
            "9",
        ]))
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.snapshots.every, 9);
        assert_eq!(c.snapshots.retain_for, Duration::from_secs(300));
    }

    #[test]
    fn the_node_id_is_the_one_given_else_none_on_a_port_picked_at_start() {
        let c = Config::from_args(args(&["--node-id", "eu-1", "--listen", "127.0.0.1:0"])).unwrap();
        assert_eq!(c.node_id.as_deref(), Some("eu-1"));
        let c = Config::from_args(args(&["--listen", "127.0.0.1:0"])).unwrap();
        assert_eq!(c.node_id, None);
        let err = Config::from_args(args(&["--node-id", " "])).unwrap_err();
        assert!(err.to_string().starts_with("node_id:"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_args(args(&["--retain-for", "soon"])).unwrap_err();
        assert!(err.to_string().starts_with("retain_for:"), "{err}");
        let err = Config::from_args(args(&["--store", "postgres://x"])).unwrap_err();
        assert!(err.to_string().contains("unknown store"), "{err}");
        let err = Config::from_args(args(&["--snapshot-every", "0"])).unwrap_err();
        assert!(err.to_string().starts_with("snapshot_every"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listne = \"x\"\n").unwrap();
        assert!(matches!(
            Config::from_args(args(&["--config", path.to_str().unwrap()])),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("k", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("k", "2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("k", "10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("k", "-1s").is_err());
        assert!(parse_duration("k", "1y").is_err());
    }
}
