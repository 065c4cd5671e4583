//! Subscriptions narrower than a collection — ids, a prefix, a body filter, a window of the
//! newest — over both transports: a client holds exactly the documents of its scopes; a write
//! moving a document in brings it as a snapshot, one moving it out sends `removed`; a document
//! two scopes match comes once; live `subscribe` / `unsubscribe` on a WebSocket, with no gap and
//! no duplicate while writes go on; a scope is always intersected with what the token may read.
//! SSE takes scopes (and vectors of any size) through a registered opening (`POST /sync/sse`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::auth::{jwt_flags, token};
use common::{
    rest_create, rest_delete, rest_patch, send, server_docs, Replica, SseClient, SseRead, TestServer,
    WsClient, WsRead,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn high(min: i64) -> Value {
    json!({"id": "high", "collection": "games", "where": {"level": {"$gte": min}}})
}

/// One client connection, either transport: its messages one at a time.
enum Conn {
    Ws(WsClient),
    Sse(SseClient),
}

impl Conn {
    /// Opens a session with this hello (its `type` aside) over `transport`.
    async fn open(server: &TestServer, transport: &str, hello: Value, token: Option<&str>) -> Conn {
        match transport {
            "ws" => {
                let mut ws = WsClient::connect(server).await;
                let mut hello = hello;
                hello["type"] = json!("hello");
                if let Some(t) = token {
                    hello["token"] = json!(t);
                }
                ws.send(&hello).await;
                Conn::Ws(ws)
            }
            _ => {
                let id = register(server, &hello, token).await;
                let query = format!("resume={id}");
                Conn::Sse(match token {
                    None => SseClient::open(server, &query, None).await,
                    Some(t) => SseClient::open(server, &format!("{query}&token={t}"), None).await,
                })
            }
        }
    }

    /// The next message.
    async fn next(&mut self) -> Value {
        match self {
            Conn::Ws(ws) => match ws.read(WAIT).await {
                WsRead::Message(v) => v,
                other => panic!("expected a message, got {other:?}"),
            },
            Conn::Sse(sse) => loop {
                match sse.read_frame(WAIT).await {
                    SseRead::Frame(f) if f.data.is_empty() => continue,
                    SseRead::Frame(f) => break f.json(),
                    other => panic!("expected a frame, got {other:?}"),
                }
            },
        }
    }

    /// Messages up to and including the first for which `last` holds.
    async fn until(&mut self, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let m = self.next().await;
            let done = last(&m);
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

/// `POST /sync/sse`: registers an opening, returns its resume id.
async fn register(server: &TestServer, hello: &Value, token: Option<&str>) -> String {
    let mut req = server.json(Method::POST, "/sync/sse", hello);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let (status, body) = send(req).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["expires_in_ms"].as_u64().unwrap() > 0, "{body}");
    body["resume"].as_str().unwrap().to_string()
}

fn is(ty: &'static str, id: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["type"] == ty && m["id"] == id
}

fn ids(messages: &[Value], ty: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == ty)
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

async fn level(server: &TestServer, id: &str, level: i64) {
    rest_patch(
        server,
        "games",
        id,
        json!([{"op": "replace", "path": "/level", "value": level}]),
    )
    .await;
}

#[tokio::test]
async fn a_filtered_scope_holds_its_matches_and_moves_documents_in_and_out() {
    for transport in ["ws", "sse"] {
        let server = TestServer::start(&[]);
        for (id, l) in [("g1", 1), ("g2", 6), ("g3", 9)] {
            rest_create(&server, "games", id, json!({"level": l, "gold": 0})).await;
        }
        let hello = json!({"client_id": "c1", "subscribe": [high(5)]});
        let mut c = Conn::open(&server, transport, hello, None).await;
        let mut replica = Replica::default();
        let caught = c.until(|m| m["type"] == "synced").await;
        assert_eq!(ids(&caught, "snapshot"), ["g2", "g3"], "{transport}");
        let synced = caught.last().unwrap();
        assert!(
            synced.get("subscription").is_none(),
            "the hello's synced covers all: {synced}"
        );
        assert_eq!(synced["state_vector"], json!({"games": {"g2": 1, "g3": 1}}));
        replica.apply_all(&caught[..caught.len() - 1]);

        level(&server, "g1", 7).await; // moves in: a snapshot
        level(&server, "g2", 2).await; // moves out: removed
        rest_patch(
            &server,
            "games",
            "g3",
            json!([{"op": "replace", "path": "/gold", "value": 5}]),
        )
        .await;
        rest_patch(
            &server,
            "games",
            "g2",
            json!([{"op": "replace", "path": "/gold", "value": 5}]),
        )
        .await;
        rest_delete(&server, "games", "g3").await; // a delete is a delete
        rest_create(&server, "games", "g5", json!({"level": 0})).await; // never in
        rest_create(&server, "games", "g4", json!({"level": 8})).await; // in at birth
        let live = c.until(is("event", "g4")).await;
        let kinds: Vec<String> = live
            .iter()
            .map(|m| format!("{} {}", m["type"].as_str().unwrap(), m["id"].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            ["snapshot g1", "removed g2", "event g3", "event g3", "event g4"],
            "{transport}"
        );
        assert_eq!(live[0]["version"], 2);
        assert_eq!(live[1]["version"], 2, "removed at the version that moved it out");
        assert_eq!(live[3]["op"], "delete");
        replica.apply_all(&live);
        let expected: BTreeMap<String, (u64, Value)> = server_docs(&server, "games")
            .await
            .into_iter()
            .filter(|(_, (_, d))| d["level"].as_i64().unwrap() >= 5)
            .collect();
        assert_eq!(replica.live("games"), expected, "{transport}");
    }
}

#[tokio::test]
async fn ids_prefix_and_two_scopes_over_one_document_send_it_once() {
    let server = TestServer::start(&[]);
    for (id, l) in [("a-1", 1), ("a-2", 9), ("b-1", 9), ("b-2", 1)] {
        rest_create(&server, "games", id, json!({"level": l})).await;
    }
    for transport in ["ws", "sse"] {
        let hello = json!({"client_id": format!("c-{transport}"), "subscribe": [
            {"id": "mine", "collection": "games", "prefix": "a-"},
            high(5),
            {"id": "pick", "collection": "games", "ids": ["b-2", "a-1"]},
        ]});
        let mut c = Conn::open(&server, transport, hello, None).await;
        let caught = c.until(|m| m["type"] == "synced").await;
        assert_eq!(
            ids(&caught, "snapshot"),
            ["a-1", "a-2", "b-1", "b-2"],
            "{transport}: the union, each once"
        );
    }
}

#[tokio::test]
async fn live_subscribe_and_unsubscribe_on_a_websocket() {
    let server = TestServer::start(&[]);
    for (id, l) in [("g1", 1), ("g2", 9), ("g3", 9)] {
        rest_create(&server, "games", id, json!({"level": l})).await;
    }
    rest_create(&server, "chat", "m1", json!({"text": "hi"})).await;
    let mut ws = WsClient::connect(&server).await;
    let (caught, _) = ws.hello("c1", &["chat"], None).await;
    assert_eq!(ids(&caught, "snapshot"), ["m1"]);

    // Two scopes over games; g2 is in both, and comes once.
    let pick = json!({"id": "pick", "collection": "games", "ids": ["g1", "g2"]});
    ws.send(&json!({"type": "subscribe", "subscription": pick})).await;
    let (msgs, synced) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&msgs, "snapshot"), ["g1", "g2"]);
    assert_eq!(synced["subscription"], "pick");
    assert_eq!(synced["state_vector"], json!({"games": {"g1": 1, "g2": 1}}));
    ws.send(&json!({"type": "subscribe", "subscription": high(5)}))
        .await;
    let (msgs, synced) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&msgs, "snapshot"), ["g3"], "g2 is already there");
    assert_eq!(synced["subscription"], "high");

    // Refusals change nothing.
    for (bad, code) in [
        (
            json!({"id": "pick", "collection": "games"}),
            "invalid_subscription",
        ),
        (
            json!({"id": "f", "collection": "games", "where": {"level": {"$regex": "x"}}}),
            "invalid_subscription",
        ),
        (
            json!({"id": "f", "collection": "games", "wher": {}}),
            "invalid_message",
        ),
    ] {
        ws.send(&json!({"type": "subscribe", "subscription": bad})).await;
        let m = ws.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["code"].as_str()),
            (Some("error"), Some(code)),
            "{m}"
        );
    }
    ws.send(&json!({"type": "unsubscribe", "id": "nope"})).await;
    assert_eq!(ws.recv().await["code"], "invalid_subscription");

    // Leaving `high`: g3 leaves every scope, g2 stays (through `pick`).
    ws.send(&json!({"type": "unsubscribe", "id": "high"})).await;
    let (msgs, done) = ws.recv_until("unsubscribed", WAIT).await;
    assert_eq!(done["id"], "high");
    assert_eq!(ids(&msgs, "removed"), ["g3"]);
    level(&server, "g3", 10).await; // nothing: out of every scope
    level(&server, "g2", 0).await; // still in through `pick`
    let seen = ws.barrier().await;
    assert_eq!(ids(&seen, "event"), ["g2"], "{seen:?}");

    // Leaving the collection altogether: everything of it is removed; then nothing more comes.
    ws.send(&json!({"type": "unsubscribe", "id": "pick"})).await;
    let (msgs, _) = ws.recv_until("unsubscribed", WAIT).await;
    assert_eq!(ids(&msgs, "removed"), ["g1", "g2"]);
    level(&server, "g1", 3).await;
    rest_create(&server, "games", "g9", json!({"level": 99})).await;
    rest_patch(
        &server,
        "chat",
        "m1",
        json!([{"op": "replace", "path": "/text", "value": "yo"}]),
    )
    .await;
    let seen = ws.barrier().await;
    assert_eq!(
        ids(&seen, "event"),
        ["m1"],
        "only the collection still followed: {seen:?}"
    );
}

