//! The store conformance suite ([`eventsync_conformance`]) run against the embedded SQLite
//! store, plus what only this backend can be asked: reopening the same database file.

use std::path::Path;
use std::sync::Arc;

use eventsync::hub::Hub;
use eventsync::model::{Data, Event};
use eventsync::store::sqlite::{Durability, SqliteOptions, SqliteStore};
use eventsync::store::{EventFilter, Retention, Store, StoreError};
use eventsync::time::Timestamp;
use eventsync::write::{Mutation, Write};
use eventsync_conformance::{self as conformance, HUB_CAPACITY, SNAPSHOT_EVERY, WRITE_QUEUE};
use serde_json::{json, Value};
use tempfile::TempDir;

fn options(dir: &Path) -> SqliteOptions {
    SqliteOptions {
        path: dir.join("eventsync.db"),
        durability: Durability::Full,
        write_queue: WRITE_QUEUE,
        // Small batches, so the concurrent check spans several group commits.
        max_batch: 16,
        limits: conformance::limits(),
        snapshot_every: SNAPSHOT_EVERY,
    }
}

async fn open_in(dir: &Path, hub: Hub) -> Arc<dyn Store> {
    let opts = options(dir);
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(opts, hub))
        .await
        .expect("open task")
        .expect("open the SQLite store");
    Arc::new(store)
}

/// A fresh store in its own temporary directory, which lives as long as the test.
async fn fresh() -> (Arc<dyn Store>, Hub, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(HUB_CAPACITY);
    let store = open_in(dir.path(), hub.clone()).await;
    (store, hub, dir)
}

eventsync_conformance::conformance_tests!(fresh);

// ---------------------------------------------------------------------------------------------
// SQLite only: reopening the database file.
// ---------------------------------------------------------------------------------------------

fn obj(v: Value) -> Data {
    match v {
        Value::Object(m) => m,
        other => panic!("{other} is not an object"),
    }
}

fn write(collection: &str, id: &str, mutation: Mutation) -> Write {
    Write {
        collection: collection.into(),
        id: Some(id.into()),
        mutation,
        expected_version: None,
        client_id: "reopen".into(),
        idempotency_key: None,
        user: None,
        fingerprint: 0,
    }
}

fn append(collection: &str, id: &str, value: Value) -> Write {
    let ops = serde_json::from_value(json!([{"op": "add", "path": "/log/-", "value": value}])).unwrap();
    write(collection, id, Mutation::Patch(ops))
}

