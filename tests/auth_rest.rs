//! Access control on the REST API, against a real in-process server with `--auth jwt`: every route
//! refuses each kind of bad token with 401 `unauthenticated` (never a 500) and a token without the
//! permission with 403 `forbidden`, and a refused request changes nothing; public keys (RS256 from
//! PEM, RS256/ES256/EdDSA from a JWKS by `kid`) are accepted; a reader of `alice-*` never sees
//! `bob-1` through a listing, a GET, history, snapshots, versions or the event log; a write-only
//! grant is answered without the data; events record the writer's subject and the log filters by
//! it; idempotency keys are scoped by subject; the write rate is per subject, with `Retry-After`.

mod common;

use common::auth::{bearer, claims, jwt_flags, keys_dir, now, private_key, sign, sign_with, token, SECRET};
use common::{all_pages_as, health_seq, send, TestServer};
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "eventsync";

/// A server that checks issuer and audience too.
fn strict_server() -> TestServer {
    let mut flags = jwt_flags();
    flags.extend(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]);
    TestServer::start(&flags)
}

/// Claims a [`strict_server`] accepts.
fn good(sub: &str, read: &[&str], write: &[&str], admin: bool) -> Value {
    let mut c = claims(sub, read, write, admin);
    c["iss"] = json!(ISSUER);
    c["aud"] = json!(AUDIENCE);
    c
}

fn root() -> String {
    sign(&good("root", &["*"], &["*"], true))
}

/// A REST request with this `Authorization` header value (none: `None`).
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
    authorization: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = match body {
        Some(b) => s.json(method, path, b),
        None => s.request(method, path),
    };
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

async fn as_token(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<&Value>,
    t: &str,
) -> (StatusCode, Value) {
    let (status, _, body) = call(s, method, path, body, Some(&bearer(t))).await;
    (status, body)
}

/// Every authenticated REST route, with a body where it takes one.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/games", None),
        (Method::POST, "/api/games", Some(json!({"id": "new", "gold": 1}))),
        (Method::GET, "/api/games/g1", None),
        (Method::PUT, "/api/games/g1", Some(json!({"gold": 2}))),
        (
            Method::PATCH,
            "/api/games/g1",
            Some(json!([{"op": "replace", "path": "/gold", "value": 3}])),
        ),
        (Method::DELETE, "/api/games/g1", None),
        (Method::GET, "/api/games/g1/history", None),
        (Method::GET, "/api/games/g1/snapshots", None),
        (Method::GET, "/api/games/g1/versions/1", None),
        (Method::GET, "/api/events", None),
        (
            Method::POST,
            "/api/sync",
            Some(json!({"client_id": "tab", "subscribe": ["games"]})),
        ),
        (Method::GET, "/api/clients/tab", None),
    ]
}

