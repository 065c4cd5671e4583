//! One way for every integration test to get a real server on `127.0.0.1:0` with its own data
//! directory, in one of two tiers:
//!
//! - **In-process** ([`TestServer::start`], [`TestServer::start_in`]): the library's server
//!   ([`eventsync::server::Server::start`]) inside the test process, on a thread with its own
//!   runtime ([`in_process`]). The default for behaviour tests: no process to spawn, and the server
//!   stops gracefully when the test drops it (a failed shutdown fails the test).
//! - **Process** ([`TestServer::process`], [`TestServer::process_in`], [`TestServer::process_at`],
//!   [`TestServer::process_on_database`]): the `eventsync` binary as a black box ([`process`]), for
//!   what only a process shows: `kill -9`, SIGTERM, restarts on the same data (and address), chaos
//!   with restarts, several nodes on one database, and the server's `/proc/<pid>` (CPU, RSS).
//!   Only these have [`TestServer::pid`], [`TestServer::kill`] and [`TestServer::terminate`].
//!
//! Both take the flags the binary takes and get the same ones from here ([`flags`]); in-process
//! they go through the binary's own parser ([`in_process::config_from_flags`]), so a test reads
//! the same either way, and moving a test between tiers changes only its constructor.
//!
//! With `EVENTSYNC_TEST_STORE=mongodb` the servers store on MongoDB ([`mongo`]): each data
//! directory gets a database of its own, so a server restarted on the same directory finds its data.
#![allow(dead_code)]

pub mod auth;
pub mod in_process;
pub mod mongo;
pub mod process;
pub mod scopes;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use self::in_process::InProcess;
use self::process::Process;

/// Where test servers listen unless a restart needs its old address: any free port.
const ANY_PORT: &str = "127.0.0.1:0";

pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub data_dir: PathBuf,
    /// Declared before `_tmp`: the server stops before its data directory is removed.
    running: Running,
    _tmp: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
}

/// The server behind a [`TestServer`]; each stops when dropped (gracefully in-process, SIGKILL for
/// a process).
enum Running {
    InProcess(InProcess),
    Process(Process),
}

impl TestServer {
    /// An in-process server on a fresh, empty data directory.
    pub fn start(args: &[&str]) -> TestServer {
        TestServer::on_fresh_dir(args, TestServer::start_in)
    }

