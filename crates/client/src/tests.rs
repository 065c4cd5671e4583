//! The client against scripted fake servers (a WebSocket one and a raw-HTTP SSE/REST one): the
//! protocol's behaviour — hello with the vector, catch-up, acks, gaps, reconnects, writes — checked
//! message by message. Every wait is bounded by a timeout that only fails the test; nothing sleeps.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;
use eventsync_protocol::messages::WriteOp;

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn options(url: &str, transport: Transport) -> ClientOptions {
    let mut o = ClientOptions::new(url, "c1", ["games"]);
    o.transport = transport;
    o.reconnect = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(20),
        factor: 2.0,
        jitter: true,
    };
    o.ack_interval = Duration::from_millis(20);
    o.write_timeout = T;
    o
}

// ---------------------------------------------------------------- WebSocket

struct WsServer {
    url: String,
    peers: mpsc::Receiver<(String, WebSocketStream<TcpStream>)>,
}

impl WsServer {
    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn start() -> WsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, peers) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    use tokio_tungstenite::tungstenite::handshake::server::{
                        ErrorResponse, Request, Response,
                    };
                    let mut path = String::new();
                    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        path = req.uri().to_string();
                        Ok(resp)
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let _ = tx.send((path, ws)).await;
                    }
                });
            }
        });
        WsServer { url, peers }
    }

    async fn accept(&mut self) -> Peer {
        let (path, ws) = within("a connection", self.peers.recv()).await.unwrap();
        assert_eq!(path, "/sync/ws");
        Peer { ws }
    }
}

struct Peer {
    ws: WebSocketStream<TcpStream>,
}

