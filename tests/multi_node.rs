//! Several nodes on one MongoDB database behave as one server: two `eventsync` processes share a
//! database (the stand-in, or `MONGODB_URI`); writes through either reach subscribers on both, in
//! sequence order, once each; a client that comes back on the other node catches up exactly.
//! A node killed mid-commit frees the log when it restarts. (The chaos convergence over two nodes,
//! with a node restart, is in `sync_chaos.rs`.)

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{all_events, health_seq, poll, server_docs, Replica, SseClient, TestServer, WsClient, WAIT};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Two nodes on one fresh database.
fn two_nodes() -> (TestServer, TestServer) {
    let database = common::mongo::fresh_database();
    (
        TestServer::process_on_database(&database, &[]),
        TestServer::process_on_database(&database, &[]),
    )
}

/// Every event of the log after `after`, as `event` messages.
async fn log_after(s: &TestServer, after: u64) -> Vec<Value> {
    all_events(s, &format!("&collection=games&after={after}"))
        .await
        .into_iter()
        .map(|mut e| {
            e["type"] = json!("event");
            e
        })
        .collect()
}

fn events_of(msgs: &[Value]) -> Vec<Value> {
    msgs.iter().filter(|m| m["type"] == "event").cloned().collect()
}

fn sse_events(frames: &[common::SseFrame]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("event"))
        .map(|f| f.json())
        .collect()
}