/// The document `games/g1` is still at version 1 and nothing else was committed.
async fn unchanged(s: &TestServer, seq: u64) {
    assert_eq!(health_seq(s).await, seq, "something was committed");
    let (status, body) = as_token(s, Method::GET, "/api/games/g1", None, &root()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 1, "{body}");
    let (status, _) = as_token(s, Method::GET, "/api/games/new", None, &root()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A [`strict_server`] with `games/g1` at version 1; and the seq that [`unchanged`] checks.
async fn with_g1() -> (TestServer, u64) {
    let s = strict_server();
    let (status, body) = as_token(
        &s,
        Method::POST,
        "/api/games",
        Some(&json!({"id": "g1", "gold": 1})),
        &root(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let seq = health_seq(&s).await;
    (s, seq)
}

#[tokio::test]
async fn every_route_refuses_every_bad_token_with_401_and_changes_nothing() {
    let (s, seq) = with_g1().await;

    let expired = {
        let mut c = good("alice", &["*"], &["*"], true);
        c["exp"] = json!(now() - 120); // beyond the 30 s leeway
        sign(&c)
    };
    let not_yet = {
        let mut c = good("alice", &["*"], &["*"], true);
        c["nbf"] = json!(now() + 300);
        sign(&c)
    };
    let with = |key: &str, value: Value| {
        let mut c = good("alice", &["*"], &["*"], true);
        c[key] = value;
        sign(&c)
    };
    let without = |key: &str| {
        let mut c = good("alice", &["*"], &["*"], true);
        c.as_object_mut().unwrap().remove(key);
        sign(&c)
    };
    let other_secret = sign_with(
        &good("alice", &["*"], &["*"], true),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-0123456789abcdef"),
        None,
    );
    let rsa = sign_with(
        &good("alice", &["*"], &["*"], true),
        Algorithm::RS256,
        &private_key("rsa"),
        None,
    );
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64.encode(good("alice", &["*"], &["*"], true).to_string());
        format!("{header}.{payload}.")
    };
    let tampered = {
        // A valid token whose payload was swapped for one granting more.
        let t = sign(&good("alice", &["chat/*"], &[], false));
        let other = sign(&good("alice", &["*"], &["*"], true));
        let (h, rest) = t.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let payload = other.split('.').nth(1).unwrap();
        format!("{h}.{payload}.{sig}")
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("not Bearer", Some(format!("Basic {}", "YWxpY2U6cHc="))),
        ("an empty token", Some("Bearer ".into())),
        ("not a JWT", Some(bearer("not.a.jwt"))),
        ("not base64", Some(bearer("%%%.%%%.%%%"))),
        ("a very long token", Some(bearer(&"a".repeat(7000)))),
        ("another secret", Some(bearer(&other_secret))),
        ("an RS256 token for a secret-only server", Some(bearer(&rsa))),
        ("alg none", Some(bearer(&unsigned))),
        ("a tampered payload", Some(bearer(&tampered))),
        ("expired", Some(bearer(&expired))),
        ("not valid yet", Some(bearer(&not_yet))),
        ("another audience", Some(bearer(&with("aud", json!("other"))))),
        ("no audience", Some(bearer(&without("aud")))),
        (
            "another issuer",
            Some(bearer(&with("iss", json!("https://evil.example")))),
        ),
        ("no issuer", Some(bearer(&without("iss")))),
        ("no subject", Some(bearer(&without("sub")))),
        ("no expiry", Some(bearer(&without("exp")))),
        (
            "a malformed permissions claim",
            Some(bearer(&with("eventsync", json!({"read": "*", "wirte": "*"})))),
        ),
    ];
    for (what, authorization) in &cases {
        for (method, path, body) in routes() {
            let (status, headers, body) =
                call(&s, method.clone(), path, body.as_ref(), authorization.as_deref()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {path}: {body}"
            );
            assert_eq!(
                body["error"]["code"], "unauthenticated",
                "{what}: {method} {path}: {body}"
            );
            assert!(
                body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            let challenge = headers.get("www-authenticate").and_then(|v| v.to_str().ok());
            assert!(
                challenge.is_some_and(|c| c.starts_with("Bearer")),
                "{what}: {challenge:?}"
            );
        }
    }
    unchanged(&s, seq).await;

    // Health and the UI stay public (load balancers, and the page where a token is entered).
    let (status, _, _) = call(&s, Method::GET, "/api/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&s, Method::GET, "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_token_without_the_permission_is_refused_with_403_on_every_route() {
    let (s, seq) = with_g1().await;
    // Reads and writes chat only; not an admin.
    let chat = sign(&good("carol", &["chat"], &["chat"], false));
    for (method, path, body) in routes() {
        let (status, body) = as_token(&s, method.clone(), path, body.as_ref(), &chat).await;
        match path {
            // Unfiltered: only what carol may read, which is nothing of games.
            "/api/events" => assert_eq!(status, StatusCode::OK, "{body}"),
            // Her own client vector (none yet) and a sync whose subscription is refused in-band.
            "/api/clients/tab" => assert_eq!(status, StatusCode::NOT_FOUND, "{body}"),
            "/api/sync" => {
                assert_eq!(status, StatusCode::OK, "{body}");
                let first = &body["messages"][0];
                assert_eq!(first["type"], "error", "{body}");
                assert_eq!(first["code"], "forbidden", "{body}");
                let docs: Vec<_> = body["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["type"] == "snapshot" || m["type"] == "event")
                    .collect();
                assert!(docs.is_empty(), "{body}");
            }
            _ => {
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
                assert_eq!(body["error"]["code"], "forbidden", "{method} {path}: {body}");
            }
        }
    }
    let (status, body) = as_token(&s, Method::GET, "/api/events", None, &chat).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"], json!([]), "{body}");
    let (status, body) = as_token(&s, Method::GET, "/api/events?collection=games", None, &chat).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A document that does not exist is refused the same way: no existence leak.
    let (status, body) = as_token(&s, Method::GET, "/api/games/nope", None, &chat).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    unchanged(&s, seq).await;

    // Bad input from an authenticated caller is still a 400, checked before permissions.
    let (status, body) = as_token(&s, Method::POST, "/api/games", Some(&json!([1])), &chat).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // And the right token works.
    let writer = sign(&good("dave", &["games"], &["games"], false));
    let (status, body) = as_token(
        &s,
        Method::PUT,
        "/api/games/g1",
        Some(&json!({"gold": 5})),
        &writer,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["document"]["version"], 2, "{body}");
}

#[tokio::test]
async fn public_keys_from_pem_and_jwks_are_accepted() {
    let jwks = keys_dir().join("jwks.json");
    let s = TestServer::start(&["--auth", "jwt", "--jwt-keys", jwks.to_str().unwrap()]);
    for (key, alg, kid) in [
        ("rsa", Algorithm::RS256, "rsa-1"),
        ("ec", Algorithm::ES256, "ec-1"),
        ("ed", Algorithm::EdDSA, "ed-1"),
    ] {
        let t = sign_with(
            &claims(key, &["games"], &["games"], false),
            alg,
            &private_key(key),
            Some(kid),
        );
        let id = format!("by-{key}");
        let (status, body) = as_token(&s, Method::POST, "/api/games", Some(&json!({"id": id})), &t).await;
        assert_eq!(status, StatusCode::CREATED, "{key}: {body}");
        // The same signature under another key's kid, or an unknown kid, is refused.
        let wrong = if kid == "rsa-1" { "ed-1" } else { "rsa-1" };
        for kid in [wrong, "unknown"] {
            let t = sign_with(
                &claims(key, &["games"], &["games"], false),
                alg,
                &private_key(key),
                Some(kid),
            );
            let (status, body) = as_token(&s, Method::GET, &format!("/api/games/{id}"), None, &t).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key} as {kid}: {body}");
        }
    }
    // The shared secret is not configured here: an HS256 token is refused — including one whose
    // "secret" is the server's public key (the algorithm-confusion attack).
    let (status, body) = as_token(
        &s,
        Method::GET,
        "/api/games/by-rsa",
        None,
        &token("x", &["*"], &[]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let pem = std::fs::read(keys_dir().join("rsa.pub.pem")).unwrap();
    let confused = sign_with(
        &claims("x", &["*"], &[], true),
        Algorithm::HS256,
        &EncodingKey::from_secret(&pem),
        Some("rsa-1"),
    );
    let (status, body) = as_token(&s, Method::GET, "/api/games/by-rsa", None, &confused).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // One PEM public key, no kid needed.
    let pem_path = keys_dir().join("rsa.pub.pem");
    let s = TestServer::start(&["--auth", "jwt", "--jwt-keys", pem_path.to_str().unwrap()]);
    let t = sign_with(
        &claims("r", &["games"], &["games"], false),
        Algorithm::RS256,
        &private_key("rsa"),
        None,
    );
    let (status, body) = as_token(&s, Method::POST, "/api/games", Some(&json!({"id": "pem"})), &t).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let t = sign_with(
        &claims("e", &["games"], &["games"], false),
        Algorithm::ES256,
        &private_key("ec"),
        None,
    );
    let (status, body) = as_token(&s, Method::GET, "/api/games/pem", None, &t).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an EC token for an RSA key: {body}"
    );

    // The secret from a file, and a namespaced claim given as a JSON Pointer.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let s = TestServer::start(&[
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret_file.to_str().unwrap(),
        "--jwt-claim",
        "/https:~1~1example.com~1claims/sync",
    ]);
    let c = json!({"sub": "n", "exp": now() + 600,
                   "https://example.com/claims": {"sync": {"read": ["games"], "write": ["games"]}}});
    let (status, body) = as_token(
        &s,
        Method::POST,
        "/api/games",
        Some(&json!({"id": "ns"})),
        &sign(&c),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The default claim name means nothing to this server: no permissions.
    let (status, body) = as_token(
        &s,
        Method::GET,
        "/api/games/ns",
        None,
        &token("n", &["*"], &["*"]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

/// A server with `alice-1`, `alice-2`, `bob-1` in games (each updated once) and `c1` in chat.
async fn two_owners() -> TestServer {
    let s = TestServer::start(&jwt_flags());
    let admin = common::auth::admin_token("root");
    for (c, id) in [
        ("games", "alice-1"),
        ("games", "bob-1"),
        ("games", "alice-2"),
        ("chat", "c1"),
    ] {
        let (status, body) = as_token(
            &s,
            Method::POST,
            &format!("/api/{c}"),
            Some(&json!({"id": id, "gold": 1})),
            &admin,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = as_token(
            &s,
            Method::PUT,
            &format!("/api/{c}/{id}"),
            Some(&json!({"gold": 2})),
            &admin,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    s
}

#[tokio::test]
async fn a_reader_of_its_own_documents_never_sees_another_subjects() {
    let s = two_owners().await;
    let alice = token("alice", &["games/{sub}-*"], &["games/{sub}-*"]);

    // The listing: only alice's, whatever the page size (a page of 1 still reaches alice-2).
    let (status, body) = as_token(&s, Method::GET, "/api/games", None, &alice).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alice-1", "alice-2"], "{body}");
    let seen: Vec<String> = all_pages_as(&s, "/api/games?limit=1", Some(&alice))
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["alice-1", "alice-2"]);

    // One document, its history, snapshots and versions.
    for path in ["", "/history", "/snapshots", "/versions/1"] {
        let (status, body) = as_token(
            &s,
            Method::GET,
            &format!("/api/games/alice-1{path}"),
            None,
            &alice,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let (status, body) =
            as_token(&s, Method::GET, &format!("/api/games/bob-1{path}"), None, &alice).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }

    // The event log, in pages of every size: alice's events only, all of them.
    for limit in [1, 2, 3, 100] {
        let seen: Vec<String> = all_pages_as(&s, &format!("/api/events?limit={limit}"), Some(&alice))
            .await
            .iter()
            .map(|e| {
                format!(
                    "{}/{}@{}",
                    e["collection"].as_str().unwrap(),
                    e["id"].as_str().unwrap(),
                    e["version"]
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                "games/alice-1@1",
                "games/alice-1@2",
                "games/alice-2@1",
                "games/alice-2@2"
            ],
            "limit {limit}"
        );
    }
    let (status, body) = as_token(
        &s,
        Method::GET,
        "/api/events?collection=games&id=bob-1",
        None,
        &alice,
    )
    .await;
    assert!(
        status == StatusCode::FORBIDDEN || body["items"] == json!([]),
        "{status} {body}"
    );
    let (status, body) = as_token(&s, Method::GET, "/api/events?collection=chat", None, &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Writes outside the grant are refused and change nothing; inside it they work.
    let seq = health_seq(&s).await;
    for (method, path, body) in [
        (Method::PUT, "/api/games/bob-1", Some(json!({"gold": 9}))),
        (Method::PATCH, "/api/games/bob-1", Some(json!({"gold": 9}))),
        (Method::DELETE, "/api/games/bob-1", None),
        (Method::POST, "/api/games", Some(json!({"id": "bob-2"}))),
        // Without an id the server would choose one: that needs the whole collection.
        (Method::POST, "/api/games", Some(json!({"gold": 1}))),
        (Method::POST, "/api/chat", Some(json!({"id": "alice-1"}))),
    ] {
        let (status, body) = as_token(&s, method.clone(), path, body.as_ref(), &alice).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    assert_eq!(health_seq(&s).await, seq);
    let (status, body) = as_token(
        &s,
        Method::POST,
        "/api/games",
        Some(&json!({"id": "alice-3"})),
        &alice,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["event"]["user"], "alice", "{body}");
}

#[tokio::test]
async fn a_write_only_grant_is_answered_without_the_data() {
    let s = two_owners().await;
    let drop_box = token("dropper", &[], &["games"]);
    let (status, body) = as_token(
        &s,
        Method::PUT,
        "/api/games/bob-1",
        Some(&json!({"gold": 7, "secret": "x"})),
        &drop_box,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["document"]["version"], 3, "{body}");
    assert!(body["document"].get("data").is_none(), "{body}");
    assert!(body["event"].get("patch").is_none(), "{body}");
    assert!(body["event"]["seq"].as_u64().is_some(), "{body}");
    let (status, _) = as_token(&s, Method::GET, "/api/games/bob-1", None, &drop_box).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A reader sees what was written.
    let (status, body) = as_token(
        &s,
        Method::GET,
        "/api/games/bob-1",
        None,
        &common::auth::admin_token("r"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["gold"], 7, "{body}");
}

#[tokio::test]
async fn events_record_their_writer_and_idempotency_keys_are_per_subject() {
    let s = TestServer::start(&jwt_flags());
    let alice = token("alice", &["games"], &["games"]);
    let bob = token("bob", &["games"], &["games"]);
    let post = |t: &str, id: &str| {
        s.json(Method::POST, "/api/games", &json!({"id": id}))
            .header("authorization", bearer(t))
            .header("x-client-id", "tab")
            .header("idempotency-key", "k1")
    };
    let (status, body) = send(post(&alice, "a1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The same key and client id from another subject is another request, not a replay of alice's
    // (nor a 422 for reusing her key).
    let (status, body) = send(post(&bob, "b1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["document"]["id"], "b1", "{body}");
    // Alice's own repeat is a replay.
    let resp = post(&alice, "a1").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");

    let (status, body) = as_token(&s, Method::GET, "/api/events", None, &alice).await;
    assert_eq!(status, StatusCode::OK);
    let users: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob"], "{body}");
    let (_, body) = as_token(&s, Method::GET, "/api/events?user=bob", None, &alice).await;
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1"], "{body}");

    // Without auth, events carry no user.
    let open = TestServer::start(&[]);
    common::rest_create(&open, "games", "g", json!({})).await;
    let (_, body) = open.get("/api/events").await;
    assert!(body["items"][0].get("user").is_none(), "{body}");
}

#[tokio::test]
async fn the_write_rate_is_per_subject_with_retry_after() {
    let mut flags = jwt_flags();
    flags.extend(["--write-rate", "1", "--write-burst", "3"]);
    let s = TestServer::start(&flags);
    let alice = token("alice", &["games"], &["games"]);
    let bob = token("bob", &["games"], &["games"]);
    for i in 0..3 {
        let (status, body) = as_token(
            &s,
            Method::POST,
            "/api/games",
            Some(&json!({"id": format!("a{i}")})),
            &alice,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let seq = health_seq(&s).await;
    let (status, headers, body) = call(
        &s,
        Method::POST,
        "/api/games",
        Some(&json!({"id": "a3"})),
        Some(&bearer(&alice)),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{body}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(health_seq(&s).await, seq, "a refused write committed");
    // Reads are not writes.
    let (status, _) = as_token(&s, Method::GET, "/api/games/a0", None, &alice).await;
    assert_eq!(status, StatusCode::OK);
    // Another subject has a budget of its own.
    let (status, body) = as_token(&s, Method::POST, "/api/games", Some(&json!({"id": "b0"})), &bob).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
