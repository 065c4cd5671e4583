//! Bad input on the sync WebSocket, sent by a raw `tokio-tungstenite` client to the real server
//! (in-process): every bad message is answered with an `error` (or, for a write, a refused `result`) and
//! the connection stays usable; too many bad messages, an oversized frame, or no hello in time close
//! it with the documented code; and the server stays up throughout.

mod common;

use std::time::{Duration, Instant};

use common::{health_seq, rest_create, TestServer, WsClient};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// Sends `frame` and expects exactly one `error` with `code` in answer.
async fn expect_error(ws: &mut WsClient, frame: Message, code: &str) -> Value {
    let shown = format!("{frame:?}");
    ws.send_frame(frame).await;
    let m = ws.recv().await;
    assert_eq!(m["type"], "error", "{shown} → {m}");
    assert_eq!(m["code"], code, "{shown} → {m}");
    assert!(
        m["message"].as_str().is_some_and(|s| !s.is_empty()),
        "{shown} → {m}"
    );
    m
}

fn text(v: impl ToString) -> Message {
    Message::text(v.to_string())
}

/// The connection still works: a ping gets its pong and nothing else arrives before it.
async fn still_usable(ws: &mut WsClient) {
    let extra = ws.barrier().await;
    assert!(extra.is_empty(), "unexpected messages: {extra:?}");
}

/// The server is up: health answers and a fresh client syncs.
async fn server_is_fine(s: &TestServer) {
    let last = health_seq(s).await;
    let (ws, _, synced) = WsClient::open(s, "fresh-after", &["games"], Some(json!({}))).await;
    assert_eq!(synced["seq"], last, "{synced}");
    ws.close().await;
}

/// Sends a `write` and returns its `result`, which must be a refusal with `code`.
async fn expect_refused_write(ws: &mut WsClient, write: Value, code: &str) {
    ws.send(&write).await;
    let m = ws.recv().await;
    assert_eq!(m["type"], "result", "{write} → {m}");
    assert_eq!(m["op_id"], write["op_id"], "{write} → {m}");
    assert_eq!(m["ok"], false, "{write} → {m}");
    assert_eq!(m["error"]["code"], code, "{write} → {m}");
}

// ---------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_messages_before_hello_get_errors_and_a_good_hello_still_works() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "g", json!({"n": 1})).await;
    let mut ws = WsClient::connect(&s).await;
    expect_error(&mut ws, text(json!({"type": "ping", "id": 1})), "hello_required").await;
    expect_error(&mut ws, text("{\"type\": \"hello\""), "invalid_json").await;
    expect_error(
        &mut ws,
        text(json!({"type": "hello", "client_id": 5})),
        "invalid_message",
    )
    .await;
    expect_error(
        &mut ws,
        text(json!({"type": "hello", "client_id": "c", "state_vector": {"games": {"g": "1"}}})),
        "invalid_message",
    )
    .await;
    expect_error(
        &mut ws,
        text(json!({"type": "hello", "client_id": "c", "state_vector": {"games": {"bad id": 1}}})),
        "invalid_state_vector",
    )
    .await;
    expect_error(
        &mut ws,
        text(json!({"type": "hello", "client_id": "c", "state_vector": {"2x": {}}})),
        "invalid_state_vector",
    )
    .await;
    expect_error(
        &mut ws,
        text(json!({"type": "hello", "client_id": "a b"})),
        "invalid_client_id",
    )
    .await;
    expect_error(
        &mut ws,
        text(json!({"type": "hello", "client_id": "c", "subscribe": ["2x"]})),
        "invalid_subscription",
    )
    .await;
    expect_error(&mut ws, Message::binary(vec![1u8, 2, 3]), "binary_not_supported").await;

    // Nine strikes so far (the binary frame counts too): a good hello still works.
    let (msgs, synced) = ws.hello("c", &["games"], Some(json!({}))).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(synced["state_vector"], json!({"games": {"g": 1}}));
    still_usable(&mut ws).await;
    ws.close().await;
    server_is_fine(&s).await;
}

