//! Sync over the WebSocket transport, spoken by a raw `tokio-tungstenite` client against the real
//! server (in-process; the SIGTERM test, the `eventsync` binary): hello and catch-up (snapshots, events, resets, deletes, compaction), live
//! events, writes over the socket (results, idempotent retries, conflicts), acknowledgements and
//! resume from the remembered vector, manual `sync`, `ping`, and shutdown.
//!
//! Every received `snapshot`/`event` is applied to a [`Replica`] which checks that events follow what
//! it has; the replica is then compared with what the REST API says the server has.

mod common;

use std::time::Duration;

use common::{
    all_events, filler, health_seq, poll, rest_create, rest_delete, rest_patch, server_docs, Replica,
    SseClient, SseRead, TestServer, WsClient, WAIT,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

fn of_type<'a>(msgs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["type"] == ty).collect()
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().expect("event seq"))
        .collect()
}

/// (type, id, version) of each message, for compact comparisons.
fn shape(msgs: &[Value]) -> Vec<(String, String, u64)> {
    msgs.iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
                m["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The log's events after `after` for a collection, as `event` messages (with `"type"`).
async fn log_events(s: &TestServer, collection: &str, after: u64) -> Vec<Value> {
    all_events(s, &format!("&collection={collection}&after={after}"))
        .await
        .into_iter()
        .map(|mut e| {
            e["type"] = json!("event");
            e
        })
        .collect()
}

/// Asserts the replica's live documents of `collection` are exactly the server's.
async fn assert_matches_server(s: &TestServer, replica: &Replica, collection: &str) {
    let server = server_docs(s, collection).await;
    common::assert_docs_eq(
        &replica.live(collection),
        &server,
        &format!("replica vs server in '{collection}'"),
    );
}

/// Sends a `write` and waits for both its `result` and (if it appended one) the echoed `event`.
async fn write(ws: &mut WsClient, msg: Value) -> (Value, Option<Value>) {
    let op_id = msg["op_id"].as_str().expect("op_id").to_string();
    ws.send(&msg).await;
    let mut events = Vec::new();
    let result = loop {
        let m = ws.recv().await;
        match m["type"].as_str() {
            Some("result") if m["op_id"] == op_id.as_str() => break m,
            Some("event") => events.push(m),
            _ => panic!("unexpected message while waiting for result {op_id}: {m}"),
        }
    };
    let Some(seq) = result["seq"].as_u64() else {
        assert!(events.is_empty(), "events without a seq'd result: {events:?}");
        return (result, None);
    };
    if result["replayed"] == true {
        // A replay appends nothing, so no event may come for it.
        assert!(events.is_empty(), "events for a replayed write: {events:?}");
        return (result, None);
    }
    let event = match events.iter().position(|e| e["seq"] == seq) {
        Some(i) => events.remove(i),
        None => {
            let more = ws.recv_through_seq(seq).await;
            events.extend(more);
            let i = events
                .iter()
                .position(|e| e["seq"] == seq)
                .expect("the write's own event arrives");
            events.remove(i)
        }
    };
    assert!(events.is_empty(), "unexpected extra events: {events:?}");
    (result, Some(event))
}

// ---------------------------------------------------------------------------------------------------
// Catch-up and live events
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_fresh_client_gets_snapshots_then_synced_then_each_live_event_once() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "g1", json!({"name": "one", "gold": 1})).await;
    rest_create(&s, "games", "g2", json!({"name": "two", "gold": 2})).await;
    rest_create(&s, "games", "g3", json!({"name": "three", "gold": 3})).await;
    rest_patch(
        &s,
        "games",
        "g2",
        json!([{"op": "replace", "path": "/gold", "value": 20}]),
    )
    .await;
    rest_patch(
        &s,
        "games",
        "g2",
        json!([{"op": "add", "path": "/tag", "value": "x"}]),
    )
    .await;
    rest_create(&s, "games", "gone", json!({"name": "gone"})).await;
    rest_delete(&s, "games", "gone").await;
    rest_create(&s, "other", "o1", json!({"name": "elsewhere"})).await;
    let last = health_seq(&s).await;

    let (mut ws, msgs, synced) = WsClient::open(&s, "w1", &["games"], Some(json!({}))).await;

    // One snapshot per live document of `games`, in id order; nothing of `other`, nothing deleted.
    assert_eq!(
        shape(&msgs),
        vec![
            ("snapshot".into(), "g1".into(), 1),
            ("snapshot".into(), "g2".into(), 3),
            ("snapshot".into(), "g3".into(), 1),
        ],
        "{msgs:?}"
    );
    for m in &msgs {
        assert_eq!(m["collection"], "games", "{m}");
        assert_eq!(m["deleted"], false, "{m}");
    }
    assert_eq!(synced["seq"], last, "{synced}");
    assert_eq!(
        synced["state_vector"],
        json!({"games": {"g1": 1, "g2": 3, "g3": 1}}),
        "{synced}"
    );
    assert_eq!(synced["snapshots"], 3, "{synced}");
    assert_eq!(synced["events"], 0, "{synced}");
    let mut replica = Replica::default();
    replica.apply_all(&msgs);
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(replica.vector(&["games"]), synced["state_vector"]);

    // Live writes of every kind, interleaved with writes to another collection.
    let mut want = Vec::new();
    want.push(
        rest_patch(
            &s,
            "games",
            "g1",
            json!([{"op": "replace", "path": "/gold", "value": 11}]),
        )
        .await,
    );
    let (st, body) = s
        .merge_patch("/api/games/g3", &json!({"gold": null, "won": true}))
        .await;
    want.push(common::event_seq(st, &body));
    rest_create(&s, "other", "o2", json!({"n": 1})).await;
    let (st, body) = s.put_json("/api/games/g2", &json!({"name": "deux"})).await;
    want.push(common::event_seq(st, &body));
    want.push(rest_create(&s, "games", "g4", json!({"name": "four", "list": [1, 2]})).await);
    rest_patch(
        &s,
        "other",
        "o1",
        json!([{"op": "add", "path": "/x", "value": 1}]),
    )
    .await;
    want.push(rest_delete(&s, "games", "g1").await);
    want.push(rest_create(&s, "games", "gone", json!({"name": "back"})).await);
    want.push(
        rest_patch(
            &s,
            "games",
            "g4",
            json!([{"op": "add", "path": "/list/-", "value": 3}]),
        )
        .await,
    );

    let mut got = ws.recv_through_seq(*want.last().unwrap()).await;
    got.extend(ws.barrier().await);
    assert!(
        got.iter().all(|m| m["type"] == "event"),
        "only events expected: {got:?}"
    );
    assert!(
        got.iter().all(|m| m["collection"] == "games"),
        "events of other collections: {got:?}"
    );
    assert_eq!(seqs(&got), want, "each event once, in order");
    assert_eq!(got, log_events(&s, "games", last).await, "events are the log's");
    replica.apply_all(&got);
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(
        replica.vector(&["games"]),
        json!({"games": {"g1": 3, "g2": 4, "g3": 2, "g4": 2, "gone": 3}})
    );
    ws.close().await;
}

