//! The Rust client (`crates/client`) following scopes of a real in-process server, over WebSocket
//! and over SSE: a filtered scope's replica holds exactly the server's matching documents while
//! writes move documents in and out (and a document two scopes take is held once); subscriptions
//! added and ended at runtime, each with its own synced signal (in place on a WebSocket, by
//! reopening the stream over SSE), refusals changing nothing, and no gap nor duplicate while writes
//! go on; a window (`latest`) holding the newest documents, growing live with creations, and moving
//! on at the next catch-up.
//!
//! What the replica should hold is computed from the server's REST listing with the tests' own
//! filter evaluator (`common::scopes`), never from the server's scope code.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::scopes::{filter_matches, replica_docs, taken};
use common::{assert_docs_eq, rest_create, rest_delete, rest_patch, server_docs, TestServer};
use eventsync_client::{
    scope, Change, Client, ClientError, ClientOptions, IntoSubscription, Scope, Subscription, Transport,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);
const TRANSPORTS: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

fn options(s: &TestServer, transport: Transport, id: &str, subs: Vec<Subscription>) -> ClientOptions {
    let mut o = ClientOptions::new(s.url.clone(), id, subs);
    o.transport = transport;
    o.reconnect.initial = Duration::from_millis(20);
    o.reconnect.max = Duration::from_millis(200);
    o.write_timeout = WAIT;
    o
}

fn high(min: i64) -> Scope {
    Scope {
        filter: Some(json!({"level": {"$gte": min}})),
        ..scope("high", "games")
    }
}

fn ids(id: &str, collection: &str, ids: &[&str]) -> Scope {
    Scope {
        ids: Some(ids.iter().map(|s| s.to_string()).collect()),
        ..scope(id, collection)
    }
}

/// What the client's current subscriptions take of the server's `collection` now.
async fn expected(s: &TestServer, c: &Client, collection: &str) -> BTreeMap<String, (u64, Value)> {
    taken(&c.subscriptions(), collection, &server_docs(s, collection).await)
}

/// Waits (bounded, polling) until the client's replica of `collection` is exactly what its
/// subscriptions take of the server's; on a timeout, shows the difference.
async fn converged(s: &TestServer, c: &Client, collection: &str, what: &str) {
    let last = RefCell::new(None);
    let last_ref = &last;
    let poll = common::poll(WAIT * 2, what, move || async move {
        let want = expected(s, c, collection).await;
        let got = c.with_replica(|r| replica_docs(r, collection));
        let done = got == want;
        *last_ref.borrow_mut() = Some((got, want));
        done.then_some(())
    });
    if tokio::time::timeout(WAIT, poll).await.is_err() {
        let (got, want) = last.into_inner().expect("polled at least once");
        assert_docs_eq(&got, &want, &format!("{what} (after {WAIT:?})"));
    }
    c.with_replica(|r| r.check())
        .unwrap_or_else(|e| panic!("{what}: replica inconsistent: {e}"));
}

/// The replica of `collection` now, without waiting: what the client holds must already be
/// exactly what its subscriptions take (after a call documented to return once applied).
async fn holds_now(s: &TestServer, c: &Client, collection: &str, what: &str) {
    let got = c.with_replica(|r| replica_docs(r, collection));
    assert_docs_eq(&got, &expected(s, c, collection).await, what);
}

fn ids_of(docs: &BTreeMap<String, (u64, Value)>) -> Vec<&str> {
    docs.keys().map(String::as_str).collect()
}

/// The `removed` changes received so far (ids, in order).
fn drain_removed(changes: &mut broadcast::Receiver<Change>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(change) = changes.try_recv() {
        if let Change::Removed(r) = change {
            out.push(r.id.clone());
        }
    }
    out
}

