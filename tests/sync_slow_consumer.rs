//! Slow consumers: a client that stops reading while thousands of events flow must not hold up the
//! others, must not make the server's memory grow, and — once it reads again — must be re-synced
//! from the store and end exactly equal to the server, never silently short of an event.
//!
//! The server runs with a tiny hub (`--hub-capacity 32`), so a session blocked on a full socket
//! certainly falls behind the ring. The slow client is raw (a WebSocket on a socket with a small
//! receive buffer, or an SSE response body that is not polled) and applies what it finally reads
//! by strict rules ([`Strict`]): an event only if it is the document's next version, snapshots
//! authoritative, and every `synced` must leave no gap unrepaired and agree with the local vector.
//! Beside it, a fast client (the Rust [`eventsync_client::Client`] on the same transport) must keep
//! receiving during the stall and end equal to the server with no event applied twice.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{filler, server_docs, SseClient, SseRead, TestServer, WsStream};
use eventsync_client::{Client, ClientOptions, Transport};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const COLLECTION: &str = "games";
/// Documents the updates are spread over.
const DOCS: usize = 4;
/// Updates written while the slow client is stalled.
const UPDATES: usize = 3000;
/// REST writers running at once.
const WRITERS: usize = 16;
/// Bytes of the string each update writes (so that sockets and their buffers fill quickly).
const BLOB: usize = 4096;
const HUB_CAPACITY: &str = "32";
/// A generous bound on the server's RSS growth over the whole run: a sanity check, not a benchmark.
const MAX_RSS_GROWTH: u64 = 200 << 20;
/// Bound on every "wait until" of this file.
const LONG_WAIT: Duration = Duration::from_secs(30);
/// A slow client with an unrepaired gap that hears nothing for this long was left with the gap.
const QUIET: Duration = Duration::from_secs(5);

/// The two tests start their own server and write thousands of large events; one at a time keeps
/// them (and their memory readings) apart on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------------
// A strict replica of one collection, built from raw protocol messages
// ---------------------------------------------------------------------------------------------------

/// Applies `snapshot`, `event` and `synced` messages by the protocol's strict rules and says what is
/// wrong instead of guessing: an event applies only at `version == local + 1` (an event at or below
/// the local version is a duplicate — the server promises none), a snapshot replaces the document,
/// an event beyond the next version is a gap that a snapshot must repair before the next `synced`,
/// and a `synced`'s vector must be exactly the local one.
#[derive(Debug, Default)]
struct Strict {
    /// id → (version, body; `None` when deleted).
    docs: BTreeMap<String, (u64, Option<Value>)>,
    /// The `seq` of the last event applied per document (an event never applies twice).
    applied_seq: BTreeMap<String, u64>,
    /// Documents with an event beyond their next version, not yet repaired: id → that version.
    gaps: BTreeMap<String, u64>,
    events: u64,
    snapshots: u64,
    synced: u64,
    gap_events: u64,
}

impl Strict {
    fn vector(&self) -> BTreeMap<String, u64> {
        self.docs.iter().map(|(id, (v, _))| (id.clone(), *v)).collect()
    }

    fn live(&self) -> BTreeMap<String, (u64, Value)> {
        self.docs
            .iter()
            .filter_map(|(id, (v, b))| b.clone().map(|b| (id.clone(), (*v, b))))
            .collect()
    }

    fn apply(&mut self, m: &Value) -> Result<(), String> {
        match m["type"].as_str() {
            Some("snapshot") => self.snapshot(m),
            Some("event") => self.event(m),
            Some("synced") => self.synced_msg(m),
            _ => Err(format!("unexpected message {}", short(m))),
        }
    }

    fn snapshot(&mut self, m: &Value) -> Result<(), String> {
        if m["collection"] != COLLECTION {
            return Err(format!("snapshot of another collection: {}", short(m)));
        }
        let id = m["id"].as_str().ok_or("snapshot without id")?.to_string();
        let version = m["version"].as_u64().ok_or("snapshot without version")?;
        self.snapshots += 1;
        self.gaps.remove(&id);
        self.applied_seq.remove(&id);
        if m["deleted"] == true {
            if version == 0 {
                self.docs.remove(&id);
            } else {
                self.docs.insert(id, (version, None));
            }
        } else {
            if !m["data"].is_object() {
                return Err(format!("live snapshot without data: {}", short(m)));
            }
            self.docs.insert(id, (version, Some(m["data"].clone())));
        }
        Ok(())
    }