#[tokio::test]
async fn a_reconnect_with_an_old_vector_gets_exactly_the_missing_events() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    for id in ["d1", "d2", "d3"] {
        rest_create(&s, "games", id, json!({"blob": blob, "n": 0})).await;
    }
    let (ws, msgs, synced) = WsClient::open(&s, "r1", &["games"], Some(json!({}))).await;
    assert_eq!(of_type(&msgs, "snapshot").len(), 3, "{msgs:?}");
    let mut replica = Replica::default();
    replica.apply_all(&msgs);
    let old_vector = synced["state_vector"].clone();
    let old_seq = synced["seq"].as_u64().unwrap();
    ws.close().await;

    // While the client is away: small changes to big documents, and a new document.
    for n in 1..=3 {
        rest_patch(
            &s,
            "games",
            "d1",
            json!([{"op": "replace", "path": "/n", "value": n}]),
        )
        .await;
    }
    rest_patch(
        &s,
        "games",
        "d2",
        json!([{"op": "add", "path": "/flag", "value": true}]),
    )
    .await;
    rest_create(&s, "games", "d4", json!({"blob": blob, "n": 4})).await;

    let (mut ws, msgs, synced) = WsClient::open(&s, "r1", &["games"], Some(old_vector)).await;
    assert_eq!(
        shape(&msgs),
        vec![
            // Snapshots first, then events in sequence order.
            ("snapshot".into(), "d4".into(), 1),
            ("event".into(), "d1".into(), 2),
            ("event".into(), "d1".into(), 3),
            ("event".into(), "d1".into(), 4),
            ("event".into(), "d2".into(), 2),
        ],
        "{msgs:?}"
    );
    // The events are exactly the log's (d3 had none).
    let log = log_events(&s, "games", old_seq).await;
    let log_updates: Vec<Value> = log.into_iter().filter(|e| e["id"] != "d4").collect();
    assert_eq!(of_type(&msgs, "event"), log_updates.iter().collect::<Vec<_>>());
    assert_eq!(synced["events"], 4, "{synced}");
    assert_eq!(synced["snapshots"], 1, "{synced}");
    assert_eq!(synced["seq"], health_seq(&s).await, "{synced}");
    replica.apply_all(&msgs);
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(replica.vector(&["games"]), synced["state_vector"]);
    assert!(ws.barrier().await.is_empty(), "nothing after synced");
    ws.close().await;

    // A vector equal to the server's: nothing but `synced`.
    let current = synced["state_vector"].clone();
    let (ws, msgs, synced) = WsClient::open(&s, "r2", &["games"], Some(current.clone())).await;
    assert!(msgs.is_empty(), "a current client needs nothing: {msgs:?}");
    assert_eq!(synced["state_vector"], current, "{synced}");
    assert_eq!(
        (synced["snapshots"].as_u64(), synced["events"].as_u64()),
        (Some(0), Some(0))
    );
    ws.close().await;
}

