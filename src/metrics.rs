//! Metrics — what an operator watches, in the Prometheus text format on `--metrics-listen`.
//!
//! The code records through the `metrics` facade (a counter is an atomic add; with no recorder
//! installed, every call here is a no-op), and `metrics-exporter-prometheus` renders it. They are
//! chosen over `prometheus-client` because recording needs no handle passed down to the store's
//! writer thread, the hub and every session: the few functions below are the only names, so a
//! metric is named once. The recorder is the process's (installed by the first server that
//! serves metrics); servers started side by side in one process, as tests do, share it.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `eventsync_sessions` | gauge: open sync sessions | `transport` = `ws`, `sse` |
//! | `eventsync_resyncs_total` | counter: live sessions re-synced from the store | `reason` = `lagged` (behind the hub), `gap` |
//! | `eventsync_deliveries_total` | counter: live events written to clients | `transport` |
//! | `eventsync_bytes_out_total` | counter: bytes written to client sockets (all of HTTP) | |
//! | `eventsync_catch_ups_total` | counter: catch-ups sent (hello, sync, re-sync) | |
//! | `eventsync_catch_up_seconds` | histogram: reading and sending one | |
//! | `eventsync_catch_up_messages_total` | counter | `kind` = `snapshot`, `event` |
//! | `eventsync_writes_total` | counter: writes, by what became of them | `outcome` = `applied`, `unchanged`, `replayed`, `refused` (by the rules), `failed` (the store), `overloaded` (the queue was full) |
//! | `eventsync_commit_seconds` | histogram: one group commit (transaction, fsync) | |
//! | `eventsync_commit_batch_size` | histogram: writes per group commit | |
//! | `eventsync_write_queue_depth` | gauge: writes waiting for the writer | |
//! | `eventsync_store_errors_total` | counter: backend failures | |
//! | `eventsync_follower_lag_events` | gauge: MongoDB, `last_seq - published_seq` at scrape | |
//! | `eventsync_refusals_total` | counter: refused requests and connections | `reason` = an error code, or `header_timeout`, `write_stall` |

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process's recorder, installed on first use.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &sizes))
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics: no recorder installed");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("eventsync_sessions", "Open sync sessions, by transport.");
    describe_counter!(
        "eventsync_resyncs_total",
        "Live sessions re-synced from the store, by reason."
    );
    describe_counter!(
        "eventsync_deliveries_total",
        "Live events written to clients, by transport."
    );
    describe_counter!(
        "eventsync_bytes_out_total",
        Unit::Bytes,
        "Bytes written to client sockets."
    );
    describe_counter!("eventsync_catch_ups_total", "Catch-ups sent.");
    describe_histogram!(
        "eventsync_catch_up_seconds",
        Unit::Seconds,
        "Reading and sending one catch-up."
    );
    describe_counter!(
        "eventsync_catch_up_messages_total",
        "Catch-up messages sent, by kind."
    );
    describe_counter!(
        "eventsync_writes_total",
        "Writes decided by the store's writer, by outcome."
    );
    describe_histogram!("eventsync_commit_seconds", Unit::Seconds, "One group commit.");
    describe_histogram!("eventsync_commit_batch_size", "Writes per group commit.");
    describe_gauge!(
        "eventsync_write_queue_depth",
        "Writes waiting for the store's writer."
    );
    describe_counter!("eventsync_store_errors_total", "Store backend failures.");
    describe_gauge!(
        "eventsync_follower_lag_events",
        "Events committed but not yet published by this node."
    );
    describe_counter!(
        "eventsync_refusals_total",
        "Refused requests and connections, by reason."
    );
}

/// An open session, counted while it lives.
pub struct SessionGauge(&'static str);

impl SessionGauge {
    pub fn open(transport: &'static str) -> SessionGauge {
        gauge!("eventsync_sessions", "transport" => transport).increment(1.0);
        SessionGauge(transport)
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        gauge!("eventsync_sessions", "transport" => self.0).decrement(1.0);
    }
}

pub fn resynced(reason: &'static str) {
    counter!("eventsync_resyncs_total", "reason" => reason).increment(1);
}

pub fn delivered(transport: &'static str, events: u64) {
    counter!("eventsync_deliveries_total", "transport" => transport).increment(events);
}

pub fn bytes_out(n: u64) {
    counter!("eventsync_bytes_out_total").increment(n);
}

pub fn caught_up(took: Duration, snapshots: u64, events: u64) {
    counter!("eventsync_catch_ups_total").increment(1);
    histogram!("eventsync_catch_up_seconds").record(took.as_secs_f64());
    counter!("eventsync_catch_up_messages_total", "kind" => "snapshot").increment(snapshots);
    counter!("eventsync_catch_up_messages_total", "kind" => "event").increment(events);
}

/// A write's outcome: `applied`, `unchanged`, `replayed`, `refused` or `failed`.
pub fn write(outcome: &'static str) {
    counter!("eventsync_writes_total", "outcome" => outcome).increment(1);
}

/// One group commit of `size` writes, with `queued` more waiting behind it.
pub fn committed(size: usize, took: Duration, queued: usize) {
    histogram!("eventsync_commit_seconds").record(took.as_secs_f64());
    histogram!("eventsync_commit_batch_size").record(size as f64);
    gauge!("eventsync_write_queue_depth").set(queued as f64);
}

pub fn store_error() {
    counter!("eventsync_store_errors_total").increment(1);
}

pub fn follower_lag(events: u64) {
    gauge!("eventsync_follower_lag_events").set(events as f64);
}

pub fn refused(reason: &'static str) {
    counter!("eventsync_refusals_total", "reason" => reason).increment(1);
}

/// A write's result, as the store's writer decided it (`eventsync_writes_total`).
pub fn write_result(result: &Result<crate::write::Committed, crate::store::StoreError>) {
    use crate::store::StoreError;
    write(match result {
        Ok(c) if c.replayed => "replayed",
        Ok(c) if c.event.is_none() => "unchanged",
        Ok(_) => "applied",
        Err(StoreError::Write(_) | StoreError::IdempotencyKeyReused) => "refused",
        Err(_) => "failed",
    });
}
