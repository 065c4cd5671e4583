//! JSON Web Tokens in, a [`Principal`] out — with `jsonwebtoken` (the most used JWT crate, with
//! its pure-Rust `rust_crypto` backend: no C toolchain, one audited set of primitives), and
//! nothing hand-written about signatures or claims timing.
//!
//! Keys: an HS256/384/512 shared secret (`--jwt-secret`, `--jwt-secret-file`), and/or public keys
//! (`--jwt-keys`): one PEM key (RSA, EC P-256/P-384 or Ed25519) or a JWKS file, whose key is chosen
//! by the token's `kid` (or is its only key). A token's `alg` must belong to the family of the key
//! that checks it, so a token "signed" HS256 with a public key as its secret is refused.
//!
//! A token must have `sub` and `exp`; `nbf` is checked when present, both within `--jwt-leeway`;
//! `iss` and `aud` when configured. Every refusal is [`AuthError::unauthenticated`] with a reason
//! that says which check failed — never which key exists or what the secret is.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use super::{AuthError, Grants, Principal};
use crate::config::AccessConfig;

/// Checks tokens against the configured keys and claims.
pub struct Verifier {
    secret: Option<DecodingKey>,
    keys: PublicKeys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    claim: ClaimPath,
}

enum PublicKeys {
    None,
    One(DecodingKey),
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// Where the permissions are in the claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPath {
    /// A top-level claim.
    Name(String),
    /// An RFC 6901 JSON Pointer (starts with `/`), for a namespaced claim.
    Pointer(String),
}

impl ClaimPath {
    pub fn parse(s: &str) -> ClaimPath {
        if s.starts_with('/') {
            ClaimPath::Pointer(s.to_string())
        } else {
            ClaimPath::Name(s.to_string())
        }
    }

    fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        match self {
            ClaimPath::Name(n) => claims.get(n),
            ClaimPath::Pointer(p) => claims.pointer(p),
        }
    }

    /// The claims object with `value` at this path (for minting).
    pub fn insert(&self, claims: &mut serde_json::Map<String, Value>, value: Value) {
        match self {
            ClaimPath::Name(n) => {
                claims.insert(n.clone(), value);
            }
            ClaimPath::Pointer(p) => {
                let parts: Vec<String> = p[1..]
                    .split('/')
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                let mut at = claims;
                for (i, part) in parts.iter().enumerate() {
                    if i + 1 == parts.len() {
                        at.insert(part.clone(), value);
                        return;
                    }
                    let next = at
                        .entry(part.clone())
                        .or_insert_with(|| Value::Object(Default::default()));
                    if !next.is_object() {
                        *next = Value::Object(Default::default());
                    }
                    at = next.as_object_mut().expect("just made an object");
                }
            }
        }
    }
}