#[test]
fn the_test_evaluator_follows_the_documented_rules() {
    let body = |v: Value| v.as_object().unwrap().clone();
    let cases = [
        (json!({"level": {"$gte": 5}}), json!({"level": 5.0}), true),
        (json!({"level": {"$gte": 5}}), json!({"level": "7"}), false),
        (json!({"level": {"$gte": 5}}), json!({}), false),
        (json!({"level": {"$lt": 3}}), json!({"level": null}), false),
        (json!({"level": 2}), json!({"level": 2.0}), true),
        (json!({"level": null}), json!({}), true),
        (json!({"level": {"$ne": 1}}), json!({}), true),
        (json!({"tags": "x"}), json!({"tags": ["x", "y"]}), true),
        (json!({"tags": ["x", "y"]}), json!({"tags": ["x", "y"]}), true),
        (json!({"f.deep": {"$lt": 5}}), json!({"f": {"deep": 4}}), true),
        (json!({"f.deep": {"$lt": 5}}), json!({"f": 4}), false),
        (json!({"f.deep": {"$exists": false}}), json!({"f": 4}), true),
        (json!({"f.deep": null}), json!({"f": 4}), true),
        (
            json!({"$or": [{"a": 1}, {"b": {"$in": [2, 3]}}]}),
            json!({"b": 3}),
            true,
        ),
        (json!({"a": {"$gt": 1, "$lt": 5}}), json!({"a": [0, 9]}), true),
        (json!({"a": {"$nin": []}}), json!({}), true),
        (
            json!({"o": {"x": 1, "y": 2}}),
            json!({"o": {"y": 2, "x": 1}}),
            true,
        ),
    ];
    for (filter, doc, want) in cases {
        assert_eq!(
            filter_matches(&filter, &body(doc.clone())),
            want,
            "{filter} on {doc}"
        );
    }
}

#[tokio::test]
async fn a_filtered_scope_holds_exactly_the_matching_documents_as_writes_move_them() {
    for transport in TRANSPORTS {
        let s = TestServer::start(&[]);
        for n in 0..10 {
            rest_create(
                &s,
                "games",
                &format!("g{n}"),
                json!({"level": n, "name": format!("game {n}")}),
            )
            .await;
        }
        // g7 is taken by both scopes: held once. g1 by the ids only.
        let subs: Vec<Subscription> = vec![
            high(5).into_subscription(),
            ids("pick", "games", &["g1", "g7"]).into_subscription(),
        ];
        let (c, mut changes) = Client::connect_with_changes(options(&s, transport, "tab", subs))
            .await
            .unwrap();
        c.wait_synced(WAIT).await.unwrap();
        holds_now(&s, &c, "games", &format!("{transport:?}: after the catch-up")).await;
        assert_eq!(
            c.with_replica(|r| ids_of(&replica_docs(r, "games")).join(" ")),
            "g1 g5 g6 g7 g8 g9",
            "{transport:?}"
        );

        let level = |v: Value| json!([{"op": "replace", "path": "/level", "value": v}]);
        rest_patch(&s, "games", "g2", level(json!(8))).await; // in: a snapshot
        s.merge_patch("/api/games/g6", &json!({"level": 3})).await; // out: removed
        rest_patch(&s, "games", "g7", level(json!(0))).await; // out of high, still picked
        rest_delete(&s, "games", "g9").await; // a delete is a delete
        rest_create(&s, "games", "g9", json!({"level": 9, "name": "again"})).await; // back, as a create
        s.put_json("/api/games/g8", &json!({"name": "no level"})).await; // out: removed
        rest_patch(
            &s,
            "games",
            "g5",
            json!([{"op": "replace", "path": "/name", "value": "renamed"}]),
        )
        .await;
        rest_create(&s, "games", "g10", json!({"level": 6})).await; // created in
        rest_create(&s, "games", "g11", json!({"level": 2})).await; // created out: nothing
        rest_patch(&s, "games", "g3", level(json!("7"))).await; // a string: no order with 5
        rest_patch(&s, "games", "g4", level(json!(5.0))).await; // 5.0 >= 5
        rest_patch(&s, "games", "g1", level(json!(7))).await; // picked, now in high too
        rest_patch(&s, "games", "g2", level(json!(1))).await; // out again
        rest_patch(&s, "games", "g2", level(json!(6))).await; // and in again
        converged(&s, &c, "games", &format!("{transport:?}: after the writes")).await;
        assert_eq!(
            c.with_replica(|r| ids_of(&replica_docs(r, "games")).join(" ")),
            "g1 g10 g2 g4 g5 g7 g9",
            "{transport:?}"
        );
        let mut removed = drain_removed(&mut changes);
        removed.sort();
        removed.dedup();
        // g2 left and came back; g6 and g8 left.
        assert_eq!(removed, ["g2", "g6", "g8"], "{transport:?}: removed");

        // A document that left comes back whole when it matches again.
        s.merge_patch("/api/games/g6", &json!({"level": 50})).await;
        converged(&s, &c, "games", &format!("{transport:?}: g6 back")).await;
        assert!(
            c.with_replica(|r| r.document("games", "g6").is_some()),
            "{transport:?}"
        );

        // A reconnection's catch-up agrees with the live path.
        s.merge_patch("/api/games/g10", &json!({"level": -1})).await;
        c.disconnect().await.unwrap();
        s.merge_patch("/api/games/g11", &json!({"level": 11})).await;
        rest_patch(&s, "games", "g4", level(json!(4))).await;
        c.reconnect().await.unwrap();
        c.wait_synced(WAIT).await.unwrap();
        converged(&s, &c, "games", &format!("{transport:?}: after a reconnection")).await;
        let r = c.replica();
        assert_eq!(r.applied_twice(), 0, "{transport:?}");
        assert_eq!(r.counters().gaps, 0, "{transport:?}: {:?}", r.counters());
        c.close().await;
    }
}

