//! The HTTP layer's limits in time and size, against the real server over raw sockets: slow or
//! silent clients cannot hold connections or request slots beyond the named limits, and a
//! well-behaved client is served meanwhile; hyper's own refusals (too many headers, a URI too
//! long, a malformed head) are JSON like every other error; and nothing refused changes anything.
//!
//! What the tests wait for are the server's limits (set short here), with generous margins — the
//! bounds being shown are the limits themselves, not speed.

mod common;

use std::time::Duration;

use common::{health_seq, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: &[&str] = &[
    "--header-timeout",
    "1s",
    "--body-timeout",
    "1s",
    "--write-timeout",
    "1s",
];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    SHORT.iter().chain(extra).copied().collect()
}

/// Reads until the server closes the connection (or `within` passes: then the test fails).
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server did not close the connection within {within:?}"
    );
    out
}

/// A raw response: status, the head's lower-cased text, the body.
fn parse_response(raw: &[u8]) -> (u16, String, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head[9..12].parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("body not JSON ({e}): {text:?}"));
    (status, head.to_ascii_lowercase(), body)
}

async fn raw_exchange(server: &TestServer, request: &[u8]) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    // The server may answer (and close) before it has read all of a refused request.
    let _ = stream.write_all(request).await;
    parse_response(&read_to_close(&mut stream, Duration::from_secs(10)).await)
}

