//! The static files: the UI (`--static-dir`) at `/`, and the JavaScript client's module at
//! `/client/eventsync.js` — nothing else of `--client-dir` (its `package.json`, README and tests
//! are not the server's to publish).
//!
//! tower-http's `ServeFile` does the serving (content types, `HEAD`, ranges, `Last-Modified`);
//! what it is asked to serve is decided here: the URL path is decoded and taken segment by
//! segment (no `..`, no `.`, no backslash or NUL), the file found is canonicalized, and it is
//! served only if it is still inside the canonical static directory — a symlink pointing out of
//! it is not followed. A directory serves its `index.html`. Anything else is the API's JSON 404.
//!
//! Every response of the server carries [`security_headers`]: a Content-Security-Policy the UI
//! satisfies (its scripts, styles and icon are its own files; it connects only to its own origin),
//! and `nosniff`, frame and referrer headers.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::{ApiError, ErrorCode};

/// The UI's policy: only its own files, only its own origin to talk to (`'self'` covers the
/// same-origin WebSocket in CSP Level 3), no framing, no plugins, no `<base>` rewriting.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The headers every response gets (a handler that sets one keeps its own).
pub fn security_headers() -> [SetResponseHeaderLayer<HeaderValue>; 4] {
    let layer = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    [
        layer(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        layer(header::X_FRAME_OPTIONS, "DENY"),
        layer(header::REFERRER_POLICY, "no-referrer"),
    ]
}

/// A directory whose files are served, canonicalized once.
#[derive(Clone)]
pub struct StaticDir {
    root: Arc<Path>,
}

impl StaticDir {
    pub fn new(dir: &Path) -> StaticDir {
        // A directory that does not exist (yet) serves nothing: every path is then a 404.
        let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        StaticDir { root: root.into() }
    }

    /// Serves the file the request's path names, if it is one of this directory's.
    pub async fn serve(self, request: Request) -> Response {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return ApiError::new(ErrorCode::MethodNotAllowed, "static files are read with GET")
                .into_response();
        }
        match self.resolve(request.uri().path()).await {
            Some(file) => serve_file(file, request).await,
            None => ApiError::not_found("no such file").into_response(),
        }
    }

    /// The canonical file for a URL path, or `None` when it does not exist or is not inside.
    async fn resolve(&self, url_path: &str) -> Option<PathBuf> {
        let relative = relative_path(url_path)?;
        let mut file = tokio::fs::canonicalize(self.root.join(relative)).await.ok()?;
        if tokio::fs::metadata(&file).await.ok()?.is_dir() {
            file = tokio::fs::canonicalize(file.join("index.html")).await.ok()?;
        }
        let inside = file.starts_with(&*self.root);
        (inside && tokio::fs::metadata(&file).await.ok()?.is_file()).then_some(file)
    }
}

/// One file, whatever the request's path (the client's module).
pub async fn serve_file(file: PathBuf, request: Request) -> Response {
    match ServeFile::new(file).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// A URL path as a relative file path: percent-decoded, only plain segments.
fn relative_path(url_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(url_path)
        .decode_utf8()
        .ok()?;
    let mut path = PathBuf::new();
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        if segment.contains(['\\', '\0']) {
            return None;
        }
        let mut parts = Path::new(segment).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(part)), None) => path.push(part),
            _ => return None,
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_become_plain_relative_paths() {
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(relative_path("/app.js"), Some(PathBuf::from("app.js")));
        assert_eq!(relative_path("/a//b/"), Some(PathBuf::from("a/b")));
        assert_eq!(
            relative_path("/my%20file.txt"),
            Some(PathBuf::from("my file.txt"))
        );
        for bad in [
            "/../etc/passwd",
            "/a/../../x",
            "/%2e%2e/x",
            "/./x",
            "/a%5c..%5cx",
            "/a%00",
            "/%ff",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn nothing_outside_the_directory_is_served_symlinks_included() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/index.html"), "sub").unwrap();
        std::fs::write(dir.path().join("sub/inside.txt"), "in").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path().join("secret.txt"), dir.path().join("leak.txt"))
                .unwrap();
            std::os::unix::fs::symlink(outside.path(), dir.path().join("leakdir")).unwrap();
            std::os::unix::fs::symlink(dir.path().join("sub/inside.txt"), dir.path().join("alias.txt"))
                .unwrap();
        }
        let d = StaticDir::new(dir.path());
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(d.resolve("/").await, Some(root.join("index.html")));
        assert_eq!(d.resolve("/sub").await, Some(root.join("sub/index.html")));
        assert_eq!(
            d.resolve("/sub/inside.txt").await,
            Some(root.join("sub/inside.txt"))
        );
        assert_eq!(d.resolve("/missing").await, None);
        #[cfg(unix)]
        {
            assert_eq!(d.resolve("/leak.txt").await, None);
            assert_eq!(d.resolve("/leakdir/secret.txt").await, None);
            // A link that stays inside is fine.
            assert_eq!(d.resolve("/alias.txt").await, Some(root.join("sub/inside.txt")));
        }
    }
}