    /// An in-process server on `data_dir`.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> TestServer {
        let config = in_process::config_from_flags(flags(data_dir, ANY_PORT, args));
        let (addr, server) = InProcess::start(config);
        TestServer::new(format!("http://{addr}"), data_dir, Running::InProcess(server))
    }

    /// A server process on a fresh, empty data directory.
    pub fn process(args: &[&str]) -> TestServer {
        TestServer::on_fresh_dir(args, TestServer::process_in)
    }

    /// A server process on `data_dir` (e.g. to restart on the same data).
    pub fn process_in(data_dir: &Path, args: &[&str]) -> TestServer {
        let (url, child) = Process::spawn(flags(data_dir, ANY_PORT, args));
        TestServer::new(url, data_dir, Running::Process(child))
    }

    /// A server process on `data_dir` listening on a fixed `addr` (e.g. the address of a server that
    /// was just stopped, so that clients reconnect to the same URL after a restart). Like
    /// [`TestServer::process_in`] otherwise; fails the test if the server does not print its address
    /// (e.g. the port is taken).
    pub fn process_at(data_dir: &Path, addr: std::net::SocketAddr, args: &[&str]) -> TestServer {
        let (url, child) = Process::spawn(flags(data_dir, &addr.to_string(), args));
        assert_eq!(
            url,
            format!("http://{addr}"),
            "the server listens where it was told"
        );
        TestServer::new(url, data_dir, Running::Process(child))
    }

    /// A server process (on a fresh data directory) storing in the MongoDB database `database`,
    /// whatever `EVENTSYNC_TEST_STORE` says: several servers started on one database share their data.
    pub fn process_on_database(database: &str, args: &[&str]) -> TestServer {
        let store = mongo::uri(database);
        let args: Vec<&str> = ["--store", store.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        TestServer::process(&args)
    }

    fn on_fresh_dir(args: &[&str], start: fn(&Path, &[&str]) -> TestServer) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = start(tmp.path(), args);
        s._tmp = Some(tmp);
        s
    }

    fn new(url: String, data_dir: &Path, running: Running) -> TestServer {
        TestServer {
            url,
            data_dir: data_dir.to_path_buf(),
            running,
            _tmp: None,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// `http://HOST:PORT/metrics`, when the (in-process) server serves metrics.
    pub fn metrics_url(&self) -> Option<String> {
        match &self.running {
            Running::InProcess(s) => s.metrics.map(|a| format!("http://{a}/metrics")),
            Running::Process(_) => None,
        }
    }

    /// The server process's id (process servers only).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Process(p) => p.pid(),
            Running::InProcess(_) => panic!("{}", not_a_process("pid()")),
        }
    }

    /// SIGKILL: no chance to flush or close anything (process servers only).
    pub fn kill(&mut self) {
        match &mut self.running {
            Running::Process(p) => p.kill(),
            Running::InProcess(_) => panic!("{}", not_a_process("kill()")),
        }
    }

    /// SIGTERM, then wait for the process to exit (at most `within`; process servers only).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        match &mut self.running {
            Running::Process(p) => p.terminate(within),
            Running::InProcess(_) => panic!("{}", not_a_process("terminate()")),
        }
    }

    /// Keeps the data directory when the server is dropped (for a restart on it).
    pub fn keep_data(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    /// The address the server listens on (from its URL).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not an http://IP:PORT url: {}", self.url))
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.url, path))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        send(self.json(Method::POST, path, body)).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        send(self.json(Method::PUT, path, body)).await
    }

    /// PATCH with `application/json-patch+json`.
    pub async fn json_patch(&self, path: &str, ops: &Value) -> (StatusCode, Value) {
        send(
            self.request(Method::PATCH, path)
                .header(CONTENT_TYPE, "application/json-patch+json")
                .body(ops.to_string()),
        )
        .await
    }

    /// PATCH with `application/merge-patch+json`.
    pub async fn merge_patch(&self, path: &str, patch: &Value) -> (StatusCode, Value) {
        send(
            self.request(Method::PATCH, path)
                .header(CONTENT_TYPE, "application/merge-patch+json")
                .body(patch.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::DELETE, path)).await
    }

    pub fn json(&self, method: Method, path: &str, body: &Value) -> RequestBuilder {
        self.request(method, path)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
    }
}

fn not_a_process(what: &str) -> String {
    format!(
        "{what} needs a server process (TestServer::process…); this server runs inside the test \
         process and stops when dropped"
    )
}

/// The flags of a test server on `data_dir` listening on `listen`, then `args`. On MongoDB (and
/// unless `args` choose a store), the database is derived from `data_dir`; so is the node id (unless
/// `args` give one), so that a server restarted on its data is the same node.
fn flags(data_dir: &Path, listen: &str, args: &[&str]) -> Vec<OsString> {
    let given = |flag: &str| {
        args.iter()
            .any(|a| *a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')))
    };
    let mut out: Vec<OsString> = vec![
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        data_dir.into(),
    ];
    if mongo::testing_mongodb() && !given("--store") {
        let dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
        let uri = mongo::uri(&mongo::database_for(&dir.to_string_lossy()));
        out.extend(["--store".into(), uri.into()]);
    }
    if !given("--node-id") {
        out.extend(["--node-id".into(), format!("test-{}", data_dir.display()).into()]);
    }
    out.extend(args.iter().map(OsString::from));
    out
}

/// Sends a request and returns its status and JSON body (`Value::Null` for an empty body).
pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request failed");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("read body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "status {status}: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, body)
}

/// Every item of a paginated listing (`path` already has a query), following `next_cursor` to the end.
pub async fn all_pages(server: &TestServer, path: &str) -> Vec<Value> {
    all_pages_as(server, path, None).await
}

