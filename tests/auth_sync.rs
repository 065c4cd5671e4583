//! Access control on every sync path, against a real in-process server with `--auth jwt` and
//! real clients (tokio-tungstenite for the WebSocket, reqwest streaming for SSE and
//! `POST /api/sync`): refused tokens at `hello` (close 4401, nothing remembered), forbidden
//! subscriptions, documents a token may not read never sent (catch-up and live, over every
//! transport), `auth` replacing the token (narrowing, another subject, a bad token), expiry (close
//! 4401, the SSE stream ends), client vectors bound to the subject, protocol writes outside the
//! grant or over the rate, the socket and stream limits, and `--auth none` as before.
//!
//! Every refusal also checks that nothing changed: documents through REST (as an admin), client
//! vectors through `GET /api/clients/{id}`.

mod common;

use std::time::Duration;

use common::auth::{bearer, claims, jwt_flags, now, sign, token, token_expiring};
use common::{TestServer, WsClient, WsRead, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

fn jwt_server(extra: &[&str]) -> TestServer {
    let mut flags = jwt_flags();
    flags.extend_from_slice(extra);
    TestServer::start(&flags)
}

/// An admin token (for the REST calls that set up and check); its audience is the one
/// [`audience_server`] asks for, which servers without `--jwt-audience` ignore.
fn admin() -> String {
    let mut c = claims("root", &["*"], &["*"], true);
    c["aud"] = json!("eventsync");
    sign(&c)
}

/// A REST request as `token`.
async fn rest(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: &str,
) -> (StatusCode, Value) {
    let req = match body {
        Some(b) => s.json(method, path, &b),
        None => s.request(method, path),
    };
    common::send(req.header("authorization", bearer(token))).await
}

/// Creates a document as an admin; returns the event's seq.
async fn create(s: &TestServer, collection: &str, id: &str, data: Value) -> u64 {
    let mut body = data;
    body["id"] = json!(id);
    let (status, resp) = rest(
        s,
        Method::POST,
        &format!("/api/{collection}"),
        Some(body),
        &admin(),
    )
    .await;
    common::event_seq(status, &resp)
}

/// Replaces a document's body as an admin; returns the event's seq.
async fn replace(s: &TestServer, collection: &str, id: &str, data: Value) -> u64 {
    let (status, resp) = rest(
        s,
        Method::PUT,
        &format!("/api/{collection}/{id}"),
        Some(data),
        &admin(),
    )
    .await;
    common::event_seq(status, &resp)
}

/// A document as the admin sees it (status, body).
async fn document(s: &TestServer, collection: &str, id: &str) -> (StatusCode, Value) {
    rest(s, Method::GET, &format!("/api/{collection}/{id}"), None, &admin()).await
}

/// The vector remembered for `subject`'s client `client_id` (admin view); `None` for a 404.
async fn remembered(s: &TestServer, subject: &str, client_id: &str) -> Option<Value> {
    let (status, body) = rest(
        s,
        Method::GET,
        &format!("/api/clients/{client_id}?subject={subject}"),
        None,
        &admin(),
    )
    .await;
    match status {
        StatusCode::OK => Some(body),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET /api/clients/{client_id}: {other} {body}"),
    }
}

fn hello(client_id: &str, subscribe: &[&str], token: Option<&str>, vector: Option<Value>) -> Value {
    let mut h = json!({"type": "hello", "client_id": client_id, "subscribe": subscribe});
    if let Some(t) = token {
        h["token"] = json!(t);
    }
    if let Some(v) = vector {
        h["state_vector"] = v;
    }
    h
}

/// Connects and says hello with a token; returns the messages before `synced`, and `synced`.
async fn open_ws(
    s: &TestServer,
    client_id: &str,
    subscribe: &[&str],
    token: &str,
    vector: Option<Value>,
) -> (WsClient, Vec<Value>, Value) {
    let mut ws = WsClient::connect(s).await;
    ws.send(&hello(client_id, subscribe, Some(token), vector)).await;
    let (before, synced) = ws.recv_until("synced", WAIT).await;
    (ws, before, synced)
}

/// Reads until the server closes; returns the close code and the messages on the way.
async fn close_code(ws: &mut WsClient, within: Duration) -> (Option<u16>, Vec<Value>) {
    let mut msgs = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.read(left).await {
            WsRead::Message(m) => msgs.push(m),
            WsRead::Close(code) => return (code, msgs),
            other => panic!("expected a close, got {other:?} after {msgs:?}"),
        }
    }
}