#[tokio::test]
async fn history_compacted_past_the_clients_version_is_sent_as_a_snapshot() {
    let s = TestServer::start(&[
        "--snapshot-every",
        "5",
        "--retain-events",
        "2",
        "--retain-for",
        "0s",
        "--compact-interval",
        "200ms",
        "--snapshot-interval",
        "1h",
    ]);
    let blob = filler(3000);
    rest_create(&s, "games", "c1", json!({"blob": blob, "n": 0})).await;
    let (ws, msgs, synced) = WsClient::open(&s, "k1", &["games"], Some(json!({}))).await;
    assert_eq!(shape(&msgs), vec![("snapshot".into(), "c1".into(), 1)]);
    assert_eq!(synced["state_vector"], json!({"games": {"c1": 1}}));
    ws.close().await;

    for n in 1..=11 {
        rest_patch(
            &s,
            "games",
            "c1",
            json!([{"op": "replace", "path": "/n", "value": n}]),
        )
        .await;
    }
    // Version 12, snapshots at 5 and 10, the last 2 events kept: compaction settles at 10.
    let compacted = poll(
        Duration::from_secs(10),
        "compaction through version 10",
        || async {
            let (st, h) = s.get("/api/games/c1/history").await;
            assert_eq!(st, StatusCode::OK, "{h}");
            let ct = h["retained"]["compacted_through"].as_u64().unwrap();
            (ct >= 10).then_some(ct)
        },
    )
    .await;
    assert_eq!(compacted, 10);

    // A client at version 1 (compacted away) gets the current document as a snapshot.
    for old in [1, 4] {
        let (ws, msgs, synced) =
            WsClient::open(&s, "k1", &["games"], Some(json!({"games": {"c1": old}}))).await;
        assert_eq!(
            shape(&msgs),
            vec![("snapshot".into(), "c1".into(), 12)],
            "from {old}"
        );
        assert_eq!(msgs[0]["data"]["n"], 11);
        assert_eq!(msgs[0]["data"]["blob"], blob.as_str());
        assert_eq!(synced["state_vector"], json!({"games": {"c1": 12}}));
        ws.close().await;
    }
    // A client at the compaction point still gets the retained events.
    let (ws, msgs, synced) = WsClient::open(&s, "k2", &["games"], Some(json!({"games": {"c1": 10}}))).await;
    assert_eq!(
        shape(&msgs),
        vec![
            ("event".into(), "c1".into(), 11),
            ("event".into(), "c1".into(), 12)
        ]
    );
    assert_eq!(synced["state_vector"], json!({"games": {"c1": 12}}));
    ws.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Deletes and resets
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_delete_reaches_a_live_client_as_a_delete_event() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "x", json!({"a": 1})).await;
    let (mut ws, msgs, _) = WsClient::open(&s, "dl", &["games"], Some(json!({}))).await;
    let mut replica = Replica::default();
    replica.apply_all(&msgs);
    let seq = rest_delete(&s, "games", "x").await;
    let got = ws.recv_through_seq(seq).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(
        (e["type"].as_str(), e["op"].as_str()),
        (Some("event"), Some("delete")),
        "{e}"
    );
    assert_eq!(e["version"], 2, "{e}");
    assert_eq!(e["patch"], json!([]), "{e}");
    replica.apply(e);
    assert!(replica.live("games").is_empty());
    assert_eq!(replica.vector(&["games"]), json!({"games": {"x": 2}}));
    assert!(ws.barrier().await.is_empty());
    ws.close().await;
}

