//! Presence and ephemeral broadcast: members of a channel see one another join, change and leave
//! (a session that ends leaves), broadcasts reach the other members and are never stored, every
//! bound answers with an error and changes nothing — over the WebSocket and over SSE, whose
//! messages go up its back channel (`POST /sync/sse/{stream}`).

mod common;

use std::time::Duration;

use common::auth::{jwt_flags, token};
use common::{health_seq, send, SseClient, SseRead, TestServer, WsClient, WsRead};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// A member's connection, either transport.
enum Peer {
    Ws(WsClient),
    Sse(SseClient, String, Option<String>),
}

impl Peer {
    async fn open(server: &TestServer, transport: &str, client_id: &str, token: Option<&str>) -> Peer {
        match transport {
            "ws" => {
                let mut ws = WsClient::connect(server).await;
                let mut hello = json!({"type": "hello", "client_id": client_id, "subscribe": []});
                if let Some(t) = token {
                    hello["token"] = json!(t);
                }
                ws.send(&hello).await;
                ws.recv_until("synced", WAIT).await;
                Peer::Ws(ws)
            }
            _ => {
                let mut query = format!("client_id={client_id}");
                if let Some(t) = token {
                    query.push_str(&format!("&token={t}"));
                }
                let mut sse = SseClient::open(server, &query, None).await;
                sse.recv_until("synced").await;
                let stream = sse.stream.clone().expect("the stream's first frame names it");
                Peer::Sse(
                    sse,
                    format!("{}/sync/sse/{stream}", server.url),
                    token.map(str::to_string),
                )
            }
        }
    }

    async fn send(&mut self, m: Value) {
        match self {
            Peer::Ws(ws) => ws.send(&m).await,
            Peer::Sse(_, url, token) => {
                let mut req = reqwest::Client::new().post(url.as_str()).json(&m);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(
                    resp.status(),
                    StatusCode::ACCEPTED,
                    "{}",
                    resp.text().await.unwrap()
                );
            }
        }
    }

    async fn next(&mut self) -> Value {
        match self {
            Peer::Ws(ws) => match ws.read(WAIT).await {
                WsRead::Message(v) => v,
                other => panic!("expected a message, got {other:?}"),
            },
            Peer::Sse(sse, ..) => loop {
                match sse.read_frame(WAIT).await {
                    SseRead::Frame(f) if f.data.is_empty() => continue,
                    SseRead::Frame(f) => break f.json(),
                    other => panic!("expected a frame, got {other:?}"),
                }
            },
        }
    }

    /// Nothing more arrives for a moment (over the WebSocket, a ping's round trip proves it).
    async fn quiet(&mut self) {
        match self {
            Peer::Ws(ws) => {
                let seen = ws.barrier().await;
                assert!(seen.is_empty(), "{seen:?}");
            }
            Peer::Sse(sse, ..) => match sse.read_frame(Duration::from_millis(300)).await {
                SseRead::Timeout => {}
                SseRead::Frame(f) if f.data.is_empty() => {}
                other => panic!("expected nothing, got {other:?}"),
            },
        }
    }
}