    fn event(&mut self, m: &Value) -> Result<(), String> {
        if m["collection"] != COLLECTION {
            return Err(format!("event of another collection: {}", short(m)));
        }
        let id = m["id"].as_str().ok_or("event without id")?.to_string();
        let version = m["version"].as_u64().ok_or("event without version")?;
        let seq = m["seq"].as_u64().ok_or("event without seq")?;
        let (have, body) = self.docs.get(&id).cloned().unwrap_or((0, None));
        if version <= have {
            return Err(format!(
                "duplicate: event v{version} (seq {seq}) of {id}, which is already at v{have}"
            ));
        }
        if version != have + 1 {
            // Not applied; only a snapshot (in a resync) may repair it before the next `synced`.
            self.gap_events += 1;
            self.gaps.entry(id).or_insert(version);
            return Ok(());
        }
        if let Some(previous) = self.applied_seq.insert(id.clone(), seq) {
            if previous >= seq {
                return Err(format!("event seq {seq} of {id} applied after seq {previous}"));
            }
        }
        let patch: json_patch::Patch = serde_json::from_value(m["patch"].clone())
            .map_err(|e| format!("event patch is not RFC 6902 ({e}): {}", short(m)))?;
        let next = match m["op"].as_str() {
            Some("create") => {
                if body.is_some() {
                    return Err(format!("create of a live document: {}", short(m)));
                }
                let mut doc = json!({});
                json_patch::patch(&mut doc, &patch).map_err(|e| format!("create patch: {e}"))?;
                Some(doc)
            }
            Some("update") => {
                let mut doc = body.ok_or_else(|| format!("update of an absent document: {}", short(m)))?;
                json_patch::patch(&mut doc, &patch).map_err(|e| format!("update patch: {e}"))?;
                Some(doc)
            }
            Some("delete") => None,
            _ => return Err(format!("unknown op: {}", short(m))),
        };
        self.docs.insert(id, (version, next));
        self.events += 1;
        Ok(())
    }

    fn synced_msg(&mut self, m: &Value) -> Result<(), String> {
        self.synced += 1;
        if !self.gaps.is_empty() {
            return Err(format!(
                "synced (seq {}) with gaps not repaired: {:?}",
                m["seq"], self.gaps
            ));
        }
        let theirs: BTreeMap<String, u64> = serde_json::from_value(m["state_vector"][COLLECTION].clone())
            .map_err(|e| format!("synced without a vector for {COLLECTION} ({e}): {m}"))?;
        if theirs != self.vector() {
            return Err(format!(
                "synced vector {theirs:?} differs from the local one {:?}",
                self.vector()
            ));
        }
        Ok(())
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}... ({} bytes)", &s[..300], s.len())
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------------
// The slow client: a raw WebSocket or SSE stream, read only when the test says so
// ---------------------------------------------------------------------------------------------------

enum Slow {
    Ws(Box<WsStream>),
    Sse(Box<SseClient>),
}

impl Slow {
    /// A WebSocket on a socket with a small receive buffer (so that the kernel does not absorb
    /// megabytes on our behalf), then `hello`.
    async fn websocket(server: &TestServer, client_id: &str) -> Slow {
        let addr: SocketAddr = server.url.strip_prefix("http://").unwrap().parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let stream = tokio::time::timeout(common::WAIT, socket.connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let url = format!("ws://{addr}/sync/ws");
        let (mut ws, _) = tokio::time::timeout(
            common::WAIT,
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("WebSocket handshake timed out")
        .expect("WebSocket handshake");
        let hello = json!({"type": "hello", "client_id": client_id, "subscribe": [COLLECTION]});
        ws.send(Message::text(hello.to_string())).await.unwrap();
        Slow::Ws(Box::new(ws))
    }

    async fn sse(server: &TestServer, client_id: &str) -> Slow {
        let query = format!("client_id={client_id}&subscribe={COLLECTION}");
        Slow::Sse(Box::new(SseClient::open(server, &query, None).await))
    }

    /// The next protocol message (JSON with its `type`); `Ok(None)` if nothing came within `within`,
    /// `Err` if the connection ended.
    async fn next(&mut self, within: Duration) -> Result<Option<Value>, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self {
                Slow::Ws(ws) => match tokio::time::timeout(left, ws.next()).await {
                    Err(_) => return Ok(None),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        return Ok(Some(serde_json::from_str(t.as_str()).expect("server sent JSON")))
                    }
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    other => return Err(format!("the WebSocket ended: {other:?}")),
                },
                Slow::Sse(sse) => match sse.read_frame(left).await {
                    SseRead::Timeout => return Ok(None),
                    SseRead::Frame(f) if f.data.is_empty() => continue,
                    SseRead::Frame(f) => {
                        let mut m = f.json();
                        assert_eq!(f.event.as_deref(), m["type"].as_str(), "SSE event name vs type");
                        m["type"] = Value::from(f.event.clone().unwrap_or_default());
                        return Ok(Some(m));
                    }
                    other => return Err(format!("the SSE stream ended: {other:?}")),
                },
            }
        }
    }

