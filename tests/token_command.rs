//! `eventsync token`, the real binary: the token it prints is accepted by a server configured the
//! same way (secret, issuer, audience, claim path — from flags, a `--config` file or variables)
//! and grants exactly its patterns; bad input is refused with exit code 2 and a message.

mod common;

use std::process::{Command, Output};

use common::auth::SECRET;
use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn eventsync_token(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventsync"))
        .arg("token")
        .args(args)
        .env_remove("EVENTSYNC_JWT_SECRET")
        .env_remove("EVENTSYNC_AUTH")
        .output()
        .expect("run eventsync token")
}

fn minted(args: &[&str]) -> String {
    let out = eventsync_token(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    token
}

/// The token's claims (not verified: the server does that).
fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn status(s: &TestServer, method: Method, path: &str, body: Option<Value>, token: &str) -> StatusCode {
    let req = match body {
        Some(b) => s.json(method, path, &b),
        None => s.request(method, path),
    };
    common::send(req.header("authorization", format!("Bearer {token}")))
        .await
        .0
}

#[tokio::test]
async fn a_minted_token_grants_its_patterns_on_a_server_with_the_same_secret() {
    let s = TestServer::start(&["--auth", "jwt", "--jwt-secret", SECRET]);
    let admin = minted(&["--sub", "root", "--admin", "--write", "*", "--jwt-secret", SECRET]);
    for id in ["alice-1", "bob-1"] {
        assert_eq!(
            status(&s, Method::POST, "/api/games", Some(json!({"id": id})), &admin).await,
            StatusCode::CREATED
        );
    }
    let alice = minted(&[
        "--sub",
        "alice",
        "--read",
        "games/*",
        "--write",
        "games/{sub}-*",
        "--ttl",
        "10m",
        "--jwt-secret",
        SECRET,
    ]);
    let c = claims_of(&alice);
    assert_eq!(c["sub"], "alice");
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        600,
        "{c}"
    );
    assert_eq!(
        c["eventsync"],
        json!({"read": ["games/*"], "write": ["games/{sub}-*"], "admin": false})
    );
    assert_eq!(
        status(&s, Method::GET, "/api/games/bob-1", None, &alice).await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &s,
            Method::PUT,
            "/api/games/alice-1",
            Some(json!({"g": 1})),
            &alice
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(&s, Method::PUT, "/api/games/bob-1", Some(json!({"g": 1})), &alice).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&s, Method::GET, "/api/clients/x?subject=bob", None, &alice).await,
        StatusCode::FORBIDDEN
    );

    // A token minted with another secret is refused.
    let other = minted(&[
        "--sub",
        "alice",
        "--read",
        "*",
        "--jwt-secret",
        "another-secret-0123456789",
    ]);
    assert_eq!(
        status(&s, Method::GET, "/api/games/bob-1", None, &other).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_server_options_come_from_its_config_file_and_variables() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let file = dir.path().join("eventsync.toml");
    std::fs::write(
        &file,
        format!(
            "auth = \"jwt\"\njwt_secret_file = {:?}\njwt_issuer = \"https://id.example\"\n\
             jwt_audience = \"sync\"\njwt_claim = \"/https:~1~1example.com/perms\"\n",
            secret.to_str().unwrap()
        ),
    )
    .unwrap();
    let s = TestServer::start(&["--config", file.to_str().unwrap()]);
    let token = minted(&[
        "--config",
        file.to_str().unwrap(),
        "--sub",
        "a",
        "--read=games",
        "--write=games",
    ]);
    let c = claims_of(&token);
    assert_eq!(c["iss"], "https://id.example", "{c}");
    assert_eq!(c["aud"], "sync", "{c}");
    assert_eq!(c["https://example.com"]["perms"]["read"], json!(["games"]), "{c}");
    assert_eq!(
        status(&s, Method::POST, "/api/games", Some(json!({"id": "x"})), &token).await,
        StatusCode::CREATED
    );

    // The secret from the environment, as the server would read it.
    let out = Command::new(env!("CARGO_BIN_EXE_eventsync"))
        .args(["token", "--sub", "e", "--read", "games"])
        .env("EVENTSYNC_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_input_is_refused_with_a_message_and_exit_code_2() {
    for (args, says) in [
        (&["--read", "games", "--jwt-secret", SECRET][..], "--sub"),
        (&["--sub", "a", "--read", "games"][..], "secret"),
        (
            &["--sub", "a", "--read", "ga mes", "--jwt-secret", SECRET][..],
            "ga mes",
        ),
        (
            &["--sub", "a", "--ttl", "soon", "--jwt-secret", SECRET][..],
            "soon",
        ),
        (&["--sub", "a", "--jwt-secret", "short"][..], "16 bytes"),
        (
            &["--sub", "a", "--jwt-secret", SECRET, "--no-such-flag"][..],
            "no-such-flag",
        ),
    ] {
        let out = eventsync_token(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = eventsync_token(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--sub"));
}