#[tokio::test]
async fn a_catch_up_brings_deletes_and_resets_unknown_or_future_versions() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    for id in ["a", "b", "c", "z"] {
        rest_create(&s, "games", id, json!({"blob": blob, "n": 0})).await;
    }
    rest_delete(&s, "games", "z").await; // z: deleted at 2 before the client ever synced
    let (ws, msgs, _) = WsClient::open(&s, "dc", &["games"], Some(json!({}))).await;
    let mut replica = Replica::default();
    replica.apply_all(&msgs);
    assert_eq!(
        replica.vector(&["games"]),
        json!({"games": {"a": 1, "b": 1, "c": 1}})
    );
    ws.close().await;

    rest_delete(&s, "games", "a").await; // a: 1 → deleted at 2
    rest_patch(
        &s,
        "games",
        "b",
        json!([{"op": "replace", "path": "/n", "value": 1}]),
    )
    .await;
    rest_patch(
        &s,
        "games",
        "b",
        json!([{"op": "replace", "path": "/n", "value": 2}]),
    )
    .await;
    rest_delete(&s, "games", "b").await; // b: 1 → 3 → deleted at 4

    // The client had a and b at 1; it claims c at a version the server never reached, z far past
    // its delete, and a document the server never had.
    let claim = json!({"games": {"a": 1, "b": 1, "c": 99, "z": 50, "ghost": 3}});
    if let Some(docs) = replica.docs.get_mut("games") {
        docs.insert("c".into(), (99, Some(json!({"stale": true}))));
        docs.insert("z".into(), (50, None));
        docs.insert("ghost".into(), (3, Some(json!({}))));
    }
    let (ws, msgs, synced) = WsClient::open(&s, "dc", &["games"], Some(claim)).await;
    let per_doc = |id: &str| -> Vec<Value> { msgs.iter().filter(|m| m["id"] == id).cloned().collect() };

    // a: the delete event, or a deleted snapshot at 2.
    let a = per_doc("a");
    assert_eq!(a.len(), 1, "{a:?}");
    match a[0]["type"].as_str() {
        Some("event") => assert_eq!(
            (a[0]["op"].as_str(), a[0]["version"].as_u64()),
            (Some("delete"), Some(2))
        ),
        Some("snapshot") => {
            assert_eq!(
                (a[0]["deleted"].as_bool(), a[0]["version"].as_u64()),
                (Some(true), Some(2))
            )
        }
        _ => panic!("{a:?}"),
    }
    // b: its events 2..=4 ending in the delete, or a deleted snapshot at 4.
    let b = per_doc("b");
    if b.len() == 1 {
        assert_eq!(b[0]["type"], "snapshot", "{b:?}");
        assert_eq!(
            (b[0]["deleted"].as_bool(), b[0]["version"].as_u64()),
            (Some(true), Some(4))
        );
    } else {
        assert_eq!(
            shape(&b),
            vec![
                ("event".into(), "b".into(), 2),
                ("event".into(), "b".into(), 3),
                ("event".into(), "b".into(), 4)
            ]
        );
        assert_eq!(b[2]["op"], "delete");
    }
    // c: reset to the server's version with its data.
    let c = per_doc("c");
    assert_eq!(shape(&c), vec![("snapshot".into(), "c".into(), 1)], "{c:?}");
    assert_eq!(c[0]["deleted"], false);
    assert_eq!(c[0]["data"]["blob"], blob.as_str());
    // z: reset to its delete.
    let z = per_doc("z");
    assert_eq!(shape(&z), vec![("snapshot".into(), "z".into(), 2)], "{z:?}");
    assert_eq!(
        (z[0]["deleted"].as_bool(), z[0]["data"].is_null()),
        (Some(true), true)
    );
    // ghost: never existed.
    let ghost = per_doc("ghost");
    assert_eq!(
        shape(&ghost),
        vec![("snapshot".into(), "ghost".into(), 0)],
        "{ghost:?}"
    );
    assert_eq!(
        (ghost[0]["deleted"].as_bool(), ghost[0]["data"].is_null()),
        (Some(true), true)
    );
    assert_eq!(
        msgs.len(),
        a.len() + b.len() + c.len() + z.len() + ghost.len(),
        "{msgs:?}"
    );

    replica.apply_all(&msgs);
    assert_matches_server(&s, &replica, "games").await;
    let want = json!({"games": {"a": 2, "b": 4, "c": 1, "z": 2}});
    assert_eq!(replica.vector(&["games"]), want);
    assert_eq!(synced["state_vector"], want, "{synced}");
    ws.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Writes over the socket
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn writes_over_the_socket_are_answered_and_echoed_as_events() {
    let s = TestServer::start(&[]);
    let (mut ws, msgs, _) = WsClient::open(&s, "wr", &["games"], Some(json!({}))).await;
    assert!(msgs.is_empty());
    let mut replica = Replica::default();
    let w = |op_id: &str, op: &str, extra: Value| {
        let mut m = json!({"type": "write", "op_id": op_id, "op": op, "collection": "games"});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    };
    let steps = [
        (
            w("o1", "create", json!({"id": "p1", "data": {"n": 1, "s": "x"}})),
            "create",
            1,
        ),
        (
            w("o2", "replace", json!({"id": "p1", "data": {"n": 2, "s": "y"}})),
            "update",
            2,
        ),
        (
            w(
                "o3",
                "patch",
                json!({"id": "p1", "patch": [{"op": "replace", "path": "/n", "value": 3}]}),
            ),
            "update",
            3,
        ),
        (
            w(
                "o4",
                "merge",
                json!({"id": "p1", "patch": {"s": null, "m": true}, "expected_version": 3}),
            ),
            "update",
            4,
        ),
        (w("o5", "delete", json!({"id": "p1"})), "delete", 5),
    ];
    for (msg, op, version) in steps {
        let op_id = msg["op_id"].clone();
        let (result, event) = write(&mut ws, msg).await;
        assert_eq!(result["ok"], true, "{result}");
        assert_eq!(result["id"], "p1", "{result}");
        assert_eq!(result["version"], version, "{result}");
        assert!(result.get("replayed").is_none_or(|r| r == false), "{result}");
        let event = event.expect("the writer receives its own change");
        assert_eq!(event["seq"], result["seq"]);
        assert_eq!(event["op"], op, "{event}");
        assert_eq!(event["version"], version, "{event}");
        assert_eq!(event["op_id"], op_id, "{event}");
        assert_eq!(event["client_id"], "wr", "{event}");
        replica.apply(&event);
        if op != "delete" {
            let (st, doc) = s.get("/api/games/p1").await;
            assert_eq!(st, StatusCode::OK);
            assert_eq!(replica.live("games")["p1"], (version, doc["data"].clone()));
        }
    }
    assert_matches_server(&s, &replica, "games").await;

    // A create without an id gets one generated.
    let (result, event) = write(&mut ws, w("o6", "create", json!({"data": {"anon": true}}))).await;
    assert_eq!(result["ok"], true, "{result}");
    let id = result["id"].as_str().expect("generated id").to_string();
    assert!(!id.is_empty());
    let event = event.unwrap();
    assert_eq!(event["id"], id.as_str());
    replica.apply(&event);
    assert_matches_server(&s, &replica, "games").await;
    assert!(ws.barrier().await.is_empty());
    ws.close().await;
}