    /// Reads and applies until the `synced` that ends a catch-up.
    async fn until_synced(&mut self, r: &mut Strict) {
        let deadline = Instant::now() + LONG_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .next(left)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .expect("no synced in time");
            if m["type"] == "error" {
                panic!("server error: {m}");
            }
            r.apply(&m).unwrap_or_else(|e| panic!("slow client: {e}"));
            if m["type"] == "synced" {
                return;
            }
        }
    }

    /// WebSocket only: sends a `ping` and applies everything received before its `pong`.
    async fn barrier(&mut self, r: &mut Strict) {
        let Slow::Ws(ws) = self else { return };
        ws.send(Message::text(
            json!({"type": "ping", "id": "barrier"}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let m = self
                .next(LONG_WAIT)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .expect("no pong in time");
            if m["type"] == "pong" {
                assert_eq!(m["id"], "barrier");
                return;
            }
            r.apply(&m).unwrap_or_else(|e| panic!("slow client: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/// The server's resident set, from `/proc`.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn doc_id(i: usize) -> String {
    format!("big-{i}")
}

/// Does the Rust client's replica hold exactly `want` (documents and vector) in [`COLLECTION`]?
fn replica_equals(r: &eventsync_client::Replica, want: &BTreeMap<String, (u64, Value)>) -> bool {
    let docs = r.documents().get(COLLECTION);
    let vector = r.vector().get(COLLECTION);
    docs.map_or(0, |d| d.len()) == want.len()
        && vector.map_or(0, |v| v.len()) == want.len()
        && want.iter().all(|(id, (version, body))| {
            vector.and_then(|v| v.get(id)) == Some(version)
                && docs
                    .and_then(|d| d.get(id))
                    .is_some_and(|d| body.as_object() == Some(d))
        })
}

async fn fast_client(server: &TestServer, transport: Transport, client_id: &str) -> Client {
    let mut options = ClientOptions::new(server.url.clone(), client_id, [COLLECTION]);
    options.transport = transport;
    let client = Client::connect(options).await.expect("client options");
    client.wait_synced(LONG_WAIT).await.expect("fast client live");
    client
}

/// `UPDATES` JSON Patches through REST from `WRITERS` concurrent writers, each replacing a document's
/// `blob` with a fresh `BLOB`-byte string.
async fn write_updates(server: &TestServer) {
    let blob = filler(BLOB);
    let writers = (0..WRITERS).map(|w| {
        let blob = &blob;
        async move {
            for i in (w..UPDATES).step_by(WRITERS) {
                let id = doc_id(i % DOCS);
                let ops = json!([
                    {"op": "replace", "path": "/blob", "value": format!("{i:06}:{blob}")},
                    {"op": "replace", "path": "/n", "value": i},
                ]);
                let (status, body) = server.json_patch(&format!("/api/{COLLECTION}/{id}"), &ops).await;
                assert_eq!(status, StatusCode::OK, "update {i}: {}", short(&body));
            }
        }
    });
    futures::future::join_all(writers).await;
}

// ---------------------------------------------------------------------------------------------------
// The scenario, for either transport
// ---------------------------------------------------------------------------------------------------

/// The hub bounded by its count of events (`--hub-capacity 32`).
const BY_COUNT: &[&str] = &["--hub-capacity", HUB_CAPACITY];
/// The hub bounded by bytes alone: room for 100,000 events, but only 256 KB of them (some thirty
/// of these updates' wire forms).
const BY_BYTES: &[&str] = &["--hub-capacity", "100000", "--hub-bytes", "262144"];

async fn stalled_client_is_resynced(transport: Transport, hub: &[&str]) {
    let _serial = SERIAL.lock().await;
    let name = match transport {
        Transport::WebSocket => "ws",
        Transport::Sse => "sse",
    };
    let flags: Vec<&str> = hub.iter().copied().chain(["--durability", "normal"]).collect();
    let server = TestServer::process(&flags);
    for i in 0..DOCS {
        common::rest_create(
            &server,
            COLLECTION,
            &doc_id(i),
            json!({"blob": filler(BLOB), "n": 0}),
        )
        .await;
    }

    let fast = fast_client(&server, transport, &format!("fast-{name}")).await;
    let mut slow = match transport {
        Transport::WebSocket => Slow::websocket(&server, &format!("slow-{name}")).await,
        Transport::Sse => Slow::sse(&server, &format!("slow-{name}")).await,
    };
    let mut strict = Strict::default();
    slow.until_synced(&mut strict).await;
    assert_eq!(
        strict.snapshots, DOCS as u64,
        "the first catch-up is one snapshot per document"
    );
    let first_synced = strict.synced;

    let pid = server.pid();
    let rss_before = vm_rss(pid);
    let fast_before = fast.replica().counters();
    let started = Instant::now();

    // The slow client reads nothing from here on, while the updates flow.
    write_updates(&server).await;
    let wrote_in = started.elapsed();
    let want = server_docs(&server, COLLECTION).await;
    assert_eq!(want.len(), DOCS);
    let total: u64 = want.values().map(|(v, _)| *v).sum();
    assert_eq!(
        total,
        (DOCS + UPDATES) as u64,
        "one version per create and update"
    );

    // The fast client catches up fully while the slow one is still stalled.
    fast.wait_until(|r| replica_equals(r, &want), LONG_WAIT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{name}: the fast client did not reach the server's state while the slow one stalled \
                 ({e}); counters {:?}, stats {:?}",
                fast.replica().counters(),
                fast.stats()
            )
        });
    let fast_after = fast.replica().counters();
    assert!(
        fast_after.events_applied + fast_after.snapshots > fast_before.events_applied + fast_before.snapshots,
        "{name}: the fast client received nothing during the stall"
    );
    let stalled_for = started.elapsed();

    // The slow client reads again: it must be re-synced, and end exactly where the server is.
    let want_vector: BTreeMap<String, u64> = want.iter().map(|(id, (v, _))| (id.clone(), *v)).collect();
    let deadline = Instant::now() + LONG_WAIT;
    let mut received = 0u64;
    while strict.vector() != want_vector || strict.synced == first_synced {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = match slow.next(left.min(QUIET)).await {
            Ok(Some(m)) => m,
            // A gap must be followed by a resync; the server going quiet instead is a silent loss.
            Ok(None) if !strict.gaps.is_empty() => panic!(
                "{name}: the slow client has gaps {:?} and nothing came for {QUIET:?}: a gap without a \
                 resync ({received} messages since the stall, {} gap events, {} synced)",
                strict.gaps, strict.gap_events, strict.synced
            ),
            Ok(None) if Instant::now() < deadline => continue,
            Ok(None) => panic!(
                "{name}: the slow client did not catch up within {LONG_WAIT:?}: vector {:?}, want \
                 {want_vector:?}, {received} messages since the stall, {} synced",
                strict.vector(),
                strict.synced
            ),
            // The server drops a client whose socket stays full for SEND_TIMEOUT: by design, but
            // then this machine was too slow for the scenario to mean anything.
            Err(e) => panic!(
                "{name}: slow client, after {received} messages since the stall of {stalled_for:?} \
                 (the server drops a client blocked for {:?}): {e}",
                eventsync::sync::SEND_TIMEOUT
            ),
        };
        received += 1;
        strict
            .apply(&m)
            .unwrap_or_else(|e| panic!("{name}: slow client after {received} messages: {e}"));
    }
    slow.barrier(&mut strict).await;
    let caught_up_in = started.elapsed();

    assert!(
        strict.synced > first_synced,
        "{name}: the slow client was never re-synced"
    );
    assert!(
        (strict.events as usize) < UPDATES,
        "{name}: the slow client got every update live ({} events): it never lagged, so this test \
         proves nothing; make the updates larger",
        strict.events
    );
    assert!(
        strict.gaps.is_empty(),
        "{name}: unrepaired gaps {:?}",
        strict.gaps
    );
    common::assert_docs_eq(&strict.live(), &server_docs(&server, COLLECTION).await, name);

    // The fast client, once more, against the server's final state.
    let r = fast.replica();
    assert_eq!(r.applied_twice(), 0, "{name}: fast client applied an event twice");
    r.check().unwrap_or_else(|e| panic!("{name}: fast client: {e}"));
    assert!(
        replica_equals(&r, &want),
        "{name}: fast client differs from the server"
    );

    let rss_after = vm_rss(pid);
    println!(
        "{name}: {UPDATES} updates of {BLOB} B written in {wrote_in:?}; fast client current after \
         {stalled_for:?} ({:?}); slow client current after {caught_up_in:?}: {} events, {} snapshots, \
         {} synced, {} gap events; server RSS {} -> {} MiB",
        fast_after,
        strict.events,
        strict.snapshots,
        strict.synced,
        strict.gap_events,
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + MAX_RSS_GROWTH,
        "{name}: server RSS grew from {} to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    fast.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_websocket_client_is_resynced_while_a_fast_one_keeps_receiving() {
    stalled_client_is_resynced(Transport::WebSocket, BY_COUNT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_sse_client_is_resynced_while_a_fast_one_keeps_receiving() {
    stalled_client_is_resynced(Transport::Sse, BY_COUNT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_bounded_in_bytes_resyncs_a_stalled_websocket_client_too() {
    stalled_client_is_resynced(Transport::WebSocket, BY_BYTES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_bounded_in_bytes_resyncs_a_stalled_sse_client_too() {
    stalled_client_is_resynced(Transport::Sse, BY_BYTES).await;
}
