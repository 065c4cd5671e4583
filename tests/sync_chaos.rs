//! Convergence under chaos: many Rust sync clients ([`eventsync_client::Client`], over WebSocket
//! and over SSE) follow one collection while random writes arrive through REST, through the
//! WebSocket (`write` → `result`) and through the SSE clients (REST with an `Idempotency-Key`);
//! clients are disconnected and reconnected at random, and the server is restarted in the middle
//! (SIGKILL or SIGTERM, then started again on the same data directory and address; the clients
//! reconnect on their own).
//!
//! Besides the clients of the whole collection, scope clients (over both transports) follow
//! subscriptions narrower than it — `where` filters on a `level` that many writes change (numbers,
//! fractions, a string, `null`, or none), on a nested field and an array, ids, a prefix — and
//! subscribe and unsubscribe at random throughout (sometimes to the whole collection), so that
//! documents keep moving in and out of their scopes by writes and by subscription changes.
//!
//! When the chaos stops, every client must become live and hold exactly the server's state: every
//! live document with its version, and the tombstone (delete version) of every deleted one; a scope
//! client exactly the live documents its current subscriptions take (by the tests' own filter
//! evaluator, `common::scopes`), at their versions, each subscription synced, and no tombstone the
//! server contradicts; no event may have been applied twice; and every write acknowledged `ok`
//! (over the WebSocket or REST) must be in the server's log — writes that failed because of the
//! restart are fine.
//!
//! The run is driven by a seeded xorshift; the seed is printed, and `EVENTSYNC_CHAOS_SEED=<seed>`
//! replays the same choices (the interleavings, being real time, differ).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{all_events, Rng, TestServer};
use eventsync::sync::protocol::{ResultMessage, WriteMessage, WriteOp};
use eventsync_client::{
    new_op_id, scope, Backoff, Client, ClientError, ClientOptions, IntoSubscription, Scope, Status,
    Subscription, Transport,
};
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

const COLLECTION: &str = "games";
const WS_CLIENTS: usize = 8;
const SSE_CLIENTS: usize = 8;
/// Clients that follow scopes of the collection (filters, ids, a prefix, now and then the whole
/// collection) and change them at random while the chaos goes on.
const SCOPE_WS_CLIENTS: usize = 3;
const SCOPE_SSE_CLIENTS: usize = 2;
/// The document ids written (few, so that writes collide, conflict, delete and re-create).
const IDS: u64 = 12;
/// How long writes, disconnects and reconnects go on; the restart is in the middle.
const CHAOS: Duration = Duration::from_secs(6);
/// Writer tasks per path.
const WS_WRITERS: usize = 4;
const SSE_WRITERS: usize = 2;
const REST_WRITERS: usize = 2;
/// Bound on the end: every client live and equal to the server.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// A write waits this long for its answer (retried across reconnects meanwhile).
const WRITE_TIMEOUT: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------------------------------