#[tokio::test]
async fn a_retried_write_is_replayed_and_appends_nothing() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "r", json!({"n": 0})).await;
    let (mut ws, _, _) = WsClient::open(&s, "rt", &["games"], Some(json!({}))).await;
    let msg = json!({"type": "write", "op_id": "inc-1", "op": "patch", "collection": "games", "id": "r",
                     "patch": [{"op": "replace", "path": "/n", "value": 1}], "expected_version": 1});
    let (first, event) = write(&mut ws, msg.clone()).await;
    assert_eq!(
        (first["ok"].as_bool(), first["version"].as_u64()),
        (Some(true), Some(2)),
        "{first}"
    );
    assert!(event.is_some());
    let events_before = all_events(&s, "").await;

    // The same write again (a retry after a lost answer): the first result, replayed.
    let (again, event) = write(&mut ws, msg.clone()).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["version"], first["version"], "{again}");
    assert_eq!(again["seq"], first["seq"], "{again}");
    assert!(event.is_none());
    assert!(ws.barrier().await.is_empty(), "a replay sends no event");
    assert_eq!(
        all_events(&s, "").await,
        events_before,
        "a replay appends nothing"
    );
    let (_, doc) = s.get("/api/games/r").await;
    assert_eq!(
        (doc["version"].as_u64(), doc["data"]["n"].as_u64()),
        (Some(2), Some(1))
    );

    // The same op_id on a different write is refused, and changes nothing.
    let mut other = msg.clone();
    other["patch"] = json!([{"op": "replace", "path": "/n", "value": 99}]);
    let (refused, event) = write(&mut ws, other).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "idempotency_key_reused", "{refused}");
    assert!(event.is_none());
    assert_eq!(all_events(&s, "").await, events_before);
    ws.close().await;
}

#[tokio::test]
async fn concurrent_conflicting_writes_have_one_winner_and_both_clients_converge() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "duel", json!({"owner": "nobody", "gold": 0})).await;
    let (mut a, msgs_a, _) = WsClient::open(&s, "ca", &["games"], Some(json!({}))).await;
    let (mut b, msgs_b, _) = WsClient::open(&s, "cb", &["games"], Some(json!({}))).await;
    let (mut ra, mut rb) = (Replica::default(), Replica::default());
    ra.apply_all(&msgs_a);
    rb.apply_all(&msgs_b);
    let claim = |who: &str| {
        json!({"type": "write", "op_id": format!("claim-{who}"), "op": "merge", "collection": "games",
               "id": "duel", "patch": {"owner": who, "gold": 10}, "expected_version": 1})
    };
    let (wa, wb) = (claim("ca"), claim("cb"));
    tokio::join!(a.send(&wa), b.send(&wb));

    // Each gets its result; both get the winner's event.
    async fn settle(ws: &mut WsClient, op_id: &str) -> (Value, Vec<Value>) {
        let mut events = Vec::new();
        let result = loop {
            let m = ws.recv().await;
            match m["type"].as_str() {
                Some("result") if m["op_id"] == op_id => break m,
                Some("event") => events.push(m),
                _ => panic!("unexpected {m}"),
            }
        };
        (result, events)
    }
    let ((res_a, mut ev_a), (res_b, mut ev_b)) =
        tokio::join!(settle(&mut a, "claim-ca"), settle(&mut b, "claim-cb"));
    let oks = [&res_a, &res_b].iter().filter(|r| r["ok"] == true).count();
    assert_eq!(oks, 1, "exactly one winner: {res_a} {res_b}");
    let (winner, loser) = if res_a["ok"] == true {
        (&res_a, &res_b)
    } else {
        (&res_b, &res_a)
    };
    assert_eq!(winner["version"], 2, "{winner}");
    assert_eq!(loser["error"]["code"], "version_conflict", "{loser}");
    assert_eq!(loser["error"]["current_version"], 2, "{loser}");
    let seq = winner["seq"].as_u64().unwrap();
    if !ev_a.iter().any(|e| e["seq"] == seq) {
        ev_a.extend(a.recv_through_seq(seq).await);
    }
    if !ev_b.iter().any(|e| e["seq"] == seq) {
        ev_b.extend(b.recv_through_seq(seq).await);
    }
    ev_a.extend(a.barrier().await);
    ev_b.extend(b.barrier().await);
    assert_eq!(seqs(&ev_a), vec![seq]);
    assert_eq!(seqs(&ev_b), vec![seq]);
    ra.apply_all(&ev_a);
    rb.apply_all(&ev_b);

    // The loser retries on the current version and wins this time; both see it.
    let loser_ws_is_a = res_a["ok"] == false;
    let retry = json!({"type": "write", "op_id": "retry", "op": "merge", "collection": "games",
                       "id": "duel", "patch": {"gold": 20}, "expected_version": 2});
    let (res, ev) = if loser_ws_is_a {
        write(&mut a, retry).await
    } else {
        write(&mut b, retry).await
    };
    assert_eq!(
        (res["ok"].as_bool(), res["version"].as_u64()),
        (Some(true), Some(3)),
        "{res}"
    );
    let ev = ev.unwrap();
    let other = if loser_ws_is_a {
        b.recv_through_seq(ev["seq"].as_u64().unwrap()).await
    } else {
        a.recv_through_seq(ev["seq"].as_u64().unwrap()).await
    };
    assert_eq!(other, vec![ev.clone()]);
    ra.apply(&ev);
    rb.apply(&ev);

    let (st, doc) = s.get("/api/games/duel").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ra, rb, "both clients converge");
    assert_eq!(ra.live("games")["duel"], (3, doc["data"].clone()));
    assert_eq!(doc["data"]["gold"], 20);
    assert_eq!(ra.vector(&["games"]), json!({"games": {"duel": 3}}));
    a.close().await;
    b.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Acknowledgements, resume, manual sync, ping
