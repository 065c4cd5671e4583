//! Per-client limits: how fast one client may write, and how many WebSocket sessions and SSE
//! streams it may hold open. A client is its token's subject, or its IP address without auth
//! ([`super::Principal::limit_key`]), so one noisy client is held back and no one else is. A
//! caller with no key (an anonymous loopback peer) is not limited.
//!
//! The write rate is a GCRA token bucket from `governor` (keyed, lock-free per check; the crate
//! tower-governor and most Rust rate limiters build on): `--write-rate` per second, with bursts
//! of `--write-burst`. Open sockets and streams are counted per key; a [`Slot`] gives its place
//! back when dropped, so a session that ends for any reason frees it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::AccessConfig;

/// Every per-client limit of the server.
pub struct ClientLimits {
    writes: Option<DefaultKeyedRateLimiter<String>>,
    sockets: Counter,
    streams: Counter,
}

/// What a client is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The write rate: wait this long.
    Writes(Duration),
    /// Open WebSocket sessions, at this limit.
    Sockets(usize),
    /// Open SSE streams, at this limit.
    Streams(usize),
}

impl Over {
    /// How long to wait before trying again (`Retry-After`, `retry_after_ms`).
    pub fn retry_after(&self) -> Duration {
        match self {
            Over::Writes(d) => *d,
            // A slot frees only when another session ends: a few seconds is a guess, not a promise.
            Over::Sockets(_) | Over::Streams(_) => Duration::from_secs(5),
        }
    }

    pub fn message(&self) -> String {
        match self {
            Over::Writes(_) => "this client writes faster than --write-rate allows".into(),
            Over::Sockets(n) => format!("this client already has {n} WebSocket sessions open"),
            Over::Streams(n) => format!("this client already has {n} SSE streams open"),
        }
    }
}

impl ClientLimits {
    pub fn from_config(c: &AccessConfig) -> ClientLimits {
        let writes = NonZeroU32::new(c.write_rate.min(u32::MAX as u64) as u32).map(|rate| {
            let burst = NonZeroU32::new(c.write_burst.clamp(1, u32::MAX as u64) as u32).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        ClientLimits {
            writes,
            sockets: Counter::new(c.max_sockets_per_client),
            streams: Counter::new(c.max_streams_per_client),
        }
    }

    /// No limits at all.
    pub fn unlimited() -> ClientLimits {
        ClientLimits {
            writes: None,
            sockets: Counter::new(0),
            streams: Counter::new(0),
        }
    }

    /// Takes one write from `key`'s allowance.
    pub fn write(&self, key: Option<&str>) -> Result<(), Over> {
        let (Some(limiter), Some(key)) = (&self.writes, key) else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_string())
            .map_err(|not_until| Over::Writes(not_until.wait_time_from(DefaultClock::default().now())))
    }

    /// A place for one more WebSocket session of `key`.
    pub fn socket(&self, key: Option<&str>) -> Result<Slot, Over> {
        self.sockets.take(key).ok_or(Over::Sockets(self.sockets.max))
    }

    /// A place for one more SSE stream of `key`.
    pub fn stream(&self, key: Option<&str>) -> Result<Slot, Over> {
        self.streams.take(key).ok_or(Over::Streams(self.streams.max))
    }

    /// Forgets the rate state of clients idle long enough to have a full allowance again (run
    /// now and then, so the limiter's memory follows the active clients, not every one ever seen).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.writes {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Open things per key, at most `max` each (0: no limit).
struct Counter {
    max: usize,
    open: OpenCounts,
}

impl Counter {
    fn new(max: usize) -> Counter {
        Counter {
            max,
            open: Arc::default(),
        }
    }

    fn take(&self, key: Option<&str>) -> Option<Slot> {
        let Some(key) = key.filter(|_| self.max > 0) else {
            return Some(Slot(None));
        };
        let mut open = self.open.lock().expect("the counter lock is never poisoned");
        let n = open.entry(key.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot(Some((Arc::clone(&self.open), key.to_string()))))
    }
}

/// One open socket or stream; dropping it frees the place.
pub struct Slot(Option<(OpenCounts, String)>);

/// Open things per key, shared by a counter and its slots.
type OpenCounts = Arc<Mutex<HashMap<String, usize>>>;

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((open, key)) = self.0.take() {
            let mut open = open.lock().expect("the counter lock is never poisoned");
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(flags: &[&str]) -> ClientLimits {
        ClientLimits::from_config(&Config::from_args_iter(flags.iter().copied()).unwrap().access)
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_holds_per_client() {
        let l = limits(&["--write-rate", "1", "--write-burst", "3"]);
        for _ in 0..3 {
            assert_eq!(l.write(Some("a")), Ok(()));
        }
        let Err(Over::Writes(wait)) = l.write(Some("a")) else {
            panic!("the fourth write of a burst of 3 must be refused")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another client is not held back by the first.
        assert_eq!(l.write(Some("b")), Ok(()));
        assert_eq!(limits(&["--write-rate", "0"]).write(Some("a")), Ok(()));
        // No key: not limited.
        for _ in 0..10 {
            assert_eq!(l.write(None), Ok(()));
        }
    }

    #[test]
    fn slots_are_counted_per_client_and_freed_when_dropped() {
        let l = limits(&["--max-sockets-per-client", "2", "--max-streams-per-client", "1"]);
        let a1 = l.socket(Some("a")).unwrap();
        let _a2 = l.socket(Some("a")).unwrap();
        assert_eq!(l.socket(Some("a")).err(), Some(Over::Sockets(2)));
        let _b = l.socket(Some("b")).unwrap();
        drop(a1);
        assert!(l.socket(Some("a")).is_ok());
        let s = l.stream(Some("a")).unwrap();
        assert_eq!(l.stream(Some("a")).err(), Some(Over::Streams(1)));
        drop(s);
        assert!(l.stream(Some("a")).is_ok());
        assert!(l.sockets.open.lock().unwrap().len() <= 2);
        let unkeyed: Vec<Slot> = (0..5).map(|_| l.socket(None).unwrap()).collect();
        assert_eq!(unkeyed.len(), 5);
    }
}