fn seed() -> u64 {
    match std::env::var("EVENTSYNC_CHAOS_SEED") {
        Ok(s) => s.trim().parse().expect("EVENTSYNC_CHAOS_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

// ---------------------------------------------------------------------------------------------------
// Random writes
// ---------------------------------------------------------------------------------------------------

fn doc_id(n: u64) -> String {
    format!("doc-{n}")
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A random `level`, what the filtered scopes look at: mostly an integer 0-9, sometimes a
/// fraction, a string (never ordered with numbers) or `null`.
fn random_level(rng: &mut Rng) -> Value {
    match rng.below(20) {
        0 => Value::Null,
        1 => json!("7"),
        2 | 3 => json!(rng.below(10) as f64 + 0.5),
        _ => json!(rng.below(10)),
    }
}

/// A random write to one of the [`IDS`] documents: create (a re-create if the id was deleted),
/// JSON Patch (sometimes failing), merge patch, replace or delete, now and then with an expected
/// version (which mostly conflicts). Many change `level` (or drop it), moving documents in and
/// out of the scope clients' filters.
fn random_write(rng: &mut Rng) -> WriteMessage {
    let id = doc_id(rng.below(IDS));
    let r = rng.below(1000);
    let field = format!("f{}", rng.below(6));
    let level = random_level(rng);
    let (op, data, patch) = match rng.below(100) {
        0..=14 => (
            WriteOp::Create,
            Some(object(
                json!({"name": id, "born": r, "tags": ["new"], "level": level}),
            )),
            None,
        ),
        15..=44 => {
            let patch = match rng.below(7) {
                5 => json!([{"op": "add", "path": "/level", "value": level}]),
                6 => json!([{"op": "remove", "path": "/level"}]),
                0 => json!([{"op": "add", "path": format!("/{field}"), "value": r}]),
                1 => json!([{"op": "remove", "path": format!("/{field}")}]),
                2 => {
                    json!([{"op": "add", "path": "/tags", "value": []}, {"op": "add", "path": "/tags/-", "value": r}])
                }
                3 => {
                    json!([{"op": "test", "path": "/born", "value": r}, {"op": "replace", "path": "/born", "value": r + 1}])
                }
                _ => json!([{"op": "replace", "path": "/name", "value": format!("{id}-{r}")}]),
            };
            (WriteOp::Patch, None, Some(patch))
        }
        45..=64 => {
            let patch = if rng.below(4) == 0 {
                json!({ "level": level })
            } else if rng.below(3) == 0 {
                json!({ field: null })
            } else {
                json!({ field: {"deep": r, "text": "x".repeat(rng.below(200) as usize)} })
            };
            (WriteOp::Merge, None, Some(patch))
        }
        65..=79 => {
            let body = if rng.below(3) == 0 {
                json!({"name": id, "replaced": r})
            } else {
                json!({"name": id, "replaced": r, "level": level})
            };
            (WriteOp::Replace, Some(object(body)), None)
        }
        _ => (WriteOp::Delete, None, None),
    };
    WriteMessage {
        op_id: new_op_id(),
        op,
        collection: COLLECTION.into(),
        id: Some(id),
        data,
        patch,
        expected_version: (rng.below(8) == 0).then(|| 1 + rng.below(40)),
    }
}

fn op_name(op: WriteOp) -> &'static str {
    match op {
        WriteOp::Create => "create",
        WriteOp::Replace => "replace",
        WriteOp::Patch => "patch",
        WriteOp::Merge => "merge",
        WriteOp::Delete => "delete",
    }
}

/// The same write as a plain REST request (what `curl` would send), optionally idempotent.
fn rest_request(
    http: &reqwest::Client,
    url: &str,
    w: &WriteMessage,
    client_id: &str,
) -> reqwest::RequestBuilder {
    let id = w.id.as_deref().expect("every chaos write names its document");
    let doc = format!("{url}/api/{COLLECTION}/{id}");
    let (method, target, body, content_type) = match w.op {
        WriteOp::Create => {
            let mut body = w.data.clone().unwrap();
            body.insert("id".into(), Value::from(id));
            (
                Method::POST,
                format!("{url}/api/{COLLECTION}"),
                Some(Value::Object(body)),
                "application/json",
            )
        }
        WriteOp::Replace => (
            Method::PUT,
            doc,
            Some(Value::Object(w.data.clone().unwrap())),
            "application/json",
        ),
        WriteOp::Patch => (Method::PATCH, doc, w.patch.clone(), "application/json-patch+json"),
        WriteOp::Merge => (
            Method::PATCH,
            doc,
            w.patch.clone(),
            "application/merge-patch+json",
        ),
        WriteOp::Delete => (Method::DELETE, doc, None, "application/json"),
    };
    let mut req = http
        .request(method, target)
        .header("X-Client-Id", client_id)
        .timeout(WRITE_TIMEOUT);
    if let Some(v) = w.expected_version {
        req = req.header(IF_MATCH, format!("\"{v}\""));
    }
    if let Some(body) = body {
        req = req.header(CONTENT_TYPE, content_type).body(body.to_string());
    }
    req
}

/// A write the server acknowledged as applied: its event must be in the log.
#[derive(Debug, Clone)]
struct Acked {
    via: &'static str,
    op_id: String,
    id: String,
    version: u64,
    seq: u64,
}

/// What happened to the writes, for the summary and for sanity checks on the chaos itself.
#[derive(Default)]
struct Record {
    acked: Vec<Acked>,
    /// (path, op, outcome) → count.
    outcomes: BTreeMap<(&'static str, &'static str, String), u64>,
    /// Creates that got a version above 1: re-creations of deleted documents.
    recreated: u64,
}

impl Record {
    fn count(&mut self, via: &'static str, op: WriteOp, outcome: impl Into<String>) {
        *self
            .outcomes
            .entry((via, op_name(op), outcome.into()))
            .or_default() += 1;
    }

    fn ok_count(&self, op: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((_, o, outcome), _)| *o == op && outcome == "ok")
            .map(|(_, n)| n)
            .sum()
    }

    /// A protocol `result` (WebSocket, or the client's REST mapping for SSE clients).
    fn result(&mut self, via: &'static str, w: &WriteMessage, answer: Result<ResultMessage, ClientError>) {
        match answer {
            Ok(r) if r.ok => {
                assert_eq!(r.op_id, w.op_id, "a result for another write");
                match (r.seq, r.version) {
                    (Some(seq), Some(version)) => {
                        if w.op == WriteOp::Create && version > 1 {
                            self.recreated += 1;
                        }
                        self.acked.push(Acked {
                            via,
                            op_id: w.op_id.clone(),
                            id: r.id.clone().expect("an applied write names its document"),
                            version,
                            seq,
                        });
                        self.count(via, w.op, "ok");
                    }
                    _ => self.count(via, w.op, "unchanged"),
                }
            }
            Ok(r) => {
                let code = r
                    .error
                    .as_ref()
                    .and_then(|e| e["code"].as_str())
                    .unwrap_or("?")
                    .to_string();
                self.count(via, w.op, code);
            }
            Err(e) => self.count(via, w.op, format!("failed: {}", error_kind(&e))),
        }
    }

    /// A plain REST answer (or transport failure).
    fn rest(&mut self, w: &WriteMessage, answer: Result<(StatusCode, Value), reqwest::Error>) {
        match answer {
            Ok((status, body)) if status.is_success() => {
                let e = &body["event"];
                if e.is_null() {
                    self.count("rest", w.op, "unchanged");
                    return;
                }
                let version = e["version"].as_u64().expect("event version");
                if w.op == WriteOp::Create && version > 1 {
                    self.recreated += 1;
                }
                self.acked.push(Acked {
                    via: "rest",
                    op_id: e["op_id"].as_str().expect("event op_id").to_string(),
                    id: e["id"].as_str().expect("event id").to_string(),
                    version,
                    seq: e["seq"].as_u64().expect("event seq"),
                });
                self.count("rest", w.op, "ok");
            }
            Ok((status, body)) => {
                assert!(
                    status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                    "REST {} answered {status}: {body}",
                    op_name(w.op)
                );
                let code = body["error"]["code"].as_str().unwrap_or("?").to_string();
                self.count("rest", w.op, code);
            }
            Err(e) => {
                let kind = if e.is_timeout() { "timeout" } else { "transport" };
                self.count("rest", w.op, format!("failed: {kind}"));
            }
        }
    }
}

fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Timeout => "timeout",
        ClientError::Transport(_) => "transport",
        ClientError::Closed => "closed",
        ClientError::TooManyWrites => "too many writes",
        ClientError::InvalidWrite(_) => "invalid write",
        ClientError::InvalidOptions(_) => "invalid options",
        ClientError::Persist(_) => "persist",
        ClientError::Subscription(_) => "subscription refused",
        ClientError::Presence(_) => "presence refused",
    }
}