// ---------------------------------------------------------------------------------------------------

/// Waits until the server remembers `want` (for `games`) at `position` for `client_id`.
async fn remembered(s: &TestServer, client_id: &str, position: u64, want: &Value) -> Value {
    poll(
        Duration::from_secs(5),
        "the acknowledged vector to be persisted",
        || async {
            let (st, c) = s.get(&format!("/api/clients/{client_id}")).await;
            (st == StatusCode::OK && c["position"] == position && c["state_vector"]["games"] == want["games"])
                .then_some(c)
        },
    )
    .await
}

#[tokio::test]
async fn acknowledged_vectors_are_remembered_and_a_bare_hello_resumes_from_them() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    for id in ["e1", "e2", "e3"] {
        rest_create(&s, "games", id, json!({"blob": blob, "n": 0})).await;
    }
    let (st, body) = s.get("/api/clients/ak").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");

    let (mut ws, msgs, synced) = WsClient::open(&s, "ak", &["games"], Some(json!({}))).await;
    let mut replica = Replica::default();
    replica.apply_all(&msgs);
    ws.send(&json!({"type": "ack", "seq": synced["seq"]})).await;
    let seq = rest_patch(
        &s,
        "games",
        "e1",
        json!([{"op": "replace", "path": "/n", "value": 1}]),
    )
    .await;
    let got = ws.recv_through_seq(seq).await;
    replica.apply_all(&got);
    ws.send(&json!({"type": "ack", "seq": seq})).await;
    let want = replica.vector(&["games"]);
    let c = remembered(&s, "ak", seq, &want).await;
    assert_eq!(c["client_id"], "ak");
    ws.close().await;

    // Resume with only the client id: nothing changed, nothing sent.
    let (ws, msgs, synced) = WsClient::open(&s, "ak", &["games"], None).await;
    assert!(msgs.is_empty(), "nothing changed since the ack: {msgs:?}");
    assert_eq!(synced["state_vector"], want, "{synced}");
    assert_eq!(synced["seq"], health_seq(&s).await);
    ws.close().await;

    // Changes while away: only those arrive on resume.
    let s1 = rest_patch(
        &s,
        "games",
        "e2",
        json!([{"op": "replace", "path": "/n", "value": 2}]),
    )
    .await;
    let s2 = rest_patch(
        &s,
        "games",
        "e3",
        json!([{"op": "replace", "path": "/n", "value": 3}]),
    )
    .await;
    let (mut ws, msgs, synced) = WsClient::open(&s, "ak", &["games"], None).await;
    assert_eq!(
        shape(&msgs),
        vec![("event".into(), "e2".into(), 2), ("event".into(), "e3".into(), 2)],
        "{msgs:?}"
    );
    assert_eq!(seqs(&msgs), vec![s1, s2]);
    replica.apply_all(&msgs);
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(synced["state_vector"], replica.vector(&["games"]));

    // An event received but not acknowledged is sent again on the next resume (never lost).
    ws.send(&json!({"type": "ack", "seq": synced["seq"]})).await;
    let s3 = rest_patch(
        &s,
        "games",
        "e1",
        json!([{"op": "replace", "path": "/n", "value": 4}]),
    )
    .await;
    let got = ws.recv_through_seq(s3).await;
    assert_eq!(seqs(&got), vec![s3]);
    replica.apply_all(&got);
    remembered(&s, "ak", synced["seq"].as_u64().unwrap(), &{
        let mut v = replica.vector(&["games"]);
        v["games"]["e1"] = json!(2);
        v
    })
    .await;
    ws.close().await;
    let (ws, msgs, synced) = WsClient::open(&s, "ak", &["games"], None).await;
    assert_eq!(seqs(&msgs), vec![s3], "the unacknowledged event again: {msgs:?}");
    assert_eq!(synced["state_vector"], replica.vector(&["games"]));
    ws.close().await;
}