/// [`all_pages`], each request with this bearer token (none: `None`).
pub async fn all_pages_as(server: &TestServer, path: &str, token: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_string(),
        };
        let mut request = server.request(Method::GET, &page);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.extend(body["items"].as_array().unwrap().iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Every event in the log, following `next_cursor` to the end.
pub async fn all_events(server: &TestServer, query: &str) -> Vec<Value> {
    all_pages(server, &format!("/api/events?limit=1000{query}")).await
}

// ---------------------------------------------------------------------------------------------------
// Sync helpers: a WebSocket client, an SSE reader, a replica that applies sync messages, and the
// server's side to compare it with. Every wait is bounded (`WAIT` unless told otherwise).
// ---------------------------------------------------------------------------------------------------

/// How long a sync helper waits for one expected message before failing the test.
pub const WAIT: Duration = Duration::from_secs(5);

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one WebSocket read produced.
#[derive(Debug)]
pub enum WsRead {
    /// A text frame, parsed as JSON.
    Message(Value),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// The connection ended without a close frame (the error or "end of stream").
    Ended(String),
    /// Nothing arrived in time.
    Timeout,
}

/// A raw sync WebSocket client: frames in, JSON messages out.
pub struct WsClient {
    pub ws: WsStream,
    /// Every JSON message received so far, in order.
    pub log: Vec<Value>,
    pings: u64,
}

impl WsClient {
    /// A client over a socket opened elsewhere (with headers of the test's choosing).
    pub fn from_stream(ws: WsStream) -> WsClient {
        WsClient {
            ws,
            log: Vec::new(),
            pings: 0,
        }
    }

    /// Connects to `GET /sync/ws` (no hello yet).
    pub async fn connect(server: &TestServer) -> WsClient {
        let url = format!("{}/sync/ws", server.url.replacen("http://", "ws://", 1));
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        WsClient {
            ws,
            log: Vec::new(),
            pings: 0,
        }
    }

    /// Connects and says hello; returns the catch-up messages and the `synced` that ends them.
    pub async fn open(
        server: &TestServer,
        client_id: &str,
        subscribe: &[&str],
        state_vector: Option<Value>,
    ) -> (WsClient, Vec<Value>, Value) {
        let mut c = WsClient::connect(server).await;
        let (msgs, synced) = c.hello(client_id, subscribe, state_vector).await;
        (c, msgs, synced)
    }

    pub async fn send_frame(&mut self, m: tokio_tungstenite::tungstenite::Message) {
        use futures::SinkExt;
        tokio::time::timeout(WAIT, self.ws.send(m))
            .await
            .expect("WebSocket send timed out")
            .expect("WebSocket send failed");
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.send_frame(tokio_tungstenite::tungstenite::Message::text(text))
            .await
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_text(v.to_string()).await
    }

    /// The next text message, close or end (pings and pongs are skipped), within `within`.
    pub async fn read(&mut self, within: Duration) -> WsRead {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return WsRead::Timeout,
                Ok(None) => return WsRead::Ended("end of stream".into()),
                Ok(Some(Err(e))) => return WsRead::Ended(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {t}"));
                    assert!(v["type"].is_string(), "server message without a type: {v}");
                    self.log.push(v.clone());
                    return WsRead::Message(v);
                }
                Ok(Some(Ok(Message::Close(f)))) => return WsRead::Close(f.map(|f| u16::from(f.code))),
                Ok(Some(Ok(Message::Binary(b)))) => panic!("server sent a binary frame: {b:?}"),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next message; fails the test on close, end or timeout ([`WAIT`]).
    pub async fn recv(&mut self) -> Value {
        match self.read(WAIT).await {
            WsRead::Message(v) => v,
            other => panic!(
                "expected a message, got {other:?}; received so far: {:?}",
                self.log
            ),
        }
    }

    /// Messages up to and including the first of type `ty`: (the ones before, that one).
    pub async fn recv_until(&mut self, ty: &str, within: Duration) -> (Vec<Value>, Value) {
        let deadline = Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                WsRead::Message(v) if v["type"] == ty => return (before, v),
                WsRead::Message(v) => before.push(v),
                other => panic!("waiting for '{ty}', got {other:?}; before it: {before:?}"),
            }
        }
    }

    /// Sends `hello`; returns the catch-up messages and the `synced` that ends them.
    pub async fn hello(
        &mut self,
        client_id: &str,
        subscribe: &[&str],
        state_vector: Option<Value>,
    ) -> (Vec<Value>, Value) {
        let mut hello = serde_json::json!({"type": "hello", "client_id": client_id, "subscribe": subscribe});
        if let Some(v) = state_vector {
            hello["state_vector"] = v;
        }
        self.send(&hello).await;
        self.recv_until("synced", WAIT).await
    }

    /// Sends a `ping` with a fresh id and returns everything received before its `pong`: once it
    /// returns, the server has handled all the frames sent before it.
    pub async fn barrier(&mut self) -> Vec<Value> {
        self.pings += 1;
        let id = format!("barrier-{}", self.pings);
        self.send(&serde_json::json!({"type": "ping", "id": id})).await;
        let deadline = Instant::now() + WAIT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                WsRead::Message(v) if v["type"] == "pong" && v["id"] == id.as_str() => return before,
                WsRead::Message(v) => before.push(v),
                other => panic!("waiting for pong {id}, got {other:?}; before it: {before:?}"),
            }
        }
    }

    /// Events (and other messages) until the event with sequence number `seq` has arrived.
    pub async fn recv_through_seq(&mut self, seq: u64) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                WsRead::Message(v) => {
                    let done = v["type"] == "event" && v["seq"].as_u64().is_some_and(|s| s >= seq);
                    out.push(v);
                    if done {
                        return out;
                    }
                }
                other => panic!("waiting for the event at seq {seq}, got {other:?}; so far: {out:?}"),
            }
        }
    }

    /// Reads until the server closes; `Ok(code)` for a close frame, `Err(how)` if the connection
    /// ended without one. Messages on the way are kept in the log.
    pub async fn closed(&mut self, within: Duration) -> Result<Option<u16>, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                WsRead::Message(_) => continue,
                WsRead::Close(code) => return Ok(code),
                WsRead::Ended(how) => return Err(how),
                WsRead::Timeout => panic!("the server did not close within {within:?}"),
            }
        }
    }

    /// Closes from our side (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }
}

