//! The catch-up plan — what a client with state vector V needs, document by document. Pure: the
//! rules are here, the [`Planner`] turns them into the reads a backend must answer (inside one
//! consistent read transaction), and `sync` builds the messages from the rows it is given.
//!
//! A leaf of the crate: it knows documents and events (the model), nothing of the store, the
//! protocol's messages or the sync session, so both the store and `sync` can use it.
//!
//! For each document of a subscribed collection, comparing the client's version `c` with the
//! server's `s`:
//!
//! | client | server | step |
//! |---|---|---|
//! | `c == s` | any | nothing |
//! | absent | live | snapshot |
//! | absent | deleted / never existed | nothing |
//! | `c < s`, events `c+1..=s` retained | any | those events — unless they are larger than a snapshot |
//! | `c < s`, history compacted past `c` | live / deleted | snapshot / delete |
//! | `c > s` (a version the server never had) | live / deleted | snapshot / delete (a reset) |
//! | present | never existed | delete at version 0 (a reset) |
//!
//! "Larger than a snapshot" compares message bytes: Σ(patch + per-event overhead) against
//! (body + per-snapshot overhead). The store never reads more event sizes than a snapshot could
//! outweigh ([`event_budget`]), so the decision costs O(document size), not O(history length): a
//! client 10,000 events behind gets its snapshot without the 10,000 events being looked at.

mod planner;

pub use planner::{
    Answer, CatchUpRows, CollectionRows, DocRows, Need, Planner, Readable, Resume, Selection, SUMMARY_PAGE,
};

use std::collections::BTreeMap;

use crate::model::Version;

/// Bytes an `event` message adds around its patch (type, seq, ids, op, client, op_id, ts).
pub const EVENT_OVERHEAD: u64 = 160;
/// Bytes a `snapshot` message adds around its body.
pub const SNAPSHOT_OVERHEAD: u64 = 80;

/// What the store knows of one document, enough to plan (no body, no events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSummary {
    pub id: String,
    pub version: Version,
    pub deleted: bool,
    /// Events at or below this version were compacted away.
    pub compacted_through: Version,
    /// Size of the stored body in bytes.
    pub data_bytes: u64,
    /// When it was created (`created_at`, Unix milliseconds): what a window (`latest`) orders by.
    pub created: i64,
}

/// What to send for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the client is current.
    Nothing,
    /// The events with versions `from..=to`, in order — if they turn out cheaper than a snapshot
    /// (see [`events_or_snapshot`]).
    Events { from: Version, to: Version },
    /// The document's current body at `version`.
    Snapshot { version: Version },
    /// A `snapshot` with `deleted: true` at `version` (0: the server never had the document).
    Delete { version: Version },
}

/// The first decision for one document, before event sizes are known.
pub fn step(client: Option<Version>, server: Option<&DocSummary>) -> Step {
    let client = client.filter(|v| *v > 0);
    match (client, server) {
        (None, None) => Step::Nothing,
        (Some(_), None) => Step::Delete { version: 0 },
        (None, Some(s)) if s.deleted => Step::Nothing,
        (None, Some(s)) => Step::Snapshot { version: s.version },
        (Some(c), Some(s)) if c == s.version => Step::Nothing,
        (Some(c), Some(s)) if c < s.version && c >= s.compacted_through => Step::Events {
            from: c + 1,
            to: s.version,
        },
        (Some(_), Some(s)) => whole(s),
    }
}

/// The snapshot (or delete) that replaces events for `s`.
pub fn whole(s: &DocSummary) -> Step {
    if s.deleted {
        Step::Delete { version: s.version }
    } else {
        Step::Snapshot { version: s.version }
    }
}

/// Bytes of the message that would replace events for `s`.
pub fn snapshot_bytes(s: &DocSummary) -> u64 {
    SNAPSHOT_OVERHEAD + if s.deleted { 0 } else { s.data_bytes }
}

/// The most events whose sizes are worth reading for `s`: beyond this many, events are surely
/// larger than the snapshot, whatever their patches.
pub fn event_budget(s: &DocSummary) -> u64 {
    snapshot_bytes(s) / EVENT_OVERHEAD + 1
}