#[tokio::test]
async fn a_sync_message_resyncs_and_a_sync_with_a_vector_replans_from_it() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    rest_create(&s, "games", "m1", json!({"blob": blob, "n": 0})).await;
    rest_create(&s, "games", "m2", json!({"blob": blob, "n": 0})).await;
    rest_patch(
        &s,
        "games",
        "m1",
        json!([{"op": "replace", "path": "/n", "value": 1}]),
    )
    .await;
    rest_patch(
        &s,
        "games",
        "m1",
        json!([{"op": "replace", "path": "/n", "value": 2}]),
    )
    .await;
    let (mut ws, msgs, synced) = WsClient::open(&s, "sy", &["games"], Some(json!({}))).await;
    assert_eq!(of_type(&msgs, "snapshot").len(), 2);
    let vector = synced["state_vector"].clone();
    assert_eq!(vector, json!({"games": {"m1": 3, "m2": 1}}));

    // A bare sync: the client is current, so just `synced`.
    ws.send(&json!({"type": "sync"})).await;
    let (before, again) = ws.recv_until("synced", WAIT).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(again["state_vector"], vector);
    assert_eq!(again["seq"], health_seq(&s).await);
    assert_eq!(
        (again["snapshots"].as_u64(), again["events"].as_u64()),
        (Some(0), Some(0))
    );

    // A sync with a vector: re-planned from that vector.
    ws.send(&json!({"type": "sync", "state_vector": {"games": {"m1": 1, "m2": 1}}}))
        .await;
    let (before, again) = ws.recv_until("synced", WAIT).await;
    assert_eq!(
        shape(&before),
        vec![("event".into(), "m1".into(), 2), ("event".into(), "m1".into(), 3)],
        "{before:?}"
    );
    assert_eq!(again["state_vector"], vector);
    assert_eq!(again["events"], 2);

    // And live events continue afterwards, once each.
    let seq = rest_patch(
        &s,
        "games",
        "m2",
        json!([{"op": "replace", "path": "/n", "value": 5}]),
    )
    .await;
    let mut got = ws.recv_through_seq(seq).await;
    got.extend(ws.barrier().await);
    assert_eq!(seqs(&got), vec![seq]);
    ws.close().await;
}