impl Peer {
    /// The next client message (pings answered on the way, as the server would).
    async fn recv(&mut self) -> Value {
        loop {
            match within("a client message", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "ping" {
                        self.send(json!({"type": "pong", "id": v["id"]})).await;
                        continue;
                    }
                    return v;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next client message that is not an `ack`.
    async fn recv_not_ack(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] != "ack" {
                return v;
            }
        }
    }

    /// Waits for an `ack` of exactly `seq` (earlier, lower acks skipped).
    async fn expect_ack(&mut self, seq: u64) {
        loop {
            let v = self.recv().await;
            assert_eq!(v["type"], "ack", "{v}");
            let got = v["seq"].as_u64().unwrap();
            assert!(got <= seq, "acked {got} beyond {seq}");
            if got == seq {
                return;
            }
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }

    /// Expects a closed connection (after the client dropped it).
    async fn expect_closed(&mut self) {
        loop {
            match within("the close", self.ws.next()).await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    }
}

fn event(seq: u64, id: &str, version: u64, op: &str, patch: Value) -> Value {
    json!({"type": "event", "seq": seq, "collection": "games", "id": id, "version": version, "op": op,
           "patch": patch, "client_id": "w", "op_id": format!("o{seq}"), "ts": "2026-11-22T07:00:00.000Z"})
}

fn set_gold(seq: u64, id: &str, version: u64, gold: i64) -> Value {
    event(
        seq,
        id,
        version,
        "update",
        json!([{"op": "replace", "path": "/gold", "value": gold}]),
    )
}

fn snapshot(id: &str, version: u64, data: Value) -> Value {
    json!({"type": "snapshot", "collection": "games", "id": id, "version": version, "data": data, "deleted": false})
}

fn synced(seq: u64) -> Value {
    json!({"type": "synced", "seq": seq, "state_vector": {}, "snapshots": 0, "events": 0})
}

/// A delete of `games/<id>` with op id `op_id`.
fn delete(op_id: impl Into<String>, id: impl Into<String>) -> WriteMessage {
    WriteMessage {
        op_id: op_id.into(),
        op: WriteOp::Delete,
        collection: "games".into(),
        id: Some(id.into()),
        data: None,
        patch: None,
        expected_version: None,
    }
}

fn gold(client: &Client, id: &str) -> Option<i64> {
    client.with_replica(|r| {
        r.document("games", id)
            .and_then(|d| d.get("gold"))
            .and_then(Value::as_i64)
    })
}

/// Connects a client, answers its hello with a snapshot of g1 (v1, gold 1) and synced(1).
async fn live_client(server: &mut WsServer) -> (Client, Peer) {
    let client = Client::connect(options(&server.url, Transport::WebSocket))
        .await
        .unwrap();
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(hello["type"], "hello");
    peer.send(snapshot("g1", 1, json!({"gold": 1}))).await;
    peer.send(synced(1)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    peer.expect_ack(1).await;
    (client, peer)
}

#[tokio::test]
async fn hello_catch_up_acks_and_live_events() {
    let mut server = WsServer::start().await;
    let (client, mut rx) = Client::connect_with_changes(options(&server.url, Transport::WebSocket))
        .await
        .unwrap();
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(
        hello,
        json!({"type": "hello", "client_id": "c1", "subscribe": ["games"], "state_vector": {}, "token": null})
    );
    assert_eq!(client.status(), Status::Syncing);
    peer.send(snapshot("g1", 4, json!({"gold": 4}))).await;
    peer.send(event(
        9,
        "g2",
        1,
        "create",
        json!([{"op": "add", "path": "/gold", "value": 2}]),
    ))
    .await;
    peer.send(synced(9)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    peer.expect_ack(9).await;
    assert_eq!(client.stats().acks, 1);
    // Live events apply, and are acknowledged (at most once per interval).
    peer.send(set_gold(10, "g1", 5, 50)).await;
    peer.send(set_gold(11, "g2", 2, 20)).await;
    peer.expect_ack(11).await;
    assert_eq!(gold(&client, "g1"), Some(50));
    assert_eq!(gold(&client, "g2"), Some(20));
    let r = client.replica();
    assert_eq!(r.version("games", "g1"), 5);
    assert_eq!(r.last_seq(), 11);
    assert_eq!(r.counters().events_applied, 3);
    // The changes channel saw everything from the start.
    let mut kinds = Vec::new();
    while let Ok(c) = rx.try_recv() {
        kinds.push(match c {
            Change::Event(e) => format!("event {}", e.seq),
            Change::Snapshot(s) => format!("snapshot {}", s.id),
            Change::Synced(s) => format!("synced {}", s.seq),
            Change::Removed(r) => format!("removed {}", r.id),
            Change::Presence(p) => format!("presence {}", p.channel),
            Change::Broadcast(b) => format!("broadcast {}", b.channel),
        });
    }
    assert_eq!(
        kinds,
        ["snapshot g1", "event 9", "synced 9", "event 10", "event 11"]
    );
    // Close ends the task, and the change receivers (the client handle still alive).
    client.close().await;
    assert_eq!(client.status(), Status::Closed);
    assert!(matches!(
        rx.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
    assert!(client.changes().recv().await.is_err());
    peer.expect_closed().await;
    assert!(matches!(client.wait_synced(T).await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn a_gap_sends_sync_with_the_vector_and_duplicates_are_dropped() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    peer.send(set_gold(5, "g1", 3, 3)).await; // v2 missing
    let sync = peer.recv_not_ack().await;
    assert_eq!(
        sync,
        json!({"type": "sync", "state_vector": {"games": {"g1": 1}}})
    );
    assert_eq!(client.status(), Status::Syncing);
    // The answer: the missing events — and the one already sent again, plus a duplicate.
    peer.send(set_gold(4, "g1", 2, 2)).await;
    peer.send(set_gold(5, "g1", 3, 3)).await;
    peer.send(set_gold(4, "g1", 2, 2)).await;
    peer.send(synced(5)).await;
    peer.expect_ack(5).await;
    assert_eq!(client.status(), Status::Live);
    assert_eq!(gold(&client, "g1"), Some(3));
    let c = client.with_replica(|r| r.counters());
    assert_eq!((c.gaps, c.duplicates, c.applied_twice), (1, 1, 0));
    assert_eq!(client.stats().resyncs, 1);
}

#[tokio::test]
async fn a_gap_during_catch_up_syncs_again_after_synced() {
    let mut server = WsServer::start().await;
    let client = Client::connect(options(&server.url, Transport::WebSocket))
        .await
        .unwrap();
    let mut peer = server.accept().await;
    peer.recv().await;
    peer.send(snapshot("g1", 1, json!({"gold": 1}))).await;
    peer.send(set_gold(7, "g1", 3, 3)).await; // a gap inside the catch-up
    peer.send(synced(7)).await;
    // Not acknowledged, not live: another sync instead.
    let sync = peer.recv().await;
    assert_eq!(sync["type"], "sync", "{sync}");
    assert_eq!(sync["state_vector"], json!({"games": {"g1": 1}}));
    assert_eq!(client.status(), Status::Syncing);
    peer.send(set_gold(6, "g1", 2, 2)).await;
    peer.send(set_gold(7, "g1", 3, 3)).await;
    peer.send(synced(7)).await;
    peer.expect_ack(7).await;
    within("live", client.wait_synced(T)).await.unwrap();
    assert_eq!(gold(&client, "g1"), Some(3));
}

#[tokio::test]
async fn manual_sync_waits_for_its_synced() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    let c2 = client.clone();
    let sync = tokio::spawn(async move { c2.sync(T).await });
    let msg = peer.recv_not_ack().await;
    assert_eq!(msg, json!({"type": "sync", "state_vector": {"games": {"g1": 1}}}));
    peer.send(set_gold(2, "g1", 2, 2)).await;
    peer.send(synced(2)).await;
    within("sync()", sync).await.unwrap().unwrap();
    assert_eq!(gold(&client, "g1"), Some(2));
}

#[tokio::test]
async fn reconnects_after_close_and_resumes_with_its_vector() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    peer.send(event(2, "g9", 1, "create", json!([]))).await;
    peer.send(event(3, "g9", 2, "delete", json!([]))).await;
    within(
        "the delete",
        client.wait_until(|r| r.version("games", "g9") == 2, T),
    )
    .await
    .unwrap();
    peer.close(1001).await;
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(
        hello["state_vector"],
        json!({"games": {"g1": 1, "g9": 2}}),
        "deleted docs stay in the vector"
    );
    // The server re-sends what we have: all duplicates.
    peer.send(set_gold(1, "g1", 1, 1)).await;
    peer.send(synced(3)).await;
    peer.expect_ack(3).await;
    let stats = client.stats();
    assert_eq!((stats.connects, stats.reconnects), (2, 1));
    let r = client.replica();
    assert_eq!((r.counters().duplicates, r.applied_twice()), (1, 0));
    r.check().unwrap();
}

#[tokio::test]
async fn garbage_and_protocol_closes_reconnect_unknown_types_do_not() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    peer.send(json!({"type": "newfangled", "x": 1})).await;
    peer.send(set_gold(2, "g1", 2, 2)).await;
    within(
        "the event after an unknown type",
        client.wait_until(|r| r.version("games", "g1") == 2, T),
    )
    .await
    .unwrap();
    assert_eq!((client.stats().unknown, client.stats().connects), (1, 1));
    for (i, bad) in [
        Message::text("{not json"),
        Message::text(r#"{"type":"event","seq":"x"}"#),
        Message::binary(vec![1, 2, 3]),
        Message::text(r#"{"type":"synced","seq":1}"#),
    ]
    .into_iter()
    .enumerate()
    {
        peer.send_raw(bad).await;
        peer.expect_closed().await;
        peer = server.accept().await;
        let hello = peer.recv().await;
        assert_eq!(hello["type"], "hello");
        assert_eq!(client.stats().garbage, i as u64 + 1);
    }
    // A live snapshot without data parses but cannot apply: a resync, not a reconnect.
    peer.send(synced(2)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    peer.send(json!({"type": "hello_from_the_future"})).await;
    peer.send(json!({"type": "snapshot", "collection": "games", "id": "g1", "version": 3}))
        .await;
    let sync = peer.recv_not_ack().await;
    assert_eq!(sync["type"], "sync");
    peer.send(synced(2)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    // A 4xxx close: reconnect (after the long backoff, still short in this test).
    peer.close(4002).await;
    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await["type"], "hello");
    // Nothing of it reached the replica.
    assert_eq!(gold(&client, "g1"), Some(2));
}

#[tokio::test]
async fn writes_get_their_results_and_are_resent_after_a_reconnect() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    let write = |op_id: &str| WriteMessage {
        op_id: op_id.into(),
        op: WriteOp::Patch,
        collection: "games".into(),
        id: Some("g1".into()),
        data: None,
        patch: Some(json!([{"op": "replace", "path": "/gold", "value": 7}])),
        expected_version: Some(1),
    };
    let c = client.clone();
    let w1 = tokio::spawn(async move { c.write(write("w1")).await });
    let sent = peer.recv_not_ack().await;
    assert_eq!(sent["type"], "write");
    assert_eq!(sent["op_id"], "w1");
    assert_eq!(sent["expected_version"], 1);
    peer.send(json!({"type": "result", "op_id": "w1", "ok": true, "id": "g1", "version": 2, "seq": 2}))
        .await;
    let r = within("w1", w1).await.unwrap().unwrap();
    assert!(r.ok);
    assert_eq!((r.version, r.seq), (Some(2), Some(2)));
    // A write whose answer is lost with the connection is sent again on the next one.
    let c = client.clone();
    let w2 = tokio::spawn(async move { c.write(write("w2")).await });
    assert_eq!(peer.recv_not_ack().await["op_id"], "w2");
    peer.close(1001).await;
    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await["type"], "hello");
    let again = peer.recv().await;
    assert_eq!(
        (again["type"].as_str(), again["op_id"].as_str()),
        (Some("write"), Some("w2"))
    );
    peer.send(
        json!({"type": "result", "op_id": "w2", "ok": false, "replayed": true,
                     "error": {"code": "version_conflict", "message": "m", "current_version": 2}}),
    )
    .await;
    let r = within("w2", w2).await.unwrap().unwrap();
    assert!(!r.ok && r.replayed);
    assert_eq!(r.error.unwrap()["current_version"], 2);
    // Same op_id twice at once is refused; incomplete writes never leave.
    assert!(matches!(
        client
            .write(WriteMessage {
                patch: None,
                ..write("w3")
            })
            .await,
        Err(ClientError::InvalidWrite(_))
    ));
    assert!(client.stats().results >= 2);
}

#[tokio::test]
async fn writes_in_flight_are_bounded() {
    let mut server = WsServer::start().await;
    let mut o = options(&server.url, Transport::WebSocket);
    o.max_inflight_writes = 2;
    let client = Client::connect(o).await.unwrap();
    let mut peer = server.accept().await;
    peer.recv().await;
    let mut writes = Vec::new();
    for i in 0..5 {
        let c = client.clone();
        writes.push(tokio::spawn(async move {
            c.write(delete(format!("w{i}"), format!("g{i}"))).await
        }));
        // The first two are sent (in this order) before the next are made.
        within("sent", client.wait_stats(|s| s.writes_sent >= (i + 1).min(2), T))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let w = peer.recv_not_ack().await;
        let op_id = w["op_id"].as_str().unwrap().to_string();
        assert!(
            client.stats().writes_sent <= seen.len() as u64 + 2,
            "more than 2 in flight"
        );
        seen.push(op_id.clone());
        peer.send(json!({"type": "result", "op_id": op_id, "ok": true}))
            .await;
    }
    assert_eq!(seen[..2], ["w0", "w1"]);
    seen.sort();
    assert_eq!(seen, ["w0", "w1", "w2", "w3", "w4"]);
    for w in writes {
        assert!(within("a write", w).await.unwrap().unwrap().ok);
    }
}

#[tokio::test]
async fn disconnect_stays_offline_until_reconnect_and_writes_wait() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    within("disconnect", client.disconnect()).await.unwrap();
    assert_eq!(client.status(), Status::Offline);
    peer.expect_closed().await;
    // A write made offline waits for the connection.
    let c = client.clone();
    let w = tokio::spawn(async move { c.write(delete("off", "g1")).await });
    within("wait_until with nothing arriving", async {
        assert!(matches!(
            client.wait_synced(Duration::from_millis(1)).await,
            Err(ClientError::Timeout)
        ));
    })
    .await;
    assert_eq!(client.stats().connects, 1, "no connection while disconnected");
    client.reconnect().await.unwrap();
    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await["type"], "hello");
    let write = peer.recv().await;
    assert_eq!(write["op_id"], "off");
    peer.send(json!({"type": "result", "op_id": "off", "ok": true, "id": "g1", "version": 2, "seq": 2}))
        .await;
    peer.send(event(2, "g1", 2, "delete", json!([]))).await;
    peer.send(synced(2)).await;
    assert!(within("the offline write", w).await.unwrap().unwrap().ok);
    within("live", client.wait_synced(T)).await.unwrap();
    assert_eq!(gold(&client, "g1"), None);
    client.close().await;
}

#[tokio::test]
async fn close_fails_waiting_writes_and_persists_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.json");
    let mut server = WsServer::start().await;
    let mut o = options(&server.url, Transport::WebSocket);
    o.persist = Some(path.clone());
    let client = Client::connect(o.clone()).await.unwrap();
    let mut peer = server.accept().await;
    peer.recv().await;
    peer.send(snapshot("g1", 3, json!({"gold": 3}))).await;
    peer.send(synced(3)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    let c = client.clone();
    let w = tokio::spawn(async move { c.write(delete("never", "g1")).await });
    assert_eq!(peer.recv_not_ack().await["op_id"], "never");
    client.close().await;
    assert!(matches!(
        within("the write", w).await.unwrap(),
        Err(ClientError::Closed)
    ));
    // A new client resumes from the file.
    let client = Client::connect(o).await.unwrap();
    let mut peer = server.accept().await;
    assert_eq!(peer.recv().await["state_vector"], json!({"games": {"g1": 3}}));
    assert_eq!(gold(&client, "g1"), Some(3));
    client.close().await;
}

#[tokio::test]
async fn connection_refused_backs_off_and_retries() {
    // A port with nothing listening (bound, then closed).
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::connect(options(&format!("http://{addr}"), Transport::WebSocket))
        .await
        .unwrap();
    within(
        "failed attempts",
        client.wait_stats(|s| s.connect_failures >= 3, T),
    )
    .await
    .unwrap();
    let stats = client.stats();
    assert_eq!(stats.connects, 0);
    assert!(stats.reconnects >= 2, "{stats:?}");
    assert!(matches!(client.status(), Status::Offline | Status::Connecting));
    drop(client);
}

// ---------------------------------------------------------------- subscriptions (WebSocket)

/// `games` narrowed to `level >= 5`, under the id `high`.
fn high() -> Scope {
    Scope {
        filter: Some(json!({"level": {"$gte": 5}})),
        ..scope("high", "games")
    }
}

fn removed(collection: &str, id: &str, version: u64, seq: Option<u64>) -> Value {
    let mut r = json!({"type": "removed", "collection": collection, "id": id, "version": version});
    if let Some(seq) = seq {
        r["seq"] = json!(seq);
    }
    r
}

fn synced_sub(id: &str, seq: u64, vector: Value) -> Value {
    json!({"type": "synced", "subscription": id, "seq": seq, "state_vector": vector, "snapshots": 1, "events": 0})
}

fn ids(client: &Client) -> Vec<String> {
    client
        .subscriptions()
        .iter()
        .map(|s| s.id().to_string())
        .collect()
}

fn kinds(rx: &mut tokio::sync::broadcast::Receiver<Change>) -> Vec<String> {
    let mut kinds = Vec::new();
    while let Ok(c) = rx.try_recv() {
        kinds.push(match c {
            Change::Event(e) => format!("event {}/{} v{}", e.collection, e.id, e.version),
            Change::Snapshot(s) => format!("snapshot {}/{} v{}", s.collection, s.id, s.version),
            Change::Synced(s) => match &s.subscription {
                Some(id) => format!("synced {id}"),
                None => "synced".to_string(),
            },
            Change::Removed(r) => format!("removed {}/{}", r.collection, r.id),
            Change::Presence(p) => format!("presence {}", p.channel),
            Change::Broadcast(b) => format!("broadcast {}", b.channel),
        });
    }
    kinds
}

#[tokio::test]
async fn a_scope_goes_in_the_hello_and_removed_drops_a_document_that_may_come_back() {
    let mut server = WsServer::start().await;
    let mut o = options(&server.url, Transport::WebSocket);
    o.subscribe = vec!["chat".into(), high().into_subscription()];
    let (client, mut rx) = Client::connect_with_changes(o).await.unwrap();
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(
        hello["subscribe"],
        json!(["chat", {"id": "high", "collection": "games", "where": {"level": {"$gte": 5}}}])
    );
    assert_eq!(client.subscription_synced("high"), Some(false));
    assert!(matches!(
        client.wait_subscription_synced("nope", T).await,
        Err(ClientError::Subscription(_))
    ));
    // The filtered catch-up: what matches, nothing else.
    peer.send(snapshot("g1", 2, json!({"level": 7}))).await;
    peer.send(snapshot("g2", 1, json!({"level": 9}))).await;
    peer.send(synced(2)).await;
    within("high", client.wait_subscription_synced("high", T))
        .await
        .unwrap();
    assert_eq!(client.subscription_synced("chat"), Some(true));
    peer.expect_ack(2).await;
    // A write moved g1 out: dropped with its vector entry, and acknowledged like that write.
    peer.send(removed("games", "g1", 3, Some(3))).await;
    peer.expect_ack(3).await;
    let r = client.replica();
    assert_eq!(r.document("games", "g1"), None);
    assert_eq!(
        r.vector(),
        &serde_json::from_value(json!({"games": {"g2": 1}})).unwrap()
    );
    // Back in scope: a snapshot, then its events apply.
    peer.send(snapshot("g1", 4, json!({"level": 5}))).await;
    peer.send(event(
        5,
        "g1",
        5,
        "update",
        json!([{"op": "add", "path": "/gold", "value": 1}]),
    ))
    .await;
    peer.expect_ack(5).await;
    assert_eq!(gold(&client, "g1"), Some(1));
    let r = client.replica();
    assert_eq!(r.version("games", "g1"), 5);
    assert_eq!((r.counters().removed, r.applied_twice()), (1, 0));
    r.check().unwrap();
    assert_eq!(
        kinds(&mut rx),
        [
            "snapshot games/g1 v2",
            "snapshot games/g2 v1",
            "synced",
            "removed games/g1",
            "snapshot games/g1 v4",
            "event games/g1 v5"
        ]
    );
    // A reconnection says the same subscriptions, and the vector without what was removed.
    peer.close(1001).await;
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(hello["subscribe"][1]["id"], "high");
    assert_eq!(hello["state_vector"], json!({"games": {"g1": 5, "g2": 1}}));
    assert_eq!(client.subscription_synced("high"), Some(false));
    client.close().await;
}

#[tokio::test]
async fn live_subscribe_and_unsubscribe_over_websocket() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    let mut rx = client.changes();
    let one = Scope {
        ids: Some(vec!["p1".into()]),
        ..scope("one", "players")
    };
    let c = client.clone();
    let sub = tokio::spawn({
        let one = one.clone();
        async move { c.subscribe(one).await }
    });
    let msg = peer.recv_not_ack().await;
    assert_eq!(
        msg,
        json!({"type": "subscribe", "subscription": {"id": "one", "collection": "players", "ids": ["p1"]}})
    );
    assert_eq!(ids(&client), ["games", "one"]);
    assert_eq!(client.subscription_synced("one"), Some(false));
    // Its catch-up, ended by a synced naming it: the client stays live throughout.
    peer.send(
        json!({"type": "snapshot", "collection": "players", "id": "p1", "version": 3,
                     "data": {"hp": 10}, "deleted": false}),
    )
    .await;
    peer.send(synced_sub("one", 7, json!({"players": {"p1": 3}})))
        .await;
    within("subscribe", sub).await.unwrap().unwrap();
    assert_eq!(client.subscription_synced("one"), Some(true));
    assert_eq!(client.status(), Status::Live);
    peer.expect_ack(7).await;
    assert_eq!(
        client.with_replica(|r| r.collection("players").map(|c| c.len())),
        Some(1)
    );
    assert_eq!(kinds(&mut rx), ["snapshot players/p1 v3", "synced one"]);
    // The same again does nothing; another with that id is refused at once.
    within("the same", client.subscribe(one.clone())).await.unwrap();
    let e = client.subscribe(scope("one", "games")).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Subscription(b) if b.code == eventsync_protocol::ErrorCode::InvalidSubscription),
        "{e}"
    );
    assert!(matches!(
        client.subscribe("not/a collection").await,
        Err(ClientError::Subscription(_))
    ));
    // Refused by the server: undone.
    let c = client.clone();
    let bad = tokio::spawn(async move {
        c.subscribe(Scope {
            filter: Some(json!({"level": {"$regex": "x"}})),
            ..scope("bad", "games")
        })
        .await
    });
    let msg = peer.recv_not_ack().await;
    assert_eq!(msg["subscription"]["id"], "bad", "{msg}");
    peer.send(
        json!({"type": "error", "code": "invalid_subscription", "message": "bad: $regex is not supported"}),
    )
    .await;
    match within("the refusal", bad).await.unwrap() {
        Err(ClientError::Subscription(b)) => {
            assert_eq!(b.code, eventsync_protocol::ErrorCode::InvalidSubscription);
            assert_eq!(b.message, "bad: $regex is not supported");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&client), ["games", "one"]);
    assert_eq!(client.subscription_synced("bad"), None);
    // Unsubscribe: the documents that left every scope come as removed, then unsubscribed.
    let c = client.clone();
    let unsub = tokio::spawn(async move { c.unsubscribe("one").await });
    assert_eq!(
        peer.recv_not_ack().await,
        json!({"type": "unsubscribe", "id": "one"})
    );
    peer.send(removed("players", "p1", 3, None)).await;
    peer.send(json!({"type": "unsubscribed", "id": "one"})).await;
    within("unsubscribe", unsub).await.unwrap().unwrap();
    assert_eq!(ids(&client), ["games"]);
    assert!(client.with_replica(|r| r.collection("players").is_none()));
    assert_eq!(kinds(&mut rx), ["removed players/p1"]);
    assert!(matches!(
        client.unsubscribe("one").await,
        Err(ClientError::Subscription(_))
    ));
    // Live events go on as before.
    peer.send(set_gold(8, "g1", 2, 2)).await;
    peer.expect_ack(8).await;
    assert_eq!(gold(&client, "g1"), Some(2));
    client.close().await;
}

#[tokio::test]
async fn subscription_changes_offline_or_during_a_catch_up_go_with_the_hello_or_after_synced() {
    let mut server = WsServer::start().await;
    let (client, mut peer) = live_client(&mut server).await;
    let mut rx = client.changes();
    within("disconnect", client.disconnect()).await.unwrap();
    peer.expect_closed().await;
    let later = Scope {
        prefix: Some("p".into()),
        ..scope("later", "players")
    };
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe(later).await });
    let c = client.clone();
    within(
        "the subscription in the set",
        client.wait_until(|_| c.subscription_synced("later").is_some(), T),
    )
    .await
    .unwrap();
    // Offline, no server to say what left: a collection nothing follows any more goes at once.
    let c = client.clone();
    let unsub = tokio::spawn(async move { c.unsubscribe("games").await });
    within(
        "games dropped",
        client.wait_until(|r| r.collection("games").is_none(), T),
    )
    .await
    .unwrap();
    assert!(client.replica().vector().is_empty());
    assert_eq!(kinds(&mut rx), ["removed games/g1"]);
    client.reconnect().await.unwrap();
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(
        hello["subscribe"],
        json!([{"id": "later", "collection": "players", "prefix": "p"}])
    );
    assert_eq!(hello["state_vector"], json!({}));
    // A change made during the catch-up waits for its end: the write made after it goes first.
    let c = client.clone();
    let mid = tokio::spawn(async move { c.subscribe("chat").await });
    let c = client.clone();
    within(
        "chat in the set",
        client.wait_until(|_| c.subscription_synced("chat").is_some(), T),
    )
    .await
    .unwrap();
    let c = client.clone();
    let w = tokio::spawn(async move { c.write(delete("w1", "p1")).await });
    assert_eq!(peer.recv().await["op_id"], "w1");
    peer.send(json!({"type": "result", "op_id": "w1", "ok": true}))
        .await;
    peer.send(synced(3)).await;
    within("the offline subscribe", sub).await.unwrap().unwrap();
    within("the offline unsubscribe", unsub).await.unwrap().unwrap();
    assert_eq!(client.subscription_synced("later"), Some(true));
    assert_eq!(
        client.subscription_synced("chat"),
        Some(false),
        "not sent yet: the hello's synced does not cover it"
    );
    assert!(within("the write", w).await.unwrap().unwrap().ok);
    assert_eq!(
        peer.recv_not_ack().await,
        json!({"type": "subscribe", "subscription": "chat"})
    );
    // The connection ends before the answer: the next hello carries it, and its synced answers.
    peer.close(1001).await;
    let mut peer = server.accept().await;
    let hello = peer.recv().await;
    assert_eq!(
        hello["subscribe"],
        json!([{"id": "later", "collection": "players", "prefix": "p"}, "chat"])
    );
    peer.send(synced(3)).await;
    within("the subscribe carried by the hello", mid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.subscription_synced("chat"), Some(true));
    peer.expect_ack(3).await;
    client.close().await;
}

