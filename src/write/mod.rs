//! Applying a write — the first half of the data path: **version check → apply → diff**.
//!
//! A [`Write`] says what a client asked for; [`plan`] decides, from the document's current state and
//! nothing else, what that means: a new version with its RFC 6902 diff, no change at all, or a typed
//! refusal. [`decide`] wraps it with the rest of a commit's rules — idempotent replay, the event, the
//! new document record, a snapshot when one is due. Neither does I/O, so every backend runs the very
//! same rules inside its own transaction: the backend owns atomicity (one transaction per write, or
//! per batch of writes), this module owns meaning, and the rules are unit-tested here densely.
//!
//! The event's patch is always the *computed* diff between the stored versions, never the client's
//! patch as sent: a merge patch, a replace and a JSON Patch that moves things around all become the
//! same canonical RFC 6902 operations, and a write whose result equals the current body appends
//! nothing.

mod commit;
mod history;
pub mod wire;

pub use commit::{decide, target_id, Applied, Committed, Decision, Policy, Recorded, Refusal};
pub use history::{rebuild, RebuildError};

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use crate::json::{measure, value_depth};
use crate::model::{Data, Op, Version};

/// Most operations one JSON Patch may hold.
pub const MAX_PATCH_OPS: usize = 1000;
/// How many times the document limit a patch may walk while it is checked (copies and re-measures);
/// past it the patch is refused rather than let one request monopolize the writer.
const PATCH_WORK_FACTOR: usize = 8;

/// What a client asked to do to one document.
#[derive(Debug, Clone)]
pub struct Write {
    pub collection: String,
    /// `None` for a create that lets the server choose the id.
    pub id: Option<String>,
    pub mutation: Mutation,
    /// `If-Match`: apply only if the document is at exactly this version.
    pub expected_version: Option<Version>,
    /// Who wrote it (`X-Client-Id`, `server` by default).
    pub client_id: String,
    /// The client's `Idempotency-Key`, if it sent one: a repeat returns the first result.
    pub idempotency_key: Option<String>,
    /// The token's subject that made the write (`None` without auth): recorded in the event as
    /// `user`, and the scope of its idempotency key (see [`Write::idempotency_scope`]).
    pub user: Option<String>,
    /// Identifies the write's content, so a reused idempotency key with another request is caught.
    /// Computed by [`Write::new`] from what the write does, not from how it arrived, so a retry over
    /// another transport (REST, then WebSocket) still replays.
    pub fingerprint: u64,
}

impl Write {
    pub fn new(
        collection: String,
        id: Option<String>,
        mutation: Mutation,
        expected_version: Option<Version>,
        client_id: String,
        idempotency_key: Option<String>,
    ) -> Write {
        let (kind, body): (&[u8], Vec<u8>) = match &mutation {
            Mutation::Create(d) => (b"create", serde_json::to_vec(d).unwrap_or_default()),
            Mutation::Replace(d) => (b"replace", serde_json::to_vec(d).unwrap_or_default()),
            Mutation::Patch(p) => (b"patch", serde_json::to_vec(p).unwrap_or_default()),
            Mutation::Merge(v) => (b"merge", serde_json::to_vec(v).unwrap_or_default()),
            Mutation::Delete => (b"delete", Vec::new()),
        };
        let expected = expected_version.map(|v| v.to_string()).unwrap_or_default();
        let fingerprint = fingerprint(&[
            collection.as_bytes(),
            id.as_deref().unwrap_or("").as_bytes(),
            expected.as_bytes(),
            kind,
            &body,
        ]);
        Write {
            collection,
            id,
            mutation,
            expected_version,
            client_id,
            idempotency_key,
            user: None,
            fingerprint,
        }
    }

    /// Whose idempotency keys this write's key is among: its client id, within its user's (so one
    /// subject can never claim, or be refused for, another's key). A client id has no `/`, so
    /// `user/client` names one pair only.
    pub fn idempotency_scope(&self) -> std::borrow::Cow<'_, str> {
        match &self.user {
            None => std::borrow::Cow::Borrowed(&self.client_id),
            Some(u) => std::borrow::Cow::Owned(format!("{u}/{}", self.client_id)),
        }
    }
}