#[tokio::test]
async fn hyper_refusals_are_json_with_the_right_status() {
    let s = TestServer::start(&[]);
    let before = health_seq(&s).await;
    let long_uri = format!(
        "GET /api/games?x={} HTTP/1.1\r\nhost: a\r\n\r\n",
        "a".repeat(70_000)
    );
    let many_headers = format!(
        "GET /api/health HTTP/1.1\r\nhost: a\r\n{}\r\n",
        (0..200).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
    );
    let huge_header = format!(
        "GET /api/health HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let cases: [(&str, Vec<u8>, u16, &str); 7] = [
        ("a 70 KB URI", long_uri.into_bytes(), 414, "uri_too_long"),
        ("200 headers", many_headers.into_bytes(), 431, "headers_too_large"),
        ("a 100 KB header", huge_header.into_bytes(), 431, "headers_too_large"),
        (
            "a malformed Content-Length",
            b"POST /api/games HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 12x\r\n\r\n{\"id\":\"m1\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "two different Content-Lengths",
            b"POST /api/games HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 11\r\ncontent-length: 12\r\n\r\n{\"id\":\"m2\"}".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a control byte in a header value",
            b"POST /api/games HTTP/1.1\r\nhost: a\r\ncontent-type: application/\x01json\r\ncontent-length: 11\r\n\r\n{\"id\":\"m3\"}".to_vec(),
            400,
            "bad_request",
        ),
        ("a request line that is not HTTP", b"HELLO\r\n\r\n".to_vec(), 400, "bad_request"),
    ];
    for (what, request, status, code) in cases {
        let (got, head, body) = raw_exchange(&s, &request).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{what}: {body}");
        assert!(head.contains("content-type: application/json"), "{what}: {head}");
    }
    assert_eq!(health_seq(&s).await, before, "nothing refused was written");
    let (status, _) = common::send(s.http.get(format!("{}/api/games/m1", s.url))).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn silent_and_trickling_heads_are_closed_and_others_are_still_served() {
    // Every connection the server takes is held by a client that sends nothing or a byte of its
    // head now and then; the header timeout frees them, and then a request is served.
    let s = TestServer::start(&with(&["--max-connections", "30"]));
    let mut silent = Vec::new();
    for _ in 0..15 {
        silent.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    let mut trickling = Vec::new();
    for _ in 0..15 {
        trickling.push(TcpStream::connect(s.addr()).await.unwrap());
    }
    let trickle = tokio::spawn(async move {
        let mut closed = 0;
        for _ in 0..40 {
            for t in trickling.iter_mut() {
                if t.write_all(b"G").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (closed, trickling)
    });
    // All 30 connections are taken: this request waits in the backlog until the timeout frees
    // one. It is served within a bound: the header timeout and then some.
    let health = tokio::time::timeout(Duration::from_secs(10), health_seq(&s)).await;
    assert!(
        health.is_ok(),
        "a well-behaved client was not served while slow heads held the connections"
    );
    for mut stream in silent {
        let got = read_to_close(&mut stream, Duration::from_secs(10)).await;
        assert!(
            got.is_empty(),
            "a connection that sent nothing gets no answer, it is closed"
        );
    }
    let (_, trickling) = trickle.await.unwrap();
    for mut stream in trickling {
        read_to_close(&mut stream, Duration::from_secs(10)).await;
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = TestServer::start(&with(&[]));
    let mut stream = TcpStream::connect(s.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Kept alive, then idle: closed after the header timeout.
    let rest = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        rest.is_empty() || rest.ends_with(b"}"),
        "nothing more is sent before the close"
    );
}

#[tokio::test]
async fn slow_uploads_take_no_request_slot_and_time_out_with_408() {
    // Two request slots, ten uploads that never finish: the slots stay free for others.
    let s = TestServer::start(&with(&["--max-concurrent-requests", "2"]));
    let before = health_seq(&s).await;
    let mut uploads = Vec::new();
    for i in 0..10 {
        let mut stream = TcpStream::connect(s.addr()).await.unwrap();
        let head = format!(
            "POST /api/games HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"id\":\"s{i}\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        uploads.push(stream);
    }
    // Served while every upload is still arriving (none has been answered yet).
    let created = common::rest_create(&s, "games", "ok", json!({"n": 1})).await;
    assert!(created > before);
    for mut stream in uploads {
        let (status, _, body) = parse_response(&read_to_close(&mut stream, Duration::from_secs(10)).await);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (408, Some("body_timeout")),
            "{body}"
        );
    }
    assert_eq!(health_seq(&s).await, created, "no slow upload was written");
}

#[tokio::test]
async fn bodies_arriving_at_once_are_bounded_in_bytes() {
    // Room for one 150 KB body at a time: while one arrives, a second one is refused 503 at once;
    // a small body fits beside it.
    let s = TestServer::start(&with(&["--body-buffer-bytes", "200000"]));
    let before = health_seq(&s).await;
    let head = |id: &str| {
        format!(
            "POST /api/games HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 150000\r\n\r\n{{\"id\":\"{id}\""
        )
    };
    let mut first = TcpStream::connect(s.addr()).await.unwrap();
    first.write_all(head("b1").as_bytes()).await.unwrap();
    // Its head is read (and its share taken) in well under this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = TcpStream::connect(s.addr()).await.unwrap();
    second.write_all(head("b2").as_bytes()).await.unwrap();
    let small = common::rest_create(&s, "games", "small", json!({"n": 1})).await;
    assert!(small > before, "a small body is taken beside the large one");
    let (status, _, body) = parse_response(&read_to_close(&mut second, Duration::from_secs(10)).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("overloaded")),
        "{body}"
    );
    let (status, _, body) = parse_response(&read_to_close(&mut first, Duration::from_secs(10)).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (408, Some("body_timeout")),
        "{body}"
    );
    assert_eq!(health_seq(&s).await, small);
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_cut_off() {
    let s = TestServer::start(&with(&[]));
    let big = "x".repeat(900_000);
    for i in 0..10 {
        common::rest_create(&s, "big", &format!("d{i}"), json!({ "fill": big })).await;
    }
    // A receive buffer of a few KB, and nothing read: the 9 MB listing cannot be written.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(s.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/big?limit=10 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // By now the server has given up on the write and closed: what is left to read is what the
    // kernel buffers held, far less than the response.
    let got = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "the response had started");
    assert!(
        got.len() < 9_000_000,
        "read {} bytes: the whole response was written",
        got.len()
    );
    // The server is well and serves others.
    health_seq(&s).await;
}

/// Reads every page of `path` (a listing answering `items` and `next_cursor`), checking each
/// against the byte budget: over it only when a single item is.
async fn pages_within(s: &TestServer, path: &str, budget: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{}{path}{sep}cursor={c}", s.url),
            None => format!("{}{path}", s.url),
        };
        let (status, body) = common::send(s.http.get(url)).await;
        assert_eq!(status, 200, "{body}");
        let page = body["items"].as_array().unwrap().clone();
        let bytes = serde_json::to_vec(&page).unwrap().len();
        assert!(
            page.len() == 1 || bytes <= budget + 4096,
            "{path}: a page of {bytes} bytes"
        );
        pages += 1;
        items.extend(page);
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (items, pages),
        }
        assert!(pages < 100, "pagination does not end");
    }
}

#[tokio::test]
async fn listings_end_at_their_byte_budget_with_a_cursor() {
    let s = TestServer::start(&["--max-page-bytes", "300000"]);
    for i in 0..10 {
        common::rest_create(
            &s,
            "big",
            &format!("d{i:02}"),
            json!({ "fill": "x".repeat(100_000) }),
        )
        .await;
    }
    for v in 1..=5 {
        common::rest_patch(
            &s,
            "big",
            "d00",
            json!([{"op": "replace", "path": "/fill", "value": "y".repeat(100_000 + v)}]),
        )
        .await;
    }
    let (docs, pages) = pages_within(&s, "/api/big?limit=1000", 300_000).await;
    assert_eq!(docs.len(), 10);
    assert!(
        pages >= 4,
        "10 documents of 100 KB in pages of 300 KB: {pages} pages"
    );
    let (events, pages) = pages_within(&s, "/api/events?limit=1000", 300_000).await;
    assert_eq!(events.len(), 15);
    assert!(pages >= 5, "{pages} pages");
    let (history, pages) = pages_within(&s, "/api/big/d00/history?limit=1000", 300_000).await;
    assert_eq!(
        history
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    assert!(pages >= 2, "{pages} pages");
}

/// The server's peak resident memory (`VmHWM`), in bytes.
#[cfg(target_os = "linux")]
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The documented bound (README, "Limits in bytes and time"): 40 requests at once for the largest
/// answers there are — listings, the event log, history, `POST /api/sync` and WebSocket catch-ups
/// of the whole collection — keep the server's peak RSS under 800 MB, where answers bounded by
/// count alone held 2 GB for six.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_worst_case_pages_keep_memory_bounded() {
    const PEAK_BOUND: u64 = 800 << 20;
    let s = TestServer::process(&["--durability", "normal", "--max-catch-up-bytes", "4194304"]);
    let big = "z".repeat(450_000);
    for i in 0..60 {
        common::rest_create(&s, "huge", &format!("d{i:02}"), json!({ "fill": big })).await;
    }
    for j in 0..20 {
        common::rest_patch(
            &s,
            "huge",
            "d00",
            json!([{"op": "replace", "path": "/fill", "value": format!("{big}{j}")}]),
        )
        .await;
    }
    let paths = [
        "/api/huge?limit=1000",
        "/api/events?limit=1000",
        "/api/huge/d00/history?limit=1000",
    ];
    let requests = (0..32).map(|i| {
        let url = format!("{}{}", s.url, paths[i % paths.len()]);
        let http = s.http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            assert!(body["next_cursor"].is_string(), "the page was cut by bytes");
        }
    });
    let syncs = (0..4).map(|i| {
        let url = format!("{}/api/sync", s.url);
        let http = s.http.clone();
        async move {
            let body = json!({"client_id": format!("p{i}"), "subscribe": ["huge"], "state_vector": {}});
            let resp = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["complete"], false, "the catch-up came in parts");
        }
    });
    let sessions = (0..4).map(|i| {
        let s = &s;
        async move {
            let mut ws = common::WsClient::connect(s).await;
            ws.send(&json!({"type": "hello", "client_id": format!("w{i}"), "subscribe": ["huge"]}))
                .await;
            let mut snapshots = 0;
            loop {
                match ws.read(Duration::from_secs(120)).await {
                    common::WsRead::Message(m) if m["type"] == "snapshot" => snapshots += 1,
                    common::WsRead::Message(m) if m["type"] == "synced" => break,
                    common::WsRead::Message(_) => {}
                    _ => panic!("the session ended before synced ({snapshots} snapshots)"),
                }
            }
            assert_eq!(snapshots, 60, "every document, in parts");
        }
    });
    tokio::join!(
        futures::future::join_all(requests),
        futures::future::join_all(syncs),
        futures::future::join_all(sessions)
    );
    let peak = peak_rss(s.pid());
    eprintln!(
        "peak RSS after 40 concurrent worst-case answers: {} MB",
        peak >> 20
    );
    assert!(peak < PEAK_BOUND, "peak RSS {} MB", peak >> 20);
}
