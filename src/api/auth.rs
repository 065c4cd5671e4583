//! Who a request is from: the [`Caller`] extractor reads `Authorization: Bearer <token>` and asks
//! [`crate::auth::Auth`] for the principal, so a handler that takes a `Caller` cannot run for a
//! request without a valid token (`--auth jwt`); every decision is then the principal's.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{header, request::Parts, HeaderMap};

use super::AppState;
use crate::auth::limits::Over;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::server::listener::Peer;

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// The peer's address (what limits count without auth).
    pub peer: Option<IpAddr>,
}

impl Caller {
    /// What per-client limits count this caller as.
    pub fn limit_key(&self) -> Option<String> {
        self.principal.limit_key(self.peer)
    }

    /// Takes one write from the caller's allowance, or refuses with 429 `rate_limited`.
    pub fn count_write(&self, state: &AppState) -> Result<(), ApiError> {
        state.limits.write(self.limit_key().as_deref()).map_err(over)
    }
}

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// The bearer token of `Authorization`, if the header is there. A header that is there but not
/// `Bearer <token>` is refused rather than ignored.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::Unauthenticated, "Authorization must be visible ASCII"))?;
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "Authorization must be 'Bearer <token>'",
        ));
    }
    Ok(Some(token.trim()))
}

/// The peer's address, when the server was started with connection info.
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0 .0.ip())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = bearer(&parts.headers)?;
        let principal = state.auth.authenticate(token)?;
        Ok(Caller {
            principal,
            peer: peer(parts),
        })
    }
}

/// Over a per-client limit: 429 `rate_limited`, with `Retry-After` (whole seconds, at least 1) and
/// `retry_after_ms` in the body.
pub fn over(o: Over) -> ApiError {
    let ms = o.retry_after().as_millis().max(1) as u64;
    ApiError::new(ErrorCode::RateLimited, o.message()).with("retry_after_ms", ms)
}

impl From<Over> for ApiError {
    fn from(o: Over) -> ApiError {
        over(o)
    }
}
