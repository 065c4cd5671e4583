//! The Rust client (`crates/client`) against a real in-process server with `--auth jwt`, over both
//! transports: its token goes in `hello` (WebSocket) and in `Authorization` (SSE, REST writes); its
//! replica holds only what the token may read; `set_token` replaces an expiring token in place on
//! a WebSocket (no reconnect) and reopens an SSE stream; a refused token is counted and retried, and
//! a good token set meanwhile connects.

mod common;

use std::time::Duration;

use common::auth::{admin_token, bearer, claims, jwt_flags, sign, token};
use common::TestServer;
use eventsync_client::{Client, ClientOptions, Replica, Status, TokenProvider, Transport};
use eventsync_protocol::messages::{WriteMessage, WriteOp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn server() -> TestServer {
    let mut flags = jwt_flags();
    flags.extend(["--jwt-leeway", "0s"]);
    TestServer::start(&flags)
}

async fn admin(s: &TestServer, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let req = s
        .json(method, path, &body)
        .header("authorization", bearer(&admin_token("root")));
    common::send(req).await
}

/// Options for a client of `s` following games, reconnecting fast.
fn options(s: &TestServer, transport: Transport, id: &str) -> ClientOptions {
    let mut options = ClientOptions::new(s.url.clone(), id, ["games"]);
    options.transport = transport;
    options.reconnect.initial = Duration::from_millis(20);
    options.reconnect.max = Duration::from_millis(200);
    options
}

async fn client(s: &TestServer, transport: Transport, id: &str, token: Option<String>) -> Client {
    let mut options = options(s, transport, id);
    options.token = token.map(Into::into);
    Client::connect(options).await.expect("client options")
}

fn merge(op_id: &str, id: &str, patch: Value) -> WriteMessage {
    WriteMessage {
        op_id: op_id.into(),
        op: WriteOp::Merge,
        collection: "games".into(),
        id: Some(id.into()),
        data: None,
        patch: Some(patch),
        expected_version: None,
    }
}

fn gold(r: &Replica, id: &str) -> Option<i64> {
    r.document("games", id)
        .and_then(|d| d.get("gold"))
        .and_then(Value::as_i64)
}

const TRANSPORTS: [Transport; 2] = [Transport::WebSocket, Transport::Sse];

#[tokio::test]
async fn the_replica_holds_only_what_the_token_may_read_and_writes_carry_the_token() {
    for transport in TRANSPORTS {
        let s = server();
        for id in ["alice-1", "bob-1"] {
            let (status, body) = admin(&s, Method::POST, "/api/games", json!({"id": id, "gold": 1})).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        let alice = token("alice", &["games/{sub}-*"], &["games/{sub}-*"]);
        let c = client(&s, transport, "tab", Some(alice)).await;
        c.wait_synced(WAIT).await.unwrap();
        assert_eq!(c.with_replica(|r| gold(r, "alice-1")), Some(1), "{transport:?}");
        assert!(
            c.with_replica(|r| r.document("games", "bob-1").is_none()),
            "{transport:?}"
        );

        let r = c.write(merge("w1", "alice-1", json!({"gold": 2}))).await.unwrap();
        assert!(r.ok, "{transport:?}: {r:?}");
        let r = c.write(merge("w2", "bob-1", json!({"gold": 9}))).await.unwrap();
        assert!(!r.ok, "{transport:?}: {r:?}");
        assert_eq!(
            r.error.as_ref().unwrap().code.as_str(),
            "forbidden",
            "{transport:?}"
        );
        // Live: only hers arrive.
        admin(&s, Method::PUT, "/api/games/bob-1", json!({"gold": 3})).await;
        admin(&s, Method::PUT, "/api/games/alice-1", json!({"gold": 4})).await;
        c.wait_until(|r| gold(r, "alice-1") == Some(4), WAIT)
            .await
            .unwrap();
        assert!(
            c.with_replica(|r| r.document("games", "bob-1").is_none()),
            "{transport:?}"
        );
        c.close().await;
    }
}

#[tokio::test]
async fn set_token_keeps_a_session_past_its_first_tokens_expiry() {
    for transport in TRANSPORTS {
        let s = server();
        admin(&s, Method::POST, "/api/games", json!({"id": "g", "gold": 1})).await;
        let short = |ttl: u64| {
            let mut c = claims("alice", &["games"], &["games"], false);
            c["exp"] = json!(common::auth::now() + ttl);
            sign(&c)
        };
        let c = client(&s, transport, "tab", Some(short(3))).await;
        c.wait_synced(WAIT).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.set_token(short(3600)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        admin(&s, Method::PUT, "/api/games/g", json!({"gold": 7})).await;
        c.wait_until(|r| gold(r, "g") == Some(7), WAIT).await.unwrap();
        let stats = c.stats();
        assert_eq!(stats.unauthenticated, 0, "{transport:?}: {stats:?}");
        match transport {
            // Re-authenticated in place.
            Transport::WebSocket => {
                assert_eq!(stats.connects, 1, "{stats:?}");
                assert_eq!(stats.authenticated, 1, "{stats:?}");
            }
            // Reopened with the new token.
            Transport::Sse => assert_eq!(stats.connects, 2, "{stats:?}"),
        }
        c.close().await;
    }
}

#[tokio::test]
async fn a_refused_token_is_counted_and_a_good_one_set_meanwhile_connects() {
    for transport in TRANSPORTS {
        let s = server();
        let c = client(&s, transport, "tab", Some("not-a-token".into())).await;
        c.wait_stats(|st| st.unauthenticated >= 1, WAIT).await.unwrap();
        assert_ne!(c.status(), Status::Live, "{transport:?}");
        c.set_token(token("alice", &["games"], &[])).await.unwrap();
        c.wait_synced(WAIT).await.unwrap();
        assert_eq!(c.status(), Status::Live, "{transport:?}");
        c.close().await;
        // Without any token: refused the same way.
        let c = client(&s, transport, "tab2", None).await;
        c.wait_stats(|st| st.unauthenticated >= 1, WAIT).await.unwrap();
        c.close().await;
    }
}

#[tokio::test]
async fn a_token_provider_is_asked_again_before_expiry_and_after_a_refusal() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    for transport in TRANSPORTS {
        let s = server();
        admin(&s, Method::POST, "/api/games", json!({"id": "g", "gold": 1})).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        // The first answer is refused; then 3-second tokens, each to be replaced before it ends.
        let provider = TokenProvider::new(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return Some("refused".to_string());
                }
                let mut c = claims("alice", &["games"], &[], false);
                c["exp"] = json!(common::auth::now() + 3);
                Some(sign(&c))
            }
        });
        let mut options = options(&s, transport, "tab");
        options.token_provider = Some(provider);
        let c = Client::connect(options).await.unwrap();
        c.wait_synced(WAIT).await.unwrap();
        let connects = c.stats().connects;
        assert!(c.stats().unauthenticated >= 1, "{transport:?}: {:?}", c.stats());
        tokio::time::sleep(Duration::from_millis(4500)).await;
        admin(&s, Method::PUT, "/api/games/g", json!({"gold": 5})).await;
        c.wait_until(|r| gold(r, "g") == Some(5), WAIT).await.unwrap();
        let stats = c.stats();
        assert!(calls.load(Ordering::SeqCst) >= 3, "{transport:?}: {stats:?}");
        if transport == Transport::WebSocket {
            assert_eq!(stats.connects, connects, "replaced in place: {stats:?}");
            assert!(stats.authenticated >= 1, "{stats:?}");
        }
        c.close().await;
    }
}