/// The change itself.
#[derive(Debug, Clone)]
pub enum Mutation {
    Create(Data),
    Replace(Data),
    /// RFC 6902.
    Patch(Patch),
    /// RFC 7396.
    Merge(Value),
    Delete,
}

/// The document as it is before the write (a tombstone counts as "not there" but keeps its version).
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    pub version: Version,
    pub data: &'a Data,
    pub deleted: bool,
}

/// Limits a write's result must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_document_bytes: usize,
    pub max_depth: usize,
}

/// What a write amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The result equals the current body: nothing to store, no event.
    Unchanged,
    /// A new version.
    Change(Change),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: Op,
    pub version: Version,
    /// The new body (empty for a delete).
    pub data: Data,
    /// `data` serialized, ready to store; empty for a delete.
    pub data_json: String,
    /// RFC 6902 diff from the previous body (from `{}` for a create; empty for a delete).
    pub patch: Patch,
}

/// Why a write was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The document does not exist (or was deleted).
    #[error("document not found")]
    NotFound,
    /// A create named an id that is live.
    #[error("a document with this id already exists (version {current_version})")]
    AlreadyExists { current_version: Version },
    /// `If-Match` named another version than the current one.
    #[error("version conflict: expected {expected}, current is {current_version}")]
    VersionConflict {
        expected: Version,
        current_version: Version,
    },
    /// The JSON Patch could not be applied (a failed `test`, a missing path, ...).
    #[error("patch operation {operation} failed: {reason}")]
    PatchFailed { operation: usize, reason: String },
    /// The result is not a JSON object.
    #[error("a document must be a JSON object; the result would be {found}")]
    NotAnObject { found: &'static str },
    /// The result is larger than the configured limit.
    #[error("document would be {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The result nests deeper than the configured limit.
    #[error("document would nest {depth} levels deep; the limit is {limit}")]
    TooDeep { depth: usize, limit: usize },
    /// The patch has more operations than [`MAX_PATCH_OPS`].
    #[error("a patch may hold at most {limit} operations; this one has {count}")]
    TooManyOperations { count: usize, limit: usize },
    /// The patch copies so much that checking it would cost more than the limits allow.
    #[error("the patch copies more data than the document limit allows")]
    TooExpensive,
}

/// Decides what `mutation` does to `current`. Pure: the caller stores the result atomically.
pub fn plan(
    current: Option<Current<'_>>,
    mutation: &Mutation,
    expected: Option<Version>,
    limits: Limits,
) -> Result<Plan, WriteError> {
    let live = current.filter(|c| !c.deleted);
    if let Mutation::Create(data) = mutation {
        if let Some(c) = live {
            return Err(WriteError::AlreadyExists {
                current_version: c.version,
            });
        }
        let version = current.map_or(1, |c| c.version + 1);
        let new = Value::Object(data.clone());
        let patch = json_patch::diff(&Value::Object(Data::new()), &new);
        return finish(Op::Create, version, new, patch, limits);
    }

    let Some(cur) = live else {
        return Err(WriteError::NotFound);
    };
    if let Some(expected) = expected.filter(|e| *e != cur.version) {
        return Err(WriteError::VersionConflict {
            expected,
            current_version: cur.version,
        });
    }
    let old = Value::Object(cur.data.clone());
    let new = match mutation {
        Mutation::Create(_) => unreachable!("handled above"),
        Mutation::Delete => {
            return Ok(Plan::Change(Change {
                op: Op::Delete,
                version: cur.version + 1,
                data: Data::new(),
                data_json: String::new(),
                patch: Patch(Vec::new()),
            }))
        }
        Mutation::Replace(data) => Value::Object(data.clone()),
        Mutation::Patch(patch) => {
            let mut doc = old.clone();
            apply_json_patch(&mut doc, patch, limits)?;
            doc
        }
        Mutation::Merge(patch) => {
            let mut doc = old.clone();
            json_patch::merge(&mut doc, patch);
            doc
        }
    };
    if new == old {
        return Ok(Plan::Unchanged);
    }
    let patch = json_patch::diff(&old, &new);
    finish(Op::Update, cur.version + 1, new, patch, limits)
}