/// Chooses between the events `from..=to` and a snapshot, given the patch sizes of (a prefix of)
/// those events: `patch_bytes` holds at most [`event_budget`] entries, in version order.
pub fn events_or_snapshot(s: &DocSummary, from: Version, to: Version, patch_bytes: &[u64]) -> Step {
    let missing = to - from + 1;
    let snapshot = snapshot_bytes(s);
    if missing > event_budget(s) || (patch_bytes.len() as u64) < missing.min(event_budget(s)) {
        // More events than a snapshot could outweigh, or some are missing from the log after all.
        return whole(s);
    }
    let events: u64 = patch_bytes.iter().map(|b| b + EVENT_OVERHEAD).sum();
    if events > snapshot {
        whole(s)
    } else {
        Step::Events { from, to }
    }
}

/// The ids a page of summaries speaks for: above the first (all when `None`), up to and including
/// the second (to the end when `None`).
pub type IdRange<'r> = (Option<&'r str>, Option<&'r str>);

/// The client's entries whose ids are in `range`.
pub fn in_range<'c>(
    client: &'c BTreeMap<String, Version>,
    (after, through): IdRange<'_>,
) -> impl Iterator<Item = (&'c String, &'c Version)> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let low = after.map_or(Unbounded, Excluded);
    let high = through.map_or(Unbounded, Included);
    client.range::<str, _>((low, high))
}

/// The summary of document `id` in `summaries` (sorted by id, as [`plan_collection`] takes them).
pub fn summary_of<'a>(summaries: &'a [DocSummary], id: &str) -> Option<&'a DocSummary> {
    summaries
        .binary_search_by(|s| s.id.as_str().cmp(id))
        .ok()
        .map(|i| &summaries[i])
}

/// For a first step of events, the versions whose patch sizes the store must read to decide between
/// them and a snapshot ([`refine`]); `None` when no sizes are needed — not an events step, or more
/// events than a snapshot could outweigh (then [`refine`] decides without them).
pub fn sizes_needed(first: &Step, summary: Option<&DocSummary>) -> Option<(Version, Version)> {
    match (first, summary) {
        (Step::Events { from, to }, Some(s)) if to - from < event_budget(s) => Some((*from, *to)),
        _ => None,
    }
}

/// The final step, given the patch sizes read for [`sizes_needed`] (empty when none were needed).
pub fn refine(first: Step, summary: Option<&DocSummary>, patch_bytes: &[u64]) -> Step {
    match (first, summary) {
        (Step::Events { from, to }, Some(s)) => events_or_snapshot(s, from, to, patch_bytes),
        (step, _) => step,
    }
}