/// Writes go on while a client subscribes live: the scope's catch-up and the live events after
/// it fit exactly — every event follows the version the client has (no gap), none comes twice
/// (no duplicate), and at the end the client holds exactly the server's matching documents.
#[tokio::test]
async fn a_live_subscribe_during_writes_has_no_gap_and_no_duplicate() {
    let server = TestServer::start(&[]);
    const DOCS: usize = 12;
    for i in 0..DOCS {
        rest_create(&server, "games", &format!("g{i:02}"), json!({"level": i % 10})).await;
    }
    let mut ws = WsClient::connect(&server).await;
    ws.hello("c1", &[], None).await;
    let url = server.url.clone();
    let writer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for n in 0..240usize {
            let id = format!("g{:02}", n % DOCS);
            let level = (n * 7 + n / DOCS) % 10;
            let ops = json!([{"op": "replace", "path": "/level", "value": level}, {"op": "add", "path": "/n", "value": n}]);
            let resp = http
                .patch(format!("{url}/api/games/{id}"))
                .header("content-type", "application/json-patch+json")
                .body(ops.to_string())
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success());
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    ws.send(&json!({"type": "subscribe", "subscription": high(5)}))
        .await;
    writer.await.unwrap();
    // Ends the stream with a document known to be in.
    rest_create(&server, "games", "zz", json!({"level": 99})).await;
    let mut replica = Replica::default();
    let mut synced = false;
    loop {
        let m = ws.recv().await;
        match m["type"].as_str().unwrap() {
            "synced" => {
                assert_eq!(m["subscription"], "high");
                synced = true;
            }
            "snapshot" => {
                let have = replica
                    .docs
                    .get("games")
                    .and_then(|d| d.get(m["id"].as_str().unwrap()));
                let have = have.map_or(0, |h| h.0);
                assert!(
                    m["version"].as_u64().unwrap() > have,
                    "a snapshot the client had: {m}"
                );
                replica.apply(&m);
            }
            "event" | "removed" => {
                // Replica::apply asserts an event follows the version held (no gap, no repeat).
                replica.apply(&m);
                if m["id"] == "zz" {
                    break;
                }
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert!(synced);
    let expected: BTreeMap<String, (u64, Value)> = server_docs(&server, "games")
        .await
        .into_iter()
        .filter(|(_, (_, d))| d["level"].as_i64().unwrap() >= 5)
        .collect();
    assert_eq!(replica.live("games"), expected);
}

#[tokio::test]
async fn a_window_brings_the_newest_and_then_what_is_created() {
    let server = TestServer::start(&[]);
    for i in 0..30 {
        rest_create(
            &server,
            "messages",
            &format!("m{i:02}"),
            json!({"room": if i % 2 == 0 { "a" } else { "b" }, "n": i}),
        )
        .await;
        // created_at has millisecond resolution: keep creation order unambiguous.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for transport in ["ws", "sse"] {
        let last = json!({"id": "last", "collection": "messages", "latest": 5, "where": {"room": "a"}});
        let hello = json!({"client_id": format!("c-{transport}"), "subscribe": [last]});
        let mut c = Conn::open(&server, transport, hello, None).await;
        let caught = c.until(|m| m["type"] == "synced").await;
        assert_eq!(
            ids(&caught, "snapshot"),
            ["m20", "m22", "m24", "m26", "m28"],
            "{transport}"
        );
    }
    // Live, the window grows with what is created (and matches).
    let mut ws = WsClient::connect(&server).await;
    ws.send(&json!({"type": "hello", "client_id": "live", "subscribe": [
        {"id": "last", "collection": "messages", "latest": 2}
    ]}))
    .await;
    let (caught, _) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&caught, "snapshot"), ["m28", "m29"]);
    rest_create(&server, "messages", "m30", json!({"room": "a", "n": 30})).await;
    rest_patch(
        &server,
        "messages",
        "m00",
        json!([{"op": "replace", "path": "/n", "value": -1}]),
    )
    .await;
    let seen = ws.barrier().await;
    assert_eq!(
        ids(&seen, "event"),
        ["m30"],
        "old documents do not join: {seen:?}"
    );
    // A new catch-up holds exactly the newest two again: m28 leaves.
    ws.send(&json!({"type": "sync"})).await;
    let (msgs, _) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&msgs, "removed"), ["m28"]);
}