#[tokio::test]
async fn ping_is_answered_by_pong_with_the_same_id() {
    let s = TestServer::start(&[]);
    let (mut ws, _, _) = WsClient::open(&s, "pp", &["games"], Some(json!({}))).await;
    for id in [json!(42), json!("abc"), json!({"nested": [1, 2]})] {
        ws.send(&json!({"type": "ping", "id": id})).await;
        let pong = ws.recv().await;
        assert_eq!(pong["type"], "pong", "{pong}");
        assert_eq!(pong["id"], id, "{pong}");
    }
    ws.send(&json!({"type": "ping"})).await;
    let pong = ws.recv().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(pong["id"].is_null(), "{pong}");
    ws.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_ends_sse_streams_and_exits_0() {
    let mut s = TestServer::process(&[]);
    rest_create(&s, "games", "g", json!({"n": 1})).await;
    let (mut ws, _, _) = WsClient::open(&s, "bye", &["games"], Some(json!({}))).await;
    let mut sse = SseClient::open(&s, "client_id=bye-sse&subscribe=games", None).await;
    sse.recv_until("synced").await;

    let url = s.url.clone();
    let stopping = tokio::task::spawn_blocking(move || {
        let status = s.terminate(Duration::from_secs(10));
        (s, status)
    });
    let code = ws.closed(Duration::from_secs(10)).await;
    assert_eq!(
        code,
        Ok(Some(1001)),
        "the WebSocket is closed with 1001 (going away)"
    );
    let end = loop {
        match sse.read_frame(Duration::from_secs(10)).await {
            SseRead::Frame(_) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(end, SseRead::Ended),
        "the SSE body finishes cleanly, got {end:?}"
    );
    let (_s, status) = stopping.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    // And it is gone.
    let refused = reqwest::Client::new()
        .get(format!("{url}/api/health"))
        .timeout(WAIT)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

// ---------------------------------------------------------------------------------------------------
// Catch-up racing live writes
// ---------------------------------------------------------------------------------------------------

/// Clients say hello while writes keep committing: whatever commits between a client's subscription
/// and its catch-up read must reach it exactly once (the replica panics on a gap or a repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_joining_during_writes_miss_nothing_and_get_nothing_twice() {
    let s = std::sync::Arc::new(TestServer::start(&[]));
    for i in 0..5 {
        rest_create(&s, "games", &format!("r{i}"), json!({"n": 0, "list": []})).await;
        rest_create(&s, "other", &format!("o{i}"), json!({"n": 0})).await;
    }
    const WRITES: u64 = 300;
    let writer = {
        let s = std::sync::Arc::clone(&s);
        tokio::spawn(async move {
            let mut last = 0;
            for n in 1..=WRITES {
                let id = format!("r{}", n % 5);
                let seq = rest_patch(
                    &s,
                    "games",
                    &id,
                    json!([{"op": "add", "path": "/list/-", "value": n}]),
                )
                .await;
                if n % 7 == 0 {
                    rest_patch(
                        &s,
                        "other",
                        &format!("o{}", n % 5),
                        json!([{"op": "replace", "path": "/n", "value": n}]),
                    )
                    .await;
                }
                last = seq;
            }
            last
        })
    };
    // Clients join at different points of the stream of writes.
    let mut clients = Vec::new();
    let start = health_seq(&s).await;
    for k in 0..6u64 {
        let at = start + k * WRITES / 6;
        poll(Duration::from_secs(10), "the writes to progress", || async {
            (health_seq(&s).await >= at).then_some(())
        })
        .await;
        let (ws, msgs, synced) = WsClient::open(&s, &format!("join{k}"), &["games"], Some(json!({}))).await;
        let mut replica = Replica::default();
        replica.apply_all(&msgs);
        assert_eq!(replica.vector(&["games"]), synced["state_vector"]);
        clients.push((ws, replica));
    }
    let last = writer.await.unwrap();
    for (mut ws, mut replica) in clients {
        let mut got = ws.recv_through_seq(last).await;
        got.extend(ws.barrier().await);
        assert!(got
            .iter()
            .all(|m| m["type"] == "event" && m["collection"] == "games"));
        let s_ = seqs(&got);
        assert!(s_.windows(2).all(|w| w[0] < w[1]), "in order, once each: {s_:?}");
        replica.apply_all(&got);
        assert_matches_server(&s, &replica, "games").await;
        ws.close().await;
    }
}

/// An op id is an idempotency key whatever the transport: a write first sent over REST (its answer
/// lost, say) and retried over the WebSocket is replayed, not applied again.
#[tokio::test]
async fn a_write_retried_on_another_transport_is_replayed() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "x", json!({"n": 0})).await;
    let (status, first) = common::send(
        s.request(reqwest::Method::PATCH, "/api/games/x")
            .header("content-type", "application/json-patch+json")
            .header("x-client-id", "rt2")
            .header("idempotency-key", "op-77")
            .header("if-match", "\"1\"")
            .body(json!([{"op": "replace", "path": "/n", "value": 7}]).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let events_before = all_events(&s, "").await;
    let (mut ws, _, _) = WsClient::open(&s, "rt2", &["games"], Some(json!({}))).await;
    let msg = json!({"type": "write", "op_id": "op-77", "op": "patch", "collection": "games", "id": "x",
                     "patch": [{"op": "replace", "path": "/n", "value": 7}], "expected_version": 1});
    let (again, _) = write(&mut ws, msg).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["seq"], first["event"]["seq"], "{again}");
    assert_eq!(
        all_events(&s, "").await,
        events_before,
        "a replay appends nothing"
    );
}

/// A `synced` carries the client's whole vector, which may be far larger than any request body
/// (and than the socket's write buffer): it still goes out, and the client is current. (Before,
/// a client holding more documents than fit in `--max-body-bytes` of vector — about 50,000 at the
/// default — was dropped after its last snapshot, before its `synced`, on every connection.)
#[tokio::test]
async fn a_synced_larger_than_any_request_body_still_reaches_the_client() {
    let s = TestServer::start(&["--max-document-bytes", "2048", "--max-body-bytes", "8192"]);
    const DOCS: usize = 1500;
    let id = |i: usize| format!("a-rather-long-document-id-so-the-vector-is-large-{i:05}");
    let http = reqwest::Client::new();
    let url = format!("{}/api/games", s.url);
    futures::stream::iter(0..DOCS)
        .map(|i| {
            let (http, url, id) = (http.clone(), url.clone(), id(i));
            async move {
                let r = http
                    .post(&url)
                    .json(&json!({"id": id, "n": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let mut ws = WsClient::connect(&s).await;
    ws.send(&json!({"type": "hello", "client_id": "big", "subscribe": ["games"], "state_vector": {}}))
        .await;
    let (before, synced) = ws.recv_until("synced", WAIT).await;
    let vector = synced["state_vector"]["games"].as_object().expect("the vector");
    assert_eq!(vector.len(), DOCS);
    assert!(
        synced.to_string().len() > 8192 + 16 * 1024,
        "the synced is larger than a body and the write buffer"
    );
    assert_eq!(before.iter().filter(|m| m["type"] == "snapshot").count(), DOCS);
}
