//! Which browser origins may call: CORS for the API, and the same list for WebSocket and SSE.
//!
//! A browser attaches `Origin` to every cross-origin request, and to WebSocket handshakes whatever
//! their origin; CORS alone only stops a page from *reading* a response, while the request itself
//! (a `POST`, a WebSocket that then reads and writes everything) still reaches the server. So
//! besides the [`cors_layer`](Origins::cors_layer) every request carrying an `Origin` that is
//! neither the server's own nor in `--cors-origin` is refused up front by [`check`] with 403
//! `origin_not_allowed` — on every route, the WebSocket upgrade and SSE included, with `--auth
//! none` too (a page the user opens must not reach a loopback or intranet EventSync: cross-site
//! WebSocket hijacking). Requests without `Origin` (curl, servers, the Rust client) pass: only
//! browsers send it, and they cannot leave it out or forge it.
//!
//! Same-origin is decided by comparing the `Origin`'s host and port with the request's `Host`, so
//! the server's own UI keeps working under whatever name it is reached by. Behind a reverse proxy
//! that rewrites `Host`, list the public origin with `--cors-origin`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::AccessConfig;
use crate::error::{ApiError, ErrorCode};

/// The browser origins allowed besides the server's own (`--cors-origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// `*`: any origin.
    any: bool,
    /// Normalized `scheme://host[:port]` (lower-case, no default port, no trailing slash).
    list: Vec<String>,
}

/// The request headers the API reads (decision 11): a preflight asking for others is not answered
/// with them, so the browser does not send the request.
const ALLOWED_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::IF_MATCH,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-client-id"),
    header::AUTHORIZATION,
    HeaderName::from_static("last-event-id"),
];

/// The response headers a page's script may read: versions, where a created document is, how long
/// to back off, whether a write was a replay.
const EXPOSED_HEADERS: [HeaderName; 4] = [
    header::ETAG,
    header::LOCATION,
    header::RETRY_AFTER,
    HeaderName::from_static("idempotent-replayed"),
];

const ALLOWED_METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

impl Origins {
    /// Only the server's own origin.
    pub fn same_origin_only() -> Origins {
        Origins::default()
    }

    /// From `--cors-origin`; a malformed value is an error naming it (the server should not start
    /// with an origin list that does not say what its operator meant).
    pub fn from_config(access: &AccessConfig) -> Result<Origins, String> {
        Origins::parse(access.cors_origin.iter().map(String::as_str))
    }

    /// Each value is `*` or an origin `scheme://host[:port]` (a trailing `/` is tolerated);
    /// surrounding whitespace and empty values (`a,,b`, an empty variable) are ignored.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Origins, String> {
        let mut origins = Origins::default();
        for value in values.into_iter().map(str::trim).filter(|v| !v.is_empty()) {
            if value == "*" {
                origins.any = true;
                continue;
            }
            let origin = Origin::parse(value.strip_suffix('/').unwrap_or(value)).map_err(|why| {
                format!(
                    "--cors-origin {value:?}: {why} (expected an origin such as \
                     https://app.example.com or http://localhost:3000, or * for any)"
                )
            })?;
            let normalized = origin.to_string();
            if !origins.list.contains(&normalized) {
                origins.list.push(normalized);
            }
        }
        Ok(origins)
    }

    /// Whether a request with this `Origin` and this `Host` may proceed: same-origin (the origin's
    /// host and port are the `Host` header's), listed, or `*`. An origin that does not parse
    /// (`null` from a sandboxed frame or a `file:` page) is allowed only by `*`.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Ok(origin) = Origin::parse(origin) else {
            return false;
        };
        if host.is_some_and(|host| origin.is_host(host)) {
            return true;
        }
        let normalized = origin.to_string();
        self.list.contains(&normalized)
    }

    /// The CORS layer for these origins (decision 11 in docs/AUTH.md): it answers preflights and
    /// adds `Access-Control-Allow-Origin` (echoing the origin, or `*` with `*`) to answers. No
    /// credentials: tokens travel in `Authorization`, not cookies.
    pub fn cors_layer(self: &Arc<Self>) -> CorsLayer {
        let allow_origin = if self.any {
            AllowOrigin::any()
        } else {
            let origins = Arc::clone(self);
            AllowOrigin::predicate(move |origin, parts| {
                origin
                    .to_str()
                    .is_ok_and(|o| origins.allows(o, request_host(&parts.headers, &parts.uri)))
            })
        };
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods(ALLOWED_METHODS)
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(MAX_AGE)
    }
}

/// The middleware ([`axum::middleware::from_fn_with_state`]): a request carrying a disallowed
/// `Origin` is answered 403 `origin_not_allowed` before any handler (or upgrade) runs.
pub async fn check(State(origins): State<Arc<Origins>>, request: Request, next: Next) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request_host(request.headers(), request.uri());
        let allowed = origin.to_str().is_ok_and(|o| origins.allows(o, host));
        if !allowed {
            let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            tracing::debug!(origin = %shown, ?host, "refused a request from another origin");
            return ApiError::new(
                ErrorCode::OriginNotAllowed,
                format!("origin {shown:?} is not allowed (the server's --cors-origin does not list it)"),
            )
            .with("origin", shown)
            .into_response();
        }
    }
    next.run(request).await
}