async fn all_events(store: &dyn Store) -> Vec<Event> {
    store.events(&EventFilter::default(), usize::MAX).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_finds_every_committed_document_and_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), Hub::new(HUB_CAPACITY)).await;
    let s = &*store;
    for id in ["a", "b", "c"] {
        s.commit(write("games", id, Mutation::Create(obj(json!({"log": []})))))
            .await
            .unwrap();
    }
    for n in 0..5 {
        s.commit(append("games", "a", json!(n))).await.unwrap();
    }
    s.commit(write("games", "b", Mutation::Delete)).await.unwrap();
    s.commit(write("chat", "x", Mutation::Create(obj(json!({"log": [1]})))))
        .await
        .unwrap();
    // Writes still queued when close() is called are finished, not dropped.
    let queued: Vec<_> = (0..20)
        .map(|n| s.commit(append("games", "c", json!(n))))
        .collect();
    let (results, closed) = tokio::join!(futures::future::join_all(queued), s.close());
    closed.expect("close");
    for r in &results {
        assert!(r.is_ok(), "a write queued before close() failed: {r:?}");
    }
    assert_eq!(
        s.commit(append("games", "a", json!("late"))).await,
        Err(StoreError::Closed)
    );

    let before_docs = [("games", "a"), ("games", "b"), ("games", "c"), ("chat", "x")];
    let reopened = open_in(dir.path(), Hub::new(HUB_CAPACITY)).await;
    let r = &*reopened;
    let a = r.get("games", "a").await.unwrap().unwrap();
    assert_eq!(
        (a.doc.version, a.doc.data["log"].clone()),
        (6, json!([0, 1, 2, 3, 4]))
    );
    assert!(r.get("games", "b").await.unwrap().unwrap().deleted);
    let c = r.get("games", "c").await.unwrap().unwrap();
    assert_eq!(c.doc.version, 21);
    assert_eq!(c.doc.data["log"].as_array().unwrap().len(), 20);
    for result in &results {
        let committed = result.as_ref().unwrap();
        let e = committed.event.as_deref().unwrap();
        let stored = r
            .document_events("games", "c", e.version, e.version)
            .await
            .unwrap();
        assert_eq!(
            stored,
            vec![e.clone()],
            "every acknowledged event survives the reopen"
        );
    }
    let log = all_events(r).await;
    assert_eq!(log.len(), 3 + 5 + 1 + 1 + 20);
    assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(r.last_seq().await.unwrap(), log.last().unwrap().seq);
    for (collection, id) in before_docs {
        assert!(
            r.get(collection, id).await.unwrap().is_some(),
            "{collection}/{id}"
        );
    }
    assert_eq!(
        r.snapshots("games", "a")
            .await
            .unwrap()
            .iter()
            .map(|s| s.version)
            .collect::<Vec<_>>(),
        [3, 6]
    );
    // The sequence continues where it stopped.
    let next = r.commit(append("games", "a", json!("after"))).await.unwrap();
    assert_eq!(next.event.unwrap().seq, log.last().unwrap().seq + 1);
    r.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_after_compacting_the_newest_events_keeps_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), Hub::new(HUB_CAPACITY)).await;
    let s = &*store;
    s.commit(write("games", "a", Mutation::Create(obj(json!({"log": []})))))
        .await
        .unwrap();
    for n in 0..4 {
        s.commit(append("games", "a", json!(n))).await.unwrap();
    }
    let max = s.last_seq().await.unwrap();
    assert_eq!(max, 5);
    s.snapshot_changed().await.unwrap();
    let everything = Retention {
        keep_last: 0,
        keep_for_ms: 0,
    };
    let stats = s
        .compact(everything, i64::MAX, Timestamp(Timestamp::now().0 + 1_000))
        .await
        .unwrap();
    assert_eq!(stats.events_deleted, 5);
    assert!(all_events(s).await.is_empty());
    s.close().await.unwrap();

    let reopened = open_in(dir.path(), Hub::new(HUB_CAPACITY)).await;
    let r = &*reopened;
    assert_eq!(
        r.last_seq().await.unwrap(),
        max,
        "last_seq survives compaction and a reopen"
    );
    let doc = r.get("games", "a").await.unwrap().unwrap();
    assert_eq!((doc.doc.version, doc.compacted_through), (5, 5));
    let next = r.commit(append("games", "a", json!("after"))).await.unwrap();
    let seq = next.event.unwrap().seq;
    assert!(seq > max, "a sequence number was reused: {seq} after {max}");
    r.close().await.unwrap();
}

/// One `compact()` call must expire *every* idempotency record older than the TTL (the trait's
/// contract), however many there are: more than the writer deletes per transaction
/// (`IDEMPOTENCY_EXPIRY_CHUNK`, 10 000), so the backend has to loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_expires_every_expired_idempotency_record() {
    const KEYS: u64 = 10_001;
    let dir = tempfile::tempdir().unwrap();
    // Big batches and no fsync per batch: this test needs many writes, not durability.
    let opts = SqliteOptions {
        durability: Durability::Normal,
        write_queue: 20_000,
        max_batch: 2_000,
        ..options(dir.path())
    };
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(opts, Hub::new(16)))
        .await
        .unwrap()
        .unwrap();
    let s: &dyn Store = &store;
    s.commit(write("games", "a", Mutation::Create(obj(json!({"log": []})))))
        .await
        .unwrap();
    // Writes that change nothing are the cheapest way to record many keys.
    let keyed = |n: u64| {
        let mut w = write("games", "a", Mutation::Merge(json!({})));
        w.idempotency_key = Some(format!("k{n}"));
        w.fingerprint = n;
        w
    };
    let writes = (0..KEYS).map(|n| {
        let w = keyed(n);
        async move {
            loop {
                match s.commit(w.clone()).await {
                    Err(StoreError::Overloaded) => tokio::task::yield_now().await,
                    other => return other.map(|c| c.replayed),
                }
            }
        }
    });
    for r in futures::future::join_all(writes).await {
        assert_eq!(r, Ok(false));
    }
    let keep_all = Retention {
        keep_last: u64::MAX,
        keep_for_ms: i64::MAX,
    };
    let stats = s
        .compact(keep_all, 1_000, Timestamp(Timestamp::now().0 + 10_000))
        .await
        .unwrap();
    assert_eq!(stats.idempotency_keys_expired, KEYS, "{stats:?}");
    for n in [0, KEYS / 2, KEYS - 1] {
        let c = s.commit(keyed(n)).await.unwrap();
        assert!(!c.replayed, "key k{n} outlived its TTL");
    }
    s.close().await.unwrap();
}
