//! A catch-up larger than `--max-catch-up-bytes` comes in parts (each planned from the vector the
//! one before brought the client to, going on from where it was cut), over the WebSocket, SSE and
//! `POST /api/sync` (with the `cursor` of each answer) — and the client
//! still ends exactly equal to the server, with writes going on meanwhile, never short of an event.
//! Only the last part is followed by `synced`; over SSE the parts' events carry no `id:`, so a
//! `Last-Event-ID` never claims more than the client has.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{rest_create, rest_patch, server_docs, SseClient, SseRead, TestServer, WsClient};
use serde_json::{json, Value};

/// Room for about five of the documents below per part.
const BUDGET: &[&str] = &["--max-catch-up-bytes", "30000"];
const DOCS: usize = 40;

/// 40 documents of ~5 KB, the first ten updated three times.
async fn fill(s: &TestServer) {
    for i in 0..DOCS {
        rest_create(
            s,
            "games",
            &format!("g{i:02}"),
            json!({ "fill": "x".repeat(5000), "n": 0 }),
        )
        .await;
    }
    for round in 1..=3 {
        for i in 0..10 {
            rest_patch(
                s,
                "games",
                &format!("g{i:02}"),
                json!([{"op": "replace", "path": "/n", "value": round}]),
            )
            .await;
        }
    }
}

/// A replica built by the protocol's rules, strictly: an event only onto the version before it.
#[derive(Default)]
struct Replica {
    docs: BTreeMap<String, (u64, Value)>,
}

