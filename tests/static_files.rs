//! The static files, against the real server (in-process): the UI's files and the client's one
//! module are served; nothing else of the client's directory, no path out of the static
//! directory (`..`, encoded or not, or a symlink), only GET/HEAD — each refusal a JSON error; and
//! every response carries the security headers.

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;

struct Dirs {
    _outside: tempfile::TempDir,
    ui: tempfile::TempDir,
    client: tempfile::TempDir,
}

fn dirs() -> Dirs {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    let ui = tempfile::tempdir().unwrap();
    std::fs::write(ui.path().join("index.html"), "<!doctype html><title>ui</title>").unwrap();
    std::fs::write(ui.path().join("app.js"), "export {};").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), ui.path().join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ui.path().join("leakdir")).unwrap();
    }
    let client = tempfile::tempdir().unwrap();
    std::fs::write(
        client.path().join("eventsync.js"),
        "export class EventSyncClient {}",
    )
    .unwrap();
    std::fs::write(client.path().join("package.json"), "{}").unwrap();
    std::fs::write(client.path().join("README.md"), "# client").unwrap();
    std::fs::create_dir(client.path().join("test")).unwrap();
    std::fs::write(client.path().join("test/a.test.mjs"), "").unwrap();
    Dirs {
        _outside: outside,
        ui,
        client,
    }
}

async fn fetch(
    s: &TestServer,
    method: Method,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let resp = s.request(method, path).send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn only_the_ui_and_the_client_module_are_served() {
    let d = dirs();
    let s = TestServer::start(&[
        "--static-dir",
        d.ui.path().to_str().unwrap(),
        "--client-dir",
        d.client.path().to_str().unwrap(),
    ]);
    for (path, body) in [
        ("/", "<!doctype html><title>ui</title>"),
        ("/index.html", "<!doctype html><title>ui</title>"),
        ("/app.js", "export {};"),
        ("/client/eventsync.js", "export class EventSyncClient {}"),
    ] {
        let (status, headers, text) = fetch(&s, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(text, body, "{path}");
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
    }
    for path in [
        "/client/package.json",
        "/client/README.md",
        "/client/test/a.test.mjs",
        "/client/",
        "/leak.txt",
        "/leakdir/secret.txt",
        "/missing.js",
    ] {
        let (status, headers, text) = fetch(&s, Method::GET, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        assert_eq!(body["error"]["code"], "not_found", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(!text.contains("secret"), "{path}");
    }
    // The API's answers carry the headers too.
    let resp = s.request(Method::GET, "/api/health").send().await.unwrap();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // Only GET and HEAD.
    let resp = s.request(Method::POST, "/app.js").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let resp = s.request(Method::HEAD, "/app.js").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn dot_dot_never_leaves_the_directory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = dirs();
    let s = TestServer::start(&["--static-dir", d.ui.path().to_str().unwrap()]);
    let name = d
        ._outside
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // Raw requests: no client normalizes these away.
    for path in [
        format!("/../{name}/secret.txt"),
        format!("/%2e%2e/{name}/secret.txt"),
        format!("/..%2f{name}%2fsecret.txt"),
        format!("/%2e%2e%5c{name}%5csecret.txt"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 404") || out.starts_with("HTTP/1.1 400"),
            "{path}: {out}"
        );
        assert!(
            !out.contains("secret\r\n") && !out.ends_with("secret"),
            "{path}: {out}"
        );
    }
}
