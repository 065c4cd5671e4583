//! How an option's text becomes its value: the parsers clap runs on every flag, variable and file
//! value alike, so a value means the same wherever it was given. Their errors carry only the
//! reason; [`super::layers`] names the key.

use std::net::SocketAddr;
use std::time::Duration;

use super::{AuthMode, StoreKind};
use crate::store::sqlite::Durability;

/// Why a value was refused. Its text is the whole reason (it quotes the value), which is how
/// [`super::layers`] tells it from the terser errors of clap's own parsers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refusal(String);

/// `500ms`, `30s`, `5m`, `1h`, `2d`, or a bare number of seconds.
pub(super) fn duration(s: &str) -> Result<Duration, Refusal> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| Refusal(format!("'{s}' is not a duration like 500ms, 30s, 5m or 1h")))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(Refusal(format!("unknown unit '{other}' in '{s}'"))),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| Refusal(format!("'{s}' is out of range")))
}

/// `embedded` (or `sqlite`), or a `mongodb://` / `mongodb+srv://` URI.
pub(super) fn store(s: &str) -> Result<StoreKind, Refusal> {
    match s {
        "embedded" | "sqlite" => Ok(StoreKind::Embedded),
        uri if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") => {
            Ok(StoreKind::MongoDb { uri: uri.to_string() })
        }
        other => Err(Refusal(format!(
            "unknown store '{other}'; use 'embedded' or a mongodb:// URI"
        ))),
    }
}

/// `full` or `normal`.
pub(super) fn durability(s: &str) -> Result<Durability, Refusal> {
    s.parse().map_err(Refusal)
}

/// A node id given explicitly: 1 to 200 characters, not all blank.
pub(super) fn node_id(s: &str) -> Result<String, Refusal> {
    if s.trim().is_empty() || s.len() > 200 {
        return Err(Refusal("must be 1 to 200 characters".into()));
    }
    Ok(s.to_string())
}

/// `HOST:PORT` of this machine when the port is fixed: stable across restarts, unique among the
/// nodes as long as hosts have distinct names. `None` with port 0 (a new port at every start).
pub(super) fn default_node_id(listen: SocketAddr) -> Option<String> {
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

/// `none` or `jwt`.
pub(super) fn auth_mode(s: &str) -> Result<AuthMode, Refusal> {
    match s {
        "none" => Ok(AuthMode::None),
        "jwt" => Ok(AuthMode::Jwt),
        other => Err(Refusal(format!(
            "unknown auth mode '{other}'; use 'none' or 'jwt'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(duration("10").unwrap(), Duration::from_secs(10));
        assert!(duration("-1s").is_err());
        assert!(duration("1y").is_err());
    }
}
