//! The snapshot and compaction policy, run on timers — keeps the log bounded.
//!
//! The write path already snapshots a document every `snapshot_every` versions (inside the commit,
//! where the new body is at hand). Here, two timers complete the policy: every `snapshot_interval`
//! each document changed since its last snapshot gets one, and every `compact_interval` the log is
//! compacted — events covered by a snapshot are dropped, except each document's last
//! `retain_events` events and every event younger than `retain_for`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::SnapshotConfig;
use crate::store::{Retention, Store};
use crate::time::Timestamp;

/// Runs both timers until `shutdown` is cancelled.
pub async fn run(
    store: Arc<dyn Store>,
    policy: SnapshotConfig,
    idempotency_ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut snapshot_timer = tokio::time::interval(policy.interval);
    let mut compact_timer = tokio::time::interval(policy.compact_interval);
    snapshot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    compact_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Both fire at once on the first tick; skip that so startup stays quick.
    snapshot_timer.tick().await;
    compact_timer.tick().await;
    let retention = Retention {
        keep_last: policy.retain_events,
        keep_for_ms: i64::try_from(policy.retain_for.as_millis()).unwrap_or(i64::MAX),
    };
    let ttl_ms = i64::try_from(idempotency_ttl.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = snapshot_timer.tick() => match store.snapshot_changed().await {
                Ok(stats) if stats.snapshots_written > 0 => tracing::info!(?stats, "timed snapshots"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "timed snapshots failed"),
            },
            _ = compact_timer.tick() => match store.compact(retention, ttl_ms, Timestamp::now()).await {
                Ok(stats) if stats.documents > 0 || stats.idempotency_keys_expired > 0 => {
                    tracing::info!(?stats, "compaction")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "compaction failed"),
            },
        }
    }
}