#[tokio::test]
async fn subscriptions_change_at_runtime_each_with_its_synced_signal() {
    for transport in TRANSPORTS {
        let s = TestServer::start(&[]);
        for n in 0..6 {
            rest_create(&s, "games", &format!("g{n}"), json!({"level": n})).await;
        }
        for p in ["p1", "p2", "p3"] {
            rest_create(&s, "players", p, json!({"name": p})).await;
        }
        let subs: Vec<Subscription> = vec![high(4).into_subscription()];
        let (c, mut changes) = Client::connect_with_changes(options(&s, transport, "tab", subs))
            .await
            .unwrap();
        c.wait_synced(WAIT).await.unwrap();
        assert_eq!(c.subscription_synced("high"), Some(true), "{transport:?}");
        assert_eq!(c.subscription_synced("pick"), None, "{transport:?}");
        holds_now(&s, &c, "games", &format!("{transport:?}: start")).await;
        let connects = c.stats().connects;

        // Added: returns once its catch-up is applied.
        let pick = ids("pick", "games", &["g0", "g4"]);
        c.subscribe(pick.clone()).await.unwrap();
        assert_eq!(c.subscription_synced("pick"), Some(true), "{transport:?}");
        c.wait_subscription_synced("pick", WAIT).await.unwrap();
        holds_now(&s, &c, "games", &format!("{transport:?}: after subscribe")).await;
        assert_eq!(
            c.with_replica(|r| ids_of(&replica_docs(r, "games")).join(" ")),
            "g0 g4 g5",
            "{transport:?}"
        );
        assert_eq!(
            c.subscriptions(),
            vec![high(4).into_subscription(), pick.clone().into_subscription()],
            "{transport:?}"
        );
        c.subscribe("players").await.unwrap();
        c.wait_subscription_synced("players", WAIT).await.unwrap();
        holds_now(&s, &c, "players", &format!("{transport:?}: players")).await;
        assert_eq!(
            c.with_replica(|r| r.collection("players").map(|d| d.len())),
            Some(3)
        );
        match transport {
            // In place: no new connection.
            Transport::WebSocket => assert_eq!(c.stats().connects, connects, "{:?}", c.stats()),
            // No back channel: a new stream per change.
            Transport::Sse => assert!(c.stats().connects >= connects + 2, "{:?}", c.stats()),
        }

        // The same subscription again: nothing to do; another under a taken id: refused by the
        // client, nothing changed.
        c.subscribe(pick.clone()).await.unwrap();
        let other = ids("pick", "games", &["g1"]);
        let e = c.subscribe(other).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Subscription(b) if b.code.as_str() == "invalid_subscription"),
            "{transport:?}: {e}"
        );
        assert_eq!(c.subscriptions().len(), 3, "{transport:?}");
        // Still following what it did.
        c.wait_synced(WAIT).await.unwrap();
        rest_patch(
            &s,
            "games",
            "g0",
            json!([{"op": "add", "path": "/name", "value": "zero"}]),
        )
        .await;
        converged(&s, &c, "games", &format!("{transport:?}: a live event of pick")).await;

        // Ended: returns once what it alone brought is dropped (g0; g4 is high's too).
        drain_removed(&mut changes);
        c.unsubscribe("pick").await.unwrap();
        holds_now(&s, &c, "games", &format!("{transport:?}: after unsubscribe")).await;
        assert_eq!(
            c.with_replica(|r| ids_of(&replica_docs(r, "games")).join(" ")),
            "g4 g5",
            "{transport:?}"
        );
        assert_eq!(drain_removed(&mut changes), ["g0"], "{transport:?}");
        assert_eq!(c.subscription_synced("pick"), None, "{transport:?}");
        assert!(
            c.with_replica(|r| r.version("games", "g0")) == 0,
            "{transport:?}: g0's entry"
        );
        c.unsubscribe("players").await.unwrap();
        assert_eq!(
            c.with_replica(|r| r.collection("players").cloned()),
            None,
            "{transport:?}"
        );
        assert_eq!(
            c.with_replica(|r| r.vector().get("players").cloned()),
            None,
            "{transport:?}"
        );
        assert!(
            matches!(c.unsubscribe("pick").await, Err(ClientError::Subscription(_))),
            "{transport:?}"
        );
        assert_eq!(
            c.subscriptions(),
            vec![high(4).into_subscription()],
            "{transport:?}"
        );

        // Live events of what remains keep coming; of what was dropped, none.
        rest_patch(
            &s,
            "games",
            "g0",
            json!([{"op": "replace", "path": "/name", "value": "z"}]),
        )
        .await;
        rest_patch(
            &s,
            "players",
            "p1",
            json!([{"op": "replace", "path": "/name", "value": "P"}]),
        )
        .await;
        rest_patch(
            &s,
            "games",
            "g3",
            json!([{"op": "replace", "path": "/level", "value": 30}]),
        )
        .await;
        converged(&s, &c, "games", &format!("{transport:?}: live after unsubscribe")).await;
        assert_eq!(
            c.with_replica(|r| r.collection("players").cloned()),
            None,
            "{transport:?}"
        );
        assert_eq!(
            c.with_replica(|r| r.document("games", "g0").cloned()),
            None,
            "{transport:?}"
        );
        c.close().await;
    }
}