/// Applies an RFC 6902 patch one operation at a time, refusing as soon as the document could exceed
/// the size or depth limit. Checking only the final result would let a tiny patch (forty `copy` ops
/// of the root) double the document forty times in memory first.
fn apply_json_patch(doc: &mut Value, patch: &Patch, limits: Limits) -> Result<(), WriteError> {
    if patch.0.len() > MAX_PATCH_OPS {
        return Err(WriteError::TooManyOperations {
            count: patch.0.len(),
            limit: MAX_PATCH_OPS,
        });
    }
    let budget = limits.max_document_bytes.saturating_mul(PATCH_WORK_FACTOR);
    let (mut size, _) = measure(doc);
    let mut work = size;
    for (i, op) in patch.0.iter().enumerate() {
        // What the operation puts into the document: its size (a lower bound) and depth.
        let growth = match op {
            PatchOperation::Add(o) => Some((o.path.as_str(), measure(&o.value))),
            PatchOperation::Replace(o) => Some((o.path.as_str(), measure(&o.value))),
            PatchOperation::Copy(o) => doc
                .pointer(o.from.as_str())
                .map(|v| (o.path.as_str(), measure(v))),
            PatchOperation::Move(o) => doc
                .pointer(o.from.as_str())
                .map(|v| (o.path.as_str(), (0, measure(v).1))),
            PatchOperation::Remove(_) | PatchOperation::Test(_) => None,
        };
        if let Some((path, (bytes, depth))) = growth {
            work = work.saturating_add(bytes);
            let depth = path.matches('/').count() + depth;
            if depth > limits.max_depth {
                return Err(WriteError::TooDeep {
                    depth,
                    limit: limits.max_depth,
                });
            }
            size = size.saturating_add(bytes);
            if size > limits.max_document_bytes {
                // The running total only grows; re-measure before refusing.
                let (real, _) = measure(doc);
                work = work.saturating_add(real);
                size = real.saturating_add(bytes);
                if size > limits.max_document_bytes {
                    return Err(WriteError::TooLarge {
                        size,
                        limit: limits.max_document_bytes,
                    });
                }
            }
            if work > budget {
                return Err(WriteError::TooExpensive);
            }
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| WriteError::PatchFailed {
            operation: i,
            reason: e.kind.to_string(),
        })?;
    }
    Ok(())
}

fn finish(op: Op, version: Version, new: Value, patch: Patch, limits: Limits) -> Result<Plan, WriteError> {
    let depth = value_depth(&new);
    let data = match new {
        Value::Object(map) => map,
        other => {
            return Err(WriteError::NotAnObject {
                found: kind_of(&other),
            })
        }
    };
    if depth > limits.max_depth {
        return Err(WriteError::TooDeep {
            depth,
            limit: limits.max_depth,
        });
    }
    let data_json = serde_json::to_string(&data).expect("a JSON map always serializes");
    if data_json.len() > limits.max_document_bytes {
        return Err(WriteError::TooLarge {
            size: data_json.len(),
            limit: limits.max_document_bytes,
        });
    }
    Ok(Plan::Change(Change {
        op,
        version,
        data,
        data_json,
        patch,
    }))
}

