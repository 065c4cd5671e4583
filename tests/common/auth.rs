//! Tokens for tests: a server started with [`jwt_flags`] takes tokens signed with [`SECRET`]
//! (HS256), and with [`jwt_key_flags`] the test key pairs of `tests/fixtures/keys` too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The HS256 secret of [`jwt_flags`].
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// Flags for a server with `--auth jwt` and [`SECRET`].
pub fn jwt_flags() -> Vec<&'static str> {
    vec!["--auth", "jwt", "--jwt-secret", SECRET]
}

/// The test fixtures' directory of key pairs.
pub fn keys_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Standard claims for `sub`, valid for an hour, with these permissions (`eventsync` claim).
pub fn claims(sub: &str, read: &[&str], write: &[&str], admin: bool) -> Value {
    json!({
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "eventsync": { "read": read, "write": write, "admin": admin },
    })
}

/// `claims` signed HS256 with [`SECRET`].
pub fn token(sub: &str, read: &[&str], write: &[&str]) -> String {
    sign(&claims(sub, read, write, false))
}

/// An admin token (reads everything, the admin surface) that may also write everything.
pub fn admin_token(sub: &str) -> String {
    sign(&claims(sub, &["*"], &["*"], true))
}

/// A token that expires `ttl` from now (a leeway-free server refuses it after that).
pub fn token_expiring(sub: &str, read: &[&str], write: &[&str], ttl: Duration) -> String {
    let mut c = claims(sub, read, write, false);
    c["exp"] = (now() + ttl.as_secs()).into();
    sign(&c)
}

/// Any claims, signed HS256 with [`SECRET`].
pub fn sign(claims: &Value) -> String {
    sign_with(
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
    )
}

pub fn sign_with(claims: &Value, alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The private key of a test key pair: `rsa`, `ec` or `ed`.
pub fn private_key(name: &str) -> EncodingKey {
    let pem = std::fs::read(keys_dir().join(match name {
        "ec" => "ec.pk8.key".to_string(),
        other => format!("{other}.key"),
    }))
    .unwrap();
    match name {
        "rsa" => EncodingKey::from_rsa_pem(&pem).unwrap(),
        "ec" => EncodingKey::from_ec_pem(&pem).unwrap(),
        "ed" => EncodingKey::from_ed_pem(&pem).unwrap(),
        other => panic!("no test key {other}"),
    }
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