#[tokio::test]
async fn bad_messages_after_hello_get_errors_and_the_connection_stays_usable() {
    let s = TestServer::start(&[]);
    // Two connections, so that neither reaches the violation limit.
    let (mut ws, _, _) = WsClient::open(&s, "bad1", &["games"], Some(json!({}))).await;
    let cases: Vec<(Message, &str)> = vec![
        (text("{\"type\": \"ping\", "), "invalid_json"),
        (text("not json at all"), "invalid_json"),
        (text(json!({"type": "explode"})), "invalid_message"),
        (text(json!({"no_type": true})), "invalid_message"),
        (text(json!([1, 2, 3])), "invalid_message"),
        (text(json!({"type": "ack", "seq": "seven"})), "invalid_message"),
        (text(json!({"type": "ack", "seq": -1})), "invalid_message"),
        (
            text(json!({"type": "sync", "state_vector": 5})),
            "invalid_message",
        ),
        (
            Message::binary(b"{\"type\":\"ping\"}".to_vec()),
            "binary_not_supported",
        ),
    ];
    for (frame, code) in cases {
        expect_error(&mut ws, frame, code).await;
        still_usable(&mut ws).await;
    }
    ws.close().await;

    let (mut ws, _, _) = WsClient::open(&s, "bad2", &["games"], Some(json!({}))).await;
    let cases: Vec<(Message, &str)> = vec![
        (
            text(json!({"type": "hello", "client_id": "bad2", "subscribe": ["games"]})),
            "already_hello",
        ),
        (
            text(json!({"type": "ping", "id": 1, "surprise": true})),
            "invalid_message",
        ),
        (
            text(json!({"type": "sync", "state_vector": {"games": {"g": "x"}}})),
            "invalid_message",
        ),
        (
            text(json!({"type": "sync", "state_vector": {"games": {"bad id": 1}}})),
            "invalid_state_vector",
        ),
        (
            text(json!({"type": "write", "op": "create", "collection": "games"})),
            "invalid_message",
        ),
        (
            text(json!({"type": "write", "op_id": "o", "op": "frobnicate", "collection": "games"})),
            "invalid_message",
        ),
        (
            text(json!({"type": "write", "op_id": 7, "op": "create", "collection": "games", "data": {}})),
            "invalid_message",
        ),
    ];
    for (frame, code) in cases {
        expect_error(&mut ws, frame, code).await;
        still_usable(&mut ws).await;
    }
    ws.close().await;
    server_is_fine(&s).await;
}

#[tokio::test]
async fn malformed_writes_are_refused_by_their_result_and_change_nothing() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "g", json!({"n": 1})).await;
    let before = health_seq(&s).await;
    let (mut ws, _, _) = WsClient::open(&s, "bw", &["games"], Some(json!({}))).await;
    let w = |op_id: &str, extra: Value| {
        let mut m = json!({"type": "write", "op_id": op_id, "collection": "games"});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        m
    };
    let cases = [
        (
            w("p1", json!({"op": "patch", "id": "g", "patch": "not a patch"})),
            "invalid_patch",
        ),
        (
            w(
                "p2",
                json!({"op": "patch", "id": "g", "patch": [{"op": "frobnicate", "path": "/n"}]}),
            ),
            "invalid_patch",
        ),
        (
            w("p3", json!({"op": "patch", "id": "g", "patch": {"n": 2}})),
            "invalid_patch",
        ),
        (
            w(
                "p4",
                json!({"op": "patch", "id": "g", "patch": [{"op": "test", "path": "/n", "value": 9}]}),
            ),
            "patch_failed",
        ),
        (
            w(
                "p5",
                json!({"op": "patch", "patch": [{"op": "replace", "path": "/n", "value": 2}]}),
            ),
            "invalid_message",
        ),
        (w("p6", json!({"op": "delete"})), "invalid_message"),
        (w("p7", json!({"op": "replace", "id": "g"})), "invalid_message"),
        (w("p8", json!({"op": "create"})), "invalid_message"),
        (
            w("p9", json!({"op": "merge", "id": "a b", "patch": {}})),
            "invalid_id",
        ),
        (w("p10", json!({"op": "delete", "id": "nope"})), "not_found"),
        (
            w("p11", json!({"op": "create", "id": "g", "data": {"n": 0}})),
            "already_exists",
        ),
        (
            w(
                "p12",
                json!({"op": "merge", "id": "g", "patch": {"n": 5}, "expected_version": 7}),
            ),
            "version_conflict",
        ),
        (w("", json!({"op": "delete", "id": "g"})), "invalid_op_id"),
    ];
    for (write, code) in cases {
        expect_refused_write(&mut ws, write, code).await;
    }
    let mut bad_collection = w("p13", json!({"op": "create", "data": {}}));
    bad_collection["collection"] = json!("2x");
    expect_refused_write(&mut ws, bad_collection, "invalid_collection").await;
    let mut reserved = w("p14", json!({"op": "create", "data": {}}));
    reserved["collection"] = json!("events");
    expect_refused_write(&mut ws, reserved, "invalid_collection").await;

    // Refused writes are not violations (15 of them, the connection is open) and change nothing.
    still_usable(&mut ws).await;
    assert_eq!(health_seq(&s).await, before);
    let (_, doc) = s.get("/api/games/g").await;
    assert_eq!(
        (doc["version"].as_u64(), doc["data"]["n"].as_u64()),
        (Some(1), Some(1))
    );
    ws.close().await;
    server_is_fine(&s).await;
}