/// "an array", "a string", ... — for messages about the wrong kind of JSON value.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A stable 64-bit FNV-1a hash, for request fingerprints that must survive restarts and upgrades
/// (std's `DefaultHasher` promises neither).
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_document_bytes: 1024,
        max_depth: 8,
    };

    fn data(v: Value) -> Data {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn patch(v: Value) -> Patch {
        serde_json::from_value(v).unwrap()
    }

    fn change(p: Result<Plan, WriteError>) -> Change {
        match p {
            Ok(Plan::Change(c)) => c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    fn live(version: Version, d: &Data) -> Option<Current<'_>> {
        Some(Current {
            version,
            data: d,
            deleted: false,
        })
    }

    #[test]
    fn create_starts_at_version_one_with_a_diff_from_empty() {
        let c = change(plan(
            None,
            &Mutation::Create(data(json!({"gold": 5}))),
            None,
            LIMITS,
        ));
        assert_eq!((c.op, c.version), (Op::Create, 1));
        assert_eq!(
            serde_json::to_value(&c.patch).unwrap(),
            json!([{"op": "add", "path": "/gold", "value": 5}])
        );
        assert_eq!(c.data_json, r#"{"gold":5}"#);
    }

    #[test]
    fn create_over_a_live_document_is_refused_but_over_a_tombstone_continues_the_version_line() {
        let d = data(json!({"a": 1}));
        let err = plan(live(3, &d), &Mutation::Create(d.clone()), None, LIMITS).unwrap_err();
        assert_eq!(err, WriteError::AlreadyExists { current_version: 3 });
        let tomb = Some(Current {
            version: 4,
            data: &d,
            deleted: true,
        });
        let c = change(plan(tomb, &Mutation::Create(d.clone()), None, LIMITS));
        assert_eq!((c.op, c.version), (Op::Create, 5));
    }

    #[test]
    fn writes_to_missing_or_deleted_documents_are_not_found() {
        let d = Data::new();
        let tomb = Some(Current {
            version: 2,
            data: &d,
            deleted: true,
        });
        for m in [
            Mutation::Replace(d.clone()),
            Mutation::Delete,
            Mutation::Merge(json!({})),
        ] {
            assert_eq!(plan(None, &m, None, LIMITS), Err(WriteError::NotFound));
            assert_eq!(plan(tomb, &m, Some(2), LIMITS), Err(WriteError::NotFound));
        }
    }

    #[test]
    fn if_match_must_equal_the_current_version() {
        let d = data(json!({"a": 1}));
        let m = Mutation::Replace(data(json!({"a": 2})));
        assert_eq!(
            plan(live(4, &d), &m, Some(3), LIMITS),
            Err(WriteError::VersionConflict {
                expected: 3,
                current_version: 4
            })
        );
        assert_eq!(change(plan(live(4, &d), &m, Some(4), LIMITS)).version, 5);
        assert_eq!(change(plan(live(4, &d), &m, None, LIMITS)).version, 5);
    }

    #[test]
    fn json_patch_result_is_diffed_canonically() {
        let d = data(json!({"a": 1, "b": {"c": [1, 2]}}));
        let p = patch(json!([
            {"op": "copy", "from": "/a", "path": "/x"},
            {"op": "remove", "path": "/x"},
            {"op": "add", "path": "/b/c/-", "value": 3},
            {"op": "replace", "path": "/a", "value": 2}
        ]));
        let c = change(plan(live(1, &d), &Mutation::Patch(p), None, LIMITS));
        assert_eq!(
            Value::Object(c.data.clone()),
            json!({"a": 2, "b": {"c": [1, 2, 3]}})
        );
        let mut rebuilt = Value::Object(d.clone());
        json_patch::patch(&mut rebuilt, &c.patch).unwrap();
        assert_eq!(rebuilt, Value::Object(c.data));
        assert_eq!(c.op, Op::Update);
    }

    #[test]
    fn json_pointer_escapes_round_trip() {
        let d = data(json!({"a/b": 1, "m~n": 2}));
        let p = patch(
            json!([{"op": "replace", "path": "/a~1b", "value": 10}, {"op": "remove", "path": "/m~0n"}]),
        );
        let c = change(plan(live(1, &d), &Mutation::Patch(p), None, LIMITS));
        assert_eq!(Value::Object(c.data), json!({"a/b": 10}));
    }

    #[test]
    fn failing_patches_are_refused_with_the_operation_index() {
        let d = data(json!({"a": 1}));
        let p = patch(
            json!([{"op": "test", "path": "/a", "value": 1}, {"op": "test", "path": "/a", "value": 2}]),
        );
        match plan(live(1, &d), &Mutation::Patch(p), None, LIMITS) {
            Err(WriteError::PatchFailed { operation, .. }) => assert_eq!(operation, 1),
            other => panic!("{other:?}"),
        }
        let p = patch(json!([{"op": "remove", "path": "/missing"}]));
        assert!(matches!(
            plan(live(1, &d), &Mutation::Patch(p), None, LIMITS),
            Err(WriteError::PatchFailed { .. })
        ));
    }

    #[test]
    fn results_that_are_not_objects_are_refused() {
        let d = data(json!({"a": 1}));
        let p = patch(json!([{"op": "replace", "path": "", "value": [1]}]));
        assert_eq!(
            plan(live(1, &d), &Mutation::Patch(p), None, LIMITS),
            Err(WriteError::NotAnObject { found: "an array" })
        );
        assert_eq!(
            plan(live(1, &d), &Mutation::Merge(json!("x")), None, LIMITS),
            Err(WriteError::NotAnObject { found: "a string" })
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let d = data(json!({"a": 1, "b": {"c": 1, "d": 2}}));
        let c = change(plan(
            live(1, &d),
            &Mutation::Merge(json!({"a": null, "b": {"c": 5}})),
            None,
            LIMITS,
        ));
        assert_eq!(Value::Object(c.data), json!({"b": {"c": 5, "d": 2}}));
    }

    #[test]
    fn a_write_that_changes_nothing_is_unchanged() {
        let d = data(json!({"a": 1}));
        assert_eq!(
            plan(live(1, &d), &Mutation::Replace(d.clone()), None, LIMITS),
            Ok(Plan::Unchanged)
        );
        assert_eq!(
            plan(live(1, &d), &Mutation::Merge(json!({"a": 1})), None, LIMITS),
            Ok(Plan::Unchanged)
        );
        let p = patch(json!([{"op": "test", "path": "/a", "value": 1}]));
        assert_eq!(
            plan(live(1, &d), &Mutation::Patch(p), None, LIMITS),
            Ok(Plan::Unchanged)
        );
    }

    #[test]
    fn delete_bumps_the_version_with_an_empty_patch() {
        let d = data(json!({"a": 1}));
        let c = change(plan(live(7, &d), &Mutation::Delete, Some(7), LIMITS));
        assert_eq!((c.op, c.version, c.patch.0.len()), (Op::Delete, 8, 0));
    }

    #[test]
    fn size_and_depth_limits_apply_to_the_result() {
        let d = data(json!({}));
        let big = Mutation::Merge(json!({"s": "x".repeat(2000)}));
        assert!(matches!(
            plan(live(1, &d), &big, None, LIMITS),
            Err(WriteError::TooLarge { limit: 1024, .. })
        ));
        let deep = Mutation::Merge(json!({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}));
        assert!(matches!(
            plan(live(1, &d), &deep, None, LIMITS),
            Err(WriteError::TooDeep { depth: 9, limit: 8 })
        ));
    }

    #[test]
    fn a_patch_cannot_grow_the_document_past_the_limits_on_the_way() {
        let d = data(json!({"s": "x".repeat(300)}));
        // Forty root copies would double the document forty times; the second one is already too big.
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")}))
            .collect();
        match plan(
            live(1, &d),
            &Mutation::Patch(patch(Value::Array(ops))),
            None,
            LIMITS,
        ) {
            Err(WriteError::TooLarge { limit: 1024, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Copying a value into itself deepens the document; refused once past the depth limit.
        let ops: Vec<Value> = (0..20)
            .map(|_| json!({"op": "copy", "from": "", "path": "/a"}))
            .collect();
        let tiny = data(json!({}));
        assert!(matches!(
            plan(
                live(1, &tiny),
                &Mutation::Patch(patch(Value::Array(ops))),
                None,
                LIMITS
            ),
            Err(WriteError::TooDeep { limit: 8, .. })
        ));
        let many: Vec<Value> = (0..=MAX_PATCH_OPS)
            .map(|_| json!({"op": "test", "path": "", "value": {}}))
            .collect();
        assert!(matches!(
            plan(
                live(1, &tiny),
                &Mutation::Patch(patch(Value::Array(many))),
                None,
                LIMITS
            ),
            Err(WriteError::TooManyOperations { .. })
        ));
    }

    #[test]
    fn copies_that_stay_within_the_limits_apply() {
        let d = data(json!({"a": {"b": 1}}));
        let p = patch(
            json!([{"op": "copy", "from": "/a", "path": "/c"}, {"op": "move", "from": "/c", "path": "/a/c"}]),
        );
        let c = change(plan(live(1, &d), &Mutation::Patch(p), None, LIMITS));
        assert_eq!(Value::Object(c.data), json!({"a": {"b": 1, "c": {"b": 1}}}));
    }

    #[test]
    fn fingerprints_are_stable_and_separate_parts() {
        assert_eq!(
            fingerprint(&[b"PATCH", b"/api/games/1"]),
            fingerprint(&[b"PATCH", b"/api/games/1"])
        );
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
