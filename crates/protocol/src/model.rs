//! The domain's nouns on the wire: documents, events, snapshots, and the names that address them.
//!
//! Everything here is plain data with serde derives; the JSON shapes are the wire format of the REST API
//! (and, in the sync protocol, of `event` and `snapshot` messages), so changing a field name is a
//! protocol change.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::Timestamp;

/// A position in the global event log. Strictly increasing across the store, never reused.
pub type Seq = u64;
/// A document's version: 1 after its creation, +1 per committed change (a delete included).
pub type Version = u64;
/// A document body: always a JSON object.
pub type Data = Map<String, Value>;

/// Longest collection name accepted.
pub const MAX_COLLECTION_NAME: usize = 64;
/// Longest document id accepted.
pub const MAX_DOC_ID: usize = 128;
/// Collection names that would shadow an API route or a store-internal collection.
pub const RESERVED_COLLECTIONS: &[&str] = &[
    "events",
    "snapshots",
    "state_vectors",
    "clients",
    "sync",
    "admin",
    "health",
    "idempotency",
];

/// What a write did to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "create" => Some(Op::Create),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A live document as the API shows it. The body is in `data`; the envelope is the server's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub collection: String,
    pub id: String,
    pub version: Version,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub data: Data,
}

/// Where a document's retained history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    /// The oldest version that can still be rebuilt (`GET .../versions/{v}`).
    pub oldest_version: Version,
    /// The first version whose event is still in the log.
    pub events_from_version: Version,
    /// Versions up to here were compacted into a snapshot (0: nothing compacted).
    pub compacted_through: Version,
}

/// One committed change, as stored in the log and sent to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: Seq,
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// The document's version after this change.
    pub version: Version,
    pub op: Op,
    /// RFC 6902 patch from the previous version to this one (empty for a delete).
    pub patch: json_patch::Patch,
    pub client_id: String,
    pub op_id: String,
    pub ts: Timestamp,
    /// The writer's token subject (`--auth jwt`); absent for writes without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A document's full body at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub collection: String,
    pub id: String,
    pub version: Version,
    /// Sequence number of the event that produced this version.
    pub seq: Seq,
    pub ts: Timestamp,
    pub data: Data,
}

/// A snapshot's metadata, without its body (what the snapshot listing returns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub version: Version,
    pub seq: Seq,
    pub ts: Timestamp,
    pub bytes: u64,
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("collection name must be 1-{MAX_COLLECTION_NAME} characters: a letter, then letters, digits, '_' or '-'")]
    BadCollection,
    #[error("collection name '{0}' is reserved")]
    ReservedCollection(String),
    #[error("document id must be 1-{MAX_DOC_ID} characters of letters, digits, '_', '-', '.', ':' or '@', not starting with '.'")]
    BadId,
}

/// Checks a collection name: `[A-Za-z][A-Za-z0-9_-]{0,63}`, not reserved.
pub fn validate_collection(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !first_ok || !rest_ok || name.len() > MAX_COLLECTION_NAME {
        return Err(NameError::BadCollection);
    }
    if RESERVED_COLLECTIONS.contains(&name) || name.starts_with("system") {
        return Err(NameError::ReservedCollection(name.to_string()));
    }
    Ok(())
}

/// Checks a document id: 1-128 of `[A-Za-z0-9_.:@-]`, not starting with '.'.
pub fn validate_id(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DOC_ID
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(NameError::BadId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names() {
        assert!(validate_collection("games").is_ok());
        assert!(validate_collection("Game_2-x").is_ok());
        assert!(validate_collection(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "2games",
            "_x",
            "ga mes",
            "gäme",
            "a/b",
            "a.b",
            &"a".repeat(65),
        ] {
            assert_eq!(validate_collection(bad), Err(NameError::BadCollection), "{bad}");
        }
        for reserved in ["events", "state_vectors", "system_users"] {
            assert!(matches!(
                validate_collection(reserved),
                Err(NameError::ReservedCollection(_))
            ));
        }
    }

    #[test]
    fn document_ids() {
        for ok in ["g1", "a.b:c@d-e_f", &"x".repeat(128), "018f-uuid"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "ü", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
