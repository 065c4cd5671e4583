//! The domain's nouns. The wire types (documents, events, snapshots, names and their checks) are
//! the protocol crate's, re-exported here so the server says `crate::model::Event`; what only the
//! store needs — a document with its tombstone and history marks — is defined here.

pub use eventsync_protocol::model::*;

/// A document as the store holds it: live, or a tombstone left by a delete (kept so a client that
/// knew the document learns of the delete, and so a re-created id continues its version line).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    pub doc: Document,
    pub deleted: bool,
    /// Events with a version at or below this were compacted away; the snapshot at exactly this
    /// version is kept as the base of the retained history. 0 when nothing was compacted.
    pub compacted_through: Version,
    /// Version of the newest snapshot, 0 when there is none.
    pub snapshot_version: Version,
}

impl StoredDoc {
    /// The live document, or `None` for a tombstone.
    pub fn live(self) -> Option<Document> {
        (!self.deleted).then_some(self.doc)
    }

    /// Where retained history starts, as the history endpoints report it.
    pub fn retained(&self) -> Retained {
        Retained {
            oldest_version: self.compacted_through.max(1),
            events_from_version: self.compacted_through + 1,
            compacted_through: self.compacted_through,
        }
    }
}

/// A fresh document id: a UUIDv7, so generated ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    #[test]
    fn generated_ids_are_valid_ids() {
        assert!(validate_id(&new_id()).is_ok());
    }

    #[test]
    fn retained_history_bounds() {
        let doc = Document {
            collection: "games".into(),
            id: "g".into(),
            version: 9,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            data: Data::new(),
        };
        let mut stored = StoredDoc {
            doc,
            deleted: false,
            compacted_through: 0,
            snapshot_version: 0,
        };
        assert_eq!(stored.retained().oldest_version, 1);
        assert_eq!(stored.retained().events_from_version, 1);
        stored.compacted_through = 5;
        assert_eq!(stored.retained().oldest_version, 5);
        assert_eq!(stored.retained().events_from_version, 6);
    }
}
