//! The Rust client's presence (`Client::join`, `set_presence`, `broadcast`, `leave`, `members`)
//! against a real in-process server, over WebSocket and over SSE (whose presence messages go over
//! the stream's back channel): members see one another join, change and leave; a broadcast reaches
//! the other member and not the sender; a client that reconnects joins its channels again with its
//! last state; what the server would refuse is refused by the client first, sending nothing.

mod common;

use std::time::Duration;

use common::TestServer;
use eventsync_client::{Change, Client, ClientError, ClientOptions, Member, PresenceEvent, Transport};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(10);

fn options(s: &TestServer, transport: Transport, id: &str) -> ClientOptions {
    let mut o = ClientOptions::new(s.url.clone(), id, ["chat"]);
    o.transport = transport;
    o.reconnect.initial = Duration::from_millis(20);
    o.reconnect.max = Duration::from_millis(200);
    o.write_timeout = WAIT;
    o
}

fn state(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// The names (`state.name`) of a client's members of `chat`, sorted.
fn names(c: &Client) -> Vec<String> {
    let mut n: Vec<String> = c
        .members("chat")
        .unwrap_or_default()
        .iter()
        .map(|m: &Member| {
            m.state
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    n.sort();
    n
}

/// Waits (bounded, polling) until `c`'s members of `chat` are `want`.
async fn members_become(c: &Client, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while names(c) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "members {:?}, want {want:?}",
            names(c)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next presence or broadcast change on `changes` (others skipped), bounded.
async fn next_ephemeral(changes: &mut broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(WAIT, async {
        loop {
            let change = changes.recv().await.expect("the changes go on");
            if let Change::Presence(_) | Change::Broadcast(_) = change {
                return change;
            }
        }
    })
    .await
    .expect("a presence change in time")
}

#[tokio::test]
async fn rust_clients_see_one_another_over_both_transports_and_join_again_after_a_reconnect() {
    let s = TestServer::start(&[]);
    for (ta, tb) in [
        (Transport::WebSocket, Transport::Sse),
        (Transport::Sse, Transport::WebSocket),
    ] {
        let a = Client::connect(options(&s, ta, "ann-client")).await.unwrap();
        let b = Client::connect(options(&s, tb, "bob-client")).await.unwrap();
        let mut b_changes = b.changes();
        for c in [&a, &b] {
            c.wait_synced(WAIT).await.unwrap();
        }
        a.join("chat", state(json!({"name": "ann"}))).await.unwrap();
        members_become(&a, &["ann"]).await;
        b.join("chat", state(json!({"name": "bob"}))).await.unwrap();
        members_become(&a, &["ann", "bob"]).await;
        members_become(&b, &["ann", "bob"]).await;

        // An update reaches the other; a broadcast too, and not the sender.
        a.set_presence("chat", state(json!({"name": "ann", "typing": true})))
            .await
            .unwrap();
        let typing = loop {
            if let Change::Presence(p) = next_ephemeral(&mut b_changes).await {
                if p.event == PresenceEvent::Update {
                    break p;
                }
            }
        };
        assert_eq!(
            typing.member.as_ref().unwrap().state["typing"],
            true,
            "{ta:?}/{tb:?}"
        );
        let mut a_changes = a.changes();
        a.broadcast("chat", json!({"cursor": [3, 14]})).await.unwrap();
        match next_ephemeral(&mut b_changes).await {
            Change::Broadcast(m) => {
                assert_eq!(m.data, json!({"cursor": [3, 14]}));
                assert_eq!(m.from.state["name"], "ann");
            }
            other => panic!("{ta:?}/{tb:?}: {other:?}"),
        }
        b.broadcast("chat", json!("hi")).await.unwrap();
        match next_ephemeral(&mut a_changes).await {
            Change::Broadcast(m) => assert_eq!(m.data, json!("hi"), "a's own broadcast never came back"),
            other => panic!("{ta:?}/{tb:?}: {other:?}"),
        }

        // Offline, ann leaves everyone's list; back, she is in again with her last state.
        a.disconnect().await.unwrap();
        members_become(&b, &["bob"]).await;
        a.reconnect().await.unwrap();
        members_become(&b, &["ann", "bob"]).await;
        members_become(&a, &["ann", "bob"]).await;
        let ann = b
            .members("chat")
            .unwrap()
            .into_iter()
            .find(|m| m.state["name"] == "ann")
            .unwrap();
        assert_eq!(
            ann.state["typing"], true,
            "{ta:?}/{tb:?}: joined again with the last state"
        );

        // Leaving: the other sees it; the leaver no longer knows the channel.
        b.leave("chat").await.unwrap();
        members_become(&a, &["ann"]).await;
        assert_eq!(b.members("chat"), None);
        a.close().await;
        b.close().await;
    }
}

#[tokio::test]
async fn what_the_server_would_refuse_is_refused_by_the_client_and_sends_nothing() {
    let s = TestServer::start(&[]);
    let a = Client::connect(options(&s, Transport::WebSocket, "ann-client"))
        .await
        .unwrap();
    a.wait_synced(WAIT).await.unwrap();
    let errors_before = a.stats().server_errors;
    for refused in [
        a.set_presence("chat", Map::new()).await,
        a.broadcast("chat", json!(1)).await,
        a.join("chat", state(json!({"big": "x".repeat(2000)}))).await,
    ] {
        assert!(matches!(refused, Err(ClientError::Presence(_))), "{refused:?}");
    }
    assert_eq!(a.members("chat"), None, "nothing joined");
    // Joining a channel joined already replaces the state (the server refuses a second `join`).
    a.join("chat", state(json!({"name": "ann"}))).await.unwrap();
    members_become(&a, &["ann"]).await;
    a.join("chat", state(json!({"name": "ann2"}))).await.unwrap();
    // A later join's answer comes after whatever the server made of the one before.
    a.join("chat2", state(json!({"name": "ann"}))).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.members("chat2").unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "chat2's members");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.stats().server_errors, errors_before, "no error from the server");
    a.leave("chat2").await.unwrap();
    a.leave("chat").await.unwrap();
    // A channel the server refuses (not a collection name) is its error, counted, and no members.
    a.join("no such/channel/at all", Map::new()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.stats().server_errors == errors_before {
        assert!(tokio::time::Instant::now() < deadline, "the server's refusal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.members("no such/channel/at all"), Some(vec![]));
    a.close().await;
}