/// A subscription the server refuses (a filter operator it does not know) is an error, as
/// documented for `Client::subscribe`: "nothing changed then" — the set is as before and the client
/// stays live with it.
#[tokio::test]
async fn a_subscription_the_server_refuses_is_an_error_and_changes_nothing() {
    for transport in TRANSPORTS {
        let s = TestServer::start(&[]);
        for n in 0..6 {
            rest_create(&s, "games", &format!("g{n}"), json!({"level": n})).await;
        }
        let subs: Vec<Subscription> = vec![high(4).into_subscription()];
        let c = Client::connect(options(&s, transport, "tab", subs))
            .await
            .unwrap();
        c.wait_synced(WAIT).await.unwrap();
        let bad = Scope {
            filter: Some(json!({"level": {"$regex": "^1"}})),
            ..scope("bad", "games")
        };
        let before = c.subscriptions();
        // Bounded beyond the client's own write_timeout (WAIT).
        let refused = tokio::time::timeout(WAIT * 2, c.subscribe(bad)).await;
        assert!(
            matches!(&refused, Ok(Err(ClientError::Subscription(b))) if b.code.as_str() == "invalid_subscription"),
            "{transport:?}: a filter the server refuses: {refused:?}; subscriptions now {:?}, status {:?}, \
             stats {:?}",
            c.subscriptions(),
            c.status(),
            c.stats()
        );
        assert_eq!(c.subscriptions(), before, "{transport:?}");
        assert_eq!(c.subscription_synced("bad"), None, "{transport:?}");
        assert!(
            matches!(
                c.wait_subscription_synced("bad", WAIT).await,
                Err(ClientError::Subscription(_))
            ),
            "{transport:?}"
        );
        // Still following what it did.
        c.wait_synced(WAIT).await.unwrap();
        rest_patch(
            &s,
            "games",
            "g1",
            json!([{"op": "replace", "path": "/level", "value": 9}]),
        )
        .await;
        converged(&s, &c, "games", &format!("{transport:?}: after the refusal")).await;
        c.close().await;
    }
}