/// Why the configured keys could not be loaded (the server does not start).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Verifier {
    pub fn from_config(c: &AccessConfig) -> Result<Verifier, KeyError> {
        let secret = shared_secret(c)?;
        let keys = match &c.jwt_keys {
            None => PublicKeys::None,
            Some(path) => public_keys(&read(path)?, path)?,
        };
        Ok(Verifier {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            keys,
            issuer: c.jwt_issuer.clone(),
            audience: c.jwt_audience.clone(),
            leeway: c.jwt_leeway,
            claim: ClaimPath::parse(&c.jwt_claim),
        })
    }

    /// The principal a token names, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::unauthenticated("the token is not a JWT"))?;
        let key = self.key_for(&header)?;
        if key.family() != header.alg.family() {
            return Err(AuthError::unauthenticated(format!(
                "a {:?} token does not match this server's keys",
                header.alg
            )));
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        // A configured issuer or audience is required, not only checked when present.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Value>(token, key, &v).map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::unauthenticated("the token's sub must be a non-empty string"))?
            .to_string();
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::unauthenticated("the token's exp must be a number"))?;
        let grants = match self.claim.find(&claims) {
            None => Grants::nothing(),
            Some(v) => Grants::from_claim(v, &subject)
                .map_err(|e| AuthError::unauthenticated(format!("the token's permissions: {e}")))?,
        };
        Ok(Principal {
            subject: Some(subject),
            grants,
            expires: Some(expires + self.leeway.as_secs()),
        })
    }

    fn key_for(&self, header: &Header) -> Result<&DecodingKey, AuthError> {
        if header.alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return self
                .secret
                .as_ref()
                .ok_or_else(|| AuthError::unauthenticated("this server takes no HMAC-signed tokens"));
        }
        match &self.keys {
            PublicKeys::None => Err(AuthError::unauthenticated(
                "this server takes only HMAC-signed tokens",
            )),
            PublicKeys::One(k) => Ok(k),
            PublicKeys::Set(keys) => {
                let found = match &header.kid {
                    Some(kid) => keys.iter().find(|(id, _)| id.as_deref() == Some(kid.as_str())),
                    None if keys.len() == 1 => keys.first(),
                    None => None,
                };
                found
                    .map(|(_, k)| k)
                    .ok_or_else(|| AuthError::unauthenticated("no key of this server has the token's kid"))
            }
        }
    }

    /// The leeway tokens are checked with (a session closes this long after `exp`).
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    pub fn claim_path(&self) -> &ClaimPath {
        &self.claim
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A PEM key (RSA, EC or Ed25519, tried in that order), or a JWKS document.
fn public_keys(text: &str, path: &Path) -> Result<PublicKeys, KeyError> {
    let name = path.display();
    if text.trim_start().starts_with('{') {
        let set: JwkSet = serde_json::from_str(text)
            .map_err(|e| KeyError::Invalid(format!("{name}: not a JWKS document: {e}")))?;
        let keys = set
            .keys
            .iter()
            .map(|jwk| {
                DecodingKey::from_jwk(jwk)
                    .map(|k| (jwk.common.key_id.clone(), k))
                    .map_err(|e| KeyError::Invalid(format!("{name}: a key of the set: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::Invalid(format!("{name}: the key set is empty")));
        }
        return Ok(PublicKeys::Set(keys));
    }
    let pem = text.as_bytes();
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map(PublicKeys::One)
        .map_err(|_| {
            KeyError::Invalid(format!(
                "{name}: not an RSA, EC or Ed25519 public key in PEM, nor a JWKS document"
            ))
        })
}

fn refusal(kind: &ErrorKind) -> AuthError {
    let why = match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidIssuer => "the token is from another issuer",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::MissingRequiredClaim(c) => {
            return AuthError::unauthenticated(format!("the token has no {c} claim"))
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "the token's algorithm does not match this server's keys"
        }
        _ => "the token is malformed",
    };
    AuthError::unauthenticated(why)
}

/// The HS256 secret, from `--jwt-secret` or the file `--jwt-secret-file` names (trimmed), if any;
/// one shorter than 16 bytes is refused (it could be guessed).
fn shared_secret(c: &AccessConfig) -> Result<Option<String>, KeyError> {
    let secret = match (&c.jwt_secret, &c.jwt_secret_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(path)) => Some(read(path)?.trim().to_string()),
        (None, None) => None,
    };
    if secret.as_ref().is_some_and(|s| s.len() < 16) {
        return Err(KeyError::Invalid(
            "the JWT secret must be at least 16 bytes (32 or more recommended)".into(),
        ));
    }
    Ok(secret)
}

/// A signed HS256 token: `sub`, `iat`, `exp` (`ttl` from now), the issuer and audience when
/// configured, and the permissions at the configured claim path (`eventsync token`).
pub fn mint(c: &AccessConfig, subject: &str, permissions: Value, ttl: Duration) -> Result<String, KeyError> {
    let secret = shared_secret(c)?.ok_or_else(|| {
        KeyError::Invalid(
            "minting needs the shared secret: --jwt-secret, --jwt-secret-file or EVENTSYNC_JWT_SECRET".into(),
        )
    })?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), subject.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    if let Some(iss) = &c.jwt_issuer {
        claims.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = &c.jwt_audience {
        claims.insert("aud".into(), aud.clone().into());
    }
    ClaimPath::parse(&c.jwt_claim).insert(&mut claims, permissions);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError::Invalid(format!("signing: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(flags: &[&str]) -> AccessConfig {
        let mut args = vec!["--auth", "jwt"];
        args.extend_from_slice(flags);
        Config::from_args_iter(args).unwrap().access
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_verifies_and_carries_its_permissions() {
        let c = config(&["--jwt-secret", SECRET]);
        let claim = Grants::claim(&["games/*".into()], &["games/{sub}-*".into()], false);
        let token = mint(&c, "alice", claim, Duration::from_secs(60)).unwrap();
        let p = Verifier::from_config(&c).unwrap().verify(&token).unwrap();
        assert_eq!(p.subject(), Some("alice"));
        assert!(p.grants().may_read("games", "x"));
        assert!(p.grants().may_write("games", "alice-1"));
        assert!(!p.grants().may_write("games", "bob-1"));
    }

    #[test]
    fn a_namespaced_claim_is_found_by_its_pointer() {
        let c = config(&["--jwt-secret", SECRET, "--jwt-claim", "/https:~1~1ex.com/es"]);
        let token = mint(
            &c,
            "bob",
            Grants::claim(&["a".into()], &[], false),
            Duration::from_secs(60),
        )
        .unwrap();
        let p = Verifier::from_config(&c).unwrap().verify(&token).unwrap();
        assert!(p.grants().may_read("a", "1"));
        let plain = config(&["--jwt-secret", SECRET]);
        let p = Verifier::from_config(&plain).unwrap().verify(&token).unwrap();
        assert!(
            !p.grants().may_read("a", "1"),
            "another claim path finds no permissions"
        );
    }

    #[test]
    fn refusals_say_which_check_failed() {
        let c = config(&["--jwt-secret", SECRET, "--jwt-leeway", "0s"]);
        let v = Verifier::from_config(&c).unwrap();
        let other = config(&["--jwt-secret", "another-secret-of-enough-length"]);
        let claim = || Grants::claim(&[], &[], false);
        let signed_elsewhere = mint(&other, "a", claim(), Duration::from_secs(60)).unwrap();
        for (token, why) in [
            ("", "not a JWT"),
            ("abc.def.ghi", "not a JWT"),
            (signed_elsewhere.as_str(), "signature"),
        ] {
            let e = v.verify(token).unwrap_err();
            assert_eq!(e.code, crate::error::ErrorCode::Unauthenticated);
            assert!(e.message.contains(why), "{token}: {}", e.message);
        }
        let with_iss = config(&["--jwt-secret", SECRET, "--jwt-issuer", "me"]);
        let e = Verifier::from_config(&with_iss)
            .unwrap()
            .verify(&mint(&c, "a", claim(), Duration::from_secs(60)).unwrap())
            .unwrap_err();
        assert!(e.message.contains("iss"), "{}", e.message);
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        let c = config(&["--jwt-secret", "short"]);
        assert!(Verifier::from_config(&c).is_err());
    }
}