// ---------------------------------------------------------------- SSE and REST

/// A raw HTTP/1.1 server: hands each request (head, body) and its socket to the test.
struct HttpServer {
    url: String,
    requests: mpsc::Receiver<(Request, TcpStream)>,
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<String> {
        let url = reqwest::Url::parse(&format!("http://x{}", self.target)).unwrap();
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl HttpServer {
    async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let target = parts.next().unwrap_or_default().to_string();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).await.unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let len = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).await.unwrap();
                    let request = Request {
                        method,
                        target,
                        headers,
                        body,
                    };
                    let _ = tx.send((request, reader.into_inner())).await;
                });
            }
        });
        HttpServer { url, requests }
    }

    async fn next(&mut self) -> (Request, TcpStream) {
        within("a request", self.requests.recv()).await.unwrap()
    }

    /// The next request, which must be the SSE one; answers with the stream's head.
    async fn sse(&mut self) -> (Request, TcpStream) {
        let (req, mut socket) = self.next().await;
        assert_eq!(req.method, "GET");
        assert!(req.target.starts_with("/sync/sse?"), "{}", req.target);
        assert_eq!(req.header("accept"), Some("text/event-stream"));
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n",
            )
            .await
            .unwrap();
        (req, socket)
    }
}

async fn sse_send(socket: &mut TcpStream, msg: &Value, id: Option<u64>) {
    let mut frame = format!("event: {}\n", msg["type"].as_str().unwrap());
    if let Some(id) = id {
        frame.push_str(&format!("id: {id}\n"));
    }
    frame.push_str(&format!("data: {msg}\n\n"));
    socket.write_all(frame.as_bytes()).await.unwrap();
}

