//! The store conformance suite ([`eventsync_conformance`]) run against the MongoDB store:
//! the MongoDB `MONGODB_URI` names, or else the stand-in `common::mongo` starts (once for the
//! whole file). Every check gets a database of its own.

/// The repository's MongoDB stand-in launcher, shared with the server's integration tests.
#[path = "../../../tests/common/mongo.rs"]
pub mod mongo;
mod common {
    pub use crate::mongo;
}

use std::sync::Arc;

use eventsync::hub::Hub;
use eventsync::store::mongo::{MongoOptions, MongoStore};
use eventsync::store::Store;
use eventsync_conformance as conformance;

/// A fresh store on a new, empty database.
async fn fresh() -> (Arc<dyn Store>, Hub) {
    let hub = Hub::new(conformance::HUB_CAPACITY);
    let store = MongoStore::open(
        MongoOptions {
            uri: common::mongo::uri(&common::mongo::fresh_database()),
            write_queue: conformance::WRITE_QUEUE,
            // Small batches, so the concurrent check spans several group commits.
            max_batch: 16,
            limits: conformance::limits(),
            snapshot_every: conformance::SNAPSHOT_EVERY,
            // Each database is new: the node's record is written, none is found to end.
            node_id: Some("conformance".into()),
        },
        hub.clone(),
    )
    .await
    .expect("open the MongoDB store");
    (Arc::new(store) as Arc<dyn Store>, hub)
}

eventsync_conformance::conformance_tests!(fresh);
