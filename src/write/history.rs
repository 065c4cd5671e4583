//! Rebuilding a document as of a past version: a snapshot (or nothing, before version 1) plus the
//! events after it, applied in order. Pure; the store supplies the pieces.

use serde_json::Value;

use crate::model::{Data, Event, Op, Snapshot, Version};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RebuildError {
    /// The events do not continue the base version by version (history was compacted under us).
    #[error("history has a gap before version {0}")]
    Gap(Version),
    /// A stored patch no longer applies: the log is corrupt.
    #[error("stored patch for version {version} does not apply: {reason}")]
    Corrupt { version: Version, reason: String },
}

/// Applies `events` (ascending, starting right after `base`) to `base` and returns the body at
/// `target`, or `None` if the document was deleted at that version.
pub fn rebuild(
    base: Option<&Snapshot>,
    events: &[Event],
    target: Version,
) -> Result<Option<Data>, RebuildError> {
    let (mut version, mut doc) = match base {
        Some(s) => (s.version, Some(Value::Object(s.data.clone()))),
        None => (0, None),
    };
    for e in events.iter().take_while(|e| e.version <= target) {
        if e.version != version + 1 {
            return Err(RebuildError::Gap(version + 1));
        }
        doc = match e.op {
            Op::Delete => None,
            Op::Create => Some(apply(Value::Object(Data::new()), e)?),
            Op::Update => Some(apply(doc.unwrap_or(Value::Object(Data::new())), e)?),
        };
        version = e.version;
    }
    if version != target {
        return Err(RebuildError::Gap(version + 1));
    }
    Ok(doc.and_then(|d| match d {
        Value::Object(m) => Some(m),
        _ => None,
    }))
}

fn apply(mut doc: Value, e: &Event) -> Result<Value, RebuildError> {
    json_patch::patch(&mut doc, &e.patch).map_err(|err| RebuildError::Corrupt {
        version: e.version,
        reason: err.to_string(),
    })?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use serde_json::json;

    fn event(version: Version, op: Op, patch: Value) -> Event {
        Event {
            seq: version * 10,
            collection: "games".into(),
            id: "g".into(),
            version,
            op,
            patch: serde_json::from_value(patch).unwrap(),
            client_id: "t".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        }
    }

    fn obj(v: Value) -> Data {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn replays_from_nothing_or_from_a_snapshot() {
        let events = vec![
            event(1, Op::Create, json!([{"op": "add", "path": "/n", "value": 1}])),
            event(
                2,
                Op::Update,
                json!([{"op": "replace", "path": "/n", "value": 2}]),
            ),
            event(3, Op::Update, json!([{"op": "add", "path": "/m", "value": true}])),
        ];
        assert_eq!(rebuild(None, &events, 1).unwrap(), Some(obj(json!({"n": 1}))));
        assert_eq!(
            rebuild(None, &events, 3).unwrap(),
            Some(obj(json!({"n": 2, "m": true})))
        );
        let snap = Snapshot {
            collection: "games".into(),
            id: "g".into(),
            version: 2,
            seq: 20,
            ts: Timestamp(0),
            data: obj(json!({"n": 2})),
        };
        assert_eq!(
            rebuild(Some(&snap), &events[2..], 3).unwrap(),
            Some(obj(json!({"n": 2, "m": true})))
        );
        assert_eq!(rebuild(Some(&snap), &[], 2).unwrap(), Some(obj(json!({"n": 2}))));
    }

    #[test]
    fn deleted_versions_rebuild_to_none_and_recreation_starts_fresh() {
        let events = vec![
            event(1, Op::Create, json!([{"op": "add", "path": "/n", "value": 1}])),
            event(2, Op::Delete, json!([])),
            event(3, Op::Create, json!([{"op": "add", "path": "/k", "value": 0}])),
        ];
        assert_eq!(rebuild(None, &events, 2).unwrap(), None);
        assert_eq!(rebuild(None, &events, 3).unwrap(), Some(obj(json!({"k": 0}))));
    }

    #[test]
    fn gaps_are_reported_not_papered_over() {
        let events = vec![event(2, Op::Update, json!([]))];
        assert_eq!(rebuild(None, &events, 2), Err(RebuildError::Gap(1)));
        assert_eq!(rebuild(None, &[], 1), Err(RebuildError::Gap(1)));
    }
}