async fn send_rest(req: reqwest::RequestBuilder) -> Result<(StatusCode, Value), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("REST answer is not JSON ({e}): {bytes:?}"))
    };
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------------
// The server's state, through REST
// ---------------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct ServerState {
    /// Live documents: id → body.
    docs: BTreeMap<String, Map<String, Value>>,
    /// Every document's version: live ones, and deleted ones with the version of their delete.
    vector: BTreeMap<String, u64>,
    last_seq: u64,
}

async fn get_ok(server: &TestServer, path: &str) -> Value {
    let (status, body) = server.get(path).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// Live documents (paged through `next_cursor`, a few at a time), and the tombstones of the other
/// ids from their history.
async fn server_state(server: &TestServer) -> ServerState {
    let last_seq = get_ok(server, "/api/health").await["last_seq"]
        .as_u64()
        .expect("last_seq");
    let mut docs = BTreeMap::new();
    let mut vector = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/{COLLECTION}?limit=5");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get_ok(server, &path).await;
        for d in page["items"].as_array().expect("items") {
            let id = d["id"].as_str().expect("id").to_string();
            vector.insert(id.clone(), d["version"].as_u64().expect("version"));
            assert!(
                docs.insert(id.clone(), object(d["data"].clone())).is_none(),
                "{id} listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    for n in 0..IDS {
        let id = doc_id(n);
        if docs.contains_key(&id) {
            continue;
        }
        // Every id was created before the chaos, so a non-live one is deleted, not unknown.
        let h = get_ok(server, &format!("/api/{COLLECTION}/{id}/history?limit=1")).await;
        assert_eq!(h["deleted"], true, "{id} is neither listed nor deleted: {h}");
        vector.insert(id, h["version"].as_u64().expect("history version"));
    }
    ServerState {
        docs,
        vector,
        last_seq,
    }
}

fn matches(r: &eventsync_client::Replica, want: &ServerState) -> bool {
    let empty_docs = BTreeMap::new();
    let empty_vector = BTreeMap::new();
    r.documents().get(COLLECTION).unwrap_or(&empty_docs) == &want.docs
        && r.vector().get(COLLECTION).unwrap_or(&empty_vector) == &want.vector
}

/// What differs between a replica and the server, id by id (bodies shortened).
fn differences(r: &eventsync_client::Replica, want: &ServerState) -> Vec<String> {
    let empty_docs = BTreeMap::new();
    let empty_vector = BTreeMap::new();
    let docs = r.documents().get(COLLECTION).unwrap_or(&empty_docs);
    let vector = r.vector().get(COLLECTION).unwrap_or(&empty_vector);
    let body = |d: Option<&Map<String, Value>>| match d {
        None => "deleted".to_string(),
        Some(d) => {
            let s = Value::Object(d.clone()).to_string();
            if s.len() > 120 {
                format!("{}... ({} bytes)", &s[..120], s.len())
            } else {
                s
            }
        }
    };
    (0..IDS)
        .map(doc_id)
        .filter_map(|id| {
            let (have_v, want_v) = (vector.get(&id), want.vector.get(&id));
            let (have_d, want_d) = (docs.get(&id), want.docs.get(&id));
            (have_v != want_v || have_d != want_d).then(|| {
                format!(
                    "{id}: replica v{have_v:?} {} / server v{want_v:?} {}",
                    body(have_d),
                    body(want_d)
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Scope clients: what they may follow, and what they must hold
// ---------------------------------------------------------------------------------------------------

/// The subscriptions a scope client picks from: filters over `level` (numbers only: a string or
/// `null` level is in none of the ordered ones), over a nested field and an array, ids, a prefix,
/// and the whole collection.
fn scope_pool() -> Vec<Subscription> {
    let filtered = |id: &str, filter: Value| Scope {
        filter: Some(filter),
        ..scope(id, COLLECTION)
    };
    let ids = |id: &str, ids: &[&str]| Scope {
        ids: Some(ids.iter().map(|s| s.to_string()).collect()),
        ..scope(id, COLLECTION)
    };
    vec![
        filtered("high", json!({"level": {"$gte": 5}})).into_subscription(),
        filtered("low", json!({"level": {"$lt": 3}})).into_subscription(),
        filtered(
            "mid-or-new",
            json!({"$or": [{"level": {"$in": [3, 4, 4.5]}}, {"tags": "new"}]}),
        )
        .into_subscription(),
        filtered("deep", json!({"f1.deep": {"$lt": 500}})).into_subscription(),
        filtered("no-f2", json!({"f2": {"$exists": false}, "level": {"$ne": null}})).into_subscription(),
        Scope {
            prefix: Some("doc-1".into()),
            ..scope("ones", COLLECTION)
        }
        .into_subscription(),
        ids("pair", &["doc-2", "doc-5"]).into_subscription(),
        Scope {
            filter: Some(json!({"level": {"$gte": 4}})),
            ..ids("trio-high", &["doc-3", "doc-4", "doc-6"])
        }
        .into_subscription(),
        COLLECTION.into_subscription(),
    ]
}

/// What subscriptions `subs` take of the server's live documents: id → (version, body).
fn taken_of(subs: &[Subscription], want: &ServerState) -> BTreeMap<String, (u64, Value)> {
    want.docs
        .iter()
        .filter(|(id, body)| common::scopes::subscriptions_take(subs, COLLECTION, id, body))
        .map(|(id, body)| (id.clone(), (want.vector[id], Value::Object(body.clone()))))
        .collect()
}

/// Whether a scope client holds exactly what its current subscriptions take of the server: every
/// such document at its version, nothing else live; and each entry it keeps without a document
/// (a tombstone) names a version the server has had, the server's version only if deleted there.
/// (Which tombstones a scope client keeps depends on what it saw: a document deleted while out of
/// its scopes is never told to it.)
fn scoped_matches(c: &Client, want: &ServerState) -> bool {
    scoped_differences(c, want).is_empty()
}

fn scoped_differences(c: &Client, want: &ServerState) -> Vec<String> {
    let subs = c.subscriptions();
    c.with_replica(|r| scoped_differences_in(&subs, r, want))
}

/// Waits (at most `within`) until the scope client holds what its subscriptions — read again
/// every little while, since a change that timed out may still be in effect late — take.
async fn wait_scoped(c: &Client, want: &ServerState, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let subs = c.subscriptions();
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        let held = c
            .wait_until(|r| scoped_differences_in(&subs, r, want).is_empty(), left)
            .await
            .is_ok();
        if held && c.subscriptions() == subs {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

fn scoped_differences_in(
    subs: &[Subscription],
    r: &eventsync_client::Replica,
    want: &ServerState,
) -> Vec<String> {
    let expected = taken_of(subs, want);
    {
        let got = common::scopes::replica_docs(r, COLLECTION);
        let empty = BTreeMap::new();
        let vector = r.vector().get(COLLECTION).unwrap_or(&empty);
        let short = |d: Option<&(u64, Value)>| match d {
            None => "-".to_string(),
            Some((v, body)) => {
                let s = body.to_string();
                let s = if s.len() > 120 {
                    format!("{}... ({} bytes)", &s[..120], s.len())
                } else {
                    s
                };
                format!("v{v} {s}")
            }
        };
        let mut out: Vec<String> = got
            .keys()
            .chain(expected.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|id| got.get(*id) != expected.get(*id))
            .map(|id| {
                format!(
                    "{id}: replica {} / should hold {}",
                    short(got.get(id)),
                    short(expected.get(id))
                )
            })
            .collect();
        for (id, &v) in vector.iter().filter(|(id, _)| !got.contains_key(*id)) {
            let server = want.vector.get(id).copied().unwrap_or(0);
            if v > server || (v == server && want.docs.contains_key(id)) {
                out.push(format!(
                    "{id}: tombstone v{v}, server v{server} live {}",
                    want.docs.contains_key(id)
                ));
            }
        }
        if !out.is_empty() {
            out.insert(
                0,
                format!(
                    "subscriptions {:?}",
                    subs.iter().map(|s| s.id()).collect::<Vec<_>>()
                ),
            );
        }
        out
    }
}

/// What the scope clients' subscription changes came to.
#[derive(Default, Debug)]
struct SubRecord {
    /// ("subscribe"/"unsubscribe", outcome) → count.
    outcomes: BTreeMap<(&'static str, String), u64>,
}

impl SubRecord {
    fn count(&mut self, what: &'static str, answer: &Result<(), ClientError>) {
        let outcome = match answer {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("failed: {}", error_kind(e)),
        };
        *self.outcomes.entry((what, outcome)).or_default() += 1;
    }

    fn ok(&self, what: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((w, o), _)| *w == what && o == "ok")
            .map(|(_, n)| n)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------------

fn client_options(url: &str, client_id: &str, transport: Transport) -> ClientOptions {
    scoped_options(url, client_id, transport, vec![COLLECTION.into_subscription()])
}

fn scoped_options(
    url: &str,
    client_id: &str,
    transport: Transport,
    subs: Vec<Subscription>,
) -> ClientOptions {
    let mut o = ClientOptions::new(url, client_id, subs);
    o.transport = transport;
    // Quick reconnects, so the clients are back soon after the restart.
    o.reconnect = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
        factor: 2.0,
        jitter: true,
    };
    o.connect_timeout = Duration::from_secs(2);
    o.write_timeout = WRITE_TIMEOUT;
    o.ack_interval = Duration::from_millis(200);
    o
}

/// What holds of every client at the end, whatever it follows: nothing applied twice, a replica
/// consistent with its own vector, and — for a client of the restarted node (`on_restarted`: the
/// last URL), which lost its connection at the restart — a reconnect (a client of another node
/// reconnects only when the flapping happened to pick it).
fn assert_sound(c: &Client, on_restarted: bool, seed: u64) {
    let r = c.replica();
    assert_eq!(r.applied_twice(), 0, "seed {seed}: {}", describe(c));
    r.check()
        .unwrap_or_else(|e| panic!("seed {seed}: {}: {e}", describe(c)));
    assert!(
        !on_restarted || c.stats().reconnects >= 1,
        "seed {seed}: {} never reconnected, yet its server restarted",
        describe(c)
    );
}

fn describe(c: &Client) -> String {
    let r = c.replica();
    let subs = c.subscriptions();
    let scoped = match subs.as_slice() {
        [Subscription::Collection(_)] => String::new(),
        _ => format!(
            " subscriptions [{}]",
            subs.iter()
                .map(|s| format!("{} {:?}", s.id(), c.subscription_synced(s.id())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "{} status {:?}{scoped} counters {:?} stats {:?}",
        c.client_id(),
        c.status(),
        r.counters(),
        c.stats()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_converge_under_chaos_and_a_server_restart() {
    chaos(1).await;
}

/// The same chaos with two nodes on one MongoDB database: clients and writers spread over both,
/// and the second node is the one restarted — its clients reconnect to it and converge with the
/// clients of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_converge_under_chaos_and_a_node_restart() {
    chaos(2).await;
}

/// Runs the chaos against `nodes` servers (more than one: on one MongoDB database). The last node
/// is the one restarted; the state is read from the first.
async fn chaos(nodes: usize) {
    // One chaos at a time: two at once on 2 cores (and one MongoDB stand-in) would measure the
    // machine's overload, not the server's convergence.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let seed = seed();
    println!("chaos seed: EVENTSYNC_CHAOS_SEED={seed}");
    let mut rng = Rng::new(seed);
    let hub_capacity = ["8", "64", "4096"][rng.below(3) as usize];
    // SIGKILL or SIGTERM. On MongoDB a node killed between the writes of a transaction and its
    // commit leaves that transaction holding the sequence counter; the restarted node (the same
    // data dir: the same node id) ends it at start (`store::mongo::sessions`).
    let sigkill = rng.below(2) == 0;
    let restart_at = CHAOS / 2 + rng.millis(0, 1000) - Duration::from_millis(500);
    let down_for = rng.millis(50, 700);
    let database = common::mongo::fresh_database();
    let store = (nodes > 1).then(|| common::mongo::uri(&database));
    let mut args = vec!["--hub-capacity", hub_capacity, "--snapshot-every", "7"];
    if let Some(uri) = &store {
        args.extend(["--store", uri.as_str()]);
    }
    println!("{nodes} node(s)");
    println!(
        "hub capacity {hub_capacity}; restart by {} after {restart_at:?}, down for {down_for:?}",
        if sigkill { "SIGKILL" } else { "SIGTERM" }
    );
    let started = Instant::now();

    let mut servers: Vec<TestServer> = (0..nodes).map(|_| TestServer::process(&args)).collect();
    let mut restarted = servers.pop().expect("at least one node");
    let data = restarted.keep_data().expect("a fresh data dir");
    let addr = restarted.addr();
    let urls: Vec<String> = servers
        .iter()
        .chain([&restarted])
        .map(|s| s.url.clone())
        .collect();
    // The state is read from the first node (the restarted one when there is only one).
    let server = servers.first().unwrap_or(&restarted);

    // Every id exists before the clients connect, so that every client knows every document and
    // its tombstone from then on (a client that never saw a document is not sent its deletion).
    for n in 0..IDS {
        common::rest_create(
            server,
            COLLECTION,
            &doc_id(n),
            json!({"name": doc_id(n), "born": 0, "level": n % 10}),
        )
        .await;
    }
    let mut clients = Vec::new();
    for i in 0..WS_CLIENTS + SSE_CLIENTS {
        let url = &urls[i % nodes];
        let (transport, name) = if i < WS_CLIENTS {
            (Transport::WebSocket, format!("chaos-ws-{i}"))
        } else {
            (Transport::Sse, format!("chaos-sse-{i}"))
        };
        clients.push(
            Client::connect(client_options(url, &name, transport))
                .await
                .expect("client options"),
        );
    }
    for c in &clients {
        c.wait_synced(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{} not live: {e}", describe(c)));
        c.wait_until(
            |r| r.vector().get(COLLECTION).map_or(0, |v| v.len()) == IDS as usize,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{} did not get every document: {e}", describe(c)));
    }
    // Scope clients, each starting with one to three subscriptions of the pool.
    let pool = scope_pool();
    let mut scoped = Vec::new();
    for i in 0..SCOPE_WS_CLIENTS + SCOPE_SSE_CLIENTS {
        let url = &urls[i % nodes];
        let (transport, name) = if i < SCOPE_WS_CLIENTS {
            (Transport::WebSocket, format!("scoped-ws-{i}"))
        } else {
            (Transport::Sse, format!("scoped-sse-{i}"))
        };
        let mut subs: Vec<Subscription> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let s = &pool[rng.below(pool.len() as u64) as usize];
            if !subs.contains(s) {
                subs.push(s.clone());
            }
        }
        scoped.push(
            Client::connect(scoped_options(url, &name, transport, subs))
                .await
                .expect("client options"),
        );
    }
    let before_chaos = server_state(server).await;
    for c in &scoped {
        c.wait_synced(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{} not live: {e}", describe(c)));
        // Nothing is written yet: what its catch-up brought is exactly what it should hold.
        assert!(
            scoped_matches(c, &before_chaos),
            "{} after its first catch-up:\n  {}",
            describe(c),
            scoped_differences(c, &before_chaos).join("\n  ")
        );
    }
    let ws_clients: Arc<Vec<Client>> = Arc::new(clients[..WS_CLIENTS].to_vec());
    let sse_clients: Arc<Vec<Client>> = Arc::new(clients[WS_CLIENTS..].to_vec());
    let all_clients: Arc<Vec<Client>> = Arc::new(clients.iter().chain(&scoped).cloned().collect());

    // --- Chaos ---------------------------------------------------------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let mut tasks = JoinSet::new();
    let mut task_no = 0u64;
    let mut next_rng = || {
        task_no += 1;
        rng.fork(task_no)
    };
    for _ in 0..WS_WRITERS {
        let (mut rng, stop, record, clients) = (next_rng(), stop.clone(), record.clone(), ws_clients.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis(2, 25)).await;
                let c = &clients[rng.below(clients.len() as u64) as usize];
                let w = random_write(&mut rng);
                let answer = c.write(w.clone()).await;
                record.lock().unwrap().result("ws", &w, answer);
            }
        });
    }
    for _ in 0..SSE_WRITERS {
        let (mut rng, stop, record, clients) =
            (next_rng(), stop.clone(), record.clone(), sse_clients.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis(2, 25)).await;
                let c = &clients[rng.below(clients.len() as u64) as usize];
                let w = random_write(&mut rng);
                let answer = c.write(w.clone()).await;
                record.lock().unwrap().result("sse-client", &w, answer);
            }
        });
    }
    for n in 0..REST_WRITERS {
        let url = urls[n % nodes].clone();
        let (mut rng, stop, record) = (next_rng(), stop.clone(), record.clone());
        tasks.spawn(async move {
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let client_id = format!("rest-{n}");
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis(2, 25)).await;
                if rng.below(40) == 0 {
                    // A burst of concurrent writes, so that sessions fall behind a small hub.
                    let writes: Vec<WriteMessage> =
                        (0..10 + rng.below(40)).map(|_| random_write(&mut rng)).collect();
                    let answers = futures::future::join_all(
                        writes
                            .iter()
                            .map(|w| send_rest(rest_request(&http, &url, w, &client_id))),
                    )
                    .await;
                    let mut record = record.lock().unwrap();
                    for (w, answer) in writes.iter().zip(answers) {
                        record.rest(w, answer);
                    }
                    continue;
                }
                let w = random_write(&mut rng);
                let answer = send_rest(rest_request(&http, &url, &w, &client_id)).await;
                if answer.is_err() {
                    // The server is down (the restart): don't spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                record.lock().unwrap().rest(&w, answer);
            }
        });
    }
    let sub_record = Arc::new(Mutex::new(SubRecord::default()));
    for c in &scoped {
        // Each scope client changes its subscriptions at random, one change at a time (so that an
        // unsubscribe always names a subscription it has): subscribe to one it lacks, or end one.
        let (mut rng, stop, record, c, pool) = (
            next_rng(),
            stop.clone(),
            sub_record.clone(),
            c.clone(),
            pool.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis(30, 300)).await;
                let subs = c.subscriptions();
                let unsubscribe = !subs.is_empty() && (subs.len() >= 4 || rng.below(2) == 0);
                let (what, answer) = if unsubscribe {
                    let id = subs[rng.below(subs.len() as u64) as usize].id().to_string();
                    ("unsubscribe", c.unsubscribe(&id).await)
                } else {
                    let lacking: Vec<&Subscription> = pool.iter().filter(|s| !subs.contains(s)).collect();
                    let s = lacking[rng.below(lacking.len() as u64) as usize].clone();
                    ("subscribe", c.subscribe(s).await)
                };
                // A change may time out while the server is down (it stays made, and the next
                // connection carries it); a refusal of a valid change is a failure.
                if let Err(e @ (ClientError::Subscription(_) | ClientError::Closed)) = &answer {
                    panic!("{}: {what} refused: {e}", describe(&c));
                }
                record.lock().unwrap().count(what, &answer);
            }
        });
    }
    {
        // Disconnects and reconnects, several clients at once; now and then a manual resync instead
        // (`sync`: over WebSocket a `sync` with the client's vector, over SSE a reconnect).
        let (mut rng, stop, clients) = (next_rng(), stop.clone(), all_clients.clone());
        tasks.spawn(async move {
            let mut flaps = JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(rng.millis(20, 150)).await;
                let c = clients[rng.below(clients.len() as u64) as usize].clone();
                let offline = rng.millis(0, 400);
                let resync = rng.below(5) == 0;
                flaps.spawn(async move {
                    if resync {
                        // May time out when the client is offline meanwhile: it is only a nudge.
                        let _ = c.sync(Duration::from_secs(2)).await;
                        return;
                    }
                    if let Err(e) = c.disconnect().await {
                        panic!("{}: disconnect failed: {e}", describe(&c));
                    }
                    tokio::time::sleep(offline).await;
                    c.reconnect()
                        .await
                        .unwrap_or_else(|e| panic!("{}: reconnect failed: {e}", describe(&c)));
                });
            }
            while let Some(done) = flaps.join_next().await {
                done.expect("a disconnect/reconnect task failed");
            }
        });
    }

    // The restart, in the middle.
    tokio::time::sleep(restart_at).await;
    let seq_before_restart = common::health_seq(&restarted).await;
    if sigkill {
        tokio::task::block_in_place(|| restarted.kill());
    } else {
        let status = tokio::task::block_in_place(|| restarted.terminate(Duration::from_secs(20)));
        assert!(status.success(), "the server exited with {status} after SIGTERM");
    }
    tokio::time::sleep(down_for).await;
    restarted = tokio::task::block_in_place(|| TestServer::process_at(data.path(), addr, &args));
    let restarted_at = started.elapsed();
    assert!(
        common::health_seq(&restarted).await >= seq_before_restart,
        "the restarted server lost events"
    );
    let server = servers.first().unwrap_or(&restarted);
    tokio::time::sleep(CHAOS.saturating_sub(restart_at + down_for)).await;

    // --- Stop, then converge -------------------------------------------------------------------
    stop.store(true, Ordering::Relaxed);
    let stopping = Instant::now();
    while let Some(done) = tokio::time::timeout(WRITE_TIMEOUT * 3, tasks.join_next())
        .await
        .expect("chaos tasks did not stop in time")
    {
        done.expect("a chaos task failed");
    }
    let stopped_in = stopping.elapsed();

    // A last round through the catch-up: some clients go offline, every document changes once more
    // (so each of them misses exactly one event per document), then all come back.
    let mut end_rng = rng.fork(u64::MAX);
    let mut offline = Vec::new();
    for c in clients.iter().chain(&scoped) {
        if end_rng.below(2) == 0 {
            c.disconnect()
                .await
                .unwrap_or_else(|e| panic!("{}: disconnect: {e}", describe(c)));
            offline.push(c.client_id().to_string());
        }
    }
    for n in 0..IDS {
        let id = doc_id(n);
        let mut attempts = Vec::new();
        let changed = 'change: {
            for _ in 0..5 {
                let (status, body) = server
                    .merge_patch(
                        &format!("/api/{COLLECTION}/{id}"),
                        &json!({"last": end_rng.below(1000)}),
                    )
                    .await;
                if status == StatusCode::OK && !body["event"].is_null() {
                    break 'change true;
                }
                attempts.push(format!("merge: {status} {body}"));
                if status == StatusCode::NOT_FOUND {
                    let (status, body) = server
                        .post_json(
                            &format!("/api/{COLLECTION}"),
                            &json!({"id": id, "name": id, "last": 0}),
                        )
                        .await;
                    if status == StatusCode::CREATED {
                        break 'change true;
                    }
                    attempts.push(format!("create: {status} {body}"));
                }
            }
            false
        };
        assert!(
            changed,
            "seed {seed}: could not change {id} after the chaos: {attempts:?}"
        );
    }
    for c in clients.iter().chain(&scoped) {
        c.reconnect()
            .await
            .unwrap_or_else(|e| panic!("{}: reconnect: {e}", describe(c)));
    }

    // A write whose caller gave up (timed out during the restart) may still be sent on a new
    // connection and committed late: the state is final once every client is live and matches it
    // and the log has not moved meanwhile. Each round waits a little; the whole is bounded.
    let deadline = Instant::now() + CONVERGE_WITHIN;
    let want = loop {
        let want = server_state(server).await;
        let mut behind = None;
        for c in &clients {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(3));
            let matched = c.wait_until(|r| matches(r, &want), left).await.is_ok();
            if !matched || c.wait_synced(left).await.is_err() {
                behind = Some((c, differences(&c.replica(), &want)));
                break;
            }
        }
        if behind.is_none() {
            for c in &scoped {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(3));
                let matched = wait_scoped(c, &want, left).await;
                if !matched || c.wait_synced(left).await.is_err() {
                    behind = Some((c, scoped_differences(c, &want)));
                    break;
                }
            }
        }
        let mut moved = false;
        for node in servers.iter().chain([&restarted]) {
            moved |= common::health_seq(node).await != want.last_seq;
        }
        match behind {
            None if !moved => break want,
            _ if Instant::now() < deadline => continue,
            None => panic!("seed {seed}: the server's log kept moving after the chaos stopped"),
            Some((c, differences)) => {
                // Where each node's log and live stream stand (`published_seq` on MongoDB).
                let mut nodes = Vec::new();
                for node in servers.iter().chain([&restarted]) {
                    nodes.push(node.get("/api/health").await.1.to_string());
                }
                panic!(
                    "seed {seed}: {} did not converge within {CONVERGE_WITHIN:?} (want last_seq \
                     {}; nodes {}):\n  {}",
                    describe(c),
                    want.last_seq,
                    nodes.join(", "),
                    differences.join("\n  ")
                )
            }
        }
    };
    let converged_at = started.elapsed();

    for (i, c) in clients.iter().enumerate() {
        let r = c.replica();
        assert_eq!(c.status(), Status::Live, "seed {seed}: {}", describe(c));
        assert!(
            matches(&r, &want),
            "seed {seed}: {} differs:\n  {}",
            describe(c),
            differences(&r, &want).join("\n  ")
        );
        assert_sound(c, i % nodes == nodes - 1, seed);
    }
    for (i, c) in scoped.iter().enumerate() {
        assert_eq!(c.status(), Status::Live, "seed {seed}: {}", describe(c));
        let differs = scoped_differences(c, &want);
        assert!(
            differs.is_empty(),
            "seed {seed}: {} differs:\n  {}",
            describe(c),
            differs.join("\n  ")
        );
        // Every subscription it has is synced on its connection.
        for sub in c.subscriptions() {
            c.wait_subscription_synced(sub.id(), Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {}: {} not synced: {e}", describe(c), sub.id()));
        }
        assert_sound(c, i % nodes == nodes - 1, seed);
    }

    // No acknowledged write lost: each is in the log, as the write that made it.
    let log: BTreeMap<u64, Value> = all_events(server, &format!("&collection={COLLECTION}"))
        .await
        .into_iter()
        .map(|e| (e["seq"].as_u64().expect("seq"), e))
        .collect();
    let record = Arc::try_unwrap(record)
        .unwrap_or_else(|_| panic!("the chaos tasks are done"))
        .into_inner()
        .unwrap();
    // ... and none applied twice: an op_id (the idempotency key of every client write) is in the log
    // at most once, restart and retries notwithstanding.
    let mut op_ids: BTreeMap<&str, u64> = BTreeMap::new();
    for e in log.values() {
        let op_id = e["op_id"].as_str().expect("op_id");
        if let Some(first) = op_ids.insert(op_id, e["seq"].as_u64().unwrap()) {
            panic!("seed {seed}: op_id {op_id} applied twice: seq {first} and {e}");
        }
    }
    for a in &record.acked {
        let e = log
            .get(&a.seq)
            .unwrap_or_else(|| panic!("seed {seed}: acknowledged write lost, no event at its seq: {a:?}"));
        assert!(
            e["op_id"] == a.op_id.as_str() && e["id"] == a.id.as_str() && e["version"] == a.version,
            "seed {seed}: acknowledged write {a:?} but the log has {e} at its seq"
        );
    }

    println!(
        "restarted after {restarted_at:?}; writers stopped in {stopped_in:?}; {} clients offline for \
         the last round; converged after {converged_at:?}; {} acknowledged writes ({} re-creates), \
         last seq {}; {} live documents",
        offline.len(),
        record.acked.len(),
        record.recreated,
        want.last_seq,
        want.docs.len()
    );
    for ((via, op, outcome), n) in &record.outcomes {
        println!("  {via:>10} {op:>7} {outcome}: {n}");
    }
    let sub_record = Arc::try_unwrap(sub_record)
        .unwrap_or_else(|_| panic!("the chaos tasks are done"))
        .into_inner()
        .unwrap();
    for ((what, outcome), n) in &sub_record.outcomes {
        println!("  {what:>11} {outcome}: {n}");
    }
    for c in clients.iter().chain(&scoped) {
        println!("  {}", describe(c));
    }

    // The chaos did what it says: every kind of write succeeded on some path, on each path.
    for op in ["create", "patch", "merge", "replace", "delete"] {
        assert!(record.ok_count(op) > 0, "seed {seed}: no {op} succeeded");
    }
    assert!(record.recreated > 0, "seed {seed}: no document was re-created");
    for via in ["ws", "sse-client", "rest"] {
        assert!(
            record.acked.iter().any(|a| a.via == via),
            "seed {seed}: no write through {via} was acknowledged"
        );
    }
    for what in ["subscribe", "unsubscribe"] {
        assert!(sub_record.ok(what) > 0, "seed {seed}: no {what} succeeded");
    }
    let removed: u64 = scoped.iter().map(|c| c.replica().counters().removed).sum();
    assert!(
        removed > 0,
        "seed {seed}: no document ever left a scope client's scopes"
    );

    for c in clients.iter().chain(&scoped) {
        c.close().await;
    }
    drop(servers);
    drop(restarted);
    drop(data);
}