/// One Server-Sent Events message (a block of lines ended by a blank line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub event: Option<String>,
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    pub retry: Option<u64>,
}

impl SseFrame {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {self:?}"))
    }

    pub fn id_seq(&self) -> Option<u64> {
        self.id.as_deref().map(|i| {
            i.parse()
                .unwrap_or_else(|_| panic!("SSE id is not a number: {self:?}"))
        })
    }
}

/// What one SSE read produced.
#[derive(Debug)]
pub enum SseRead {
    Frame(SseFrame),
    /// The body finished cleanly.
    Ended,
    /// The body failed.
    Error(String),
    Timeout,
}

/// An SSE response body read frame by frame.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    cur: SseFrame,
    has_field: bool,
    ready: std::collections::VecDeque<SseFrame>,
    /// Comment lines (`: ...`) seen.
    pub comments: usize,
    /// Data frames received (those with `data:`), in order.
    pub log: Vec<SseFrame>,
    /// The stream's id (its first frame), for `POST /sync/sse/{stream}`.
    pub stream: Option<String>,
}

impl SseClient {
    /// `GET /sync/sse?{query}` (with `Last-Event-ID` if given); asserts a 200 event stream.
    pub async fn open(server: &TestServer, query: &str, last_event_id: Option<&str>) -> SseClient {
        let http = reqwest::Client::builder().connect_timeout(WAIT).build().unwrap();
        let mut req = http.get(format!("{}/sync/sse?{query}", server.url));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE request timed out")
            .expect("SSE request failed");
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            panic!("SSE request answered {status}: {body}");
        }
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        SseClient {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            cur: SseFrame::default(),
            has_field: false,
            ready: Default::default(),
            comments: 0,
            log: Vec::new(),
            stream: None,
        }
    }

    fn parse_lines(&mut self) {
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("SSE lines are UTF-8");
            if line.is_empty() {
                if self.has_field {
                    self.ready.push_back(std::mem::take(&mut self.cur));
                }
                self.has_field = false;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            self.has_field = true;
            match field {
                "event" => self.cur.event = Some(value.to_string()),
                "id" => self.cur.id = Some(value.to_string()),
                "data" => {
                    if !self.cur.data.is_empty() {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                }
                "retry" => self.cur.retry = value.parse().ok(),
                other => panic!("unknown SSE field '{other}' in line {line:?}"),
            }
        }
    }

    /// The next frame (including frames without data, such as `retry:`), within `within`.
    pub async fn read_frame(&mut self, within: Duration) -> SseRead {
        use futures::StreamExt;
        let deadline = Instant::now() + within;
        loop {
            if let Some(f) = self.ready.pop_front() {
                if f.event.as_deref() == Some("stream") {
                    // The stream's back channel id, first of every stream: kept, not returned.
                    self.stream = f.json()["stream"].as_str().map(str::to_string);
                    continue;
                }
                if !f.data.is_empty() {
                    self.log.push(f.clone());
                }
                return SseRead::Frame(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.body.next()).await {
                Err(_) => return SseRead::Timeout,
                Ok(None) => return SseRead::Ended,
                Ok(Some(Err(e))) => return SseRead::Error(e.to_string()),
                Ok(Some(Ok(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    self.parse_lines();
                }
            }
        }
    }

    /// The next frame with data; fails the test on end, error or timeout ([`WAIT`]).
    pub async fn recv(&mut self) -> SseFrame {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await {
                SseRead::Frame(f) if f.data.is_empty() => continue,
                SseRead::Frame(f) => return f,
                other => panic!(
                    "expected an SSE message, got {other:?}; received so far: {:?}",
                    self.log
                ),
            }
        }
    }

    /// Frames with data up to and including the first whose `event:` is `kind`.
    pub async fn recv_until(&mut self, kind: &str) -> (Vec<SseFrame>, SseFrame) {
        let mut before = Vec::new();
        loop {
            let f = self.recv().await;
            if f.event.as_deref() == Some(kind) {
                return (before, f);
            }
            before.push(f);
        }
    }

    /// Frames with data until the event with sequence number `seq` has arrived.
    pub async fn recv_through_seq(&mut self, seq: u64) -> Vec<SseFrame> {
        let mut out = Vec::new();
        loop {
            let f = self.recv().await;
            let done =
                f.event.as_deref() == Some("event") && f.json()["seq"].as_u64().is_some_and(|s| s >= seq);
            out.push(f);
            if done {
                return out;
            }
        }
    }
}

/// A client-side copy of documents built only from sync messages: collection → id →
/// (version, body or `None` when deleted). It checks each event follows what it has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replica {
    pub docs: std::collections::BTreeMap<String, std::collections::BTreeMap<String, (u64, Option<Value>)>>,
}

impl Replica {
    /// Applies a `snapshot`, `event` or `removed` message (anything else is a test failure).
    pub fn apply(&mut self, msg: &Value) {
        let collection = msg["collection"].as_str().expect("collection").to_string();
        let id = msg["id"].as_str().expect("id").to_string();
        let version = msg["version"].as_u64().expect("version");
        let docs = self.docs.entry(collection).or_default();
        match msg["type"].as_str() {
            Some("snapshot") => {
                if msg["deleted"] == true {
                    assert!(msg["data"].is_null(), "a deleted snapshot has no data: {msg}");
                    if version == 0 {
                        docs.remove(&id);
                    } else {
                        docs.insert(id, (version, None));
                    }
                } else {
                    assert!(msg["data"].is_object(), "a snapshot's data is an object: {msg}");
                    docs.insert(id, (version, Some(msg["data"].clone())));
                }
            }
            Some("event") => {
                let have = docs.get(&id).cloned();
                let have_version = have.as_ref().map_or(0, |h| h.0);
                let op = msg["op"].as_str().expect("op");
                assert!(
                    version == have_version + 1 || (op == "create" && have_version == 0),
                    "event does not follow the replica's version {have_version}: {msg}"
                );
                let patch: json_patch::Patch =
                    serde_json::from_value(msg["patch"].clone()).expect("event patch is RFC 6902");
                let body = match op {
                    "create" => {
                        assert!(
                            have.as_ref().is_none_or(|h| h.1.is_none()),
                            "create of a live document: {msg}"
                        );
                        let mut body = serde_json::json!({});
                        json_patch::patch(&mut body, &patch).expect("create patch applies to {}");
                        Some(body)
                    }
                    "update" => {
                        let mut body = have
                            .and_then(|h| h.1)
                            .unwrap_or_else(|| panic!("update of a document the replica lacks: {msg}"));
                        json_patch::patch(&mut body, &patch).expect("update patch applies");
                        Some(body)
                    }
                    "delete" => {
                        assert!(patch.0.is_empty(), "a delete's patch is empty: {msg}");
                        None
                    }
                    other => panic!("unknown op {other}: {msg}"),
                };
                docs.insert(id, (version, body));
            }
            Some("removed") => {
                // Left every scope: the client drops it and its vector entry.
                assert!(
                    docs.remove(&id).is_some(),
                    "removed a document the replica lacks: {msg}"
                );
            }
            _ => panic!("not a snapshot, event or removed: {msg}"),
        }
    }

    pub fn apply_all<'a>(&mut self, msgs: impl IntoIterator<Item = &'a Value>) {
        for m in msgs {
            self.apply(m);
        }
    }

    /// The replica's state vector for `collections` (deleted documents keep their version).
    pub fn vector(&self, collections: &[&str]) -> Value {
        let mut out = serde_json::Map::new();
        for c in collections {
            let docs: serde_json::Map<String, Value> = self
                .docs
                .get(*c)
                .map(|d| {
                    d.iter()
                        .map(|(id, (v, _))| (id.clone(), Value::from(*v)))
                        .collect()
                })
                .unwrap_or_default();
            out.insert(c.to_string(), Value::Object(docs));
        }
        Value::Object(out)
    }

    /// The live documents of a collection: id → (version, body).
    pub fn live(&self, collection: &str) -> std::collections::BTreeMap<String, (u64, Value)> {
        self.docs
            .get(collection)
            .map(|d| {
                d.iter()
                    .filter_map(|(id, (v, b))| b.clone().map(|b| (id.clone(), (*v, b))))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The server's live documents of a collection (REST listing): id → (version, body).
pub async fn server_docs(
    server: &TestServer,
    collection: &str,
) -> std::collections::BTreeMap<String, (u64, Value)> {
    let mut out = std::collections::BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/{collection}?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for d in body["items"].as_array().expect("items") {
            out.insert(
                d["id"].as_str().unwrap().to_string(),
                (d["version"].as_u64().unwrap(), d["data"].clone()),
            );
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// `last_seq` from `/api/health`.
pub async fn health_seq(server: &TestServer) -> u64 {
    let (status, body) = server.get("/api/health").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    body["last_seq"].as_u64().expect("last_seq")
}

/// A string of `n` bytes, to make documents large (so that catch-ups prefer events to snapshots).
pub fn filler(n: usize) -> String {
    "abcdefghijklmnopqrstuvwxyz0123456789"
        .chars()
        .cycle()
        .take(n)
        .collect()
}

/// The `seq` of a REST write's event (asserting the write succeeded and appended one).
pub fn event_seq(status: StatusCode, body: &Value) -> u64 {
    assert!(status.is_success(), "write failed: {status} {body}");
    body["event"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("write appended no event: {body}"))
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
pub async fn poll<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /api/{collection}` with `"id": id` added to `data`; returns the event's seq.
pub async fn rest_create(server: &TestServer, collection: &str, id: &str, data: Value) -> u64 {
    let mut body = data;
    body["id"] = Value::from(id);
    let (status, resp) = server.post_json(&format!("/api/{collection}"), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    event_seq(status, &resp)
}

/// A JSON Patch (RFC 6902) through REST; returns the event's seq.
pub async fn rest_patch(server: &TestServer, collection: &str, id: &str, ops: Value) -> u64 {
    let (status, resp) = server.json_patch(&format!("/api/{collection}/{id}"), &ops).await;
    event_seq(status, &resp)
}

/// `DELETE /api/{collection}/{id}`; returns the event's seq.
pub async fn rest_delete(server: &TestServer, collection: &str, id: &str) -> u64 {
    let (status, resp) = server.delete(&format!("/api/{collection}/{id}")).await;
    event_seq(status, &resp)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for query parameters).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asserts two id → (version, body) maps are equal; on a difference, shows versions and the ids that
/// differ rather than whole (possibly large) bodies.
pub fn assert_docs_eq(
    got: &std::collections::BTreeMap<String, (u64, Value)>,
    want: &std::collections::BTreeMap<String, (u64, Value)>,
    context: &str,
) {
    if got == want {
        return;
    }
    let versions = |m: &std::collections::BTreeMap<String, (u64, Value)>| -> Vec<(String, u64)> {
        m.iter().map(|(id, (v, _))| (id.clone(), *v)).collect()
    };
    let short = |v: &Value| -> String {
        let s = v.to_string();
        if s.len() > 300 {
            format!(
                "{}... ({} bytes)",
                s.chars().take(300).collect::<String>(),
                s.len()
            )
        } else {
            s
        }
    };
    let differing: Vec<String> = got
        .keys()
        .chain(want.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|id| got.get(*id) != want.get(*id))
        .map(|id| {
            format!(
                "{id}: got {:?} want {:?}",
                got.get(id).map(|(v, b)| (v, short(b))),
                want.get(id).map(|(v, b)| (v, short(b)))
            )
        })
        .collect();
    panic!(
        "{context}: documents differ\n  got versions:  {:?}\n  want versions: {:?}\n  {}",
        versions(got),
        versions(want),
        differing.join("\n  ")
    );
}

/// A tiny seeded xorshift64*, so a failing run can be repeated from its printed seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        r.next();
        r
    }

    /// An independent stream for task `n`.
    pub fn fork(&self, n: u64) -> Rng {
        Rng::new(self.0 ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}
