//! Sync over Server-Sent Events (`GET /sync/sse`, read with reqwest's `bytes_stream` and parsed
//! here frame by frame) and over plain HTTP (`POST /api/sync`), against the real server (in-process):
//! catch-up, `id:`s, live events, resume with `Last-Event-ID` or a `state_vector` parameter, and
//! refusals of bad parameters.

mod common;

use std::time::Duration;

use common::{
    filler, health_seq, poll, rest_create, rest_delete, rest_patch, send, server_docs, url_encode, Replica,
    SseClient, SseFrame, SseRead, TestServer,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// (event name, id, version) of each frame.
fn shape(frames: &[SseFrame]) -> Vec<(String, String, u64)> {
    frames
        .iter()
        .map(|f| {
            let m = f.json();
            (
                f.event.clone().unwrap_or_default(),
                m["id"].as_str().unwrap().to_string(),
                m["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Checks a frame's `event:` matches its JSON `type`, and an event's `id:` its `seq`; returns the JSON.
fn checked(f: &SseFrame) -> Value {
    let m = f.json();
    assert_eq!(
        f.event.as_deref(),
        m["type"].as_str(),
        "event name vs type: {f:?}"
    );
    match m["type"].as_str() {
        Some("event") => assert_eq!(f.id_seq(), m["seq"].as_u64(), "an event's id is its seq: {f:?}"),
        Some("synced") => assert_eq!(f.id_seq(), m["seq"].as_u64(), "synced's id is its seq: {f:?}"),
        Some("snapshot") => assert_eq!(f.id, None, "snapshots carry no id: {f:?}"),
        _ => panic!("unexpected SSE message {f:?}"),
    }
    m
}

fn event_seqs(frames: &[SseFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.event.as_deref() == Some("event"))
        .map(|f| f.json()["seq"].as_u64().unwrap())
        .collect()
}

async fn assert_matches_server(s: &TestServer, replica: &Replica, collection: &str) {
    let server = server_docs(s, collection).await;
    common::assert_docs_eq(
        &replica.live(collection),
        &server,
        &format!("replica vs server in '{collection}'"),
    );
}

/// Waits until the server remembers a vector at `position` (or later) for `client_id`.
async fn remembered_at(s: &TestServer, client_id: &str, position: u64) -> Value {
    poll(
        Duration::from_secs(5),
        "the delivered vector to be persisted",
        || async {
            let (st, c) = s.get(&format!("/api/clients/{client_id}")).await;
            (st == StatusCode::OK && c["position"].as_u64().is_some_and(|p| p >= position)).then_some(c)
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn sse_sends_snapshots_then_synced_with_an_id_then_live_events_with_their_seq() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "g1", json!({"gold": 1})).await;
    rest_create(&s, "games", "g2", json!({"gold": 2})).await;
    rest_create(&s, "games", "gone", json!({})).await;
    rest_delete(&s, "games", "gone").await;
    rest_create(&s, "other", "o1", json!({})).await;
    let last = health_seq(&s).await;

    let mut sse = SseClient::open(&s, "client_id=s1&subscribe=games", None).await;
    // The stream starts by setting the reconnection delay.
    match sse.read_frame(common::WAIT).await {
        SseRead::Frame(f) => assert_eq!((f.retry, f.data.as_str()), (Some(1000), ""), "{f:?}"),
        other => panic!("{other:?}"),
    }
    let (snaps, synced) = sse.recv_until("synced").await;
    assert_eq!(
        shape(&snaps),
        vec![
            ("snapshot".into(), "g1".into(), 1),
            ("snapshot".into(), "g2".into(), 1)
        ]
    );
    let mut replica = Replica::default();
    for f in &snaps {
        replica.apply(&checked(f));
    }
    let synced_msg = checked(&synced);
    assert_eq!(synced.id_seq(), Some(last));
    assert_eq!(synced_msg["state_vector"], json!({"games": {"g1": 1, "g2": 1}}));
    assert_eq!(synced_msg["snapshots"], 2);

    let mut want = vec![
        rest_patch(
            &s,
            "games",
            "g1",
            json!([{"op": "replace", "path": "/gold", "value": 10}]),
        )
        .await,
    ];
    rest_patch(
        &s,
        "other",
        "o1",
        json!([{"op": "add", "path": "/x", "value": 1}]),
    )
    .await;
    want.push(rest_create(&s, "games", "g3", json!({"gold": 3})).await);
    want.push(rest_delete(&s, "games", "g2").await);
    want.push(rest_create(&s, "games", "gone", json!({"again": true})).await);
    // A last write as a marker: anything resent or out of order would show up before it.
    want.push(
        rest_patch(
            &s,
            "games",
            "g3",
            json!([{"op": "add", "path": "/end", "value": true}]),
        )
        .await,
    );
    let got = sse.recv_through_seq(*want.last().unwrap()).await;
    assert_eq!(event_seqs(&got), want, "each event once, in order: {got:?}");
    assert_eq!(got.len(), want.len(), "{got:?}");
    for f in &got {
        replica.apply(&checked(f));
    }
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(
        replica.vector(&["games"]),
        json!({"games": {"g1": 2, "g2": 2, "g3": 2, "gone": 3}})
    );
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_without_loss_or_duplicates() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    for id in ["a", "b", "c"] {
        rest_create(&s, "games", id, json!({"blob": blob, "n": 0})).await;
    }
    let mut sse = SseClient::open(&s, "client_id=s2&subscribe=games", None).await;
    let (snaps, _) = sse.recv_until("synced").await;
    let mut replica = Replica::default();
    for f in &snaps {
        replica.apply(&checked(f));
    }
    let mut last = 0;
    for n in 1..=2 {
        last = rest_patch(
            &s,
            "games",
            "a",
            json!([{"op": "replace", "path": "/n", "value": n}]),
        )
        .await;
    }
    for f in sse.recv_through_seq(last).await {
        replica.apply(&checked(&f));
    }
    assert_eq!(sse.log.last().unwrap().id_seq(), Some(last));
    // Let the server record what it delivered, then drop the connection.
    remembered_at(&s, "s2", last).await;
    drop(sse);

    // While away: changes to three documents and a new one.
    let mut missed = vec![
        rest_patch(
            &s,
            "games",
            "a",
            json!([{"op": "replace", "path": "/n", "value": 3}]),
        )
        .await,
        rest_patch(
            &s,
            "games",
            "b",
            json!([{"op": "replace", "path": "/n", "value": 1}]),
        )
        .await,
        rest_patch(
            &s,
            "games",
            "b",
            json!([{"op": "replace", "path": "/n", "value": 2}]),
        )
        .await,
        rest_delete(&s, "games", "c").await,
    ];
    rest_create(&s, "games", "d", json!({"blob": "small"})).await;

    let mut sse = SseClient::open(&s, "client_id=s2&subscribe=games", Some(&last.to_string())).await;
    let (msgs, synced) = sse.recv_until("synced").await;
    let mut events_seen = Vec::new();
    for f in &msgs {
        let m = checked(f);
        if m["type"] == "event" {
            assert!(m["seq"].as_u64().unwrap() > last, "already received, resent: {m}");
            events_seen.push(m["seq"].as_u64().unwrap());
        }
        replica.apply(&m);
    }
    // a and b by their events; c's delete as its event or a deleted snapshot; d as a snapshot.
    let c_by_snapshot = !events_seen.contains(&missed[3]);
    if c_by_snapshot {
        missed.pop();
    }
    assert_eq!(events_seen, missed, "{msgs:?}");
    assert_eq!(
        msgs.iter()
            .filter(|f| f.event.as_deref() == Some("snapshot"))
            .count(),
        1 + usize::from(c_by_snapshot),
        "{msgs:?}"
    );
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(synced.json()["state_vector"], replica.vector(&["games"]));

    // Live again.
    let seq = rest_patch(&s, "games", "d", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    let got = sse.recv_through_seq(seq).await;
    assert_eq!(event_seqs(&got), vec![seq]);
    for f in &got {
        replica.apply(&checked(f));
    }
    assert_matches_server(&s, &replica, "games").await;
}

/// Events the server wrote to the stream but the client never processed (in flight when the
/// connection died) must come again when the client reconnects with the `Last-Event-ID` it had.
#[tokio::test]
async fn sse_resume_recovers_events_that_were_in_flight() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    rest_create(&s, "games", "f", json!({"blob": blob, "n": 0})).await;
    let mut sse = SseClient::open(&s, "client_id=s3&subscribe=games", None).await;
    let (snaps, _) = sse.recv_until("synced").await;
    let mut replica = Replica::default();
    for f in &snaps {
        replica.apply(&checked(f));
    }
    let mut seqs = Vec::new();
    for n in 1..=3 {
        seqs.push(
            rest_patch(
                &s,
                "games",
                "f",
                json!([{"op": "replace", "path": "/n", "value": n}]),
            )
            .await,
        );
    }
    // The client processes only the first event; the other two were sent but are lost with the
    // connection (the server has recorded them as delivered by then).
    let got = sse.recv_through_seq(seqs[0]).await;
    for f in &got {
        replica.apply(&checked(f));
    }
    remembered_at(&s, "s3", seqs[2]).await;
    drop(sse);

    let mut sse = SseClient::open(&s, "client_id=s3&subscribe=games", Some(&seqs[0].to_string())).await;
    let (msgs, synced) = sse.recv_until("synced").await;
    for f in &msgs {
        replica.apply(&checked(f));
    }
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(synced.json()["state_vector"], replica.vector(&["games"]));
}

#[tokio::test]
async fn sse_takes_a_state_vector_parameter() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    rest_create(&s, "games", "v1", json!({"blob": blob, "n": 0})).await;
    rest_create(&s, "games", "v2", json!({"blob": blob, "n": 0})).await;
    let (_, snap) = s.get("/api/games/v1").await;
    let s1 = rest_patch(
        &s,
        "games",
        "v1",
        json!([{"op": "replace", "path": "/n", "value": 1}]),
    )
    .await;
    let s2 = rest_patch(
        &s,
        "games",
        "v1",
        json!([{"op": "replace", "path": "/n", "value": 2}]),
    )
    .await;

    // The client has v1 at 1 and v2 at 1, and claims a document the server never had.
    let vector = json!({"games": {"v1": 1, "v2": 1, "ghost": 7}});
    let mut replica = Replica::default();
    replica.apply(
        &json!({"type": "snapshot", "collection": "games", "id": "v1", "version": 1,
                          "data": snap["data"], "deleted": false}),
    );
    let query = format!(
        "client_id=s4&subscribe=games&state_vector={}",
        url_encode(&vector.to_string())
    );
    let mut sse = SseClient::open(&s, &query, None).await;
    let (msgs, synced) = sse.recv_until("synced").await;
    assert_eq!(
        shape(&msgs),
        vec![
            ("snapshot".into(), "ghost".into(), 0),
            ("event".into(), "v1".into(), 2),
            ("event".into(), "v1".into(), 3),
        ]
    );
    assert_eq!(event_seqs(&msgs), vec![s1, s2]);
    assert_eq!(msgs[0].json()["deleted"], true);
    for f in &msgs {
        replica.apply(&checked(f));
    }
    assert_eq!(replica.live("games")["v1"], server_docs(&s, "games").await["v1"]);
    assert_eq!(
        synced.json()["state_vector"],
        json!({"games": {"v1": 3, "v2": 1}})
    );
}

#[tokio::test]
async fn sse_refuses_bad_parameters_with_400_json() {
    let s = TestServer::start(&[]);
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("client_id=a%20b&subscribe=games", None, "invalid_client_id"),
        ("client_id=&subscribe=games", None, "invalid_client_id"),
        ("client_id=ok&subscribe=2bad", None, "invalid_subscription"),
        (
            "client_id=ok&subscribe=games,sp%20ace",
            None,
            "invalid_subscription",
        ),
        (
            "client_id=ok&subscribe=games&state_vector=%7Bnot%20json",
            None,
            "invalid_state_vector",
        ),
        (
            "client_id=ok&subscribe=games&state_vector=%7B%22games%22%3A%7B%22g%22%3A%22x%22%7D%7D",
            None,
            "invalid_state_vector",
        ),
        // A repeated member, a number that would change: refused, not taken in another meaning.
        (
            "client_id=ok&subscribe=games&state_vector=%7B%22games%22%3A%7B%22g%22%3A1%2C%22g%22%3A2%7D%7D",
            None,
            "invalid_state_vector",
        ),
        (
            "client_id=ok&subscribe=games&state_vector=%7B%22games%22%3A%7B%22g%22%3A1e400%7D%7D",
            None,
            "invalid_state_vector",
        ),
        (
            "client_id=ok&subscribe=games",
            Some("abc"),
            "invalid_last_event_id",
        ),
        (
            "client_id=ok&subscribe=games",
            Some("-1"),
            "invalid_last_event_id",
        ),
    ];
    for (query, last_event_id, code) in cases {
        let mut req = s.request(Method::GET, &format!("/sync/sse?{query}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", *id);
        }
        let (status, body) = send(req).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{query} {last_event_id:?}: {body}"
        );
        assert_eq!(body["error"]["code"], *code, "{query} {last_event_id:?}: {body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // Missing client_id, unknown parameter: the query is refused too.
    for query in ["subscribe=games", "client_id=ok&surprise=1"] {
        let (status, body) = s.get(&format!("/sync/sse?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    // Still serving.
    let mut sse = SseClient::open(&s, "client_id=ok&subscribe=games", None).await;
    sse.recv_until("synced").await;
}

// ---------------------------------------------------------------------------------------------------
// POST /api/sync
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn post_api_sync_returns_what_brings_a_vector_current() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    for id in ["h1", "h2", "h3"] {
        rest_create(&s, "games", id, json!({"blob": blob, "n": 0})).await;
    }
    rest_create(&s, "other", "o", json!({})).await;

    // From nothing: a snapshot per live document.
    let (st, body) = s
        .post_json(
            "/api/sync",
            &json!({"client_id": "h", "subscribe": ["games"], "state_vector": {}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{body}");
    let mut replica = Replica::default();
    for m in msgs {
        assert_eq!(m["type"], "snapshot", "{m}");
        replica.apply(m);
    }
    let synced = &body["synced"];
    assert_eq!(synced["type"], "synced", "{synced}");
    assert_eq!(synced["seq"], health_seq(&s).await);
    assert_eq!(synced["state_vector"], replica.vector(&["games"]));
    let vector = synced["state_vector"].clone();

    rest_patch(
        &s,
        "games",
        "h1",
        json!([{"op": "replace", "path": "/n", "value": 1}]),
    )
    .await;
    rest_delete(&s, "games", "h2").await;
    rest_create(&s, "games", "h4", json!({"n": 4})).await;
    rest_patch(&s, "other", "o", json!([{"op": "add", "path": "/x", "value": 1}])).await;

    let (st, body) = s
        .post_json(
            "/api/sync",
            &json!({"client_id": "h", "subscribe": ["games"], "state_vector": vector}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let msgs = body["messages"].as_array().unwrap();
    for m in msgs {
        assert!(m["type"] == "snapshot" || m["type"] == "event", "{m}");
        assert_eq!(m["collection"], "games", "{m}");
        replica.apply(m);
    }
    let h1: Vec<&Value> = msgs.iter().filter(|m| m["id"] == "h1").collect();
    assert_eq!(h1.len(), 1);
    assert_eq!(
        (h1[0]["type"].as_str(), h1[0]["version"].as_u64()),
        (Some("event"), Some(2))
    );
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(body["synced"]["state_vector"], replica.vector(&["games"]));
    assert_eq!(body["synced"]["seq"], health_seq(&s).await);

    // Current: nothing to send. And nothing is remembered for the client.
    let (st, body) = s
        .post_json(
            "/api/sync",
            &json!({"client_id": "h", "subscribe": ["games"], "state_vector": body["synced"]["state_vector"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");
    let (st, _) = s.get("/api/clients/h").await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Bad requests are refused.
    for (req, code) in [
        (
            json!({"client_id": "a b", "subscribe": ["games"]}),
            "invalid_client_id",
        ),
        (
            json!({"client_id": "h", "subscribe": ["2x"]}),
            "invalid_subscription",
        ),
        (
            json!({"client_id": "h", "state_vector": {"games": {"g": "x"}}}),
            "invalid_message",
        ),
        (
            json!({"client_id": "h", "state_vector": {"games": {"bad id": 1}}}),
            "invalid_state_vector",
        ),
    ] {
        let (st, body) = s.post_json("/api/sync", &req).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{req}: {body}");
        assert_eq!(body["error"]["code"], code, "{req}: {body}");
    }
}

/// SSE clients connecting while writes keep committing get every event after their catch-up exactly
/// once (the replica panics on a gap or a repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_clients_joining_during_writes_miss_nothing_and_get_nothing_twice() {
    let s = std::sync::Arc::new(TestServer::start(&[]));
    for i in 0..4 {
        rest_create(&s, "games", &format!("r{i}"), json!({"list": []})).await;
    }
    const WRITES: u64 = 200;
    let start = health_seq(&s).await;
    let writer = {
        let s = std::sync::Arc::clone(&s);
        tokio::spawn(async move {
            let mut last = 0;
            for n in 1..=WRITES {
                let id = format!("r{}", n % 4);
                last = rest_patch(
                    &s,
                    "games",
                    &id,
                    json!([{"op": "add", "path": "/list/-", "value": n}]),
                )
                .await;
            }
            last
        })
    };
    let mut clients = Vec::new();
    for k in 0..4u64 {
        let at = start + k * WRITES / 4;
        poll(Duration::from_secs(10), "the writes to progress", || async {
            (health_seq(&s).await >= at).then_some(())
        })
        .await;
        let mut sse = SseClient::open(&s, &format!("client_id=join{k}&subscribe=games"), None).await;
        let (snaps, synced) = sse.recv_until("synced").await;
        let mut replica = Replica::default();
        for f in &snaps {
            replica.apply(&checked(f));
        }
        assert_eq!(replica.vector(&["games"]), synced.json()["state_vector"]);
        clients.push((sse, replica));
    }
    let last = writer.await.unwrap();
    for (mut sse, mut replica) in clients {
        let got = sse.recv_through_seq(last).await;
        let seqs = event_seqs(&got);
        assert_eq!(seqs.len(), got.len(), "only events: {got:?}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in order, once each: {seqs:?}"
        );
        for f in &got {
            replica.apply(&checked(f));
        }
        assert_matches_server(&s, &replica, "games").await;
    }
}

/// What a browser's `EventSource` does on reconnect: the same URL (so the same, now old,
/// `state_vector`) plus `Last-Event-ID`. The catch-up is planned from the old vector, but events the
/// client already received are not sent again.
#[tokio::test]
async fn sse_reconnect_with_the_same_url_and_last_event_id_skips_what_was_received() {
    let s = TestServer::start(&[]);
    let blob = filler(3000);
    let mut replica = Replica::default();
    for id in ["a", "b"] {
        rest_create(&s, "games", id, json!({"blob": blob, "n": 0})).await;
        let (_, doc) = s.get(&format!("/api/games/{id}")).await;
        replica.apply(
            &json!({"type": "snapshot", "collection": "games", "id": id, "version": 1,
                              "data": doc["data"], "deleted": false}),
        );
    }
    let query = format!(
        "client_id=s5&subscribe=games&state_vector={}",
        url_encode(&json!({"games": {"a": 1, "b": 1}}).to_string())
    );
    let mut sse = SseClient::open(&s, &query, None).await;
    let (msgs, _) = sse.recv_until("synced").await;
    assert!(msgs.is_empty(), "{msgs:?}");
    let mut received = Vec::new();
    for n in 1..=2 {
        received.push(
            rest_patch(
                &s,
                "games",
                "a",
                json!([{"op": "replace", "path": "/n", "value": n}]),
            )
            .await,
        );
    }
    for f in sse.recv_through_seq(received[1]).await {
        replica.apply(&checked(&f));
    }
    drop(sse);
    let missed = vec![
        rest_patch(
            &s,
            "games",
            "a",
            json!([{"op": "replace", "path": "/n", "value": 3}]),
        )
        .await,
        rest_patch(
            &s,
            "games",
            "b",
            json!([{"op": "replace", "path": "/n", "value": 1}]),
        )
        .await,
    ];

    let mut sse = SseClient::open(&s, &query, Some(&received[1].to_string())).await;
    let (msgs, synced) = sse.recv_until("synced").await;
    assert_eq!(event_seqs(&msgs), missed, "only what was missed: {msgs:?}");
    assert_eq!(msgs.len(), missed.len(), "{msgs:?}");
    for f in &msgs {
        replica.apply(&checked(f));
    }
    assert_matches_server(&s, &replica, "games").await;
    assert_eq!(synced.json()["state_vector"], replica.vector(&["games"]));
}