impl Replica {
    fn apply(&mut self, m: &Value) {
        let id = m["id"].as_str().unwrap().to_string();
        match m["type"].as_str().unwrap() {
            "snapshot" => {
                if m["deleted"].as_bool().unwrap() {
                    self.docs.remove(&id);
                } else {
                    self.docs
                        .insert(id, (m["version"].as_u64().unwrap(), m["data"].clone()));
                }
            }
            "event" => {
                let version = m["version"].as_u64().unwrap();
                let entry = self.docs.entry(id.clone()).or_insert((0, json!({})));
                assert_eq!(entry.0 + 1, version, "event {id} v{version} onto v{}", entry.0);
                let patch: json_patch::Patch = serde_json::from_value(m["patch"].clone()).unwrap();
                json_patch::patch(&mut entry.1, &patch).unwrap();
                entry.0 = version;
            }
            other => panic!("not a catch-up message: {other}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_catch_up_in_parts_ends_equal_to_the_server_with_writes_meanwhile() {
    let s = TestServer::start(BUDGET);
    fill(&s).await;
    // The client has the first ten documents at version 1: they come as events, the rest as
    // snapshots, over several parts.
    let vector: BTreeMap<String, u64> = (0..10).map(|i| (format!("g{i:02}"), 1)).collect();
    let mut replica = Replica::default();
    for (id, (_, data)) in server_docs(&s, "games").await.into_iter().take(10) {
        // Rebuild version 1 of each: n was 0.
        let mut v1 = data.clone();
        v1["n"] = json!(0);
        replica.docs.insert(id, (1, v1));
    }
    let writer = {
        let url = s.url.clone();
        let http = s.http.clone();
        tokio::spawn(async move {
            for j in 0..30 {
                let id = format!("g{:02}", (j * 7) % DOCS);
                let resp = http
                    .patch(format!("{url}/api/games/{id}"))
                    .header("content-type", "application/json-patch+json")
                    .body(json!([{"op": "replace", "path": "/n", "value": 100 + j}]).to_string())
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success());
            }
        })
    };
    let mut ws = WsClient::connect(&s).await;
    ws.send(&json!({"type": "hello", "client_id": "parts", "subscribe": ["games"], "state_vector": {"games": vector}}))
        .await;
    let (before, synced) = ws.recv_until("synced", Duration::from_secs(30)).await;
    // In parts: a part's snapshots come after an earlier part's events (one catch-up would send
    // every snapshot first).
    let first_event = before.iter().position(|m| m["type"] == "event").unwrap();
    assert!(
        before[first_event..].iter().any(|m| m["type"] == "snapshot"),
        "the catch-up came in one part"
    );
    let mut counted = (0, 0);
    for m in &before {
        match m["type"].as_str().unwrap() {
            "snapshot" => counted.0 += 1,
            _ => counted.1 += 1,
        }
        replica.apply(m);
    }
    assert_eq!(
        (
            synced["snapshots"].as_u64().unwrap(),
            synced["events"].as_u64().unwrap()
        ),
        counted,
        "synced counts every part's messages"
    );
    assert!(
        counted.0 >= 30,
        "the documents the client lacked came as snapshots"
    );
    writer.await.unwrap();
    // Then live: everything written meanwhile, once — through a write made after `synced`, which
    // certainly comes live.
    let last = rest_create(&s, "games", "marker", json!({ "n": -1 })).await;
    for m in ws.recv_through_seq(last).await {
        if m["type"] == "event" {
            replica.apply(&m);
        }
    }
    assert_eq!(replica.docs, server_docs(&s, "games").await);
    let said: BTreeMap<String, u64> =
        serde_json::from_value(synced["state_vector"]["games"].clone()).unwrap();
    // The synced vector is where the catch-up left the client: every document (the marker came
    // live after it).
    assert_eq!(said.len(), DOCS);
}

#[tokio::test]
async fn an_sse_catch_up_in_parts_names_no_position_until_synced() {
    let s = TestServer::start(BUDGET);
    fill(&s).await;
    // As in the WebSocket test, the first ten documents at version 1: their events come in parts.
    let mut replica = Replica::default();
    let mut vector = serde_json::Map::new();
    for (id, (_, mut data)) in server_docs(&s, "games").await.into_iter().take(10) {
        data["n"] = json!(0);
        vector.insert(id.clone(), json!(1));
        replica.docs.insert(id, (1, data));
    }
    let query = format!(
        "client_id=sse-parts&subscribe=games&state_vector={}",
        common::url_encode(&json!({ "games": vector }).to_string())
    );
    let mut sse = SseClient::open(&s, &query, None).await;
    let mut events = 0;
    loop {
        let frame = match sse.read_frame(Duration::from_secs(30)).await {
            SseRead::Frame(f) => f,
            other => panic!("the stream ended before synced: {other:?}"),
        };
        match frame.event.as_deref().unwrap_or("message") {
            "synced" => {
                assert_eq!(frame.id_seq(), Some(common::health_seq(&s).await));
                break;
            }
            kind @ ("snapshot" | "event") => {
                assert_eq!(frame.id, None, "a part's {kind} names no position");
                events += usize::from(kind == "event");
                replica.apply(&frame.json());
            }
            _ => {}
        }
    }
    assert_eq!(events, 30, "the ten documents' three updates each came as events");
    assert_eq!(replica.docs, server_docs(&s, "games").await);
}

#[tokio::test]
async fn post_sync_answers_a_part_at_a_time_until_complete() {
    let s = TestServer::start(BUDGET);
    fill(&s).await;
    let mut replica = Replica::default();
    let mut vector = json!({});
    let mut parts = 0;
    loop {
        let (status, body) = common::send(s.http.post(format!("{}/api/sync", s.url)).json(&json!({
            "client_id": "http-parts",
            "subscribe": ["games"],
            "state_vector": vector,
        })))
        .await;
        assert_eq!(status, 200, "{body}");
        parts += 1;
        for m in body["messages"].as_array().unwrap() {
            replica.apply(m);
        }
        if body["complete"] == json!(true) {
            assert_eq!(body["synced"]["type"], "synced");
            break;
        }
        assert!(body.get("synced").is_none(), "a part is not synced");
        vector = body["state_vector"].clone();
        assert!(parts < 50, "the parts do not end");
    }
    assert!(parts >= 4, "{parts} parts of ~30 KB for ~200 KB");
    assert_eq!(replica.docs, server_docs(&s, "games").await);
}

/// With the `cursor` each part answers, a part goes on from where the one before was cut and
/// reads only what changed before it: documents already sent that change between the parts come
/// again (as events onto the version the client has, or snapshots), the rest once — and the client
/// ends equal to the server. A cursor this server did not make is refused and changes nothing.
#[tokio::test]
async fn post_sync_goes_on_from_its_cursor_with_what_changed_before_it() {
    let s = TestServer::start(BUDGET);
    fill(&s).await;
    let mut replica = Replica::default();
    let (mut vector, mut cursor) = (json!({}), Value::Null);
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    let mut parts = 0;
    loop {
        let mut req = json!({"client_id": "http-cursor", "subscribe": ["games"], "state_vector": vector});
        if !cursor.is_null() {
            req["cursor"] = cursor.clone();
        }
        let (status, body) = common::send(s.http.post(format!("{}/api/sync", s.url)).json(&req)).await;
        assert_eq!(status, 200, "{body}");
        parts += 1;
        for m in body["messages"].as_array().unwrap() {
            *sent.entry(m["id"].as_str().unwrap().to_string()).or_default() += 1;
            replica.apply(m);
        }
        if body["complete"] == json!(true) {
            assert!(body.get("cursor").is_none());
            break;
        }
        vector = body["state_vector"].clone();
        cursor = body["cursor"].clone();
        assert!(cursor.is_string(), "a part names where the next goes on: {body}");
        // The first document, sent in the first part, changes between every two parts.
        rest_patch(
            &s,
            "games",
            "g00",
            json!([{"op": "replace", "path": "/n", "value": 100 + parts}]),
        )
        .await;
        assert!(parts < 50, "the parts do not end");
    }
    assert!(parts >= 4, "{parts} parts of ~30 KB for ~200 KB");
    assert_eq!(replica.docs, server_docs(&s, "games").await);
    assert!(
        sent["g00"] >= parts - 1,
        "g00 came again after each change: {sent:?}"
    );
    let once: Vec<_> = sent
        .iter()
        .filter(|(id, n)| id.as_str() != "g00" && **n > 1)
        .collect();
    assert!(once.is_empty(), "unchanged documents came once: {once:?}");

    for bad in ["", "x", "12:games", "1:no such:x", "-1:games:", "1:games:.dot"] {
        let req = json!({"client_id": "http-cursor", "subscribe": ["games"], "cursor": bad});
        let (status, body) = common::send(s.http.post(format!("{}/api/sync", s.url)).json(&req)).await;
        assert_eq!(
            (status.as_u16(), body["error"]["code"].as_str()),
            (400, Some("invalid_cursor")),
            "{bad}: {body}"
        );
    }
    let req = json!({"client_id": "sse-cursor", "subscribe": ["games"], "cursor": "1:games:"});
    let (status, body) = common::send(s.http.post(format!("{}/sync/sse", s.url)).json(&req)).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("invalid_message")),
        "{body}"
    );
}