fn names(members: &Value) -> Vec<String> {
    let mut n: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"]["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn members_see_one_another_join_change_broadcast_and_leave() {
    for (ta, tb) in [("ws", "sse"), ("sse", "ws")] {
        let server = TestServer::start(&[]);
        let before = health_seq(&server).await;
        let mut a = Peer::open(&server, ta, "a", None).await;
        let mut b = Peer::open(&server, tb, "b", None).await;

        a.send(json!({"type": "join", "channel": "chat", "state": {"name": "ann"}}))
            .await;
        let sync = a.next().await;
        assert_eq!(
            (sync["type"].as_str(), sync["event"].as_str()),
            (Some("presence"), Some("sync"))
        );
        assert_eq!(names(&sync["members"]), ["ann"]);
        b.send(json!({"type": "join", "channel": "chat", "state": {"name": "bob"}}))
            .await;
        let sync = b.next().await;
        assert_eq!(
            names(&sync["members"]),
            ["ann", "bob"],
            "{ta}/{tb}: a joiner gets every member"
        );
        let joined = a.next().await;
        assert_eq!(joined["event"], "join");
        assert_eq!(joined["member"]["state"]["name"], "bob");
        assert_eq!(joined["member"]["client_id"], "b");

        b.send(json!({"type": "presence", "channel": "chat", "state": {"name": "bob", "typing": true}}))
            .await;
        let update = a.next().await;
        assert_eq!(update["event"], "update");
        assert_eq!(update["member"]["state"]["typing"], true);

        a.send(json!({"type": "broadcast", "channel": "chat", "data": {"cursor": [3, 4]}}))
            .await;
        let got = b.next().await;
        assert_eq!(got["type"], "broadcast");
        assert_eq!(got["data"], json!({"cursor": [3, 4]}));
        assert_eq!(got["from"]["state"]["name"], "ann");
        a.quiet().await; // a sender does not hear itself

        // Leaving says so; leaving twice is an error and changes nothing.
        b.send(json!({"type": "leave", "channel": "chat"})).await;
        let left = a.next().await;
        assert_eq!(
            (left["event"].as_str(), left["member"]["state"]["name"].as_str()),
            (Some("leave"), Some("bob"))
        );
        b.send(json!({"type": "leave", "channel": "chat"})).await;
        assert_eq!(b.next().await["code"], "invalid_message");

        // A session that ends leaves every channel.
        b.send(json!({"type": "join", "channel": "chat", "state": {"name": "bob"}}))
            .await;
        b.next().await;
        assert_eq!(a.next().await["event"], "join");
        drop(b);
        let left = a.next().await;
        assert_eq!(
            (left["event"].as_str(), left["member"]["state"]["name"].as_str()),
            (Some("leave"), Some("bob"))
        );

        // Nothing of it was stored.
        assert_eq!(
            health_seq(&server).await,
            before,
            "{ta}/{tb}: presence is never written to the log"
        );
    }
}

#[tokio::test]
async fn presence_is_bounded_and_bad_messages_change_nothing() {
    let server = TestServer::start(&[]);
    let mut a = Peer::open(&server, "ws", "a", None).await;
    for (bad, code) in [
        (json!({"type": "join", "channel": "2bad"}), "invalid_message"),
        (json!({"type": "join", "channel": "chat/a b"}), "invalid_message"),
        (
            json!({"type": "join", "channel": "chat", "state": {"x": "y".repeat(2000)}}),
            "invalid_message",
        ),
        (
            json!({"type": "broadcast", "channel": "chat", "data": 1}),
            "invalid_message",
        ),
        (
            json!({"type": "presence", "channel": "chat", "state": {}}),
            "invalid_message",
        ),
    ] {
        a.send(bad.clone()).await;
        let m = a.next().await;
        assert_eq!(
            (m["type"].as_str(), m["code"].as_str()),
            (Some("error"), Some(code)),
            "{bad}: {m}"
        );
    }
    a.send(json!({"type": "join", "channel": "chat"})).await;
    assert_eq!(a.next().await["event"], "sync");
    a.send(json!({"type": "broadcast", "channel": "chat", "data": "x".repeat(5000)}))
        .await;
    assert_eq!(a.next().await["type"], "error", "a broadcast over 4 KiB");
    for i in 0..16 {
        a.send(json!({"type": "join", "channel": format!("chat/d{i}")}))
            .await;
        let m = a.next().await;
        if i < 15 {
            assert_eq!(m["event"], "sync", "{m}");
        } else {
            assert_eq!(m["code"], "invalid_message", "the 17th channel: {m}");
        }
    }
    // The rate: a burst beyond it is refused (some of it), the session stays open.
    let mut refused = 0;
    for n in 0..60 {
        a.send(json!({"type": "broadcast", "channel": "chat", "data": n}))
            .await;
    }
    let seen = match &mut a {
        Peer::Ws(ws) => ws.barrier().await,
        _ => unreachable!(),
    };
    for m in &seen {
        if m["code"] == "rate_limited" {
            refused += 1;
        }
    }
    assert!(refused > 0 && refused < 60, "{refused} of 60 refused");
}

#[tokio::test]
async fn a_channel_is_one_the_token_may_read_and_a_back_channel_its_subjects() {
    let server = TestServer::start(&jwt_flags());
    let alice = token("alice", &["games/alice-*", "chat/*"], &[]);
    let mut a = Peer::open(&server, "ws", "a", Some(&alice)).await;
    for channel in ["games/bob-1", "secret"] {
        a.send(json!({"type": "join", "channel": channel})).await;
        assert_eq!(a.next().await["code"], "forbidden", "{channel}");
    }
    a.send(json!({"type": "join", "channel": "games/alice-1"})).await;
    let sync = a.next().await;
    assert_eq!(sync["members"][0]["user"], "alice");
    // Another subject cannot post to alice's stream.
    let sse = Peer::open(&server, "sse", "s", Some(&alice)).await;
    let Peer::Sse(_, url, _) = &sse else {
        unreachable!()
    };
    let bob = token("bob", &["chat/*"], &[]);
    let req = server
        .json(
            Method::POST,
            url.trim_start_matches(&server.url),
            &json!({"type": "join", "channel": "chat"}),
        )
        .bearer_auth(&bob);
    assert_eq!(send(req).await.0, StatusCode::FORBIDDEN);
    let (status, body) = send(
        server
            .json(Method::POST, "/sync/sse/nope", &json!({"type": "sync"}))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// A member whose connection goes dead — it stops answering pings, its socket still open — leaves
/// within the heartbeat deadline (`--heartbeat-timeout`), and the others are told; a member that
/// answers stays.
#[tokio::test]
async fn a_dead_connection_leaves_within_the_heartbeat_deadline() {
    let server = TestServer::start(&["--heartbeat-timeout", "1s"]);
    let mut a = Peer::open(&server, "ws", "a", None).await;
    let mut b = Peer::open(&server, "ws", "b", None).await;
    a.send(json!({"type": "join", "channel": "chat", "state": {"name": "ann"}}))
        .await;
    assert_eq!(a.next().await["event"], "sync");
    b.send(json!({"type": "join", "channel": "chat", "state": {"name": "bob"}}))
        .await;
    assert_eq!(names(&b.next().await["members"]), ["ann", "bob"]);
    let joined = a.next().await;
    assert_eq!(joined["event"], "join");
    let bob = joined["member"]["member"].clone();
    // From here b is never read, so it answers no ping: to the server it is dead. `a` reads (and
    // so answers pings) while it waits for the leave.
    let went_silent = std::time::Instant::now();
    let left = a.next().await;
    let after = went_silent.elapsed();
    assert_eq!(
        (left["event"].as_str(), &left["member"]["member"]),
        (Some("leave"), &bob),
        "{left}"
    );
    // Dead for more than the 1 s timeout, noticed at a ping tick (every third of it).
    assert!(after < Duration::from_secs(5), "left only after {after:?}");
    // `a`, which answers, is still a member: a third joiner sees it alone.
    let mut c = Peer::open(&server, "ws", "c", None).await;
    c.send(json!({"type": "join", "channel": "chat", "state": {"name": "cy"}}))
        .await;
    assert_eq!(names(&c.next().await["members"]), ["ann", "cy"]);
    // And b's socket was closed as dead (4408; reading it now may first meet the closed
    // connection, as its queued pongs are written).
    let Peer::Ws(ws) = &mut b else { unreachable!() };
    loop {
        match ws.read(WAIT).await {
            WsRead::Message(_) => continue,
            WsRead::Close(code) => break assert_eq!(code, Some(4408)),
            WsRead::Ended(_) => break,
            WsRead::Timeout => panic!("b's connection is still open"),
        }
    }
}

/// What waits on an SSE stream's back channel is bounded in bytes, not only in messages: with the
/// session stuck writing to a client that reads nothing, large posted messages are refused (`429`)
/// once about `POSTED_BYTES` (4 MiB) of them wait — long before the 64-message bound would refuse
/// them — and each refusal changes nothing.
#[tokio::test]
async fn a_back_channel_holds_a_bounded_number_of_bytes() {
    let server = TestServer::start(&[]);
    let mut sse = SseClient::open(&server, "client_id=stuck", None).await;
    sse.recv_until("synced").await;
    let url = format!("{}/sync/sse/{}", server.url, sse.stream.clone().unwrap());
    // From here the stream is never read: each ping's pong (900 KB, its id echoed) fills the
    // socket's buffers, then the stream's queue, then the session waits to write.
    let big = "x".repeat(900_000);
    let http = reqwest::Client::new();
    let mut accepted = 0;
    let refused = loop {
        let r = http
            .post(&url)
            .json(&json!({"type": "ping", "id": big}))
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::ACCEPTED => accepted += 1,
            status => break (status, r.json::<Value>().await.unwrap()),
        }
        assert!(
            accepted < 64,
            "{accepted} posts of 900 KB accepted: bounded by count only"
        );
    };
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "rate_limited");
    assert!(
        refused.1["error"]["message"].as_str().unwrap().contains("bytes"),
        "refused for its bytes: {}",
        refused.1
    );
    // Read again, the stream takes what waited: the session answers every accepted ping.
    let mut pongs = 0;
    while pongs < accepted {
        match sse.read_frame(WAIT).await {
            SseRead::Frame(f) if f.event.as_deref() == Some("pong") => pongs += 1,
            SseRead::Frame(_) => {}
            other => panic!("expected the pongs, got {other:?} after {pongs} of {accepted}"),
        }
    }
}