#[tokio::test]
async fn a_scope_is_intersected_with_what_the_token_may_read() {
    let server = TestServer::start(&jwt_flags());
    let admin = common::auth::admin_token("root");
    for (id, l) in [("alice-1", 9), ("alice-2", 1), ("bob-1", 9)] {
        let req = server
            .json(Method::POST, "/api/games", &json!({"id": id, "level": l}))
            .bearer_auth(&admin);
        assert_eq!(send(req).await.0, StatusCode::CREATED);
    }
    let alice = token("alice", &["games/alice-*"], &[]);
    for transport in ["ws", "sse"] {
        let hello = json!({"client_id": format!("c-{transport}"), "subscribe": [high(5)]});
        let mut c = Conn::open(&server, transport, hello, Some(&alice)).await;
        let caught = c.until(|m| m["type"] == "synced").await;
        assert_eq!(
            ids(&caught, "snapshot"),
            ["alice-1"],
            "{transport}: narrowed, never bob's"
        );
    }
    // A live subscribe to what the token cannot read at all is refused, and changes nothing.
    let mut ws = WsClient::connect(&server).await;
    ws.send(&json!({"type": "hello", "client_id": "w", "subscribe": [], "token": alice}))
        .await;
    ws.recv_until("synced", WAIT).await;
    ws.send(&json!({"type": "subscribe", "subscription": {"id": "s", "collection": "secret"}}))
        .await;
    assert_eq!(ws.recv().await["code"], "forbidden");
    ws.send(&json!({"type": "subscribe", "subscription": high(0)}))
        .await;
    let (msgs, _) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&msgs, "snapshot"), ["alice-1", "alice-2"]);
    // bob-1 moving around stays invisible.
    let req = server
        .json(Method::PATCH, "/api/games/bob-1", &json!({"level": 2}))
        .header("content-type", "application/merge-patch+json")
        .bearer_auth(&admin);
    assert!(send(req).await.0.is_success());
    let seen = ws.barrier().await;
    assert!(seen.is_empty(), "{seen:?}");
    // A registered SSE opening opens only for the subject that registered it.
    let id = register(
        &server,
        &json!({"client_id": "x", "subscribe": ["games"]}),
        Some(&alice),
    )
    .await;
    let bob = token("bob", &["games/*"], &[]);
    let resp = reqwest::Client::new()
        .get(format!("{}/sync/sse?resume={id}", server.url))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_registered_sse_opening_takes_a_vector_no_url_could_and_is_used_once() {
    let server = TestServer::start(&["--max-body-bytes", "8388608"]);
    rest_create(&server, "games", "g1", json!({"level": 9})).await;
    rest_create(&server, "games", "g2", json!({"level": 9})).await;
    // 100,000 entries (~2.5 MB of JSON): the client holds g1, and nothing of the rest.
    let mut docs = serde_json::Map::new();
    for i in 0..100_000 {
        docs.insert(format!("doc-{i:06}"), json!(0));
    }
    docs.insert("g1".into(), json!(1));
    let hello = json!({"client_id": "big", "subscribe": [high(5)], "state_vector": {"games": docs}});
    let id = register(&server, &hello, None).await;
    let mut sse = SseClient::open(&server, &format!("resume={id}"), None).await;
    let mut seen = Vec::new();
    loop {
        match sse.read_frame(WAIT).await {
            SseRead::Frame(f) if f.data.is_empty() => continue,
            SseRead::Frame(f) => {
                let m = f.json();
                if m["type"] == "synced" {
                    break;
                }
                seen.push(m);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids(&seen, "snapshot"), ["g2"], "only what the vector lacks");
    // Used: a second GET is refused, and says what to do.
    let resp = reqwest::get(format!("{}/sync/sse?resume={id}", server.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.text().await.unwrap().contains("POST /sync/sse again"));
    // A bad opening is refused at registration, and registers nothing.
    let bad =
        json!({"client_id": "x", "subscribe": [{"id": "s", "collection": "games", "where": {"$nor": []}}]});
    let (status, body) = send(server.json(Method::POST, "/sync/sse", &bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_subscription");
}

/// SSE's back channel takes live `subscribe` / `unsubscribe` like a WebSocket does.
#[tokio::test]
async fn an_sse_stream_subscribes_live_through_its_back_channel() {
    let server = TestServer::start(&[]);
    for (id, l) in [("g1", 1), ("g2", 9)] {
        rest_create(&server, "games", id, json!({"level": l})).await;
    }
    let mut sse = SseClient::open(&server, "client_id=s1", None).await;
    sse.recv_until("synced").await;
    let url = format!("{}/sync/sse/{}", server.url, sse.stream.clone().unwrap());
    let post = |m: Value| {
        let url = url.clone();
        async move {
            let resp = reqwest::Client::new().post(url).json(&m).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
        }
    };
    post(json!({"type": "subscribe", "subscription": high(5)})).await;
    let (frames, synced) = sse.recv_until("synced").await;
    assert_eq!(synced.json()["subscription"], "high");
    let msgs: Vec<Value> = frames.iter().map(|f| f.json()).collect();
    assert_eq!(ids(&msgs, "snapshot"), ["g2"]);
    level(&server, "g1", 6).await;
    let f = sse.recv().await;
    assert_eq!(
        (f.json()["type"].as_str(), f.json()["id"].as_str()),
        (Some("snapshot"), Some("g1"))
    );
    post(json!({"type": "unsubscribe", "id": "high"})).await;
    let (frames, done) = sse.recv_until("unsubscribed").await;
    assert_eq!(done.json()["id"], "high");
    let msgs: Vec<Value> = frames.iter().map(|f| f.json()).collect();
    assert_eq!(ids(&msgs, "removed"), ["g1", "g2"]);
}
