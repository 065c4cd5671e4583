//! Browser origins (decision 11 in docs/AUTH.md), against the real server (in-process) with reqwest
//! and a raw `tokio-tungstenite` client that sets `Origin` the way a browser does: a request from an
//! origin that is neither the server's own (by `Host`) nor in `--cors-origin` is refused 403
//! `origin_not_allowed` on every route — the WebSocket upgrade and SSE included, with `--auth none`
//! — and changes nothing; same-origin and `Origin`-less clients pass; an allowed origin gets the
//! CORS headers, and its preflight is answered.

mod common;

use common::auth::{bearer, jwt_flags, token};
use common::{health_seq, rest_create, send, TestServer, WsClient, WAIT};
use reqwest::header::{HeaderMap, ORIGIN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const EVIL: &str = "http://evil.example";
/// The browser app's origin in these tests (never contacted: only its name counts).
const APP: &str = "http://localhost:5173";

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The comma-separated names in a header, lower-cased.
fn names(headers: &HeaderMap, name: &str) -> Vec<String> {
    header(headers, name)
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn assert_refused(status: StatusCode, body: &Value, origin: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
    assert_eq!(body["error"]["origin"], origin, "{body}");
}

/// Opens `/sync/ws` with this `Origin` (none: `None`); `Ok` the socket, `Err` the refusal's status
/// and JSON body.
async fn ws_with_origin(server: &TestServer, origin: Option<&str>) -> Result<WsClient, (StatusCode, Value)> {
    use tokio_tungstenite::tungstenite::Error;
    let url = format!("{}/sync/ws", server.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
    }
    let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("WebSocket connect timed out");
    match connected {
        Ok((ws, _)) => Ok(WsClient::from_stream(ws)),
        Err(Error::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            let body = response.body().as_deref().unwrap_or_default();
            let body = serde_json::from_slice(body).unwrap_or(Value::Null);
            Err((status, body))
        }
        Err(e) => panic!("WebSocket connect failed: {e}"),
    }
}

/// A request with this `Origin` (and a bearer token, if given).
async fn with_origin(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    origin: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = match body {
        Some(b) => s.json(method, path, &b),
        None => s.request(method, path),
    };
    if let Some(origin) = origin {
        req = req.header(ORIGIN, origin);
    }
    if let Some(token) = token {
        req = req.header("authorization", bearer(token));
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

/// Every kind of route: REST reads and writes, the event log, the sync endpoints, health, the UI.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::POST, "/api/games", Some(json!({"id": "new", "gold": 1}))),
        (Method::GET, "/api/games", None),
        (Method::GET, "/api/games/g1", None),
        (Method::PUT, "/api/games/g1", Some(json!({"gold": 2}))),
        (Method::DELETE, "/api/games/g1", None),
        (Method::GET, "/api/games/g1/history", None),
        (Method::GET, "/api/events", None),
        (Method::POST, "/api/sync", Some(json!({"subscribe": ["games"]}))),
        (Method::GET, "/api/health", None),
        (Method::GET, "/sync/sse?subscribe=games", None),
        (Method::GET, "/", None),
    ]
}

#[tokio::test]
async fn another_origin_is_refused_on_every_route_and_changes_nothing() {
    let s = TestServer::start(&[]);
    rest_create(&s, "games", "g1", json!({"gold": 1})).await;
    let before = health_seq(&s).await;
    for (method, path, body) in routes() {
        let (status, headers, body) = with_origin(&s, method.clone(), path, body, Some(EVIL), None).await;
        assert_refused(status, &body, EVIL);
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            "",
            "{method} {path}"
        );
    }
    // `null` (a sandboxed frame, a file: page) is another origin too.
    let (status, _, body) = with_origin(
        &s,
        Method::POST,
        "/api/games",
        Some(json!({"id": "n"})),
        Some("null"),
        None,
    )
    .await;
    assert_refused(status, &body, "null");
    // So is the server's own host on another port.
    let other_port = s.url.replace(&format!(":{}", s.addr().port()), ":1");
    let (status, _, body) = with_origin(&s, Method::GET, "/api/games", None, Some(&other_port), None).await;
    assert_refused(status, &body, &other_port);
    // (The scheme is not compared: behind a TLS-terminating proxy the page is `https://HOST`
    // while the request arrives as plain HTTP with `Host: HOST`; one host and port is one server.)

    // The WebSocket upgrade (cross-site WebSocket hijacking) is refused before it upgrades.
    let (status, body) = ws_with_origin(&s, Some(EVIL)).await.err().expect("a refusal");
    assert_refused(status, &body, EVIL);

    // A preflight from it is not answered with permission.
    let (status, headers, body) = preflight(&s, "/api/games", EVIL, "POST", "content-type").await;
    assert_refused(status, &body, EVIL);
    assert_eq!(header(&headers, "access-control-allow-origin"), "");

    // Nothing changed.
    assert_eq!(health_seq(&s).await, before);
    let (status, body) = s.get("/api/games/g1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1, "{body}");
    let (status, _) = s.get("/api/games/new").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn same_origin_and_origin_less_clients_pass() {
    let s = TestServer::start(&[]);
    let own = s.url.clone();
    let (status, _, body) = with_origin(
        &s,
        Method::POST,
        "/api/games",
        Some(json!({"id": "a"})),
        Some(&own),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Under another name for the same host: `localhost` with Host `localhost:PORT`.
    let by_name = format!("http://localhost:{}", s.addr().port());
    let req = s
        .request(Method::GET, "/api/games/a")
        .header(ORIGIN, &by_name)
        .header("host", format!("localhost:{}", s.addr().port()));
    let (status, body) = send(req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // No Origin at all (curl, a server, the Rust client).
    let (status, _, body) = with_origin(&s, Method::GET, "/api/games/a", None, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut ws = ws_with_origin(&s, Some(&own))
        .await
        .expect("same-origin WebSocket");
    let (_, synced) = ws.hello("tab", &["games"], None).await;
    assert_eq!(synced["type"], "synced", "{synced}");
    let mut ws = ws_with_origin(&s, None).await.expect("Origin-less WebSocket");
    let (msgs, _) = ws.hello("tab2", &["games"], None).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
}

/// An `OPTIONS` preflight as a browser sends it.
async fn preflight(
    s: &TestServer,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> (StatusCode, HeaderMap, Value) {
    let req = s
        .request(Method::OPTIONS, path)
        .header(ORIGIN, origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers);
    let resp = tokio::time::timeout(WAIT, req.send()).await.unwrap().unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        h,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_listed_origin_gets_cors_answers_and_its_preflights_are_answered() {
    let mut flags = jwt_flags();
    flags.extend(["--cors-origin", APP]);
    let s = TestServer::start(&flags);
    let writer = token("app", &["games/*"], &["games/*"]);

    let (status, headers, _) = preflight(
        &s,
        "/api/games/g1",
        APP,
        "PATCH",
        "authorization, content-type, if-match, idempotency-key, x-client-id",
    )
    .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(header(&headers, "access-control-allow-origin"), APP);
    assert!(names(&headers, "access-control-allow-methods").contains(&"patch".to_string()));
    let allowed = names(&headers, "access-control-allow-headers");
    for h in [
        "authorization",
        "content-type",
        "if-match",
        "idempotency-key",
        "x-client-id",
    ] {
        assert!(allowed.contains(&h.to_string()), "{h} not in {allowed:?}");
    }
    assert_eq!(header(&headers, "access-control-max-age"), "600");
    // No cookies: tokens travel in Authorization.
    assert_eq!(header(&headers, "access-control-allow-credentials"), "");

    let (status, headers, body) = with_origin(
        &s,
        Method::POST,
        "/api/games",
        Some(json!({"id": "g1", "gold": 1})),
        Some(APP),
        Some(&writer),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(header(&headers, "access-control-allow-origin"), APP);
    let exposed = names(&headers, "access-control-expose-headers");
    for h in ["etag", "location", "retry-after", "idempotent-replayed"] {
        assert!(exposed.contains(&h.to_string()), "{h} not in {exposed:?}");
    }

    // A refusal is readable by the page too (it says why: the token is missing).
    let (status, headers, body) = with_origin(&s, Method::GET, "/api/games/g1", None, Some(APP), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    assert_eq!(header(&headers, "access-control-allow-origin"), APP);

    // The listed origin may open the WebSocket; its hello token still decides what it sees.
    let mut ws = ws_with_origin(&s, Some(APP))
        .await
        .expect("listed-origin WebSocket");
    ws.send(&json!({"type": "hello", "client_id": "tab", "subscribe": ["games"], "token": writer}))
        .await;
    let (msgs, _) = ws.recv_until("synced", WAIT).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");

    // Another origin is still refused.
    let (status, _, body) =
        with_origin(&s, Method::GET, "/api/games/g1", None, Some(EVIL), Some(&writer)).await;
    assert_refused(status, &body, EVIL);
}

#[tokio::test]
async fn any_origin_with_a_star() {
    let s = TestServer::start(&["--cors-origin", "*"]);
    let (status, headers, body) = with_origin(
        &s,
        Method::POST,
        "/api/games",
        Some(json!({"id": "g"})),
        Some(EVIL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(header(&headers, "access-control-allow-origin"), "*");
    ws_with_origin(&s, Some(EVIL))
        .await
        .expect("any origin's WebSocket");
}