/// Ids named by `snapshot`/`event` messages.
fn ids(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m["type"] == "snapshot" || m["type"] == "event")
        .map(|m| {
            format!(
                "{}/{}",
                m["collection"].as_str().unwrap(),
                m["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// A raw SSE request: its status, and the response to read from.
async fn sse_request(
    s: &TestServer,
    query: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let http = reqwest::Client::builder().connect_timeout(WAIT).build().unwrap();
    let mut req = http.get(format!("{}/sync/sse?{query}", s.url));
    if let Some(t) = token {
        req = req.header("authorization", bearer(t));
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .expect("SSE request timed out")
        .expect("SSE request failed")
}

/// Reads an SSE body until `until` appears in it (or it ends, or `within` passes); returns the
/// text read and whether the body ended.
async fn sse_text(resp: &mut reqwest::Response, until: &str, within: Duration) -> (String, bool) {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if text.contains(until) {
            return (text, false);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Err(_) => return (text, false),
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) | Ok(Err(_)) => return (text, true),
        }
    }
}

/// The `data:` of every frame of type `kind` in an SSE text.
fn sse_data(text: &str, kind: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|f| f.lines().any(|l| l == format!("event: {kind}")))
        .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

async fn post_sync(s: &TestServer, body: Value, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = s.json(Method::POST, "/api/sync", &body);
    if let Some(t) = token {
        req = req.header("authorization", bearer(t));
    }
    common::send(req).await
}

/// Tokens the server of [`refused_tokens`] must refuse, by what is wrong with them.
fn bad_tokens() -> Vec<(&'static str, Option<String>)> {
    let mut expired = claims("alice", &["games"], &["games"], false);
    expired["exp"] = json!(now() - 120);
    expired["aud"] = json!("eventsync");
    let mut wrong_aud = claims("alice", &["games"], &["games"], false);
    wrong_aud["aud"] = json!("someone-else");
    let mut good = claims("alice", &["games"], &["games"], false);
    good["aud"] = json!("eventsync");
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0123"),
    )
    .unwrap();
    let wrong_key_type = common::auth::sign_with(
        &good,
        jsonwebtoken::Algorithm::RS256,
        &common::auth::private_key("rsa"),
        None,
    );
    let mut not_yet = good.clone();
    not_yet["nbf"] = json!(now() + 300);
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    vec![
        ("no token", None),
        ("malformed", Some("not.a.jwt".to_string())),
        ("bad signature", Some(other_key)),
        ("wrong key type", Some(wrong_key_type)),
        ("expired", Some(sign(&expired))),
        ("not yet valid", Some(sign(&not_yet))),
        ("wrong audience", Some(sign(&wrong_aud))),
        ("no subject", Some(sign(&no_sub))),
    ]
}

fn audience_server() -> TestServer {
    jwt_server(&["--jwt-audience", "eventsync", "--jwt-leeway", "0s"])
}

// ---------------------------------------------------------------------------------------------------
// Authentication at the door
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hello_with_a_refused_token_gets_unauthenticated_then_4401_and_nothing_is_remembered() {
    let s = audience_server();
    create(&s, "games", "g1", json!({"gold": 1})).await;
    for (what, token) in bad_tokens() {
        let mut ws = WsClient::connect(&s).await;
        let h = hello(
            "tab",
            &["games"],
            token.as_deref(),
            Some(json!({"games": {"g1": 1}})),
        );
        ws.send(&h).await;
        let (code, msgs) = close_code(&mut ws, WAIT).await;
        assert_eq!(code, Some(4401), "{what}: {msgs:?}");
        assert_eq!(msgs.len(), 1, "{what}: {msgs:?}");
        assert_eq!(msgs[0]["type"], "error", "{what}");
        assert_eq!(msgs[0]["code"], "unauthenticated", "{what}: {msgs:?}");
        assert_eq!(remembered(&s, "alice", "tab").await, None, "{what}");
    }
    // A good token opens, and its hello's vector is remembered under the subject.
    let mut good = claims("alice", &["games"], &["games"], false);
    good["aud"] = json!("eventsync");
    let (ws, msgs, synced) = open_ws(&s, "tab", &["games"], &sign(&good), Some(json!({"games": {}}))).await;
    assert_eq!(ids(&msgs), ["games/g1"]);
    assert_eq!(synced["state_vector"], json!({"games": {"g1": 1}}));
    assert!(remembered(&s, "alice", "tab").await.is_some());
    ws.close().await;
}

#[tokio::test]
async fn sse_and_post_sync_refuse_bad_tokens_with_401_before_anything() {
    let s = audience_server();
    create(&s, "games", "g1", json!({"gold": 1})).await;
    for (what, token) in bad_tokens() {
        // SSE: the header, then the query.
        let resp = sse_request(&s, "client_id=tab&subscribe=games", token.as_deref(), None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what} (header)");
        assert!(resp.headers().get("www-authenticate").is_some(), "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthenticated", "{what}: {body}");
        if let Some(t) = &token {
            let q = format!("client_id=tab&subscribe=games&token={}", common::url_encode(t));
            let resp = sse_request(&s, &q, None, Some("999999")).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what} (query)");
        }
        // POST /api/sync: the header, then the body.
        let (status, body) = post_sync(
            &s,
            json!({"client_id": "tab", "subscribe": ["games"]}),
            token.as_deref(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated");
        if let Some(t) = &token {
            let (status, _) = post_sync(
                &s,
                json!({"client_id": "tab", "subscribe": ["games"], "token": t}),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what} (body)");
        }
        assert_eq!(remembered(&s, "alice", "tab").await, None, "{what}");
    }
    // Unauthenticated comes before invalid input.
    let resp = sse_request(&s, "client_id=tab&state_vector=nonsense", None, None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = post_sync(&s, json!({"client_id": "tab", "surprise": 1}), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------------------------------------------
// What a token may read
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_forbidden_subscription_is_refused_and_the_others_proceed() {
    let s = jwt_server(&[]);
    create(&s, "games", "alice-1", json!({})).await;
    create(&s, "secret", "s1", json!({})).await;
    let t = token("alice", &["games/alice-*"], &[]);
    let (ws, before, synced) = open_ws(&s, "tab", &["games", "secret"], &t, None).await;
    assert_eq!(before[0]["type"], "error", "{before:?}");
    assert_eq!(before[0]["code"], "forbidden");
    assert!(
        before[0]["message"].as_str().unwrap().contains("secret"),
        "{before:?}"
    );
    assert_eq!(ids(&before[1..]), ["games/alice-1"]);
    assert_eq!(synced["state_vector"], json!({"games": {"alice-1": 1}}));
    ws.close().await;

    // SSE: an `event: error` frame first.
    let mut resp = sse_request(&s, "client_id=tab2&subscribe=games,secret", Some(&t), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (text, _) = sse_text(&mut resp, "event: synced", WAIT).await;
    let first = text.find("event: error").expect("an error frame");
    assert!(first < text.find("event: snapshot").unwrap(), "{text}");
    assert_eq!(sse_data(&text, "error")[0]["code"], "forbidden");

    // POST /api/sync: `error` messages first.
    let (status, body) = post_sync(
        &s,
        json!({"client_id": "tab3", "subscribe": ["secret", "games"]}),
        Some(&t),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["type"], "error");
    assert_eq!(msgs[0]["code"], "forbidden");
    assert_eq!(ids(&msgs[1..]), ["games/alice-1"]);
    assert_eq!(body["synced"]["state_vector"], json!({"games": {"alice-1": 1}}));
}

#[tokio::test]
async fn a_reader_of_alices_games_never_sees_bobs_over_websocket() {
    let s = jwt_server(&[]);
    create(&s, "games", "alice-1", json!({"n": 1})).await;
    create(&s, "games", "bob-1", json!({"n": 1})).await;
    let t = token("alice", &["games/alice-*"], &[]);
    // The vector names bob-1 at a stale version: the client is told nothing about it.
    let vector = json!({"games": {"bob-1": 7}});
    let (mut ws, before, synced) = open_ws(&s, "tab", &["games"], &t, Some(vector)).await;
    assert_eq!(ids(&before), ["games/alice-1"], "{before:?}");
    assert_eq!(synced["state_vector"], json!({"games": {"alice-1": 1}}));

    replace(&s, "games", "bob-1", json!({"n": 2})).await;
    create(&s, "games", "bob-2", json!({})).await;
    let last = replace(&s, "games", "alice-1", json!({"n": 2})).await;
    let live = ws.recv_through_seq(last).await;
    assert_eq!(ids(&live), ["games/alice-1"], "{live:?}");

    // A manual re-sync from nothing: still only alice's.
    ws.send(&json!({"type": "sync", "state_vector": {"games": {"bob-1": 1}}}))
        .await;
    let (resync, synced) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&resync), ["games/alice-1"], "{resync:?}");
    assert_eq!(synced["state_vector"], json!({"games": {"alice-1": 2}}));
    ws.close().await;
}

#[tokio::test]
async fn a_reader_of_alices_games_never_sees_bobs_over_sse_and_post_sync() {
    let s = jwt_server(&[]);
    create(&s, "games", "alice-1", json!({"n": 1})).await;
    create(&s, "games", "bob-1", json!({"n": 1})).await;
    let t = token("alice", &["games/alice-*"], &[]);

    // SSE with the header, catch-up then live.
    let mut resp = sse_request(&s, "client_id=tab&subscribe=games", Some(&t), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (text, _) = sse_text(&mut resp, "event: synced", WAIT).await;
    assert_eq!(ids(&sse_data(&text, "snapshot")), ["games/alice-1"], "{text}");
    replace(&s, "games", "bob-1", json!({"n": 2})).await;
    let last = replace(&s, "games", "alice-1", json!({"n": 2})).await;
    let (text, _) = sse_text(&mut resp, &format!("id: {last}"), WAIT).await;
    assert_eq!(ids(&sse_data(&text, "event")), ["games/alice-1"], "{text}");
    assert!(!text.contains("bob"), "{text}");
    drop(resp);

    // SSE with the query's token, resuming: still nothing of bob's.
    let q = format!("client_id=tab&subscribe=games&token={}", common::url_encode(&t));
    let mut sse = common::SseClient::open(&s, &q, Some("1")).await;
    let (frames, _) = sse.recv_until("synced").await;
    for f in &frames {
        assert!(!f.data.contains("bob"), "{frames:?}");
    }

    // POST /api/sync, with a vector naming bob-1 (header token, then body token).
    for header in [true, false] {
        let mut body =
            json!({"client_id": "tab", "subscribe": ["games"], "state_vector": {"games": {"bob-1": 5}}});
        if !header {
            body["token"] = json!(t);
        }
        let (status, body) = post_sync(&s, body, header.then_some(t.as_str())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            ids(body["messages"].as_array().unwrap()),
            ["games/alice-1"],
            "{body}"
        );
        assert_eq!(body["synced"]["state_vector"], json!({"games": {"alice-1": 2}}));
    }
}

#[tokio::test]
async fn an_auth_message_with_each_kind_of_refused_token_changes_nothing() {
    let s = audience_server();
    create(&s, "games", "g1", json!({})).await;
    let mut good = claims("alice", &["games"], &[], false);
    good["aud"] = json!("eventsync");
    let (mut ws, _, _) = open_ws(&s, "tab", &["games"], &sign(&good), None).await;
    for (what, token) in bad_tokens() {
        let msg = match &token {
            Some(t) => json!({"type": "auth", "token": t}),
            None => json!({"type": "auth"}),
        };
        ws.send(&msg).await;
        let answer = ws.recv().await;
        assert_eq!(answer["type"], "error", "{what}: {answer}");
        let code = answer["code"].as_str().unwrap();
        // A missing token member is a malformed message rather than a refused token.
        let expected = if token.is_some() {
            "unauthenticated"
        } else {
            "invalid_message"
        };
        assert_eq!(code, expected, "{what}: {answer}");
        // The old token stays in force: the session still receives.
        let seq = replace(&s, "games", "g1", json!({"after": what})).await;
        assert_eq!(ids(&ws.recv_through_seq(seq).await), ["games/g1"], "{what}");
    }
    ws.close().await;
}

#[tokio::test]
async fn an_auth_message_replaces_the_token_and_a_narrower_one_stops_the_removed_collection() {
    let s = jwt_server(&[]);
    create(&s, "games", "alice-1", json!({})).await;
    create(&s, "games", "bob-1", json!({})).await;
    create(&s, "chat", "c1", json!({})).await;
    let wide = token("alice", &["games", "chat"], &[]);
    let (mut ws, before, _) = open_ws(&s, "tab", &["games", "chat"], &wide, None).await;
    assert_eq!(ids(&before).len(), 3);

    // A bad token: refused, the old one stays.
    ws.send(&json!({"type": "auth", "token": "garbage"})).await;
    assert_eq!(ws.recv().await["code"], "unauthenticated");
    // Another subject's: forbidden, the session stays alice's.
    ws.send(&json!({"type": "auth", "token": token("bob", &["*"], &[])}))
        .await;
    assert_eq!(ws.recv().await["code"], "forbidden");
    let seq = replace(&s, "chat", "c1", json!({"still": true})).await;
    assert_eq!(ids(&ws.recv_through_seq(seq).await), ["chat/c1"]);

    // A narrower token of the same subject.
    let narrow = token("alice", &["games/alice-*"], &[]);
    ws.send(&json!({"type": "auth", "token": narrow})).await;
    let dropped = ws.recv().await;
    assert_eq!(
        (dropped["type"].as_str(), dropped["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    assert!(dropped["message"].as_str().unwrap().contains("chat"), "{dropped}");
    let authenticated = ws.recv().await;
    assert_eq!(authenticated["type"], "authenticated", "{authenticated}");
    assert!(authenticated["expires_at"].as_u64().unwrap() > now());

    replace(&s, "chat", "c1", json!({"n": 2})).await;
    replace(&s, "games", "bob-1", json!({"n": 2})).await;
    let last = replace(&s, "games", "alice-1", json!({"n": 2})).await;
    assert_eq!(ids(&ws.recv_through_seq(last).await), ["games/alice-1"]);
    ws.send(&json!({"type": "sync"})).await;
    let (resync, synced) = ws.recv_until("synced", WAIT).await;
    assert_eq!(ids(&resync), Vec::<String>::new());
    assert_eq!(synced["state_vector"], json!({"games": {"alice-1": 2}}));
    ws.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_that_expires_closes_the_session_with_4401_unless_replaced() {
    let s = jwt_server(&["--jwt-leeway", "0s"]);
    let short = token_expiring("alice", &["games"], &[], Duration::from_secs(2));
    let (mut ws, _, _) = open_ws(&s, "tab", &["games"], &short, None).await;
    let (code, msgs) = close_code(&mut ws, Duration::from_secs(6)).await;
    assert_eq!(code, Some(4401), "{msgs:?}");
    assert_eq!(msgs.last().unwrap()["code"], "unauthenticated");

    // Replaced in time: the session lives on past the first token.
    let short = token_expiring("alice", &["games"], &[], Duration::from_secs(2));
    let (mut ws, _, _) = open_ws(&s, "tab", &["games"], &short, None).await;
    ws.send(&json!({"type": "auth", "token": token("alice", &["games"], &[])}))
        .await;
    assert_eq!(ws.recv().await["type"], "authenticated");
    tokio::time::sleep(Duration::from_secs(3)).await;
    ws.barrier().await;
    ws.close().await;

    // SSE: the stream ends.
    let short = token_expiring("alice", &["games"], &[], Duration::from_secs(2));
    let mut resp = sse_request(&s, "client_id=tab&subscribe=games", Some(&short), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (text, ended) = sse_text(&mut resp, "never appears", Duration::from_secs(6)).await;
    assert!(ended, "the stream should end when its token expires: {text}");
    assert_eq!(
        sse_data(&text, "error").last().unwrap()["code"],
        "unauthenticated"
    );
}

// ---------------------------------------------------------------------------------------------------
// Client vectors are the subject's
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn another_subject_cannot_read_resume_or_overwrite_a_victims_vector() {
    let s = jwt_server(&[]);
    create(&s, "games", "g1", json!({})).await;
    let last = create(&s, "games", "g2", json!({})).await;
    let alice = token("alice", &["games"], &[]);
    let bob = token("bob", &["games"], &[]);
    let (mut ws, _, synced) = open_ws(&s, "tab", &["games"], &alice, Some(json!({"games": {}}))).await;
    ws.send(&json!({"type": "ack", "seq": synced["seq"]})).await;
    ws.barrier().await;
    ws.close().await;
    let victims = common::poll(WAIT, "alice's acknowledged vector", || async {
        remembered(&s, "alice", "tab")
            .await
            .filter(|c| c["state_vector"]["games"]["g2"] == 1)
    })
    .await;
    assert_eq!(victims["position"], last);

    // Alice reads her own; bob has none of that name, and may not name alice's.
    let (status, own) = rest(&s, Method::GET, "/api/clients/tab", None, &alice).await;
    assert_eq!((status, &own), (StatusCode::OK, &victims));
    let (status, _) = rest(&s, Method::GET, "/api/clients/tab", None, &bob).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = rest(&s, Method::GET, "/api/clients/tab?subject=alice", None, &bob).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = rest(&s, Method::GET, "/api/clients/tab", None, "garbage").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bob "resumes" alice's client from far ahead, and says hello with its id and an empty vector.
    let mut resp = sse_request(&s, "client_id=tab&subscribe=games", Some(&bob), Some("999999")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    sse_text(&mut resp, "event: synced", WAIT).await;
    drop(resp);
    let (ws, _, _) = open_ws(&s, "tab", &["games"], &bob, Some(json!({"games": {}}))).await;
    ws.close().await;
    let (status, _) = post_sync(
        &s,
        json!({"client_id": "tab", "subscribe": ["games"]}),
        Some(&bob),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Alice's is untouched, and her next resume without a vector starts from it.
    assert_eq!(remembered(&s, "alice", "tab").await.as_ref(), Some(&victims));
    let mut ws = WsClient::connect(&s).await;
    ws.send(&hello("tab", &["games"], Some(&alice), None)).await;
    let (before, _) = ws.recv_until("synced", WAIT).await;
    assert_eq!(
        ids(&before),
        Vec::<String>::new(),
        "alice resumes from her own vector"
    );
    ws.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Protocol writes
// ---------------------------------------------------------------------------------------------------

async fn write_result(ws: &mut WsClient, msg: Value) -> Value {
    let op_id = msg["op_id"].clone();
    ws.send(&msg).await;
    loop {
        let m = ws.recv().await;
        if m["type"] == "result" && m["op_id"] == op_id {
            return m;
        }
    }
}

#[tokio::test]
async fn protocol_writes_outside_the_write_grant_are_forbidden_and_change_nothing() {
    let s = jwt_server(&[]);
    create(&s, "games", "bob-1", json!({"gold": 1})).await;
    let t = token("alice", &["games"], &["games/alice-*"]);
    let (mut ws, _, _) = open_ws(&s, "tab", &["games"], &t, None).await;
    let before = document(&s, "games", "bob-1").await;

    let refused = [
        json!({"type": "write", "op_id": "w1", "op": "replace", "collection": "games", "id": "bob-1", "data": {"gold": 0}}),
        json!({"type": "write", "op_id": "w2", "op": "delete", "collection": "games", "id": "bob-1"}),
        json!({"type": "write", "op_id": "w3", "op": "create", "collection": "games", "data": {}}),
        json!({"type": "write", "op_id": "w4", "op": "create", "collection": "other", "id": "alice-1", "data": {}}),
    ];
    for w in refused {
        let r = write_result(&mut ws, w.clone()).await;
        assert_eq!(r["ok"], false, "{w}: {r}");
        assert_eq!(r["error"]["code"], "forbidden", "{w}: {r}");
    }
    assert_eq!(document(&s, "games", "bob-1").await, before);
    assert_eq!(document(&s, "other", "alice-1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(document(&s, "games", "alice-1").await.0, StatusCode::NOT_FOUND);

    // Inside the grant: committed.
    let ok = json!({"type": "write", "op_id": "w5", "op": "create", "collection": "games", "id": "alice-1", "data": {"x": 1}});
    let r = write_result(&mut ws, ok).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(document(&s, "games", "alice-1").await.0, StatusCode::OK);
    ws.close().await;
}

#[tokio::test]
async fn protocol_writes_over_the_rate_are_rate_limited_with_retry_after_ms() {
    let s = jwt_server(&["--write-rate", "1", "--write-burst", "1"]);
    let t = token("alice", &["games"], &["games"]);
    let (mut ws, _, _) = open_ws(&s, "tab", &["games"], &t, None).await;
    let w = |op, id: &str| json!({"type": "write", "op_id": op, "op": "create", "collection": "games", "id": id, "data": {}});
    assert_eq!(write_result(&mut ws, w("a", "g1")).await["ok"], true);
    let r = write_result(&mut ws, w("b", "g2")).await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");
    assert!(r["error"]["retry_after_ms"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(document(&s, "games", "g2").await.0, StatusCode::NOT_FOUND);
    // Another subject is not slowed by alice.
    let (mut other, _, _) = open_ws(&s, "tab", &["games"], &token("bob", &["games"], &["games"]), None).await;
    assert_eq!(write_result(&mut other, w("c", "g3")).await["ok"], true);
    ws.close().await;
    other.close().await;
}

// ---------------------------------------------------------------------------------------------------
// Per-client sockets and streams
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_over_the_socket_limit_gets_rate_limited_and_4429() {
    let s = jwt_server(&["--max-sockets-per-client", "1", "--max-streams-per-client", "1"]);
    let alice = token("alice", &["games"], &[]);
    let (first, _, _) = open_ws(&s, "one", &["games"], &alice, None).await;
    let mut second = WsClient::connect(&s).await;
    second
        .send(&hello(
            "two",
            &["games"],
            Some(&alice),
            Some(json!({"games": {}})),
        ))
        .await;
    let (code, msgs) = close_code(&mut second, WAIT).await;
    assert_eq!(code, Some(4429), "{msgs:?}");
    assert_eq!(msgs[0]["code"], "rate_limited");
    assert_eq!(
        remembered(&s, "alice", "two").await,
        None,
        "a refused session remembers nothing"
    );
    // Bob is not held back by alice.
    let (bob, _, _) = open_ws(&s, "one", &["games"], &token("bob", &["games"], &[]), None).await;
    bob.close().await;
    // The slot is freed when the first session ends.
    first.close().await;
    common::poll(WAIT, "alice's socket freed", || async {
        let mut ws = WsClient::connect(&s).await;
        ws.send(&hello("three", &["games"], Some(&alice), None)).await;
        match ws.read(WAIT).await {
            WsRead::Message(m) if m["type"] == "synced" => Some(()),
            _ => None,
        }
    })
    .await;

    // SSE streams: the second is refused with 429 before it starts.
    let mut resp = sse_request(&s, "client_id=s1&subscribe=games", Some(&alice), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    sse_text(&mut resp, "event: synced", WAIT).await;
    let refused = sse_request(&s, "client_id=s2&subscribe=games", Some(&alice), None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

// ---------------------------------------------------------------------------------------------------
// Without auth
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_auth_none_everything_works_as_before() {
    let s = TestServer::start(&[]);
    common::rest_create(&s, "games", "g1", json!({"gold": 1})).await;
    let (mut ws, msgs, synced) = WsClient::open(&s, "c1", &["games"], Some(json!({"games": {}}))).await;
    assert_eq!(ids(&msgs), ["games/g1"]);
    // A token is ignored, an `auth` answered without expiry.
    ws.send(&json!({"type": "auth", "token": "anything"})).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "authenticated", "expires_at": null})
    );
    let r = write_result(
        &mut ws,
        json!({"type": "write", "op_id": "w", "op": "create", "collection": "games", "id": "g2", "data": {}}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    ws.send(&json!({"type": "ack", "seq": synced["seq"]})).await;
    ws.barrier().await;
    ws.close().await;
    // The client's vector is kept under its bare id, as before.
    common::poll(WAIT, "c1's acknowledged vector", || async {
        let (status, body) = s.get("/api/clients/c1").await;
        (status == StatusCode::OK && body["state_vector"]["games"]["g1"] == 1).then_some(())
    })
    .await;
    let (status, body) = s
        .post_json("/api/sync", &json!({"client_id": "c1", "subscribe": ["games"]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["synced"]["state_vector"]["games"].as_object().unwrap().len(),
        2
    );
    let mut sse = common::SseClient::open(&s, "client_id=c2&subscribe=games", None).await;
    let (frames, _) = sse.recv_until("synced").await;
    assert_eq!(frames.len(), 2);
}