/// Subscribing and unsubscribing over and over while writes move documents in and out of every
/// scope: the replica ends exactly equal to what the subscriptions take, and (on a WebSocket, one
/// connection throughout) no live event was ever a gap or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_writes_go_on_leaves_no_gap_nor_duplicate() {
    for transport in TRANSPORTS {
        let s = Arc::new(TestServer::start(&[]));
        for n in 0..12 {
            rest_create(&s, "games", &format!("g{n}"), json!({"level": n % 10, "n": 0})).await;
        }
        let subs: Vec<Subscription> = vec![high(6).into_subscription()];
        let c = Client::connect(options(&s, transport, "tab", subs))
            .await
            .unwrap();
        c.wait_synced(WAIT).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = common::Rng::new(7);
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("g{}", rng.below(12));
                    let patch = if rng.below(2) == 0 {
                        json!({"level": rng.below(10)})
                    } else {
                        json!({"n": rng.below(1000)})
                    };
                    let (status, body) = s.merge_patch(&format!("/api/games/{id}"), &patch).await;
                    assert!(status.is_success(), "{status} {body}");
                    writes += 1;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                writes
            })
        };
        let scopes = [
            ids("pick", "games", &["g0", "g1", "g2"]),
            Scope {
                filter: Some(json!({"level": {"$lt": 3}})),
                ..scope("low", "games")
            },
            Scope {
                prefix: Some("g1".into()),
                ..scope("tens", "games")
            },
        ];
        // Churn for a while (a load's duration, not a wait for something to happen).
        let churn = std::time::Instant::now();
        let mut round = 0;
        while round < 4 || churn.elapsed() < Duration::from_secs(2) {
            round += 1;
            let sc = &scopes[round % scopes.len()];
            c.subscribe(sc.clone()).await.unwrap();
            c.wait_subscription_synced(&sc.id, WAIT).await.unwrap();
            if round % 2 == 0 {
                c.subscribe("games").await.unwrap();
                c.unsubscribe("games").await.unwrap();
            }
            c.unsubscribe(&sc.id).await.unwrap();
        }
        c.subscribe(scopes[1].clone()).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let writes = writer.await.unwrap();
        assert!(writes > 20, "{transport:?}: only {writes} writes");
        converged(&s, &c, "games", &format!("{transport:?}: after the churn")).await;
        let r = c.replica();
        assert_eq!(r.applied_twice(), 0, "{transport:?}: {:?}", r.counters());
        if transport == Transport::WebSocket {
            assert_eq!(r.counters().gaps, 0, "{:?}", r.counters());
            assert_eq!(r.counters().duplicates, 0, "{:?}", r.counters());
            assert_eq!(c.stats().connects, 1, "{:?}", c.stats());
            assert_eq!(c.stats().resyncs, 0, "{:?}", c.stats());
        }
        c.close().await;
    }
}

/// The server's live documents of `collection` with their `created_at`: id → (created_at, body).
async fn created(s: &TestServer, collection: &str) -> BTreeMap<String, (String, Value)> {
    common::all_pages(s, &format!("/api/{collection}?limit=100"))
        .await
        .into_iter()
        .map(|d| {
            let created = d["created_at"].as_str().expect("created_at").to_string();
            (
                d["id"].as_str().unwrap().to_string(),
                (created, d["data"].clone()),
            )
        })
        .collect()
}