/// The host (and port) the request was sent to: `Host` (HTTP/1.1), else the URI's authority
/// (HTTP/2's `:authority`).
fn request_host<'a>(headers: &'a axum::http::HeaderMap, uri: &'a axum::http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// A parsed origin: scheme, host and port, lower-case, the scheme's default port left out (as
/// browsers send it).
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(value: &str) -> Result<Origin, &'static str> {
        let (scheme, authority) = value.split_once("://").ok_or("no scheme (http:// or https://)")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err("not a valid scheme");
        }
        if authority.contains(['/', '?', '#']) {
            return Err("an origin has no path, query or fragment");
        }
        if authority.contains('@') {
            return Err("an origin has no user name or password");
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None => None,
            Some(p) => {
                let port: u16 = p.parse().map_err(|_| "not a valid port")?;
                if port == 0 {
                    return Err("not a valid port");
                }
                (Some(port) != default_port(&scheme)).then_some(port)
            }
        };
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `host` (a `Host` header: `name[:port]`) names this origin's host and port.
    fn is_host(&self, host: &str) -> bool {
        let Ok((name, port)) = split_host_port(host) else {
            return false;
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if Some(p) == default_port(&self.scheme) => None,
                Ok(p) => Some(p),
                Err(_) => return false,
            },
        };
        name.eq_ignore_ascii_case(&self.host) && port == self.port
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `name`, `name:port`, `[v6]` or `[v6]:port`; the name checked to be a plausible host.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("an unclosed [ in the host")?;
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return Err("not a valid IPv6 address");
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("unexpected characters after the host")?,
            ),
        };
        (&authority[..v6.len() + 2], port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err("no host");
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err("not a valid host name");
        }
        (host, port)
    };
    if port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
        return Err("not a valid port");
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(values: &[&str]) -> Origins {
        Origins::parse(values.iter().copied()).unwrap()
    }

    #[test]
    fn values_are_normalized() {
        let o = origins(&[
            "HTTPS://App.Example.com/",
            " http://localhost:3000 ",
            "https://app.example.com:443",
            "http://a.example:80",
            "http://[::1]:8080",
            "",
        ]);
        assert_eq!(
            o.list,
            [
                "https://app.example.com",
                "http://localhost:3000",
                "http://a.example",
                "http://[::1]:8080"
            ]
        );
        assert!(!o.any);
        assert!(origins(&["*"]).any);
        assert_eq!(Origins::parse([]).unwrap(), Origins::same_origin_only());
    }

    #[test]
    fn malformed_values_are_refused_with_the_value_named() {
        for bad in [
            "app.example.com",
            "https://",
            "https://app.example.com/path",
            "https://app.example.com/?q",
            "https://app.example.com#x",
            "https://user@app.example.com",
            "https://app.example.com:",
            "https://app.example.com:99999",
            "https://app.example.com:0",
            "https://app.example.com:80a",
            "https://app example.com",
            "https://[::1",
            "https://[zz]:80",
            "1http://a.example",
            "://a.example",
            "null",
            "**",
        ] {
            let err = Origins::parse([bad]).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn same_origin_is_the_host_header() {
        let none = Origins::same_origin_only();
        assert!(none.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(none.allows("http://LOCALHOST:8080", Some("localhost:8080")));
        assert!(none.allows("https://sync.example.com", Some("sync.example.com")));
        assert!(none.allows("https://sync.example.com", Some("sync.example.com:443")));
        assert!(none.allows("http://sync.example.com:80", Some("sync.example.com")));
        assert!(none.allows("http://[::1]:9000", Some("[::1]:9000")));
        // Another port, host or a missing Host is another origin.
        assert!(!none.allows("http://127.0.0.1:8081", Some("127.0.0.1:8080")));
        assert!(!none.allows("http://127.0.0.1", Some("127.0.0.1:8080")));
        assert!(!none.allows("http://evil.example", Some("127.0.0.1:8080")));
        assert!(!none.allows("http://127.0.0.1.evil.example:8080", Some("127.0.0.1:8080")));
        assert!(!none.allows("https://sync.example.com", Some("sync.example.com:80")));
        assert!(!none.allows("http://127.0.0.1:8080", None));
        assert!(!none.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080:1")));
    }

    #[test]
    fn listed_origins_and_any() {
        let o = origins(&["https://app.example.com", "http://localhost:3000"]);
        assert!(o.allows("https://app.example.com", Some("api.example.com")));
        assert!(o.allows("https://APP.example.com:443", Some("api.example.com")));
        assert!(o.allows("http://localhost:3000", None));
        assert!(
            !o.allows("http://app.example.com", Some("api.example.com")),
            "another scheme"
        );
        assert!(
            !o.allows("https://app.example.com:8443", Some("api.example.com")),
            "another port"
        );
        assert!(!o.allows("https://evil.app.example.com", Some("api.example.com")));
        assert!(!o.allows("http://localhost:3001", None));
        assert!(!o.allows("null", None));
        assert!(!o.allows("", None));
        assert!(
            !o.allows("https://app.example.com/", None),
            "browsers send no path"
        );

        let any = origins(&["*"]);
        for origin in ["http://evil.example", "null", "anything"] {
            assert!(any.allows(origin, Some("127.0.0.1:8080")));
        }
    }
}
