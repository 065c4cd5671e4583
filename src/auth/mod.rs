//! Who may read and write — **token → principal → one decision per question**.
//!
//! - [`token`]: a JWT (checked with `jsonwebtoken`) becomes a [`Principal`]: its subject, its
//!   [`Grants`] and when it expires. With `--auth none` every caller is [`Principal::anonymous`],
//!   who may do everything.
//! - [`grants`]: what a token allows (patterns per collection and id), pure and densely tested.
//! - [`limits`]: per-client write rate (`governor`) and open sockets and streams.
//! - [`origin`]: which browser origins may call (CORS, and the same check for WebSocket and SSE).
//! - [`command`]: `eventsync token`, which mints a token with the server's own secret.
//!
//! Every path in asks the same [`Principal`]: REST handlers through the `Caller` extractor
//! (`api/auth.rs`), sync sessions at `hello` (their subscriptions), per live event (through the
//! session's per-collection [`Access`]) and per protocol write; writes of both kinds through
//! [`Principal::authorize_write`]. `docs/AUTH.md` is the reference for operators.

pub mod command;
pub mod grants;
pub mod limits;
pub mod origin;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

pub use grants::{Access, Grants};

use crate::config::{AccessConfig, AuthMode};
use crate::error::{ApiError, ErrorCode};
use crate::write::Write;

/// Who is asking, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    subject: Option<String>,
    grants: Grants,
    /// Unix seconds after which the token no longer counts (its `exp` plus the leeway).
    expires: Option<u64>,
}

impl Principal {
    /// `--auth none`: no subject, everything allowed, never expires.
    pub fn anonymous() -> Principal {
        Principal {
            subject: None,
            grants: Grants::everything(),
            expires: None,
        }
    }

    /// A principal with these grants (tests and tools).
    pub fn new(subject: impl Into<String>, grants: Grants, expires: Option<u64>) -> Principal {
        Principal {
            subject: Some(subject.into()),
            grants,
            expires,
        }
    }

    /// The token's `sub`; `None` without auth.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// How long until the token stops counting; `None` if it never does. Zero once it has.
    pub fn expires_in(&self) -> Option<Duration> {
        let exp = self.expires?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Some(Duration::from_secs(exp).saturating_sub(now))
    }

    /// Unix seconds at which the token stops counting.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires
    }

    pub fn may_read(&self, collection: &str, id: &str) -> bool {
        self.grants.may_read(collection, id)
    }

    /// `forbidden` unless the document may be read.
    pub fn check_read(&self, collection: &str, id: &str) -> Result<(), AuthError> {
        if self.may_read(collection, id) {
            Ok(())
        } else {
            Err(AuthError::forbidden(format!(
                "this token may not read '{collection}/{id}'"
            )))
        }
    }

    /// `forbidden` unless some document of the collection may be read (a listing, a subscription).
    pub fn check_read_collection(&self, collection: &str) -> Result<Access, AuthError> {
        match self.grants.read_access(collection) {
            Access::None => Err(AuthError::forbidden(format!(
                "this token may not read '{collection}'"
            ))),
            access => Ok(access),
        }
    }

    /// `forbidden` unless the admin surface is allowed.
    pub fn check_admin(&self) -> Result<(), AuthError> {
        if self.grants.is_admin() {
            Ok(())
        } else {
            Err(AuthError::forbidden("this needs an admin token"))
        }
    }

    /// The one check of every write, REST or protocol: may this principal write that document?
    /// A create without an id (the server picks it) needs the whole collection. On success the
    /// write is stamped with the subject, which the event records and which scopes its
    /// idempotency key.
    pub fn authorize_write(&self, w: &mut Write) -> Result<(), AuthError> {
        let allowed = match &w.id {
            Some(id) => self.grants.may_write(&w.collection, id),
            None => self.grants.write_access(&w.collection) == Access::All,
        };
        if !allowed {
            let what = match &w.id {
                Some(id) => format!("'{}/{id}'", w.collection),
                None => format!(
                    "'{}' without naming the id (its grant covers only some ids)",
                    w.collection
                ),
            };
            return Err(AuthError::forbidden(format!("this token may not write {what}")));
        }
        w.user = self.subject.clone();
        Ok(())
    }

    /// The name a client's remembered vector is kept under: the client id within the subject's
    /// own namespace (`alice/tab-1`), so no subject can read, resume from or overwrite another's.
    /// Without auth, the client id itself (as before).
    pub fn client_key(&self, client_id: &str) -> String {
        match &self.subject {
            None => client_id.to_string(),
            Some(s) => format!("{s}/{client_id}"),
        }
    }

    /// What per-client limits count this caller as: its subject, else its address — except a
    /// loopback address, which is not limited (`None`): without a token, every client of a
    /// reverse proxy on the same host arrives from loopback and would share one budget, as do
    /// tests and benchmarks; there is no one client to hold back.
    pub fn limit_key(&self, peer: Option<std::net::IpAddr>) -> Option<String> {
        match (&self.subject, peer) {
            (Some(s), _) => Some(format!("sub:{s}")),
            (None, Some(ip)) if !ip.is_loopback() && !is_mapped_loopback(ip) => Some(format!("ip:{ip}")),
            (None, _) => None,
        }
    }
}

/// `::ffff:127.0.0.1`, as a dual-stack listener reports an IPv4 loopback peer.
fn is_mapped_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

/// A refusal: `unauthenticated` (no usable token) or `forbidden` (not allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

impl AuthError {
    pub fn unauthenticated(message: impl Into<String>) -> AuthError {
        AuthError {
            code: ErrorCode::Unauthenticated,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> AuthError {
        AuthError {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(e.code, e.message)
    }
}

/// The server's authentication: the mode and, with `jwt`, the verifier.
pub struct Auth {
    verifier: Option<token::Verifier>,
}

impl Auth {
    pub fn from_config(c: &AccessConfig) -> Result<Auth, token::KeyError> {
        let verifier = match c.auth {
            AuthMode::None => None,
            AuthMode::Jwt => Some(token::Verifier::from_config(c)?),
        };
        Ok(Auth { verifier })
    }

    /// No authentication (`--auth none`).
    pub fn none() -> Auth {
        Auth { verifier: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// The principal for a request or session that presented `token` (if any). Without auth, the
    /// token is ignored and everyone is [`Principal::anonymous`].
    pub fn authenticate(&self, token: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let Some(v) = &self.verifier else {
            return Ok(Arc::new(Principal::anonymous()));
        };
        let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
            AuthError::unauthenticated("this server needs a token (Authorization: Bearer ...)")
        })?;
        v.verify(token).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_the_subject_else_a_remote_address_and_never_loopback() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let alice = Principal::new("alice", Grants::nothing(), None);
        assert_eq!(alice.limit_key(ip("10.0.0.7")).as_deref(), Some("sub:alice"));
        assert_eq!(alice.limit_key(ip("127.0.0.1")).as_deref(), Some("sub:alice"));
        let anon = Principal::anonymous();
        assert_eq!(anon.limit_key(ip("10.0.0.7")).as_deref(), Some("ip:10.0.0.7"));
        assert_eq!(
            anon.limit_key(ip("2001:db8::1")).as_deref(),
            Some("ip:2001:db8::1")
        );
        for local in ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(anon.limit_key(ip(local)), None, "{local}");
        }
        assert_eq!(anon.limit_key(None), None);
    }
}