/// Asserts `events` are exactly `log` (same events, same order: sequence order, once each).
fn assert_exactly_the_log(events: &[Value], log: &[Value], who: &str) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "{who} got an event twice: {seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{who}: not in sequence order: {seqs:?}"
    );
    assert_eq!(events, log, "{who} did not get exactly the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_either_node_reach_subscribers_on_both_in_order_once_each() {
    let (a, b) = two_nodes();
    for id in ["g1", "g2", "g3"] {
        let (status, body) = a.post_json("/api/games", &json!({"id": id, "n": 0})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // A WebSocket client on each node, and an SSE client on B.
    let (mut ws_a, msgs_a, synced_a) = WsClient::open(&a, "on-a", &["games"], Some(json!({}))).await;
    let (mut ws_b, msgs_b, synced_b) = WsClient::open(&b, "on-b", &["games"], Some(json!({}))).await;
    let mut sse_b = SseClient::open(&b, "client_id=sse-b&subscribe=games", None).await;
    let (sse_catch_up, sse_synced) = sse_b.recv_until("synced").await;
    let start = synced_a["seq"].as_u64().unwrap();
    assert_eq!(synced_b["seq"].as_u64().unwrap(), start);
    assert_eq!(sse_synced.json()["seq"].as_u64().unwrap(), start);

    // Concurrent writers on both nodes, on the same documents (so the nodes' transactions conflict).
    let writers: Vec<_> = [(&a, "a"), (&b, "b"), (&a, "a2"), (&b, "b2")]
        .into_iter()
        .map(|(node, name)| {
            let (url, http) = (node.url.clone(), node.http.clone());
            let name = name.to_string();
            tokio::spawn(async move {
                for i in 0..25 {
                    let id = ["g1", "g2", "g3"][i % 3];
                    let resp = http
                        .patch(format!("{url}/api/games/{id}"))
                        .header("content-type", "application/merge-patch+json")
                        .json(&json!({ name.clone(): i, "last": name }))
                        .send()
                        .await
                        .expect("write");
                    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let last = health_seq(&a).await;
    assert_eq!(last, start + 100, "one event per write, none lost");
    let log = log_after(&a, start).await;
    assert_eq!(log.len(), 100);

    let got_a = events_of(&ws_a.recv_through_seq(last).await);
    let got_b = events_of(&ws_b.recv_through_seq(last).await);
    let got_sse = sse_events(&sse_b.recv_through_seq(last).await);
    assert_exactly_the_log(&got_a, &log, "the WebSocket client on A");
    assert_exactly_the_log(&got_b, &log, "the WebSocket client on B");
    assert_exactly_the_log(&got_sse, &log, "the SSE client on B");
    assert!(
        ws_a.barrier().await.is_empty() && ws_b.barrier().await.is_empty(),
        "nothing more"
    );

    // Each replica is the server's state, as either node reports it.
    let docs = server_docs(&a, "games").await;
    assert_eq!(
        docs,
        server_docs(&b, "games").await,
        "both nodes read the same store"
    );
    for (catch_up, live) in [(msgs_a, got_a), (msgs_b, got_b)] {
        let mut replica = Replica::default();
        replica.apply_all(&catch_up);
        replica.apply_all(&live);
        common::assert_docs_eq(&replica.live("games"), &docs, "replica vs server");
    }
    let mut replica = Replica::default();
    let sse_catch_up: Vec<Value> = sse_catch_up.iter().map(|f| f.json()).collect();
    replica.apply_all(&sse_catch_up);
    replica.apply_all(&got_sse);
    common::assert_docs_eq(&replica.live("games"), &docs, "SSE replica vs server");

    // Both nodes' live streams reached the end of the log.
    for node in [&a, &b] {
        let (_, health) = node.get("/api/health").await;
        assert_eq!(health["published_seq"], last, "{health}");
    }
    ws_a.close().await;
    ws_b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_comes_back_on_the_other_node_catches_up_exactly() {
    let (a, b) = two_nodes();
    let blob = common::filler(3000);
    for id in ["d1", "d2", "d3"] {
        common::rest_create(&a, "games", id, json!({"blob": blob, "n": 0})).await;
    }

    // WebSocket: leave A with a vector, come back on B with it.
    let (ws, msgs, synced) = WsClient::open(&a, "mover", &["games"], Some(json!({}))).await;
    let mut replica = Replica::default();
    replica.apply_all(&msgs);
    let (old_vector, old_seq) = (synced["state_vector"].clone(), synced["seq"].as_u64().unwrap());
    ws.close().await;
    // Meanwhile, writes through both nodes: small changes to big documents (sent as events), a new
    // document (a snapshot) and a delete.
    for (node, id, n) in [(&a, "d1", 1), (&b, "d1", 2), (&b, "d2", 1)] {
        let (status, body) = node
            .merge_patch(&format!("/api/games/{id}"), &json!({ "n": n }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    common::rest_create(&b, "games", "d4", json!({"n": 4})).await;
    let (status, body) = a.delete("/api/games/d3").await;
    assert!(status.is_success(), "{body}");

    let (mut ws, msgs, synced) = WsClient::open(&b, "mover", &["games"], Some(old_vector)).await;
    let log = log_after(&a, old_seq).await;
    // The updates as events; the new document as a snapshot, the deleted one as a deletion.
    let expected_events: Vec<Value> = log.iter().filter(|e| e["op"] == "update").cloned().collect();
    assert_eq!(
        events_of(&msgs),
        expected_events,
        "exactly the missed events, from node B"
    );
    let snapshots: Vec<(&Value, &Value)> = msgs
        .iter()
        .filter(|m| m["type"] == "snapshot")
        .map(|m| (&m["id"], &m["deleted"]))
        .collect();
    assert_eq!(
        snapshots,
        [(&json!("d3"), &json!(true)), (&json!("d4"), &json!(false))],
        "{msgs:?}"
    );
    assert_eq!(synced["seq"], health_seq(&b).await);
    replica.apply_all(&msgs);
    common::assert_docs_eq(
        &replica.live("games"),
        &server_docs(&b, "games").await,
        "after moving",
    );
    assert!(ws.barrier().await.is_empty());
    ws.close().await;

    // SSE: read through some seq on A, come back on B with Last-Event-ID.
    let mut sse = SseClient::open(&a, "client_id=sse-mover&subscribe=games", None).await;
    let (_, synced) = sse.recv_until("synced").await;
    let seen = synced.json()["seq"].as_u64().unwrap();
    drop(sse);
    for n in 10..13 {
        let (status, body) = a.merge_patch("/api/games/d1", &json!({ "n": n })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut sse = SseClient::open(&b, "client_id=sse-mover&subscribe=games", Some(&seen.to_string())).await;
    let (frames, synced) = sse.recv_until("synced").await;
    let log = log_after(&a, seen).await;
    assert_eq!(
        sse_events(&frames),
        log,
        "exactly the events after Last-Event-ID, from node B"
    );
    assert_eq!(synced.json()["seq"].as_u64(), Some(seen + 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_serves_the_shared_log_and_follows_it_again() {
    let database = common::mongo::fresh_database();
    let a = TestServer::process_on_database(&database, &[]);
    let mut b = TestServer::process_on_database(&database, &[]);
    common::rest_create(&a, "games", "g", json!({"n": 0})).await;
    let data = b.keep_data().expect("a fresh data dir");
    let addr = b.addr();
    let store = common::mongo::uri(&database);
    let args = ["--store", store.as_str()];
    // B is killed while writes go on through A; restarted on the same address, it has them all.
    b.kill();
    for n in 1..=5 {
        let (status, body) = a.merge_patch("/api/games/g", &json!({ "n": n })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let b = TestServer::process_at(data.path(), addr, &args);
    let (status, doc) = b.get("/api/games/g").await;
    assert_eq!(
        (status, doc["version"].clone()),
        (StatusCode::OK, json!(6)),
        "{doc}"
    );
    // ... and its subscribers get what is written through A from now on.
    let (mut ws, msgs, synced) = WsClient::open(&b, "after-restart", &["games"], Some(json!({}))).await;
    assert_eq!(msgs.len(), 1, "one snapshot: {msgs:?}");
    let (status, body) = a.merge_patch("/api/games/g", &json!({"n": 99})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seq = synced["seq"].as_u64().unwrap() + 1;
    let got = events_of(&ws.recv_through_seq(seq).await);
    assert_eq!(got, log_after(&a, seq - 1).await);
    poll(WAIT, "B's live stream reaches the end of the log", || async {
        let (_, health) = b.get("/api/health").await;
        (health["published_seq"] == seq).then_some(())
    })
    .await;
    ws.close().await;
}

/// A node killed in the middle of a commit leaves its transaction open on MongoDB, holding the
/// log's sequence counter, and writes through every node wait on it — until MongoDB reaps it
/// (`transactionLifetimeLimitSeconds`, 60 s; a write is refused 503 after 20 s of retries). The
/// node restarted with its node id ends what its previous run left open: writes through the other
/// node go on at once, and the log stays gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_commit_frees_the_log_when_it_restarts() {
    let database = common::mongo::fresh_database();
    let a = TestServer::process_on_database(&database, &[]);
    let mut b = TestServer::process_on_database(&database, &[]);
    common::rest_create(&a, "games", "via-a", json!({"n": 0})).await;
    common::rest_create(&a, "games", "via-b", json!({})).await;
    // Writers keep B committing (each on a field of its own of one document).
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|k| {
            let (url, http, stop) = (b.url.clone(), b.http.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let _ = http
                        .patch(format!("{url}/api/games/via-b"))
                        .header("content-type", "application/merge-patch+json")
                        .body(json!({ format!("w{k}"): n }).to_string())
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                }
            })
        })
        .collect();
    // Does a write through A (on another document) go through within a second and a half?
    let probe = |n: u64| {
        a.http
            .patch(format!("{}/api/games/via-a", a.url))
            .header("content-type", "application/merge-patch+json")
            .body(json!({ "n": n }).to_string())
            .timeout(Duration::from_millis(1500))
            .send()
    };
    // Freeze B at moments spread over its commits until it is caught holding the counter: A's
    // writes stall while B is frozen.
    let pid = b.pid() as libc::pid_t;
    let mut caught = false;
    for attempt in 0..100u64 {
        tokio::time::sleep(Duration::from_millis(20 + attempt * 7 % 50)).await;
        // SAFETY: signals to the child process this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        // Two stalls in a row: one alone may be a slow moment of A's.
        let mut stalls = 0;
        while stalls < 2 {
            match probe(attempt).await {
                Ok(resp) => {
                    assert_eq!(resp.status(), StatusCode::OK);
                    break;
                }
                Err(e) if e.is_timeout() => stalls += 1,
                Err(e) => panic!("probe: {e}"),
            }
        }
        if stalls == 2 {
            caught = true;
            break;
        }
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    assert!(caught, "B was never frozen while holding the counter");
    stop.store(true, Ordering::Relaxed);
    // Killed while frozen: its transaction stays open, and A's writes still stall.
    let data = b.keep_data().expect("a fresh data dir");
    let addr = b.addr();
    let store = common::mongo::uri(&database);
    b.kill();
    assert!(
        probe(1000).await.is_err_and(|e| e.is_timeout()),
        "the killed node's transaction did not hold the log"
    );
    for w in writers {
        w.await.expect("writer");
    }
    // Restarted (the same data dir: the same node id), B ends it, and A's writes go through.
    let b = TestServer::process_at(data.path(), addr, &["--store", store.as_str()]);
    let (status, body) = a.merge_patch("/api/games/via-a", &json!({"n": "after"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b.merge_patch("/api/games/via-b", &json!({"n": "after"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The log is gapless, and both nodes publish all of it.
    let log = log_after(&a, 0).await;
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let last = health_seq(&a).await;
    assert_eq!(last, seqs.len() as u64);
    for node in [&a, &b] {
        poll(WAIT, "the node publishes the whole log", || async {
            let (_, health) = node.get("/api/health").await;
            (health["published_seq"] == last).then_some(())
        })
        .await;
    }
}
