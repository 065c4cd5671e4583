//! Bad input over real HTTP, table-driven: every row is one request that must be refused with the
//! right status and error code, in the API's error format, without changing anything.
//!
//! Before the table a known document is created; after every row the test checks the status, that
//! the body is `{"error": {"code", "message"}}` with the expected code and a non-empty message, and
//! that the known document (via GET) and the event log's `last_seq` are exactly as before.

mod common;

use common::TestServer;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The document every row must leave alone.
const KNOWN: &str = "/api/games/known";
/// `--max-document-bytes 1000`: the body limit becomes 1000 + 64 KiB.
const LIMITED: &[&str] = &["--max-document-bytes", "1000"];
const MAX_DOCUMENT_BYTES: usize = 1000;
const MAX_BODY_BYTES: usize = MAX_DOCUMENT_BYTES + 64 * 1024;

const JSON: (&str, &str) = ("content-type", "application/json");
const JSON_PATCH: (&str, &str) = ("content-type", "application/json-patch+json");
const MERGE_PATCH: (&str, &str) = ("content-type", "application/merge-patch+json");

/// One request that must be refused.
struct Row {
    what: String,
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
    /// Further fields the error object must have (`current_version`, ...).
    details: Vec<(&'static str, Value)>,
}

/// (description, method, path, headers, body bytes — empty for none, expected status, expected code)
fn row(
    what: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Row {
    let body = body.into();
    Row {
        what: what.to_string(),
        method: Method::from_bytes(method.as_bytes()).expect("a method"),
        path: path.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: (!body.is_empty()).then_some(body),
        status,
        code,
        details: Vec::new(),
    }
}

impl Row {
    /// Expects `key: value` in the error object too.
    fn with(mut self, key: &'static str, value: impl Into<Value>) -> Row {
        self.details.push((key, value.into()));
        self
    }

    /// Adds a header whose value is raw bytes (not necessarily valid UTF-8).
    fn raw_header(mut self, name: &str, value: &[u8]) -> Row {
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }
}

fn js(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// `[[[...]]]` nested `depth` deep.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut out = "[".repeat(depth).into_bytes();
    out.extend("]".repeat(depth).into_bytes());
    out
}

/// `{"a":{"a":...{}}}` nested `depth` deep.
fn nested_objects(depth: usize) -> Vec<u8> {
    let mut out = r#"{"a":"#.repeat(depth - 1);
    out.push_str("{}");
    out.push_str(&"}".repeat(depth - 1));
    out.into_bytes()
}

/// A JSON value nested `depth` deep (1 = `{}`), for building bodies.
fn nested_value(depth: usize) -> Value {
    let mut v = json!({});
    for _ in 1..depth {
        v = json!({ "a": v });
    }
    v
}

/// What must not change.
#[derive(Debug, Clone, PartialEq)]
struct Baseline {
    known: Value,
    last_seq: u64,
}

async fn baseline(s: &TestServer) -> Baseline {
    let (status, known) = s.get(KNOWN).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the known document must be readable: {known}"
    );
    let (status, events) = s.get("/api/events?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{events}");
    Baseline {
        known,
        last_seq: events["last_seq"].as_u64().expect("last_seq"),
    }
}

/// Creates the known document at version 2 (the second write with Idempotency-Key `used-key`) and
/// another document, `games/other`.
async fn setup(s: &TestServer) -> Baseline {
    let (status, body) = s
        .post_json(
            "/api/games",
            &json!({"id": "known", "name": "known", "n": 1, "list": [1, 2], "nested": {"a": {"b": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = common::send(
        s.request(Method::PATCH, KNOWN)
            .header(CONTENT_TYPE, "application/merge-patch+json")
            .header("idempotency-key", "used-key")
            .body(r#"{"n":2}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["document"]["version"], 2);
    let (status, body) = s.post_json("/api/games", &json!({"id": "other", "x": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    baseline(s).await
}

/// Sends a row; returns the status, the content type and the raw body.
///
/// Each row gets a connection of its own: after refusing an oversized body unread the server closes
/// the connection, which must not fail the next row's request on a pooled connection.
async fn send_row(s: &TestServer, r: &Row) -> (StatusCode, String, Vec<u8>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("a client");
    let mut req = client.request(r.method.clone(), format!("{}{}", s.url, r.path));
    for (k, v) in &r.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
        let value = HeaderValue::from_bytes(v).expect("header value");
        req = req.header(name, value);
    }
    if let Some(b) = &r.body {
        req = req.body(b.clone());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: request failed: {e}", r.what));
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let bytes = resp.bytes().await.expect("read body").to_vec();
    (status, content_type, bytes)
}

/// Runs every row: status, error format, code, details, and nothing changed.
async fn run_table(s: &TestServer, before: &Baseline, rows: &[Row]) {
    let mut failures = Vec::new();
    for r in rows {
        let (status, content_type, bytes) = send_row(s, r).await;
        let text = String::from_utf8_lossy(&bytes);
        let label = format!("{} ({} {})", r.what, r.method, shorten(&r.path));
        let mut problems = Vec::new();
        if status.as_u16() != r.status {
            problems.push(format!("status {} (want {})", status.as_u16(), r.status));
        }
        if !content_type.starts_with("application/json") {
            problems.push(format!("content type {content_type:?}"));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Err(e) => problems.push(format!("body is not JSON ({e}): {}", shorten(&text))),
            Ok(body) => {
                let error = &body["error"];
                if error["code"] != r.code {
                    problems.push(format!("code {} (want {})", error["code"], r.code));
                }
                if error["message"].as_str().is_none_or(str::is_empty) {
                    problems.push("no error.message".to_string());
                }
                if body.as_object().map(|o| o.len()) != Some(1) {
                    problems.push("the body has more than the \"error\" object".to_string());
                }
                for (k, v) in &r.details {
                    if &error[*k] != v {
                        problems.push(format!("error.{k} = {} (want {v})", error[*k]));
                    }
                }
            }
        }
        let after = baseline(s).await;
        if after != *before {
            problems.push(format!("something changed: {before:?} -> {after:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{label}: {} — body: {}",
                problems.join("; "),
                shorten(&text)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n  {}",
        failures.len(),
        rows.len(),
        failures.join("\n  ")
    );
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 300 {
        format!("{}… ({} bytes)", s.chars().take(300).collect::<String>(), s.len())
    } else {
        s.to_string()
    }
}

/// The table, for the server started with [`LIMITED`] after [`setup`].
#[rustfmt::skip]
fn rows() -> Vec<Row> {
    let long_collection = format!("/api/{}", "a".repeat(65));
    let long_id = format!("/api/games/{}", "x".repeat(129));
    let big_body = js(json!({"s": "x".repeat(100 * 1024)}));
    assert!(big_body.len() > MAX_BODY_BYTES);
    let big_doc = js(json!({"s": "x".repeat(MAX_DOCUMENT_BYTES + 10)}));
    assert!(big_doc.len() < MAX_BODY_BYTES);
    let long_key = "k".repeat(300);
    let long_client = "c".repeat(129);
    // A patch whose body is shallow enough but whose result nests 65 deep (known/nested/a is 3 deep).
    let deep_result_patch = js(json!([{"op": "add", "path": "/nested/a/deep", "value": nested_value(62)}]));

    vec![
        // --- malformed JSON: 400 invalid_json ---
        row("truncated object", "POST", "/api/games", &[JSON], r#"{"a":"#, 400, "invalid_json"),
        row("trailing comma", "PUT", KNOWN, &[JSON], r#"{"a":1,}"#, 400, "invalid_json"),
        row("unquoted key in a merge patch", "PATCH", KNOWN, &[MERGE_PATCH], "{bad: 1}", 400, "invalid_json"),
        row("truncated JSON Patch", "PATCH", KNOWN, &[JSON_PATCH], r#"[{"op":"#, 400, "invalid_json"),
        // --- valid JSON taken in another meaning: 400 invalid_json ---
        row("a repeated id", "POST", "/api/games", &[JSON], r#"{"id":"x1","id":"x2"}"#, 400, "invalid_json"),
        row("a repeated member, nested", "PUT", KNOWN, &[JSON], r#"{"a":{"b":1,"b":2}}"#, 400, "invalid_json"),
        row("a repeated op in a patch", "PATCH", KNOWN, &[JSON_PATCH], r#"[{"op":"add","op":"remove","path":"/n","value":1}]"#, 400, "invalid_json"),
        row("an escaped repeat", "PATCH", KNOWN, &[MERGE_PATCH], r#"{"n":1,"\u006e":2}"#, 400, "invalid_json"),
        row("an integer beyond 64 bits", "POST", "/api/games", &[JSON], r#"{"n":123456789012345678901234567890}"#, 400, "invalid_json"),
        row("an underflowing number", "PUT", KNOWN, &[JSON], r#"{"n":1e-400}"#, 400, "invalid_json"),
        row("more digits than a float holds", "PATCH", KNOWN, &[MERGE_PATCH], r#"{"n":0.12345678901234567890}"#, 400, "invalid_json"),
        row("empty body", "POST", "/api/games", &[JSON], "", 400, "invalid_json"),
        row("empty PUT body", "PUT", KNOWN, &[JSON], "", 400, "invalid_json"),
        row("trailing garbage", "POST", "/api/games", &[JSON], r#"{"a":1} x"#, 400, "invalid_json"),
        row("invalid UTF-8", "POST", "/api/games", &[JSON], b"{\"a\":\"\xff\"}".to_vec(), 400, "invalid_json"),
        row("lone surrogate", "PUT", KNOWN, &[JSON], r#"{"a":"\ud800"}"#, 400, "invalid_json"),
        row("number out of range", "POST", "/api/games", &[JSON], r#"{"n":1e400}"#, 400, "invalid_json"),
        row("single quotes", "PATCH", KNOWN, &[JSON], "{'n': 3}", 400, "invalid_json"),
        // --- content type: 415 unsupported_media_type ---
        row("text/plain POST", "POST", "/api/games", &[("content-type", "text/plain")], r#"{"a":1}"#, 415, "unsupported_media_type"),
        row("text/plain PUT", "PUT", KNOWN, &[("content-type", "text/plain")], r#"{"a":1}"#, 415, "unsupported_media_type"),
        row("text/plain PATCH", "PATCH", KNOWN, &[("content-type", "text/plain")], r#"{"a":1}"#, 415, "unsupported_media_type"),
        row("application/xml POST", "POST", "/api/games", &[("content-type", "application/xml")], "<a/>", 415, "unsupported_media_type"),
        row("form POST", "POST", "/api/games", &[("content-type", "application/x-www-form-urlencoded")], "a=1", 415, "unsupported_media_type"),
        row("application/jsonx PATCH", "PATCH", KNOWN, &[("content-type", "application/jsonx")], r#"{"a":1}"#, 415, "unsupported_media_type"),
        row("missing content type on POST", "POST", "/api/games", &[], r#"{"a":1}"#, 415, "unsupported_media_type"),
        row("missing content type on PUT", "PUT", KNOWN, &[], r#"{"a":1}"#, 415, "unsupported_media_type"),
        row("missing content type on PATCH", "PATCH", KNOWN, &[], r#"{"n":3}"#, 415, "unsupported_media_type"),
        row("missing content type and body on POST", "POST", "/api/games", &[], "", 415, "unsupported_media_type"),
        // --- JSON Patch that is not one: 400 invalid_patch ---
        row("unknown op", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "explode", "path": "/n"}])), 400, "invalid_patch"),
        row("missing path", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "add", "value": 1}])), 400, "invalid_patch"),
        row("path without a leading /", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "add", "path": "n", "value": 1}])), 400, "invalid_patch"),
        row("missing op", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"path": "/n", "value": 1}])), 400, "invalid_patch"),
        row("move without from", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "move", "path": "/m"}])), 400, "invalid_patch"),
        row("add without value", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "add", "path": "/m"}])), 400, "invalid_patch"),
        row("pointer with an unescaped ~", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "test", "path": "/nested/a~", "value": 1}])), 400, "invalid_patch"),
        row("pointer with a bad escape ~2", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "remove", "path": "/a~2b"}])), 400, "invalid_patch"),
        row("operation that is not an object", "PATCH", KNOWN, &[JSON_PATCH], js(json!(["add"])), 400, "invalid_patch"),
        row("json-patch+json with an object", "PATCH", KNOWN, &[JSON_PATCH], js(json!({"n": 3})), 400, "invalid_patch"),
        row("plain JSON patch that is a string", "PATCH", KNOWN, &[JSON], js(json!("n")), 400, "invalid_patch"),
        row("plain JSON patch that is a number", "PATCH", KNOWN, &[JSON], "5", 400, "invalid_patch"),
        row("plain JSON patch that is null", "PATCH", KNOWN, &[JSON], "null", 400, "invalid_patch"),
        row("plain JSON array with an unknown op", "PATCH", KNOWN, &[JSON], js(json!([{"op": "x", "path": "/n"}])), 400, "invalid_patch"),
        // --- JSON Patch that does not apply: 422 patch_failed ---
        row("failing test", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "test", "path": "/n", "value": 99}])), 422, "patch_failed")
            .with("operation", 0),
        row("failing test after a good op", "PATCH", KNOWN, &[JSON_PATCH],
            js(json!([{"op": "replace", "path": "/n", "value": 5}, {"op": "test", "path": "/name", "value": "x"}])), 422, "patch_failed")
            .with("operation", 1),
        row("remove of a missing path", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "remove", "path": "/missing"}])), 422, "patch_failed"),
        row("replace of a missing path", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "replace", "path": "/missing", "value": 1}])), 422, "patch_failed"),
        row("add under a missing parent", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "add", "path": "/missing/child", "value": 1}])), 422, "patch_failed"),
        row("add past the end of an array", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "add", "path": "/list/5", "value": 1}])), 422, "patch_failed"),
        row("move from a missing path", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "move", "from": "/missing", "path": "/m"}])), 422, "patch_failed"),
        // --- a patch result that is not an object: 422 not_an_object ---
        row("JSON Patch replacing the root with an array", "PATCH", KNOWN, &[JSON_PATCH], js(json!([{"op": "replace", "path": "", "value": [1]}])), 422, "not_an_object"),
        row("JSON Patch replacing the root with a string", "PATCH", KNOWN, &[JSON], js(json!([{"op": "replace", "path": "", "value": "s"}])), 422, "not_an_object"),
        row("merge patch that is an array", "PATCH", KNOWN, &[MERGE_PATCH], "[1,2]", 422, "not_an_object"),
        row("merge patch that is null", "PATCH", KNOWN, &[MERGE_PATCH], "null", 422, "not_an_object"),
        row("merge patch that is a string", "PATCH", KNOWN, &[MERGE_PATCH], r#""s""#, 422, "not_an_object"),
        // --- a document body that is not an object: 400 not_an_object ---
        row("POST an array", "POST", "/api/games", &[JSON], "[1,2]", 400, "not_an_object"),
        row("POST a string", "POST", "/api/games", &[JSON], r#""doc""#, 400, "not_an_object"),
        row("POST a number", "POST", "/api/games", &[JSON], "42", 400, "not_an_object"),
        row("POST null", "POST", "/api/games", &[JSON], "null", 400, "not_an_object"),
        row("POST true", "POST", "/api/games", &[JSON], "true", 400, "not_an_object"),
        row("PUT an array", "PUT", KNOWN, &[JSON], "[]", 400, "not_an_object"),
        row("PUT null", "PUT", KNOWN, &[JSON], "null", 400, "not_an_object"),
        // --- collection names: 400 invalid_collection ---
        row("collection starting with a digit (list)", "GET", "/api/2bad", &[], "", 400, "invalid_collection"),
        row("collection starting with a digit (create)", "POST", "/api/2bad", &[JSON], r#"{"a":1}"#, 400, "invalid_collection"),
        row("collection with a dot", "GET", "/api/a.b", &[], "", 400, "invalid_collection"),
        row("collection with a dot (read one)", "GET", "/api/a.b/known", &[], "", 400, "invalid_collection"),
        row("collection with a space", "POST", "/api/ga%20mes", &[JSON], r#"{"a":1}"#, 400, "invalid_collection"),
        row("collection of 65 characters (list)", "GET", &long_collection, &[], "", 400, "invalid_collection"),
        row("collection of 65 characters (create)", "POST", &long_collection, &[JSON], r#"{"a":1}"#, 400, "invalid_collection"),
        row("reserved collection state_vectors", "POST", "/api/state_vectors", &[JSON], r#"{"a":1}"#, 400, "invalid_collection"),
        row("reserved collection snapshots", "GET", "/api/snapshots", &[], "", 400, "invalid_collection"),
        row("reserved collection idempotency", "PUT", "/api/idempotency/known", &[JSON], r#"{"a":1}"#, 400, "invalid_collection"),
        row("reserved prefix system", "GET", "/api/system_users/x", &[], "", 400, "invalid_collection"),
        row("collection starting with _ (history)", "GET", "/api/_x/known/history", &[], "", 400, "invalid_collection"),
        row("bad collection in a PATCH", "PATCH", "/api/2bad/known", &[MERGE_PATCH], r#"{"n":3}"#, 400, "invalid_collection"),
        row("bad collection in a DELETE", "DELETE", "/api/a.b/known", &[], "", 400, "invalid_collection"),
        row("bad collection in an events filter", "GET", "/api/events?collection=2bad", &[], "", 400, "invalid_collection"),
        // --- document ids: 400 invalid_id ---
        row("id starting with a dot", "GET", "/api/games/.x", &[], "", 400, "invalid_id"),
        row("id starting with a dot (PUT)", "PUT", "/api/games/.x", &[JSON], r#"{"a":1}"#, 400, "invalid_id"),
        row("id of 129 characters", "GET", &long_id, &[], "", 400, "invalid_id"),
        row("id of 129 characters (PATCH)", "PATCH", &long_id, &[MERGE_PATCH], r#"{"a":1}"#, 400, "invalid_id"),
        row("id with a space", "GET", "/api/games/a%20b", &[], "", 400, "invalid_id"),
        row("id with a space (DELETE)", "DELETE", "/api/games/a%20b", &[], "", 400, "invalid_id"),
        row("id with a NUL", "GET", "/api/games/a%00b", &[], "", 400, "invalid_id"),
        row("id with a slash, encoded", "GET", "/api/games/a%2Fb", &[], "", 400, "invalid_id"),
        row("id starting with a dot (versions)", "GET", "/api/games/.x/versions/1", &[], "", 400, "invalid_id"),
        row("bad id in an events filter", "GET", "/api/events?collection=games&id=.x", &[], "", 400, "invalid_id"),
        row("body id that is a number", "POST", "/api/games", &[JSON], r#"{"id":5,"a":1}"#, 400, "invalid_id"),
        row("body id that is null", "POST", "/api/games", &[JSON], r#"{"id":null}"#, 400, "invalid_id"),
        row("body id that is an array", "POST", "/api/games", &[JSON], r#"{"id":["known"]}"#, 400, "invalid_id"),
        row("body id starting with a dot", "POST", "/api/games", &[JSON], r#"{"id":".x"}"#, 400, "invalid_id"),
        row("body id with a space", "POST", "/api/games", &[JSON], r#"{"id":"a b"}"#, 400, "invalid_id"),
        row("body id that is empty", "POST", "/api/games", &[JSON], r#"{"id":""}"#, 400, "invalid_id"),
        row("body id that is a number (PUT)", "PUT", KNOWN, &[JSON], r#"{"id":1,"a":1}"#, 400, "invalid_id"),
        row("id that is not UTF-8", "GET", "/api/games/%FF", &[], "", 400, "invalid_path"),
        // --- PUT body id differing from the URL's: 400 id_mismatch ---
        row("PUT body id differs", "PUT", KNOWN, &[JSON], r#"{"id":"other","a":1}"#, 400, "id_mismatch"),
        // --- unknown documents: 404 not_found ---
        row("GET an unknown document", "GET", "/api/games/nope", &[], "", 404, "not_found"),
        row("PUT an unknown document", "PUT", "/api/games/nope", &[JSON], r#"{"a":1}"#, 404, "not_found"),
        row("merge-PATCH an unknown document", "PATCH", "/api/games/nope", &[MERGE_PATCH], r#"{"a":1}"#, 404, "not_found"),
        row("JSON-PATCH an unknown document", "PATCH", "/api/games/nope", &[JSON_PATCH], js(json!([{"op": "add", "path": "/a", "value": 1}])), 404, "not_found"),
        row("DELETE an unknown document", "DELETE", "/api/games/nope", &[], "", 404, "not_found"),
        row("history of an unknown document", "GET", "/api/games/nope/history", &[], "", 404, "not_found"),
        row("snapshots of an unknown document", "GET", "/api/games/nope/snapshots", &[], "", 404, "not_found"),
        row("a version of an unknown document", "GET", "/api/games/nope/versions/1", &[], "", 404, "not_found"),
        row("the known document in another collection", "GET", "/api/players/known", &[], "", 404, "not_found"),
        row("version 0", "GET", "/api/games/known/versions/0", &[], "", 404, "not_found"),
        row("a version after the current one", "GET", "/api/games/known/versions/3", &[], "", 404, "not_found"),
        // --- stale If-Match: 409 version_conflict ---
        row("PUT with a stale If-Match", "PUT", KNOWN, &[JSON, ("if-match", "\"1\"")], r#"{"a":1}"#, 409, "version_conflict")
            .with("current_version", 2)
            .with("expected_version", 1),
        row("PATCH with a future If-Match", "PATCH", KNOWN, &[MERGE_PATCH, ("if-match", "3")], r#"{"n":9}"#, 409, "version_conflict")
            .with("current_version", 2),
        row("DELETE with a stale If-Match", "DELETE", KNOWN, &[("if-match", "W/\"1\"")], "", 409, "version_conflict")
            .with("current_version", 2),
        // --- create over a live id: 409 already_exists ---
        row("create with the known id", "POST", "/api/games", &[JSON], r#"{"id":"known","a":1}"#, 409, "already_exists")
            .with("current_version", 2),
        // --- sizes: 413 ---
        row("PUT body over the body limit", "PUT", KNOWN, &[JSON], big_body.clone(), 413, "body_too_large"),
        row("POST body over the body limit", "POST", "/api/games", &[JSON], big_body.clone(), 413, "body_too_large"),
        row("PATCH body over the body limit", "PATCH", KNOWN, &[MERGE_PATCH], big_body, 413, "body_too_large"),
        row("merge patch making the document too large", "PATCH", KNOWN, &[MERGE_PATCH], big_doc.clone(), 413, "document_too_large")
            .with("limit", MAX_DOCUMENT_BYTES),
        row("JSON Patch making the document too large", "PATCH", KNOWN, &[JSON_PATCH],
            js(json!([{"op": "add", "path": "/s", "value": "x".repeat(MAX_DOCUMENT_BYTES)}])), 413, "document_too_large"),
        row("PUT of a document over the limit", "PUT", KNOWN, &[JSON], big_doc.clone(), 413, "document_too_large"),
        row("forty root copies (a patch that doubles the document forty times)", "PATCH", KNOWN, &[JSON_PATCH],
            js(Value::Array((0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/c{i}")})).collect())), 413, "document_too_large"),
        row("a patch value that nests the document past the depth limit", "PATCH", KNOWN, &[JSON_PATCH],
            js(json!([{"op": "add", "path": "/nested/a/x", "value": (0..62).fold(json!(1), |v, _| json!({"d": v}))}])), 422, "too_deep"),
        row("more than 1000 operations", "PATCH", KNOWN, &[JSON_PATCH],
            js(Value::Array((0..1001).map(|_| json!({"op": "test", "path": "/n", "value": 1})).collect())), 400, "invalid_patch"),
        row("POST of a document over the limit", "POST", "/api/games", &[JSON], big_doc, 413, "document_too_large"),
        // --- depth ---
        row("PUT nested 65 deep", "PUT", KNOWN, &[JSON], nested_objects(65), 400, "too_deep"),
        row("POST arrays nested 65 deep", "POST", "/api/games", &[JSON], nested_arrays(65), 400, "too_deep"),
        row("merge patch nested 65 deep", "PATCH", KNOWN, &[MERGE_PATCH], nested_objects(65), 400, "too_deep"),
        row("60,000 unclosed arrays (within the body limit)", "POST", "/api/games", &[JSON], "[".repeat(60_000), 400, "too_deep"),
        row("JSON Patch whose result nests 65 deep", "PATCH", KNOWN, &[JSON_PATCH], deep_result_patch, 422, "too_deep"),
        // --- If-Match: 400 invalid_if_match ---
        row("If-Match abc", "PUT", KNOWN, &[JSON, ("if-match", "abc")], r#"{"a":1}"#, 400, "invalid_if_match"),
        row("If-Match 0", "PATCH", KNOWN, &[MERGE_PATCH, ("if-match", "0")], r#"{"n":9}"#, 400, "invalid_if_match"),
        row("If-Match \"0\"", "DELETE", KNOWN, &[("if-match", "\"0\"")], "", 400, "invalid_if_match"),
        row("If-Match -1", "PUT", KNOWN, &[JSON, ("if-match", "-1")], r#"{"a":1}"#, 400, "invalid_if_match"),
        row("If-Match 1.5", "PUT", KNOWN, &[JSON, ("if-match", "1.5")], r#"{"a":1}"#, 400, "invalid_if_match"),
        row("If-Match with an open quote", "PATCH", KNOWN, &[MERGE_PATCH, ("if-match", "\"2")], r#"{"n":9}"#, 400, "invalid_if_match"),
        row("If-Match list", "DELETE", KNOWN, &[("if-match", "\"1\", \"2\"")], "", 400, "invalid_if_match"),
        // The document is at version 2: these once meant 2 and applied.
        row("If-Match +2", "PUT", KNOWN, &[JSON, ("if-match", "+2")], r#"{"a":1}"#, 400, "invalid_if_match"),
        row("If-Match \"+2\"", "PATCH", KNOWN, &[MERGE_PATCH, ("if-match", "\"+2\"")], r#"{"n":9}"#, 400, "invalid_if_match"),
        row("If-Match 02", "DELETE", KNOWN, &[("if-match", "02")], "", 400, "invalid_if_match"),
        row("If-Match on a create", "POST", "/api/games", &[JSON, ("if-match", "abc")], r#"{"a":1}"#, 400, "invalid_if_match"),
        // --- X-Client-Id: 400 invalid_client_id ---
        row("client id with a space", "PATCH", KNOWN, &[MERGE_PATCH, ("x-client-id", "a b")], r#"{"n":9}"#, 400, "invalid_client_id"),
        row("client id starting with a dot", "PUT", KNOWN, &[JSON, ("x-client-id", ".me")], r#"{"a":1}"#, 400, "invalid_client_id"),
        row("empty client id", "DELETE", KNOWN, &[("x-client-id", "")], "", 400, "invalid_client_id"),
        row("client id of 129 characters", "POST", "/api/games", &[JSON, ("x-client-id", &long_client)], r#"{"a":1}"#, 400, "invalid_client_id"),
        row("client id with a slash", "PATCH", KNOWN, &[MERGE_PATCH, ("x-client-id", "a/b")], r#"{"n":9}"#, 400, "invalid_client_id"),
        row("client id that is not ASCII", "PATCH", KNOWN, &[MERGE_PATCH], r#"{"n":9}"#, 400, "invalid_client_id")
            .raw_header("x-client-id", "é".as_bytes()),
        // --- Idempotency-Key: 400 invalid_idempotency_key, 422 idempotency_key_reused ---
        row("idempotency key of 300 characters", "PATCH", KNOWN, &[MERGE_PATCH, ("idempotency-key", &long_key)], r#"{"n":9}"#, 400, "invalid_idempotency_key"),
        row("empty idempotency key", "POST", "/api/games", &[JSON, ("idempotency-key", "")], r#"{"a":1}"#, 400, "invalid_idempotency_key"),
        row("idempotency key with a space", "DELETE", KNOWN, &[("idempotency-key", "a b")], "", 400, "invalid_idempotency_key"),
        row("idempotency key that is not ASCII", "PUT", KNOWN, &[JSON], r#"{"a":1}"#, 400, "invalid_idempotency_key")
            .raw_header("idempotency-key", "ключ".as_bytes()),
        row("idempotency key reused with another body", "PATCH", KNOWN, &[MERGE_PATCH, ("idempotency-key", "used-key")], r#"{"n":3}"#, 422, "idempotency_key_reused"),
        row("idempotency key reused on another method", "PUT", KNOWN, &[JSON, ("idempotency-key", "used-key")], r#"{"n":2}"#, 422, "idempotency_key_reused"),
        // --- query parameters of listings: 400 invalid_query / invalid_cursor ---
        row("list limit=0", "GET", "/api/games?limit=0", &[], "", 400, "invalid_query"),
        row("list limit=abc", "GET", "/api/games?limit=abc", &[], "", 400, "invalid_query"),
        row("list limit=100000", "GET", "/api/games?limit=100000", &[], "", 400, "invalid_query"),
        row("list limit=-1", "GET", "/api/games?limit=-1", &[], "", 400, "invalid_query"),
        row("list with an unknown parameter", "GET", "/api/games?sort=id", &[], "", 400, "invalid_query"),
        row("list cursor that is not base64", "GET", "/api/games?cursor=!!!", &[], "", 400, "invalid_cursor"),
        row("list cursor that is not UTF-8", "GET", "/api/games?cursor=_w", &[], "", 400, "invalid_cursor"),
        row("events limit=0", "GET", "/api/events?limit=0", &[], "", 400, "invalid_query"),
        row("events limit=abc", "GET", "/api/events?limit=abc", &[], "", 400, "invalid_query"),
        row("events limit=100000", "GET", "/api/events?limit=100000", &[], "", 400, "invalid_query"),
        row("events with an unknown parameter", "GET", "/api/events?type=create", &[], "", 400, "invalid_query"),
        row("events op=explode", "GET", "/api/events?op=explode", &[], "", 400, "invalid_query"),
        row("events since=yesterday", "GET", "/api/events?since=yesterday", &[], "", 400, "invalid_query"),
        row("events until without a time zone", "GET", "/api/events?until=2026-01-01T00:00:00", &[], "", 400, "invalid_query"),
        row("events since=2026-13-45", "GET", "/api/events?since=2026-13-45T00:00:00Z", &[], "", 400, "invalid_query"),
        row("events id without collection", "GET", "/api/events?id=known", &[], "", 400, "invalid_query"),
        row("events after=abc", "GET", "/api/events?after=abc", &[], "", 400, "invalid_query"),
        row("events after=-1", "GET", "/api/events?after=-1", &[], "", 400, "invalid_query"),
        row("events cursor=abc", "GET", "/api/events?cursor=abc", &[], "", 400, "invalid_cursor"),
        row("history limit=0", "GET", "/api/games/known/history?limit=0", &[], "", 400, "invalid_query"),
        row("history after_version=abc", "GET", "/api/games/known/history?after_version=abc", &[], "", 400, "invalid_query"),
        row("history with an unknown parameter", "GET", "/api/games/known/history?since=1", &[], "", 400, "invalid_query"),
        row("history cursor=abc", "GET", "/api/games/known/history?cursor=abc", &[], "", 400, "invalid_cursor"),
        row("version that is not a number", "GET", "/api/games/known/versions/abc", &[], "", 400, "invalid_path"),
        row("version that is negative", "GET", "/api/games/known/versions/-1", &[], "", 400, "invalid_path"),
        // --- methods: 405 method_not_allowed ---
        row("TRACE a document", "TRACE", KNOWN, &[], "", 405, "method_not_allowed"),
        row("POST to a document", "POST", KNOWN, &[JSON], r#"{"a":1}"#, 405, "method_not_allowed"),
        row("DELETE a collection", "DELETE", "/api/games", &[], "", 405, "method_not_allowed"),
        row("PUT a collection", "PUT", "/api/games", &[JSON], r#"{"a":1}"#, 405, "method_not_allowed"),
        row("PATCH a collection", "PATCH", "/api/games", &[MERGE_PATCH], r#"{"a":1}"#, 405, "method_not_allowed"),
        row("POST to the event log", "POST", "/api/events", &[JSON], r#"{"a":1}"#, 405, "method_not_allowed"),
        row("DELETE health", "DELETE", "/api/health", &[], "", 405, "method_not_allowed"),
        row("PUT a history", "PUT", "/api/games/known/history", &[JSON], "[]", 405, "method_not_allowed"),
        row("DELETE a version", "DELETE", "/api/games/known/versions/1", &[], "", 405, "method_not_allowed"),
        // --- unknown API routes: 404 not_found ---
        row("unknown sub-resource", "GET", "/api/games/known/nope", &[], "", 404, "not_found"),
        row("too many segments", "GET", "/api/games/known/history/extra", &[], "", 404, "not_found"),
        row("deep unknown route", "POST", "/api/a/b/c/d/e", &[JSON], "{}", 404, "not_found"),
        row("the bare API prefix", "GET", "/api", &[], "", 404, "not_found"),
    ]
}

/// Rows that need the default limits (a body limit over 1 MiB), on a server without flags.
#[rustfmt::skip]
fn rows_with_default_limits() -> Vec<Row> {
    vec![
        row(
            "arrays nested 100,000 deep",
            "POST",
            "/api/games",
            &[JSON],
            nested_arrays(100_000),
            400,
            "too_deep",
        ),
        row(
            "objects nested 100,000 deep",
            "PUT",
            KNOWN,
            &[JSON],
            nested_objects(100_000),
            400,
            "too_deep",
        ),
        row(
            "merge patch nested 100,000 deep",
            "PATCH",
            KNOWN,
            &[MERGE_PATCH],
            nested_objects(100_000),
            400,
            "too_deep",
        ),
        row(
            "JSON Patch value nested 100,000 deep",
            "PATCH",
            KNOWN,
            &[JSON_PATCH],
            [
                br#"[{"op":"add","path":"/d","value":"#.to_vec(),
                nested_arrays(100_000),
                b"}]".to_vec(),
            ]
            .concat(),
            400,
            "too_deep",
        ),
        row(
            "body over the default limit",
            "PUT",
            KNOWN,
            &[JSON],
            js(json!({"s": "x".repeat(1_200_000)})),
            413,
            "body_too_large",
        ),
    ]
}

#[tokio::test]
async fn every_bad_request_is_refused_with_its_code_and_changes_nothing() {
    let s = TestServer::start(LIMITED);
    let before = setup(&s).await;
    assert_eq!(before.known["version"], 2);
    assert_eq!(before.last_seq, 3);
    run_table(&s, &before, &rows()).await;
}

#[tokio::test]
async fn extremely_deep_or_large_bodies_are_refused_under_default_limits() {
    let s = TestServer::start(&[]);
    let before = setup(&s).await;
    run_table(&s, &before, &rows_with_default_limits()).await;
}

/// Sends every row; returns the ones answered with a 5xx.
async fn server_errors(s: &TestServer, rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        let (status, _, bytes) = send_row(s, r).await;
        if status.is_server_error() {
            out.push(format!(
                "{} ({} {}): {status} {}",
                r.what,
                r.method,
                shorten(&r.path),
                shorten(&String::from_utf8_lossy(&bytes))
            ));
        }
    }
    out
}

#[tokio::test]
async fn no_bad_request_is_a_server_error_and_the_servers_stay_up() {
    for (flags, table) in [(LIMITED, rows()), (&[][..], rows_with_default_limits())] {
        let s = TestServer::start(flags);
        let before = setup(&s).await;
        // Twice: the second pass meets whatever state the first left (there should be none).
        for pass in 1..=2 {
            let errors = server_errors(&s, &table).await;
            assert!(
                errors.is_empty(),
                "pass {pass}, server errors:\n  {}",
                errors.join("\n  ")
            );
        }
        let (status, health) = s.get("/api/health").await;
        assert_eq!(status, StatusCode::OK, "{health}");
        assert_eq!(health["status"], "ok");
        assert_eq!(
            health["last_seq"], before.last_seq,
            "no bad request appended an event"
        );
        assert_eq!(baseline(&s).await, before);
        // And the server still takes good writes.
        let (status, body) = s.merge_patch(KNOWN, &json!({"n": 3})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["document"]["version"], 3);
    }
}

#[tokio::test]
async fn patch_media_types_are_refused_on_post_and_put() {
    let s = TestServer::start(LIMITED);
    let before = setup(&s).await;
    run_table(
        &s,
        &before,
        &[
            row(
                "PUT with merge-patch+json",
                "PUT",
                KNOWN,
                &[MERGE_PATCH],
                r#"{"n":3}"#,
                415,
                "unsupported_media_type",
            ),
            row(
                "PUT with json-patch+json",
                "PUT",
                KNOWN,
                &[JSON_PATCH],
                r#"{"n":3}"#,
                415,
                "unsupported_media_type",
            ),
            row(
                "POST with json-patch+json",
                "POST",
                "/api/games",
                &[JSON_PATCH],
                r#"{"id":"p","a":1}"#,
                415,
                "unsupported_media_type",
            ),
            row(
                "POST with merge-patch+json",
                "POST",
                "/api/games",
                &[MERGE_PATCH],
                r#"{"id":"q","a":1}"#,
                415,
                "unsupported_media_type",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn history_positions_at_the_end_of_u64_are_not_server_errors() {
    let s = TestServer::start(LIMITED);
    setup(&s).await;
    let max = u64::MAX;
    let (status, body) = s
        .get(&format!("/api/games/known/history?after_version={max}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"], json!([]), "{body}");
    assert_eq!(body["next_cursor"], Value::Null, "{body}");
    let (status, body) = s.get(&format!("/api/games/known/history?cursor={max}")).await;
    assert!(
        status == StatusCode::OK && body["items"] == json!([])
            || status == StatusCode::BAD_REQUEST && body["error"]["code"] == "invalid_cursor",
        "{status} {body}"
    );
}

/// Sends `head` (request line and headers, no body) on a fresh connection; the first response
/// head the server sends, and what followed it within a moment.
async fn first_answer(s: &TestServer, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("no answer within 5 s: the server waited for the body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_sent() {
    let s = TestServer::start(&[]);
    let before = common::health_seq(&s).await;
    for (what, extra) in [
        ("Content-Length only", ""),
        ("with Expect: 100-continue", "Expect: 100-continue\r\n"),
    ] {
        let head = format!(
            "POST /api/games HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 99999999999\r\n{extra}\r\n"
        );
        let answer = first_answer(&s, &head).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{what}: {answer}");
        assert!(!answer.contains("100 Continue"), "{what}: {answer}");
        assert!(answer.contains(r#""code":"body_too_large""#), "{what}: {answer}");
    }
    // A body within the limit still gets its 100 Continue.
    let body = r#"{"id":"ok"}"#;
    let head = format!(
        "POST /api/games HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let answer = first_answer(&s, &head).await;
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
    assert_eq!(common::health_seq(&s).await, before);
}