/// The ids of the `n` newest documents (by `created_at`, then id, the later first) whose body
/// passes `filter`.
fn newest(docs: &BTreeMap<String, (String, Value)>, filter: Option<&Value>, n: usize) -> Vec<String> {
    let mut matching: Vec<(&String, &String)> = docs
        .iter()
        .filter(|(_, (_, body))| filter.is_none_or(|f| filter_matches(f, body.as_object().unwrap())))
        .map(|(id, (created, _))| (created, id))
        .collect();
    matching.sort_by(|a, b| b.cmp(a));
    matching.into_iter().take(n).map(|(_, id)| id.clone()).collect()
}

#[tokio::test]
async fn a_window_holds_the_newest_grows_with_creations_and_moves_on_at_a_catch_up() {
    for transport in TRANSPORTS {
        let s = TestServer::start(&[]);
        for n in 0..8 {
            rest_create(&s, "chat", &format!("m{n:02}"), json!({"level": n})).await;
        }
        let recent = Scope {
            latest: Some(3),
            ..scope("recent", "chat")
        };
        let low_filter = json!({"level": {"$lt": 4}});
        let low = Scope {
            latest: Some(2),
            filter: Some(low_filter.clone()),
            ..scope("low", "chat")
        };
        let subs: Vec<Subscription> = vec![recent.into_subscription(), low.into_subscription()];
        let (c, mut changes) = Client::connect_with_changes(options(&s, transport, "tab", subs))
            .await
            .unwrap();
        c.wait_synced(WAIT).await.unwrap();
        let held = |c: &Client| c.with_replica(|r| ids_of(&replica_docs(r, "chat")).join(" "));
        let window = |docs: &BTreeMap<String, (String, Value)>| {
            let mut ids = newest(docs, None, 3);
            ids.extend(newest(docs, Some(&low_filter), 2));
            ids.sort();
            ids.dedup();
            ids.join(" ")
        };
        assert_eq!(held(&c), window(&created(&s, "chat").await), "{transport:?}");
        assert_eq!(held(&c), "m02 m03 m05 m06 m07", "{transport:?}");

        // Live: what is created joins; an older document written to does not.
        rest_create(&s, "chat", "m08", json!({"level": 8})).await;
        rest_create(&s, "chat", "m09", json!({"level": 1})).await;
        rest_patch(
            &s,
            "chat",
            "m00",
            json!([{"op": "replace", "path": "/level", "value": -1}]),
        )
        .await;
        rest_patch(
            &s,
            "chat",
            "m06",
            json!([{"op": "add", "path": "/seen", "value": true}]),
        )
        .await;
        rest_create(&s, "chat", "m10", json!({"level": 10})).await;
        common::poll(WAIT, "m10 live", || async {
            c.with_replica(|r| r.document("chat", "m10").is_some())
                .then_some(())
        })
        .await;
        assert_eq!(held(&c), "m02 m03 m05 m06 m07 m08 m09 m10", "{transport:?}");
        let docs = server_docs(&s, "chat").await;
        let r = c.replica();
        for id in ["m06", "m09", "m10"] {
            assert_eq!(r.version("chat", id), docs[id].0, "{transport:?}: {id}");
            assert_eq!(
                Value::Object(r.document("chat", id).unwrap().clone()),
                docs[id].1,
                "{id}"
            );
        }
        assert!(
            drain_removed(&mut changes).is_empty(),
            "{transport:?}: none leaves by age while live"
        );

        // A catch-up (a sync: a reconnect over SSE) decides the windows again.
        c.sync(WAIT).await.unwrap();
        let want = window(&created(&s, "chat").await);
        assert_eq!(
            want, "m03 m08 m09 m10",
            "the 3 newest, and the 2 newest of level < 4"
        );
        assert_eq!(held(&c), want, "{transport:?}: after a sync");
        let mut removed = drain_removed(&mut changes);
        removed.sort();
        assert_eq!(removed, ["m02", "m05", "m06", "m07"], "{transport:?}");
        let r = c.replica();
        assert_eq!(
            r.document("chat", "m00"),
            None,
            "{transport:?}: older, never joined"
        );
        r.check().unwrap();
        c.close().await;
    }
}