#[tokio::test]
async fn ten_violations_close_the_socket_with_4400() {
    let s = TestServer::start(&[]);
    // After hello: nine bad messages are answered, the tenth closes.
    let (mut ws, _, _) = WsClient::open(&s, "v1", &["games"], Some(json!({}))).await;
    for i in 0..9 {
        expect_error(
            &mut ws,
            text(json!({"type": "explode", "n": i})),
            "invalid_message",
        )
        .await;
    }
    still_usable(&mut ws).await;
    expect_error(&mut ws, text("{{{"), "invalid_json").await;
    assert_eq!(ws.closed(common::WAIT).await, Ok(Some(4400)));

    // Before hello too.
    let mut ws = WsClient::connect(&s).await;
    for _ in 0..9 {
        expect_error(&mut ws, text(json!({"type": "ping"})), "hello_required").await;
    }
    expect_error(&mut ws, text(json!({"type": "ping"})), "hello_required").await;
    assert_eq!(ws.closed(common::WAIT).await, Ok(Some(4400)));
    server_is_fine(&s).await;
}

#[tokio::test]
async fn a_frame_larger_than_the_limit_closes_the_socket() {
    let s = TestServer::start(&["--max-document-bytes", "1000"]);
    let (mut ws, _, _) = WsClient::open(&s, "big", &["games"], Some(json!({}))).await;
    // Under the frame limit but over the document limit: refused by the write's result.
    let write = json!({"type": "write", "op_id": "w", "op": "create", "collection": "games",
                       "id": "d", "data": {"blob": common::filler(5000)}});
    expect_refused_write(&mut ws, write, "document_too_large").await;
    still_usable(&mut ws).await;

    // 200 KiB, far over the 1000 + 64 KiB body limit.
    let huge = json!({"type": "ping", "id": common::filler(200 * 1024)}).to_string();
    let seen = ws.log.len();
    {
        use futures::SinkExt;
        // The server may stop reading before it has all of it: a failed send is fine.
        let _ = tokio::time::timeout(common::WAIT, ws.ws.send(Message::text(huge))).await;
    }
    let end = ws.closed(common::WAIT).await;
    eprintln!("oversized frame: the connection ended with {end:?}");
    assert!(
        matches!(end, Ok(Some(1009)) | Err(_)),
        "expected close 1009 (or at least the end of the connection), got {end:?}"
    );
    assert!(
        ws.log[seen..].is_empty(),
        "the oversized ping must not be answered: {:?}",
        &ws.log[seen..]
    );
    server_is_fine(&s).await;
}

#[tokio::test]
async fn no_hello_within_10_seconds_closes_with_4408() {
    let s = TestServer::start(&[]);
    let (mut other, _, _) = WsClient::open(&s, "patient", &["games"], Some(json!({}))).await;
    let started = Instant::now();
    let mut ws = WsClient::connect(&s).await;
    // Protocol-level pings are not a hello.
    ws.send_frame(Message::Ping(vec![1u8].into())).await;
    let end = ws.closed(Duration::from_secs(15)).await;
    assert_eq!(end, Ok(Some(4408)), "after {:?}", started.elapsed());
    assert!(ws.log.is_empty(), "nothing is sent before hello: {:?}", ws.log);
    // A client that said hello in time is unaffected.
    still_usable(&mut other).await;
    other.close().await;
    server_is_fine(&s).await;
}

/// A message that parses, but would be taken in another meaning than it says — a repeated member,
/// a number a 64-bit value cannot hold — is refused `invalid_json` and changes nothing.
#[tokio::test]
async fn repeated_members_and_inexact_numbers_are_refused_and_change_nothing() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "g", json!({"n": 1})).await;
    let before = health_seq(&s).await;
    let (mut ws, _, _) = WsClient::open(&s, "strict", &["games"], Some(json!({}))).await;
    let write = |rest: &str| {
        format!(r#"{{"type":"write","op_id":"s1","op":"create","collection":"games","id":"x",{rest}}}"#)
    };
    for frame in [
        write(r#""data":{"a":1,"a":2}"#),
        write(r#""data":{"n":123456789012345678901234567890}"#),
        write(r#""data":{"n":1e-400}"#),
        r#"{"type":"write","op_id":"s2","op":"patch","collection":"games","id":"g","patch":[{"op":"add","op":"remove","path":"/n","value":2}]}"#.to_string(),
        r#"{"type":"write","op_id":"s3","op":"merge","collection":"games","id":"g","patch":{"n":0.12345678901234567890}}"#.to_string(),
    ] {
        expect_error(&mut ws, text(&frame), "invalid_json").await;
    }
    still_usable(&mut ws).await;
    assert_eq!(health_seq(&s).await, before, "a refused message committed");
    ws.close().await;
}