/// A token that reads only some of a collection: what it may not read is not planned at all, so it
/// neither takes a part's budget nor comes back in every part (which would never end); the client
/// gets its own documents and nothing else.
#[tokio::test]
async fn a_partial_reader_catches_up_in_parts_on_its_own_documents() {
    let flags: Vec<&str> = common::auth::jwt_flags()
        .into_iter()
        .chain(BUDGET.iter().copied())
        .collect();
    let s = TestServer::start(&flags);
    let admin = common::auth::token("writer", &["*"], &["*"]);
    // 60 documents of others first in id order, then 12 of alice's.
    for (prefix, n) in [("a-other", 60), ("z-alice", 12)] {
        for i in 0..n {
            let (status, body) = common::send(
                s.http
                    .post(format!("{}/api/games", s.url))
                    .header("authorization", common::auth::bearer(&admin))
                    .json(&json!({ "id": format!("{prefix}-{i:02}"), "fill": "x".repeat(5000) })),
            )
            .await;
            assert_eq!(status, 201, "{body}");
        }
    }
    let alice = common::auth::token("alice", &["games/z-alice-*"], &[]);
    let mut ws = WsClient::connect(&s).await;
    ws.send(&json!({"type": "hello", "client_id": "a1", "subscribe": ["games"], "token": alice}))
        .await;
    let (before, synced) = ws.recv_until("synced", Duration::from_secs(30)).await;
    let ids: Vec<&str> = before.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 12, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("z-alice-")), "{ids:?}");
    assert_eq!(synced["state_vector"]["games"].as_object().unwrap().len(), 12);
}