/// Plans one collection: every document the server has, and every document the client claims in
/// `range` (none when `None`: the summaries are only those changed lately, and speak for no
/// others). Returns the steps in id order (documents needing nothing are left out).
pub fn plan_collection(
    client: Option<&BTreeMap<String, Version>>,
    server: &[DocSummary],
    range: Option<IdRange<'_>>,
) -> Vec<(String, Step)> {
    let empty = BTreeMap::new();
    let client = client.unwrap_or(&empty);
    let mut out = Vec::new();
    for s in server {
        let st = step(client.get(&s.id).copied(), Some(s));
        if st != Step::Nothing {
            out.push((s.id.clone(), st));
        }
    }
    let known: std::collections::HashSet<&str> = server.iter().map(|s| s.id.as_str()).collect();
    for (id, v) in range.into_iter().flat_map(|range| in_range(client, range)) {
        if !known.contains(id.as_str()) {
            let st = step(Some(*v), None);
            if st != Step::Nothing {
                out.push((id.clone(), st));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(version: Version, deleted: bool, compacted_through: Version, data_bytes: u64) -> DocSummary {
        DocSummary {
            id: "d".into(),
            version,
            deleted,
            compacted_through,
            data_bytes,
            created: 0,
        }
    }

    #[test]
    fn equal_versions_need_nothing() {
        assert_eq!(step(Some(5), Some(&doc(5, false, 0, 10))), Step::Nothing);
        assert_eq!(step(Some(5), Some(&doc(5, true, 0, 0))), Step::Nothing);
        assert_eq!(step(None, None), Step::Nothing);
    }

    #[test]
    fn behind_with_history_gets_the_missing_events() {
        assert_eq!(
            step(Some(3), Some(&doc(7, false, 0, 10))),
            Step::Events { from: 4, to: 7 }
        );
        // Compacted through exactly the client's version: events 4.. are retained.
        assert_eq!(
            step(Some(3), Some(&doc(7, false, 3, 10))),
            Step::Events { from: 4, to: 7 }
        );
        // A delete is just the last event.
        assert_eq!(
            step(Some(3), Some(&doc(4, true, 0, 0))),
            Step::Events { from: 4, to: 4 }
        );
    }

    #[test]
    fn behind_past_compaction_gets_a_snapshot_or_the_delete() {
        assert_eq!(
            step(Some(2), Some(&doc(7, false, 5, 10))),
            Step::Snapshot { version: 7 }
        );
        assert_eq!(
            step(Some(2), Some(&doc(7, true, 5, 0))),
            Step::Delete { version: 7 }
        );
    }

    #[test]
    fn unknown_to_the_client() {
        assert_eq!(
            step(None, Some(&doc(4, false, 0, 10))),
            Step::Snapshot { version: 4 }
        );
        assert_eq!(
            step(Some(0), Some(&doc(4, false, 0, 10))),
            Step::Snapshot { version: 4 }
        );
        assert_eq!(step(None, Some(&doc(4, true, 0, 0))), Step::Nothing);
    }

    #[test]
    fn versions_the_server_never_had_are_reset() {
        assert_eq!(
            step(Some(9), Some(&doc(4, false, 0, 10))),
            Step::Snapshot { version: 4 }
        );
        assert_eq!(
            step(Some(9), Some(&doc(4, true, 0, 0))),
            Step::Delete { version: 4 }
        );
        assert_eq!(step(Some(1), None), Step::Delete { version: 0 });
    }

    #[test]
    fn events_larger_than_a_snapshot_become_the_snapshot() {
        let s = doc(10, false, 0, 1000);
        let budget = event_budget(&s);
        assert_eq!(budget, (1000 + SNAPSHOT_OVERHEAD) / EVENT_OVERHEAD + 1);
        // Two small events: cheaper.
        assert_eq!(
            events_or_snapshot(&s, 9, 10, &[30, 30]),
            Step::Events { from: 9, to: 10 }
        );
        // Two events with big patches: the snapshot.
        assert_eq!(
            events_or_snapshot(&s, 9, 10, &[900, 900]),
            Step::Snapshot { version: 10 }
        );
        // More events than the budget: the snapshot, without looking at sizes.
        assert_eq!(events_or_snapshot(&s, 1, 10, &[]), Step::Snapshot { version: 10 });
        // A deleted document's replacement is tiny: a few events already outweigh it.
        let gone = doc(10, true, 0, 0);
        assert_eq!(
            events_or_snapshot(&gone, 8, 10, &[2, 2, 2]),
            Step::Delete { version: 10 }
        );
        assert_eq!(
            events_or_snapshot(&gone, 10, 10, &[2]),
            Step::Delete { version: 10 }
        );
    }

    #[test]
    fn missing_event_sizes_mean_a_snapshot() {
        let s = doc(10, false, 0, 100_000);
        assert_eq!(
            events_or_snapshot(&s, 8, 10, &[10, 10]),
            Step::Snapshot { version: 10 }
        );
    }

    #[test]
    fn ten_thousand_behind_is_decided_without_reading_events() {
        let s = doc(10_001, false, 0, 200);
        assert!(event_budget(&s) < 10);
        assert_eq!(
            events_or_snapshot(&s, 2, 10_001, &[]),
            Step::Snapshot { version: 10_001 }
        );
    }

    #[test]
    fn a_collection_plan_covers_both_sides_in_id_order() {
        let server = vec![
            DocSummary {
                id: "a".into(),
                ..doc(2, false, 0, 10)
            },
            DocSummary {
                id: "b".into(),
                ..doc(1, false, 0, 10)
            },
            DocSummary {
                id: "c".into(),
                ..doc(3, true, 0, 0)
            },
            DocSummary {
                id: "e".into(),
                ..doc(4, true, 0, 0)
            },
        ];
        let client: BTreeMap<String, Version> = [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("c".to_string(), 2),
            ("d".to_string(), 5),
        ]
        .into();
        let plan = plan_collection(Some(&client), &server, Some((None, None)));
        assert_eq!(
            plan,
            vec![
                ("a".to_string(), Step::Events { from: 2, to: 2 }),
                ("c".to_string(), Step::Events { from: 3, to: 3 }),
                ("d".to_string(), Step::Delete { version: 0 }),
            ]
        );
        let fresh = plan_collection(None, &server, Some((None, None)));
        assert_eq!(
            fresh,
            vec![
                ("a".to_string(), Step::Snapshot { version: 2 }),
                ("b".to_string(), Step::Snapshot { version: 1 }),
            ]
        );
    }
}
