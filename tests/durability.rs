//! Durability: what the server acknowledged survives a graceful restart, a `kill -9` under load and a
//! SIGTERM in the middle of a burst of writes; and what it left behind is always consistent (a
//! gapless log whose replay equals the stored documents).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{all_events, send, Rng, TestServer};
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// Longest a SIGTERM'd server may take to exit.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// Sends a request; unlike `common::send`, a transport failure (the server is gone) is a value.
async fn try_send(req: RequestBuilder) -> Result<(StatusCode, Value), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
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
    Ok((status, body))
}

/// SIGTERM from inside the runtime, letting the other tasks run meanwhile; the exit must be clean.
fn terminate(s: &mut TestServer) {
    let status = tokio::task::block_in_place(|| s.terminate(EXIT_WITHIN));
    assert!(status.success(), "the server exited with {status} after SIGTERM");
}

fn seed() -> u64 {
    match std::env::var("EVENTSYNC_TEST_SEED") {
        Ok(s) => s.parse().expect("EVENTSYNC_TEST_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

type DocKey = (String, String);

fn key_of(e: &Value) -> DocKey {
    (
        e["collection"].as_str().expect("collection").to_string(),
        e["id"].as_str().expect("id").to_string(),
    )
}

/// Rebuilds every document from the log alone. Checks that seqs strictly increase and that each
/// document's versions run 1, 2, 3, ... in seq order; returns each document's body at every version
/// (index `v - 1`; `None` after a delete).
fn replay_log(log: &[Value]) -> BTreeMap<DocKey, Vec<Option<Value>>> {
    let mut docs: BTreeMap<DocKey, Vec<Option<Value>>> = BTreeMap::new();
    let mut last_seq = 0;
    for e in log {
        let seq = e["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "seq {seq} follows seq {last_seq} in the log");
        last_seq = seq;
        let key = key_of(e);
        let versions = docs.entry(key.clone()).or_default();
        let v = e["version"].as_u64().expect("version");
        assert_eq!(
            v,
            versions.len() as u64 + 1,
            "{key:?}: seq {seq} has version {v} right after version {}",
            versions.len()
        );
        let patch: json_patch::Patch = serde_json::from_value(e["patch"].clone()).expect("a JSON Patch");
        let previous = versions.last().cloned().flatten();
        let next = match e["op"].as_str().expect("op") {
            "create" => {
                assert!(
                    previous.is_none(),
                    "{key:?}: create of a live document at seq {seq}"
                );
                let mut d = json!({});
                json_patch::patch(&mut d, &patch).expect("create patch applies to {}");
                Some(d)
            }
            "update" => {
                let mut d = previous.unwrap_or_else(|| panic!("{key:?}: update of a missing document"));
                json_patch::patch(&mut d, &patch).expect("update patch applies");
                Some(d)
            }
            "delete" => {
                assert!(previous.is_some(), "{key:?}: delete of a missing document");
                None
            }
            other => panic!("unknown op {other}"),
        };
        versions.push(next);
    }
    docs
}

/// Every live document of a collection, following `next_cursor` (small pages, to exercise it).
async fn all_docs(s: &TestServer, collection: &str) -> Vec<Value> {
    common::all_pages(s, &format!("/api/{collection}?limit=3")).await
}

/// Checks that the server's state is consistent: a gapless log (1..=last_seq; nothing is compacted
/// in these tests) whose replay equals every stored document, live or deleted. Returns the log and
/// the replayed documents.
async fn check_consistent(s: &TestServer) -> (Vec<Value>, BTreeMap<DocKey, Vec<Option<Value>>>) {
    let log = all_events(s, "").await;
    for (i, e) in log.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "the log has a gap or a duplicate"
        );
    }
    let (status, health) = s.get("/api/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["last_seq"], log.len(), "{health}");
    let docs = replay_log(&log);
    let checks = futures::stream::iter(docs.iter().map(|((c, id), versions)| async move {
        let (status, doc) = s.get(&format!("/api/{c}/{id}")).await;
        match versions.last().unwrap() {
            Some(data) => {
                assert_eq!(status, StatusCode::OK, "{c}/{id}: {doc}");
                assert_eq!(doc["version"], versions.len(), "{c}/{id}");
                assert_eq!(
                    &doc["data"], data,
                    "{c}/{id}: the stored body differs from the log replayed"
                );
            }
            None => assert_eq!(status, StatusCode::NOT_FOUND, "{c}/{id} was deleted last: {doc}"),
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>();
    checks.await;
    (log, docs)
}

/// Everything a client can read about the store.
#[derive(Debug, PartialEq)]
struct Observed {
    docs: BTreeMap<String, Vec<Value>>,
    log: Vec<Value>,
    histories: BTreeMap<String, Value>,
    versions: BTreeMap<String, Value>,
    snapshots: BTreeMap<String, Value>,
    last_seq: Value,
}

async fn observe(s: &TestServer, collections: &[&str], docs: &[&str]) -> Observed {
    let mut o = Observed {
        docs: BTreeMap::new(),
        log: all_events(s, "").await,
        histories: BTreeMap::new(),
        versions: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        last_seq: s.get("/api/health").await.1["last_seq"].clone(),
    };
    for c in collections {
        o.docs.insert(c.to_string(), all_docs(s, c).await);
    }
    for path in docs {
        // Small pages: the history's own cursor must survive the restart too.
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let head = loop {
            let mut url = format!("/api/{path}/history?limit=2");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let (status, mut body) = s.get(&url).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            items.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => {
                    body["items"] = Value::Null;
                    break body;
                }
            }
        };
        let version = head["version"].as_u64().unwrap();
        assert_eq!(items.len() as u64, version, "{path}: full history");
        o.histories
            .insert(path.to_string(), json!({ "head": head, "items": items }));
        for v in 1..=version {
            let (status, body) = s.get(&format!("/api/{path}/versions/{v}")).await;
            assert_eq!(status, StatusCode::OK, "{path} v{v}: {body}");
            o.versions.insert(format!("{path}@{v}"), body);
        }
        let (status, body) = s.get(&format!("/api/{path}/snapshots")).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        o.snapshots.insert(path.to_string(), body);
    }
    o
}

/// The idempotent requests of the restart test; each is sent with its key before and after.
fn idempotent_requests(s: &TestServer) -> Vec<RequestBuilder> {
    vec![
        s.json(
            Method::POST,
            "/api/games",
            &json!({"title": "chess", "moves": []}),
        )
        .header("Idempotency-Key", "create-game-1")
        .header("X-Client-Id", "alice"),
        s.request(Method::PATCH, "/api/players/p1")
            .header(CONTENT_TYPE, "application/json-patch+json")
            .header("Idempotency-Key", "p1-rename")
            .header("X-Client-Id", "alice")
            .body(json!([{"op": "replace", "path": "/name", "value": "Ada L."}]).to_string()),
        s.request(Method::DELETE, "/api/players/p3")
            .header("Idempotency-Key", "drop-p3")
            .header("X-Client-Id", "bob"),
    ]
}

async fn send_with_headers(req: RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.expect("JSON body");
    (status, replayed, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_keeps_documents_events_history_and_idempotency_records() {
    let mut s = TestServer::process(&[]);
    let dir = s.keep_data().expect("a fresh data dir");

    // A mix: creates (named and server-chosen), JSON Patch, merge patch, replace, If-Match,
    // deletes, a re-create over a tombstone, an unchanged write and idempotent writes.
    for (id, name) in [("p1", "Ada"), ("p2", "Bob"), ("p3", "Cy"), ("p4", "Di")] {
        let (status, body) = s
            .post_json(
                "/api/players",
                &json!({"id": id, "name": name, "score": 0, "tags": []}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for i in 0..5 {
        let ops = json!([
            {"op": "replace", "path": "/score", "value": i * 10},
            {"op": "add", "path": "/tags/-", "value": format!("t{i}")}
        ]);
        assert_eq!(s.json_patch("/api/players/p1", &ops).await.0, StatusCode::OK);
    }
    let (status, body) = s
        .merge_patch("/api/players/p2", &json!({"score": 7, "team": {"name": "red"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .put_json("/api/players/p2", &json!({"name": "Bob", "score": 8}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        s.json(
            Method::PUT,
            "/api/players/p2",
            &json!({"name": "Bob", "score": 9}),
        )
        .header(IF_MATCH, "\"3\""),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.merge_patch("/api/players/p2", &json!({"score": 9})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["event"].is_null(),
        "an unchanged write appends nothing: {body}"
    );
    assert_eq!(s.delete("/api/players/p4").await.0, StatusCode::OK);
    let (status, body) = s
        .post_json("/api/players", &json!({"id": "p4", "name": "Di again"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["document"]["version"], 3,
        "the version line continues over the tombstone"
    );
    let mut generated = Vec::new();
    for i in 0..3 {
        let (status, body) = s.post_json("/api/games", &json!({"round": i})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        generated.push(format!("games/{}", body["document"]["id"].as_str().unwrap()));
    }
    let first: Vec<_> = {
        let mut v = Vec::new();
        for req in idempotent_requests(&s) {
            let (status, replayed, body) = send_with_headers(req).await;
            assert!(status.is_success(), "{body}");
            assert_eq!(replayed, None, "a first request is not a replay: {body}");
            v.push((status, body));
        }
        v
    };
    let game = format!("games/{}", first[0].1["document"]["id"].as_str().unwrap());
    for (i, req) in idempotent_requests(&s).into_iter().enumerate() {
        let (status, replayed, body) = send_with_headers(req).await;
        assert_eq!(
            (status, &body),
            (first[i].0, &first[i].1),
            "replay {i} before the restart"
        );
        assert_eq!(replayed.as_deref(), Some("true"), "replay {i}");
    }

    let collections = ["players", "games"];
    let mut paths = vec![
        "players/p1",
        "players/p2",
        "players/p3",
        "players/p4",
        game.as_str(),
    ];
    paths.extend(generated.iter().map(String::as_str));
    let before = observe(&s, &collections, &paths).await;
    assert_eq!(
        before.docs["players"].len(),
        3,
        "p3 is deleted: {:?}",
        before.docs
    );
    assert_eq!(before.docs["games"].len(), 4);
    check_consistent(&s).await;

    terminate(&mut s);
    drop(s);
    let mut s = TestServer::process_in(dir.path(), &[]);

    let after = observe(&s, &collections, &paths).await;
    assert_eq!(after.docs, before.docs, "documents after the restart");
    assert_eq!(after.log, before.log, "event log after the restart");
    assert_eq!(after.histories, before.histories, "histories after the restart");
    assert_eq!(after.versions, before.versions, "old versions after the restart");
    assert_eq!(after.snapshots, before.snapshots, "snapshots after the restart");
    assert_eq!(after, before);
    check_consistent(&s).await;

    // Idempotency records survived: the same key gives the same answer and appends nothing.
    for (i, req) in idempotent_requests(&s).into_iter().enumerate() {
        let (status, replayed, body) = send_with_headers(req).await;
        assert_eq!(
            (status, &body),
            (first[i].0, &first[i].1),
            "replay {i} after the restart"
        );
        assert_eq!(replayed.as_deref(), Some("true"), "replay {i} after the restart");
    }
    assert_eq!(all_events(&s, "").await, before.log, "replays append no event");

    // New writes continue the sequence above the old ones.
    let old_last = before.log.last().unwrap()["seq"].as_u64().unwrap();
    let (status, body) = s
        .json_patch(
            "/api/players/p1",
            &json!([{"op": "add", "path": "/x", "value": 1}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["seq"], old_last + 1, "{body}");
    assert_eq!(body["event"]["version"], 8, "{body}");
    let (status, body) = s.post_json("/api/games", &json!({"after": "restart"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["event"]["seq"], old_last + 2, "{body}");
    check_consistent(&s).await;
    terminate(&mut s);
}

/// One acknowledged write, as its response described it.
#[derive(Debug, Clone)]
struct Ack {
    key: DocKey,
    version: u64,
    event: Value,
    data: Value,
}

/// Checks every acknowledged write against a restarted server: the document is at least at the
/// acknowledged version, the acknowledged event is in the log with identical content, and the body
/// at that version — from the log replayed and from `GET .../versions/{v}` — is what was answered.
async fn check_acks(s: &TestServer, acks: &[Ack]) {
    let (log, docs) = check_consistent(s).await;
    let by_seq: HashMap<u64, &Value> = log.iter().map(|e| (e["seq"].as_u64().unwrap(), e)).collect();
    let mut highest: HashMap<&DocKey, u64> = HashMap::new();
    for a in acks {
        let seq = a.event["seq"].as_u64().unwrap();
        let logged = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("acknowledged event {seq} of {:?} is not in the log", a.key));
        assert_eq!(*logged, &a.event, "acknowledged event {seq} differs in the log");
        let versions = &docs[&a.key];
        assert_eq!(
            versions[a.version as usize - 1].as_ref(),
            Some(&a.data),
            "{:?} v{}: the log replayed differs from the acknowledged body",
            a.key,
            a.version
        );
        let h = highest.entry(&a.key).or_default();
        *h = (*h).max(a.version);
    }
    // The current documents are at or past every acknowledged version.
    let current = futures::stream::iter(highest.into_iter().map(|(key, v)| async move {
        let (status, doc) = s.get(&format!("/api/{}/{}", key.0, key.1)).await;
        assert_eq!(status, StatusCode::OK, "{key:?}: {doc}");
        let now = doc["version"].as_u64().unwrap();
        assert!(
            now >= v,
            "{key:?} is at version {now}, below the acknowledged {v}"
        );
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>();
    current.await;
    // The API's own rebuild of each acknowledged version.
    let rebuilt = futures::stream::iter(acks.iter().map(|a| async move {
        let (c, id) = &a.key;
        let (status, body) = s.get(&format!("/api/{c}/{id}/versions/{}", a.version)).await;
        assert_eq!(status, StatusCode::OK, "{c}/{id} v{}: {body}", a.version);
        assert_eq!(
            body["data"], a.data,
            "{c}/{id} v{}: /versions differs from the response",
            a.version
        );
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>();
    rebuilt.await;
}

/// One round of load: `TASKS` writers creating documents and appending to them with JSON Patch as
/// fast as they can until the server disappears. Returns their acknowledged writes.
fn load(
    s: &TestServer,
    round: u64,
    seed: u64,
    known: Arc<Mutex<Vec<DocKey>>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Ack>> {
    const TASKS: u64 = 16;
    let (http, url) = (s.http.clone(), s.url.clone());
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (http, url, known, stop, acked) = (
                    http.clone(),
                    url.clone(),
                    Arc::clone(&known),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                );
                tokio::spawn(async move {
                    let mut rng = Rng::new(seed ^ (round << 32) ^ (t << 8));
                    let mut acks = Vec::new();
                    let mut unexpected = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let tag = format!("r{round}-t{t}-{i}");
                        let target = {
                            let known = known.lock().unwrap();
                            // Mostly updates, half of them to a few hot documents (so some pass
                            // the snapshot interval and /versions rebuilds from a snapshot).
                            match rng.below(8) {
                                0 => None,
                                _ if known.is_empty() => None,
                                1..=4 => Some(known[rng.below(known.len().min(4) as u64) as usize].clone()),
                                _ => Some(known[rng.below(known.len() as u64) as usize].clone()),
                            }
                        };
                        let (key, req) = match target {
                            None => {
                                let c = ["ledger", "notes"][rng.below(2) as usize];
                                let body = json!({"id": tag, "by": t, "log": []});
                                (
                                    (c.to_string(), tag.clone()),
                                    http.post(format!("{url}/api/{c}"))
                                        .header(CONTENT_TYPE, "application/json")
                                        .body(body.to_string()),
                                )
                            }
                            Some((c, id)) => {
                                let ops = json!([
                                    {"op": "add", "path": "/log/-", "value": tag},
                                    {"op": "add", "path": "/last", "value": tag}
                                ]);
                                let req = http
                                    .patch(format!("{url}/api/{c}/{id}"))
                                    .header(CONTENT_TYPE, "application/json-patch+json")
                                    .body(ops.to_string());
                                ((c, id), req)
                            }
                        };
                        match try_send(req).await {
                            Ok((status, body)) if status.is_success() => {
                                let doc = &body["document"];
                                assert_eq!(doc["collection"], key.0.as_str(), "{body}");
                                assert_eq!(doc["id"], key.1.as_str(), "{body}");
                                let version = doc["version"].as_u64().expect("version");
                                assert_eq!(body["event"]["version"], version, "{body}");
                                if status == StatusCode::CREATED {
                                    known.lock().unwrap().push(key.clone());
                                }
                                acks.push(Ack {
                                    key,
                                    version,
                                    event: body["event"].clone(),
                                    data: doc["data"].clone(),
                                });
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, body)) => unexpected.push(format!("{status} {body}")),
                            // Killed: connection refused, reset, or closed mid-response.
                            Err(_) => break,
                        }
                    }
                    assert!(
                        unexpected.is_empty(),
                        "writer {t}: unexpected answers: {unexpected:?}"
                    );
                    acks
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("writer task"));
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_write() {
    const ROUNDS: u64 = 3;
    let started = Instant::now();
    let seed = seed();
    println!("kill -9 test seed: {seed} (repeat with EVENTSYNC_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut s = TestServer::process(&[]); // default durability: full
    let dir = s.keep_data().expect("a fresh data dir");
    let known = Arc::new(Mutex::new(Vec::new()));
    let mut all_acks: Vec<Ack> = Vec::new();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let writers = load(
            &s,
            round,
            seed,
            Arc::clone(&known),
            Arc::clone(&stop),
            Arc::clone(&acked),
        );
        // Wait for the load to be under way (bounded), then let it run a random while.
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::Relaxed) < 20 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the writers made no progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = Duration::from_millis(300 + rng.below(500));
        tokio::time::sleep(delay).await;
        let before_kill = acked.load(Ordering::Relaxed);
        s.kill();
        stop.store(true, Ordering::Relaxed);
        let acks = tokio::time::timeout(Duration::from_secs(40), writers)
            .await
            .expect("writers stop once the server is gone")
            .expect("writers");
        println!(
            "round {round}: killed after {delay:?} of load; {} writes acknowledged ({before_kill} before the kill)",
            acks.len()
        );
        assert!(acks.len() >= before_kill);
        all_acks.extend(acks);

        s = TestServer::process_in(dir.path(), &[]);
        let t = Instant::now();
        check_acks(&s, &all_acks).await;
        println!(
            "round {round}: verified {} acknowledged writes in {:?}",
            all_acks.len(),
            t.elapsed()
        );
        // The restarted server takes writes, continuing the sequence.
        let (status, health) = s.get("/api/health").await;
        assert_eq!(status, StatusCode::OK);
        let last = health["last_seq"].as_u64().unwrap();
        let (status, body) = s
            .post_json("/api/notes", &json!({"id": format!("after-{round}"), "log": []}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["event"]["seq"], last + 1, "{body}");
    }
    terminate(&mut s);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{ROUNDS} kill cycles took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    const WRITES: usize = 200;
    let mut s = TestServer::process(&[]);
    let dir = s.keep_data().expect("a fresh data dir");
    let (http, url) = (s.http.clone(), s.url.clone());
    let answered = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Barrier::new(WRITES + 1));
    let tasks: Vec<_> = (0..WRITES)
        .map(|i| {
            let (http, url, answered, go) =
                (http.clone(), url.clone(), Arc::clone(&answered), Arc::clone(&go));
            tokio::spawn(async move {
                let body = json!({"id": format!("o{i}"), "n": i, "pad": "x".repeat(2000)});
                let req = http
                    .post(format!("{url}/api/orders"))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string());
                go.wait().await;
                let r = try_send(req).await;
                answered.fetch_add(1, Ordering::Relaxed);
                (i, r)
            })
        })
        .collect();
    go.wait().await;
    // "Shortly after they start": as soon as the first one is answered (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no write was answered within 10 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let at_sigterm = answered.load(Ordering::Relaxed);
    terminate(&mut s);
    drop(s);

    let mut acks = Vec::new();
    let (mut refused, mut not_connected, mut unanswered) = (0, 0, 0);
    for t in tasks {
        let (i, r) = tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .expect("every request ends once the server is gone")
            .expect("request task");
        match r {
            Ok((status, body)) if status.is_success() => {
                assert_eq!(status, StatusCode::CREATED, "o{i}: {body}");
                let doc = &body["document"];
                assert_eq!(doc["id"], format!("o{i}"), "{body}");
                acks.push(Ack {
                    key: ("orders".into(), format!("o{i}")),
                    version: doc["version"].as_u64().unwrap(),
                    event: body["event"].clone(),
                    data: doc["data"].clone(),
                });
            }
            Ok((status, body)) => {
                assert_eq!(
                    status,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "o{i}: a write during shutdown is answered 2xx or 503, never {status}: {body}"
                );
                refused += 1;
            }
            // Refused or reset while connecting (the listener had stopped accepting), or closed
            // before an answer (a connection the server had not started reading when it shut down).
            Err(e) => {
                assert!(!e.is_timeout(), "o{i}: a write hung during shutdown: {e}");
                assert!(
                    e.is_connect() || e.is_request(),
                    "o{i}: not a connection error: {e:?}"
                );
                if e.is_connect() {
                    not_connected += 1;
                } else {
                    unanswered += 1;
                }
            }
        }
    }
    println!(
        "SIGTERM after {at_sigterm} answers: {} acknowledged, {refused} refused with 503, {not_connected} \
         not connected, {unanswered} closed unanswered",
        acks.len()
    );
    assert!(!acks.is_empty());

    let mut s = TestServer::process_in(dir.path(), &[]);
    check_acks(&s, &acks).await;
    // Whatever is stored beyond the acknowledged writes is whole: each order is its create event.
    let (status, body) = s.get("/api/orders?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = body["items"].as_array().unwrap();
    println!(
        "{} orders stored, {} of them unacknowledged",
        stored.len(),
        stored.len() - acks.len()
    );
    for doc in stored {
        let i = doc["data"]["n"].as_u64().unwrap();
        assert_eq!(doc["id"], format!("o{i}"));
        assert_eq!(doc["version"], 1);
    }
    terminate(&mut s);
    assert_dir_is_clean(dir.path());
}

/// After a clean shutdown the store checkpointed its WAL into the database file.
fn assert_dir_is_clean(dir: &Path) {
    let wal = dir.join("eventsync.db-wal");
    if let Ok(meta) = std::fs::metadata(&wal) {
        assert_eq!(meta.len(), 0, "the WAL was not checkpointed at shutdown");
    }
}