#[tokio::test]
async fn sse_catch_up_live_and_resume_with_last_event_id() {
    let mut server = HttpServer::start().await;
    let client = Client::connect(options(&server.url, Transport::Sse))
        .await
        .unwrap();
    let (req, mut socket) = server.sse().await;
    assert_eq!(req.query("client_id").as_deref(), Some("c1"));
    assert_eq!(req.query("subscribe").as_deref(), Some("games"));
    assert_eq!(req.query("state_vector").as_deref(), Some("{}"));
    assert_eq!(req.header("last-event-id"), None);
    socket.write_all(b": hello\n\n").await.unwrap();
    sse_send(&mut socket, &snapshot("g1", 1, json!({"gold": 1})), None).await;
    sse_send(&mut socket, &synced(4), Some(4)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    // Chunk boundaries anywhere: an event split in two writes.
    let ev = set_gold(5, "g1", 2, 2).to_string();
    let frame = format!("event: event\r\nid: 5\r\ndata: {ev}\r\n\r\n");
    let (a, b) = frame.split_at(frame.len() / 2);
    socket.write_all(a.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    socket.write_all(b.as_bytes()).await.unwrap();
    within(
        "the event",
        client.wait_until(|r| r.version("games", "g1") == 2, T),
    )
    .await
    .unwrap();
    drop(socket);
    // Resumes with its vector and the last position it had applied.
    let (req, mut socket) = server.sse().await;
    assert_eq!(req.header("last-event-id"), Some("5"));
    let vector: Value = serde_json::from_str(&req.query("state_vector").unwrap()).unwrap();
    assert_eq!(vector, json!({"games": {"g1": 2}}));
    sse_send(&mut socket, &synced(5), Some(5)).await;
    within("live again", client.wait_synced(T)).await.unwrap();
    // A gap over SSE is a reconnect with the vector.
    sse_send(&mut socket, &set_gold(9, "g1", 4, 4), Some(9)).await;
    let (req, mut socket) = server.sse().await;
    let vector: Value = serde_json::from_str(&req.query("state_vector").unwrap()).unwrap();
    assert_eq!(vector, json!({"games": {"g1": 2}}));
    assert_eq!(
        req.header("last-event-id"),
        None,
        "a resync leaves it to the vector"
    );
    sse_send(&mut socket, &snapshot("g1", 4, json!({"gold": 4})), None).await;
    sse_send(&mut socket, &synced(9), Some(9)).await;
    within("live after the gap", client.wait_synced(T)).await.unwrap();
    assert_eq!(gold(&client, "g1"), Some(4));
    let stats = client.stats();
    assert_eq!((stats.connects, stats.resyncs), (3, 1));
    // Manual sync: another reconnect.
    let c = client.clone();
    let sync = tokio::spawn(async move { c.sync(T).await });
    let (req, mut socket2) = server.sse().await;
    assert_eq!(req.header("last-event-id"), None);
    sse_send(&mut socket2, &synced(9), Some(9)).await;
    within("sync()", sync).await.unwrap().unwrap();
    drop(socket);
    client.close().await;
}

#[tokio::test]
async fn sse_refusals_and_garbage_reconnect() {
    let mut server = HttpServer::start().await;
    let client = Client::connect(options(&server.url, Transport::Sse))
        .await
        .unwrap();
    let (_, mut socket) = server.next().await;
    socket
        .write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let (_, mut socket) = server.sse().await;
    socket.write_all(b"event: event\ndata: {oops\n\n").await.unwrap();
    let (_, mut socket) = server.sse().await;
    sse_send(&mut socket, &synced(1), Some(1)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    let stats = client.stats();
    assert_eq!((stats.connect_failures, stats.garbage, stats.connects), (1, 1, 2));
}

#[tokio::test]
async fn sse_writes_go_over_rest() {
    let mut server = HttpServer::start().await;
    let client = Client::connect(options(&server.url, Transport::Sse))
        .await
        .unwrap();
    let (_, _stream) = server.sse().await;
    let c = client.clone();
    let w = tokio::spawn(async move {
        c.write(WriteMessage {
            op_id: "op-7".into(),
            op: WriteOp::Patch,
            collection: "games".into(),
            id: Some("g1".into()),
            data: None,
            patch: Some(json!([{"op": "replace", "path": "/gold", "value": 5}])),
            expected_version: Some(3),
        })
        .await
    });
    let (req, mut socket) = server.next().await;
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("PATCH", "/api/games/g1")
    );
    assert_eq!(req.header("content-type"), Some("application/json-patch+json"));
    assert_eq!(req.header("idempotency-key"), Some("op-7"));
    assert_eq!(req.header("x-client-id"), Some("c1"));
    assert_eq!(req.header("if-match"), Some("\"3\""));
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body, json!([{"op": "replace", "path": "/gold", "value": 5}]));
    let answer = json!({"error": {"code": "version_conflict", "message": "m", "expected_version": 3, "current_version": 4}})
        .to_string();
    socket
        .write_all(
            format!(
                "HTTP/1.1 409 Conflict\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let r = within("the result", w).await.unwrap().unwrap();
    assert!(!r.ok);
    assert_eq!(r.op_id, "op-7");
    assert_eq!(r.error.as_ref().unwrap()["current_version"], 4);
    // A create with an id: POST to the collection, the id in the body.
    let c = client.clone();
    let w = tokio::spawn(async move {
        c.write(WriteMessage {
            op_id: "op-8".into(),
            op: WriteOp::Create,
            collection: "games".into(),
            id: Some("g2".into()),
            data: Some(serde_json::from_value(json!({"gold": 1})).unwrap()),
            patch: None,
            expected_version: None,
        })
        .await
    });
    let (req, mut socket) = server.next().await;
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/api/games"));
    assert_eq!(
        serde_json::from_slice::<Value>(&req.body).unwrap(),
        json!({"gold": 1, "id": "g2"})
    );
    let answer = json!({"document": {"collection": "games", "id": "g2", "version": 1, "data": {"gold": 1}},
                        "event": {"seq": 12, "id": "g2", "version": 1}})
    .to_string();
    socket
        .write_all(
            format!(
                "HTTP/1.1 201 Created\r\nconnection: close\r\ncontent-type: application/json\r\nidempotent-replayed: true\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let r = within("the result", w).await.unwrap().unwrap();
    assert!(r.ok && r.replayed);
    assert_eq!(
        (r.id.as_deref(), r.version, r.seq),
        (Some("g2"), Some(1), Some(12))
    );
    client.close().await;
}

/// Answers a request with a JSON body and closes.
async fn answer_json(socket: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body.as_bytes()).await.unwrap();
}

/// Expects `POST /sync/sse` and answers it with resume id `resume`; returns its body.
async fn sse_registration(server: &mut HttpServer, resume: &str) -> Value {
    let (req, mut socket) = server.next().await;
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/sync/sse"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("authorization"), Some("Bearer t0k"));
    answer_json(
        &mut socket,
        "201 Created",
        &json!({"resume": resume, "expires_in_ms": 30000}),
    )
    .await;
    serde_json::from_slice(&req.body).unwrap()
}

/// Expects the stream opened with resume id `resume`, without `Last-Event-ID`.
async fn sse_resumed(server: &mut HttpServer, resume: &str) -> TcpStream {
    let (req, socket) = server.sse().await;
    assert_eq!(req.target, format!("/sync/sse?resume={resume}"));
    assert_eq!(req.header("last-event-id"), None);
    assert_eq!(req.header("authorization"), Some("Bearer t0k"));
    socket
}

#[tokio::test]
async fn sse_with_a_scope_registers_by_post_on_every_connection() {
    let mut server = HttpServer::start().await;
    let mut o = options(&server.url, Transport::Sse);
    o.subscribe = vec!["chat".into(), high().into_subscription()];
    o.token = Some("t0k".into());
    let (client, mut rx) = Client::connect_with_changes(o).await.unwrap();
    // A server without the registration: refused, tried again after a backoff.
    let (req, mut socket) = server.next().await;
    assert_eq!(req.method, "POST");
    answer_json(
        &mut socket,
        "404 Not Found",
        &json!({"error": {"code": "not_found", "message": "m"}}),
    )
    .await;
    let body = sse_registration(&mut server, "r1").await;
    assert_eq!(
        body,
        json!({"client_id": "c1", "state_vector": {},
               "subscribe": ["chat", {"id": "high", "collection": "games", "where": {"level": {"$gte": 5}}}]})
    );
    let mut socket = sse_resumed(&mut server, "r1").await;
    sse_send(&mut socket, &snapshot("g1", 2, json!({"level": 7})), None).await;
    sse_send(&mut socket, &synced(4), Some(4)).await;
    within("live", client.wait_synced(T)).await.unwrap();
    assert_eq!(client.subscription_synced("high"), Some(true));
    assert_eq!(client.stats().connect_failures, 1);
    // Moved out, live; then another document created in scope.
    sse_send(&mut socket, &removed("games", "g1", 3, Some(5)), Some(5)).await;
    sse_send(
        &mut socket,
        &event(
            6,
            "g2",
            1,
            "create",
            json!([{"op": "add", "path": "/level", "value": 6}]),
        ),
        Some(6),
    )
    .await;
    within(
        "the create",
        client.wait_until(|r| r.version("games", "g2") == 1, T),
    )
    .await
    .unwrap();
    assert_eq!(client.with_replica(|r| r.document("games", "g1").cloned()), None);
    // A reconnection registers again, with the vector as it is now.
    drop(socket);
    let body = sse_registration(&mut server, "r2").await;
    assert_eq!(body["state_vector"], json!({"games": {"g2": 1}}));
    let mut socket = sse_resumed(&mut server, "r2").await;
    sse_send(&mut socket, &synced(6), Some(6)).await;
    within("live again", client.wait_synced(T)).await.unwrap();
    // A subscription added over SSE reopens the stream with the new set.
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe("players").await });
    let body = sse_registration(&mut server, "r3").await;
    assert_eq!(body["subscribe"][2], "players");
    let mut socket3 = sse_resumed(&mut server, "r3").await;
    sse_send(&mut socket3, &synced(6), Some(6)).await;
    within("subscribe", sub).await.unwrap().unwrap();
    assert_eq!(client.subscription_synced("players"), Some(true));
    drop(socket);
    // Without the scope, every subscription is a whole collection again: the plain GET, from the
    // vector (no Last-Event-ID: it says nothing of what a new set brings). `games` is followed no
    // more: dropped at once.
    let c = client.clone();
    let unsub = tokio::spawn(async move { c.unsubscribe("high").await });
    let (req, mut socket4) = server.sse().await;
    assert_eq!(req.query("subscribe").as_deref(), Some("chat,players"));
    assert_eq!(req.query("state_vector").as_deref(), Some("{}"));
    assert_eq!(req.header("last-event-id"), None);
    assert!(client.with_replica(|r| r.collection("games").is_none()));
    sse_send(&mut socket4, &synced(6), Some(6)).await;
    within("unsubscribe", unsub).await.unwrap().unwrap();
    assert_eq!(ids(&client), ["chat", "players"]);
    assert_eq!(
        kinds(&mut rx),
        [
            "snapshot games/g1 v2",
            "synced",
            "removed games/g1",
            "event games/g2 v1",
            "synced",
            "synced",
            "removed games/g2",
            "synced"
        ]
    );
    drop(socket3);
    client.close().await;
}
// ---------------------------------------------------------------- a real server (opt-in)

/// Against a running server: `EVENTSYNC_URL=http://127.0.0.1:8080 cargo test --lib
/// client::tests::real_server -- --ignored`. Uses its own collection and ids, so any server does.
#[tokio::test]
#[ignore = "needs a running server: set EVENTSYNC_URL"]
async fn real_server() {
    let Ok(url) = std::env::var("EVENTSYNC_URL") else {
        panic!("set EVENTSYNC_URL to the server's base URL");
    };
    for transport in [Transport::WebSocket, Transport::Sse] {
        real_server_with(&url, transport).await;
    }
}

async fn real_server_with(url: &str, transport: Transport) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let collection = format!("rt{}", &run[..12]);
    let mut o = ClientOptions::new(url, format!("rt-{}", &run[..8]), [collection.clone()]);
    o.transport = transport;
    let (client, mut changes) = Client::connect_with_changes(o.clone()).await.unwrap();
    within("live", client.wait_synced(T)).await.unwrap();
    let w = |op: WriteOp, id: Option<&str>| WriteMessage {
        op_id: new_op_id(),
        op,
        collection: collection.clone(),
        id: id.map(str::to_string),
        data: None,
        patch: None,
        expected_version: None,
    };
    let body = |v: Value| serde_json::from_value::<eventsync_protocol::model::Data>(v).unwrap();
    let doc =
        |c: &Client, id: &str| c.with_replica(|r| r.document(&collection, id).cloned().map(Value::Object));

    // create
    let create = WriteMessage {
        data: Some(body(json!({"gold": 1, "a/b": {"~": 0}}))),
        ..w(WriteOp::Create, Some("d1"))
    };
    let r = client.write(create.clone()).await.unwrap();
    assert!(r.ok, "{transport:?} {r:?}");
    assert_eq!(
        (r.id.as_deref(), r.version, r.replayed),
        (Some("d1"), Some(1), false)
    );
    let seq1 = r.seq.unwrap();
    within(
        "the create",
        client.wait_until(|r| r.version(&collection, "d1") == 1, T),
    )
    .await
    .unwrap();
    assert_eq!(doc(&client, "d1"), Some(json!({"gold": 1, "a/b": {"~": 0}})));
    // the same op_id again: replayed, nothing appended
    let again = client.write(create).await.unwrap();
    assert!(again.ok && again.replayed, "{transport:?} {again:?}");
    assert_eq!(again.seq, Some(seq1));
    // patch (with JSON Pointer escapes), at the right version
    let patch = WriteMessage {
        patch: Some(
            json!([{"op": "replace", "path": "/a~1b/~0", "value": 5}, {"op": "add", "path": "/list", "value": [1]}]),
        ),
        expected_version: Some(1),
        ..w(WriteOp::Patch, Some("d1"))
    };
    assert_eq!(client.write(patch).await.unwrap().version, Some(2));
    // a stale expected_version: refused with the current version
    let stale = WriteMessage {
        patch: Some(json!([])),
        expected_version: Some(1),
        ..w(WriteOp::Patch, Some("d1"))
    };
    let r = client.write(stale).await.unwrap();
    assert!(!r.ok, "{transport:?} {r:?}");
    let e = r.error.unwrap();
    assert_eq!(e["code"], "version_conflict", "{transport:?} {e}");
    assert_eq!(e["current_version"], 2);
    // merge, replace
    let merge = WriteMessage {
        patch: Some(json!({"gold": null, "m": true})),
        ..w(WriteOp::Merge, Some("d1"))
    };
    assert_eq!(client.write(merge).await.unwrap().version, Some(3));
    let replace = WriteMessage {
        data: Some(body(json!({"fresh": 1}))),
        ..w(WriteOp::Replace, Some("d1"))
    };
    assert_eq!(client.write(replace).await.unwrap().version, Some(4));
    within(
        "the replace",
        client.wait_until(|r| r.version(&collection, "d1") == 4, T),
    )
    .await
    .unwrap();
    assert_eq!(doc(&client, "d1"), Some(json!({"fresh": 1})));
    // a patch that fails on the server
    let failing = WriteMessage {
        patch: Some(json!([{"op": "remove", "path": "/nope"}])),
        ..w(WriteOp::Patch, Some("d1"))
    };
    let r = client.write(failing).await.unwrap();
    assert!(
        !r.ok && r.error.as_ref().unwrap()["code"] == "patch_failed",
        "{transport:?} {r:?}"
    );
    // delete: gone, its version kept
    assert_eq!(
        client
            .write(w(WriteOp::Delete, Some("d1")))
            .await
            .unwrap()
            .version,
        Some(5)
    );
    within(
        "the delete",
        client.wait_until(|r| r.version(&collection, "d1") == 5, T),
    )
    .await
    .unwrap();
    assert_eq!(doc(&client, "d1"), None);
    // a second document with a generated id
    let r = client
        .write(WriteMessage {
            data: Some(body(json!({"x": 1}))),
            ..w(WriteOp::Create, None)
        })
        .await
        .unwrap();
    let generated = r.id.unwrap();
    within(
        "the generated doc",
        client.wait_until(|r| r.version(&collection, &generated) == 1, T),
    )
    .await
    .unwrap();
    // manual sync; offline and back
    within("sync", client.sync(T)).await.unwrap();
    client.disconnect().await.unwrap();
    let patch = WriteMessage {
        patch: Some(json!([{"op": "add", "path": "/y", "value": 2}])),
        ..w(WriteOp::Patch, Some(&generated))
    };
    let c2 = client.clone();
    let offline_write = tokio::spawn(async move { c2.write(patch).await });
    client.reconnect().await.unwrap();
    within("live again", client.wait_synced(T)).await.unwrap();
    assert!(within("the write", offline_write).await.unwrap().unwrap().ok);
    within(
        "the patch",
        client.wait_until(|r| r.version(&collection, &generated) == 2, T),
    )
    .await
    .unwrap();
    // a second client catches up to the same replica, from nothing
    let mut o2 = o.clone();
    o2.client_id = format!("{}-2", o.client_id);
    let other = Client::connect(o2).await.unwrap();
    within("the other", other.wait_synced(T)).await.unwrap();
    let (a, b) = (client.replica(), other.replica());
    assert_eq!(a.documents(), b.documents(), "{transport:?}");
    assert_eq!(
        a.vector().get(&collection).and_then(|v| v.get(&generated)),
        Some(&2)
    );
    // it does not know of d1 (deleted before it came): no snapshot needed for that
    assert_eq!(b.version(&collection, &generated), 2);
    for c in [&client, &other] {
        c.with_replica(|r| r.check()).unwrap();
        assert_eq!(c.with_replica(|r| r.counters().duplicates), 0, "{transport:?}");
    }
    let (mut events, mut snapshots) = (0, 0);
    while let Ok(change) = changes.try_recv() {
        match change {
            Change::Event(e) => {
                assert_eq!(e.collection, collection);
                events += 1;
            }
            Change::Snapshot(_) => snapshots += 1,
            Change::Synced(_) | Change::Removed(_) | Change::Presence(_) | Change::Broadcast(_) => {}
        }
    }
    // Live: create, patch, merge, replace, delete, create; the write made offline comes with the
    // catch-up, as an event or (when smaller) a snapshot.
    assert!(
        events >= 6 && events + snapshots >= 7,
        "{transport:?}: {events} events, {snapshots} snapshots"
    );
    client.close().await;
    other.close().await;
}

/// Subscriptions against a running server: `EVENTSYNC_URL=http://127.0.0.1:8080 cargo test -p
/// eventsync-client real_server_subscriptions -- --ignored`. A filtered scope brings only what
/// matches; a write moving a document out is `removed` (and moving it back, a snapshot); a live
/// subscribe / unsubscribe (a reconnect over SSE, whose scopes register with `POST /sync/sse`).
#[tokio::test]
#[ignore = "needs a running server: set EVENTSYNC_URL"]
async fn real_server_subscriptions() {
    let Ok(url) = std::env::var("EVENTSYNC_URL") else {
        panic!("set EVENTSYNC_URL to the server's base URL");
    };
    let only = std::env::var("EVENTSYNC_TRANSPORT").ok();
    for transport in [Transport::WebSocket, Transport::Sse] {
        if only
            .as_deref()
            .is_some_and(|t| !format!("{transport:?}").eq_ignore_ascii_case(t))
        {
            continue;
        }
        real_server_subscriptions_with(&url, transport).await;
    }
}

async fn real_server_subscriptions_with(url: &str, transport: Transport) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let games = format!("rs{}", &run[..12]);
    let players = format!("{games}p");
    // The writer follows both collections whole, over a WebSocket.
    let writer = Client::connect(ClientOptions::new(
        url,
        format!("rsw-{}", &run[..8]),
        [games.clone(), players.clone()],
    ))
    .await
    .unwrap();
    within("the writer", writer.wait_synced(T)).await.unwrap();
    let body = |v: Value| serde_json::from_value::<eventsync_protocol::model::Data>(v).unwrap();
    let put = |collection: &str, id: &str, data: Value| WriteMessage {
        op_id: new_op_id(),
        op: WriteOp::Replace,
        collection: collection.to_string(),
        id: Some(id.to_string()),
        data: Some(body(data)),
        patch: None,
        expected_version: None,
    };
    let create = |collection: &str, id: &str, data: Value| WriteMessage {
        op: WriteOp::Create,
        ..put(collection, id, data)
    };
    for (id, level) in [("d1", 7), ("d2", 2), ("d3", 9)] {
        let r = writer
            .write(create(&games, id, json!({"level": level})))
            .await
            .unwrap();
        assert!(r.ok, "{r:?}");
    }
    for id in ["p1", "p2"] {
        assert!(
            writer
                .write(create(&players, id, json!({"hp": 1})))
                .await
                .unwrap()
                .ok
        );
    }

    // A filtered subscription: only what matches.
    let high = Scope {
        filter: Some(json!({"level": {"$gte": 5}})),
        ..scope("high", games.as_str())
    };
    let mut o = ClientOptions::new(url, format!("rs-{}", &run[..8]), [high]);
    o.transport = transport;
    let (client, mut changes) = Client::connect_with_changes(o).await.unwrap();
    within("live", client.wait_synced(T)).await.unwrap();
    assert_eq!(client.subscription_synced("high"), Some(true));
    let held = |c: &Client, collection: &str| {
        c.with_replica(|r| {
            r.collection(collection)
                .map(|docs| docs.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
    };
    assert_eq!(held(&client, &games), ["d1", "d3"], "{transport:?}");

    // A write moving d1 out: removed, and dropped with its vector entry.
    assert!(
        writer
            .write(put(&games, "d1", json!({"level": 1})))
            .await
            .unwrap()
            .ok
    );
    within(
        "d1 removed",
        client.wait_until(|r| r.document(&games, "d1").is_none(), T),
    )
    .await
    .unwrap();
    assert_eq!(
        client.with_replica(|r| r.version(&games, "d1")),
        0,
        "{transport:?}"
    );
    // d2 moving in, d1 back in: each a snapshot; then an event applies on top.
    assert!(
        writer
            .write(put(&games, "d2", json!({"level": 6})))
            .await
            .unwrap()
            .ok
    );
    assert!(
        writer
            .write(put(&games, "d1", json!({"level": 8})))
            .await
            .unwrap()
            .ok
    );
    let r = writer
        .write(WriteMessage {
            op: WriteOp::Merge,
            data: None,
            patch: Some(json!({"gold": 3})),
            ..put(&games, "d1", json!({}))
        })
        .await
        .unwrap();
    let d1_version = r.version.unwrap();
    within(
        "d1 back, then patched",
        client.wait_until(|r| r.version(&games, "d1") == d1_version, T),
    )
    .await
    .unwrap();
    assert_eq!(held(&client, &games), ["d1", "d2", "d3"], "{transport:?}");
    assert_eq!(
        client.with_replica(|r| r.document(&games, "d1").cloned().map(Value::Object)),
        Some(json!({"level": 8, "gold": 3}))
    );

    // Live subscribe: a scope of another collection, its catch-up, its synced.
    let one = Scope {
        ids: Some(vec!["p1".into()]),
        ..scope("one", players.as_str())
    };
    within("subscribe", client.subscribe(one)).await.unwrap();
    assert_eq!(client.subscription_synced("one"), Some(true));
    assert_eq!(held(&client, &players), ["p1"], "{transport:?}");
    // Unsubscribe: its documents leave.
    within("unsubscribe", client.unsubscribe("one")).await.unwrap();
    assert!(held(&client, &players).is_empty(), "{transport:?}");
    assert_eq!(held(&client, &games), ["d1", "d2", "d3"], "{transport:?}");
    let r = client.replica();
    r.check().unwrap();
    assert_eq!(r.applied_twice(), 0);
    assert!(!r.vector().contains_key(&players), "{transport:?}");

    let (mut removed, mut named_synced) = (Vec::new(), Vec::new());
    while let Ok(change) = changes.try_recv() {
        match change {
            Change::Removed(r) => removed.push(format!("{}/{}", r.collection == games, r.id)),
            Change::Synced(s) => named_synced.extend(s.subscription.clone()),
            Change::Event(_) | Change::Snapshot(_) | Change::Presence(_) | Change::Broadcast(_) => {}
        }
    }
    assert_eq!(removed, ["true/d1", "false/p1"], "{transport:?}");
    if transport == Transport::WebSocket {
        assert_eq!(named_synced, ["one"]);
    }
    client.close().await;
    writer.close().await;
}

#[test]
fn token_expiry_and_refresh_delay() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.sig",
        b64.encode("{}"),
        b64.encode(r#"{"sub":"a","exp":1767225600}"#)
    );
    assert_eq!(crate::token_expiry(&token), Some(1767225600));
    assert_eq!(crate::token_expiry("not-a-token"), None);
    assert_eq!(crate::token_expiry("a.b.c"), None);
    assert_eq!(
        crate::refresh_delay(Duration::from_secs(3600)),
        Duration::from_secs(2880)
    );
    assert_eq!(
        crate::refresh_delay(Duration::from_secs(30)),
        Duration::from_secs(20)
    );
    assert_eq!(
        crate::refresh_delay(Duration::from_secs(2)),
        Duration::from_secs(1)
    );
    assert_eq!(crate::refresh_delay(Duration::ZERO), Duration::from_secs(1));
}
