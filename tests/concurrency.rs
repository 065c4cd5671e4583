//! Concurrency: conditional writes race to exactly one winner, unconditional writes never lose an
//! update, sequence numbers are dense and unique, and the hub publishes in sequence order.
//!
//! Every test runs real HTTP requests concurrently against a real server in the test process (the
//! hub test starts its `Server` itself, to subscribe to its hub).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{all_events, send, TestServer};
use reqwest::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Barrier;

/// A base URL and a client: what the writers need, for the binary and the in-process server alike.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn of(s: &TestServer) -> Api {
        Api {
            http: s.http.clone(),
            base: s.url.clone(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    fn json(&self, method: Method, path: &str, content_type: &str, body: &Value) -> RequestBuilder {
        self.request(method, path)
            .header(CONTENT_TYPE, content_type)
            .body(body.to_string())
    }

    /// Every event in the log, following `next_cursor` (like `common::all_events`).
    async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/api/events?limit=1000".to_string();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = send(self.request(Method::GET, &path)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            out.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }
}

fn key_of(e: &Value) -> (String, String) {
    (
        e["collection"].as_str().expect("collection").to_string(),
        e["id"].as_str().expect("id").to_string(),
    )
}

/// Rebuilds every document from the log alone (applying each event's RFC 6902 patch in order) and
/// checks, per document, that versions run 1, 2, 3, ... in sequence order. Returns each document's
/// body after its last event (`None` when that event is a delete) and its last version.
fn replay_log(log: &[Value]) -> BTreeMap<(String, String), (u64, Option<Value>)> {
    let mut docs: BTreeMap<(String, String), (u64, Option<Value>)> = BTreeMap::new();
    for e in log {
        let key = key_of(e);
        let (version, body) = docs.entry(key.clone()).or_insert((0, None));
        let v = e["version"].as_u64().expect("version");
        assert_eq!(
            v,
            *version + 1,
            "{key:?}: event seq {} has version {v} right after version {version}",
            e["seq"]
        );
        let patch: json_patch::Patch = serde_json::from_value(e["patch"].clone()).expect("a JSON Patch");
        *body = match e["op"].as_str().expect("op") {
            "create" => {
                assert!(
                    body.is_none(),
                    "{key:?}: create of a live document at seq {}",
                    e["seq"]
                );
                let mut d = json!({});
                json_patch::patch(&mut d, &patch).expect("create patch applies to {}");
                Some(d)
            }
            "update" => {
                let mut d = body
                    .take()
                    .unwrap_or_else(|| panic!("{key:?}: update of a missing document"));
                json_patch::patch(&mut d, &patch).expect("update patch applies");
                Some(d)
            }
            "delete" => {
                assert!(body.is_some(), "{key:?}: delete of a missing document");
                None
            }
            other => panic!("unknown op {other}"),
        };
        *version = v;
    }
    docs
}

/// Seqs are 1, 2, 3, ... with nothing missing or repeated (a fresh server's log, nothing compacted).
fn assert_dense_seqs(log: &[Value]) {
    for (i, e) in log.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "event #{i} of the log has seq {}; the log must be 1..=n with no gaps or duplicates",
            e["seq"]
        );
    }
}

/// Spawns `n` tasks that each build their request, wait at a barrier, and send it, so all of them
/// are in flight at once.
async fn fire<F>(n: usize, make: F) -> Vec<(usize, StatusCode, Value)>
where
    F: Fn(usize) -> RequestBuilder,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = make(i);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let (status, body) = send(req).await;
                (i, status, body)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_conditional_writes_on_one_version_have_exactly_one_winner() {
    let s = TestServer::start(&[]);
    let api = Api::of(&s);
    let (status, body) = s.post_json("/api/race", &json!({"id": "doc", "value": -1})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["document"]["version"], 1);

    let results = fire(50, |i| {
        api.json(
            Method::PATCH,
            "/api/race/doc",
            "application/merge-patch+json",
            &json!({ "value": i }),
        )
        .header(IF_MATCH, "\"1\"")
    })
    .await;

    let winners: Vec<_> = results.iter().filter(|r| r.1 == StatusCode::OK).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one If-Match: \"1\" write may win; statuses: {:?}",
        results.iter().map(|r| r.1.as_u16()).collect::<Vec<_>>()
    );
    let (winner, _, win_body) = winners[0];
    assert_eq!(win_body["document"]["version"], 2, "{win_body}");
    assert_eq!(win_body["document"]["data"]["value"], *winner, "{win_body}");
    assert_eq!(win_body["event"]["version"], 2, "{win_body}");
    for (i, status, body) in results.iter().filter(|r| r.1 != StatusCode::OK) {
        assert_eq!(*status, StatusCode::CONFLICT, "write {i}: {body}");
        assert_eq!(body["error"]["code"], "version_conflict", "write {i}: {body}");
        assert_eq!(body["error"]["current_version"], 2, "write {i}: {body}");
        assert_eq!(body["error"]["expected_version"], 1, "write {i}: {body}");
    }

    let resp = s.request(Method::GET, "/api/race/doc").send().await.unwrap();
    assert_eq!(resp.headers()[ETAG], "\"2\"");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["data"], json!({ "value": winner }));

    let events = all_events(&s, "&collection=race&id=doc").await;
    let updates: Vec<_> = events.iter().filter(|e| e["op"] == "update").collect();
    assert_eq!(updates.len(), 1, "exactly one update event: {events:?}");
    assert_eq!(*updates[0], win_body["event"]);
    assert_eq!(
        updates[0]["patch"],
        json!([{"op": "replace", "path": "/value", "value": winner}])
    );
    assert_eq!(events.len(), 2, "the create and the one update: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_appends_without_if_match_all_land() {
    let s = TestServer::start(&[]);
    let api = Api::of(&s);
    let (status, body) = s.post_json("/api/lists", &json!({"id": "l", "log": []})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let results = fire(50, |i| {
        api.json(
            Method::PATCH,
            "/api/lists/l",
            "application/json-patch+json",
            &json!([{ "op": "add", "path": "/log/-", "value": i }]),
        )
    })
    .await;
    for (i, status, body) in &results {
        assert_eq!(*status, StatusCode::OK, "append {i}: {body}");
    }
    // Each write saw a distinct version: none was applied to a stale copy.
    let versions: BTreeSet<u64> = results
        .iter()
        .map(|r| r.2["document"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (2..=51).collect());

    let (status, doc) = s.get("/api/lists/l").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["version"], 51);
    let log = doc["data"]["log"].as_array().unwrap();
    assert_eq!(log.len(), 50, "{doc}");
    let values: BTreeSet<u64> = log.iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(values, (0..50).collect(), "every append exactly once: {log:?}");

    let updates = all_events(&s, "&collection=lists&id=l&op=update").await;
    let uv: Vec<u64> = updates.iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(uv, (2..=51).collect::<Vec<_>>());
    // The log replays to the stored document.
    let replayed = replay_log(&all_events(&s, "&collection=lists&id=l").await);
    assert_eq!(
        replayed[&("lists".into(), "l".into())],
        (51, Some(doc["data"].clone()))
    );
}

/// RFC 6902 has no arithmetic, so a client increments a counter with compare-and-set: read `n`, then
/// PATCH `test n` + `replace n+1`, retrying when the test fails. No If-Match is sent: the server
/// applies each patch to the version current *at commit time* (the single writer thread applies and
/// commits writes one after another), so the `test` op is checked against the latest value and an
/// increment based on a stale read is refused (422 `patch_failed`) instead of overwriting another
/// one — no update is ever lost, and the counter ends at exactly the number of tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_compare_and_set_counters_end_exactly_at_fifty() {
    const TASKS: u64 = 50;
    // A task fails only when another one succeeded since its read, so it needs at most TASKS tries.
    const MAX_TRIES: u64 = 2 * TASKS;
    let s = Arc::new(TestServer::start(&[]));
    let (status, body) = s.post_json("/api/counters", &json!({"id": "c", "n": 0})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let barrier = Arc::new(Barrier::new(TASKS as usize));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = Arc::clone(&s);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                for attempt in 1..=MAX_TRIES {
                    let (status, doc) = s.get("/api/counters/c").await;
                    assert_eq!(status, StatusCode::OK, "{doc}");
                    let n = doc["data"]["n"].as_u64().unwrap();
                    let ops = json!([
                        {"op": "test", "path": "/n", "value": n},
                        {"op": "replace", "path": "/n", "value": n + 1}
                    ]);
                    let (status, body) = s.json_patch("/api/counters/c", &ops).await;
                    match status {
                        StatusCode::OK => {
                            assert_eq!(body["document"]["data"]["n"], n + 1, "{body}");
                            return (n + 1, attempt);
                        }
                        StatusCode::UNPROCESSABLE_ENTITY => {
                            assert_eq!(body["error"]["code"], "patch_failed", "{body}");
                            assert_eq!(body["error"]["operation"], 0, "the test op fails: {body}");
                        }
                        other => panic!("task {t}: unexpected {other}: {body}"),
                    }
                }
                panic!("task {t}: no successful increment in {MAX_TRIES} tries");
            })
        })
        .collect();
    let mut reached = BTreeSet::new();
    let mut tries = 0;
    for t in tasks {
        let (n, attempts) = t.await.expect("counter task");
        assert!(reached.insert(n), "two tasks both moved the counter to {n}");
        tries += attempts;
    }
    assert_eq!(
        reached,
        (1..=TASKS).collect(),
        "each increment moved n by exactly one"
    );
    println!("{TASKS} increments took {tries} compare-and-set attempts");

    let (status, doc) = s.get("/api/counters/c").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["data"]["n"], TASKS, "{doc}");
    assert_eq!(doc["version"], TASKS + 1, "{doc}");
    let updates = all_events(&s, "&collection=counters&id=c&op=update").await;
    assert_eq!(updates.len() as u64, TASKS, "failed tests append nothing");
}

const COLLECTIONS: [&str; 2] = ["alpha", "beta"];
const IDS_PER_COLLECTION: usize = 6;

/// One writer's `count` acknowledged-or-refused steps over the shared documents: mostly merge patches
/// (creating the document when it is missing), every eleventh step a delete. Returns the events of
/// every acknowledged write, as the responses reported them.
async fn writer(api: Api, w: usize, count: usize) -> Vec<Value> {
    let docs = COLLECTIONS.len() * IDS_PER_COLLECTION;
    let mut acked = Vec::new();
    let mut record = |status: StatusCode, body: &Value, what: &str| {
        assert!(status.is_success(), "writer {w}: {what}: {status} {body}");
        let event = &body["event"];
        assert!(
            event.is_object(),
            "writer {w}: {what} changed something but has no event: {body}"
        );
        acked.push(event.clone());
    };
    for i in 0..count {
        let d = (w * 5 + i * 7) % docs;
        let (c, id) = (COLLECTIONS[d % 2], format!("d{}", d / 2));
        let path = format!("/api/{c}/{id}");
        if i % 11 == 10 {
            let (status, body) = send(api.request(Method::DELETE, &path)).await;
            if status == StatusCode::NOT_FOUND {
                assert_eq!(body["error"]["code"], "not_found", "{body}");
                continue; // someone else deleted it first: no event
            }
            record(status, &body, "delete");
            continue;
        }
        let patch = json!({ "last": format!("w{w}-{i}"), format!("w{w}"): i });
        let mut tries = 0;
        loop {
            tries += 1;
            assert!(tries < 50, "writer {w}: step {i} keeps racing");
            let (status, body) =
                send(api.json(Method::PATCH, &path, "application/merge-patch+json", &patch)).await;
            if status != StatusCode::NOT_FOUND {
                record(status, &body, "patch");
                break;
            }
            let mut create = patch.clone();
            create["id"] = json!(id);
            let (status, body) =
                send(api.json(Method::POST, &format!("/api/{c}"), "application/json", &create)).await;
            if status == StatusCode::CONFLICT {
                assert_eq!(body["error"]["code"], "already_exists", "{body}");
                continue; // another writer created it meanwhile: patch it
            }
            assert_eq!(status, StatusCode::CREATED, "writer {w}: create: {body}");
            record(status, &body, "create");
            break;
        }
    }
    acked
}

/// Runs `writers` concurrent [`writer`]s and returns all their acknowledged events.
async fn run_writers(api: &Api, writers: usize, count: usize) -> Vec<Value> {
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(api.clone(), w, count)))
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("writer task"));
    }
    acked
}

/// Checks the log against the acknowledged events: dense unique seqs, each acknowledged event
/// exactly once with identical content, nothing unacknowledged, per-document versions 1..=n, and
/// the stored documents equal to the log replayed.
async fn check_log_against_acks(api: &Api, log: &[Value], acked: &[Value]) {
    assert_dense_seqs(log);
    let mut by_seq: HashMap<u64, &Value> = HashMap::new();
    for e in acked {
        let seq = e["seq"].as_u64().expect("seq");
        if let Some(other) = by_seq.insert(seq, e) {
            panic!("two acknowledged writes got seq {seq}:\n{other}\n{e}");
        }
    }
    for e in log {
        let seq = e["seq"].as_u64().unwrap();
        let ack = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("event {e} is in the log but no write was acknowledged with it"));
        assert_eq!(*ack, e, "the log's event {seq} differs from the acknowledged one");
    }
    assert_eq!(
        log.len(),
        acked.len(),
        "every acknowledged event appears in the log exactly once"
    );
    for ((c, id), (version, body)) in replay_log(log) {
        let (status, doc) = send(api.request(Method::GET, &format!("/api/{c}/{id}"))).await;
        match body {
            Some(data) => {
                assert_eq!(status, StatusCode::OK, "{c}/{id}: {doc}");
                assert_eq!(doc["version"], version, "{c}/{id}");
                assert_eq!(
                    doc["data"], data,
                    "{c}/{id}: the stored body differs from the log replayed"
                );
            }
            None => assert_eq!(status, StatusCode::NOT_FOUND, "{c}/{id} was deleted last: {doc}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequence_numbers_are_dense_unique_and_match_the_acknowledgements() {
    let s = TestServer::start(&[]);
    let api = Api::of(&s);
    let acked = run_writers(&api, 8, 50).await;
    assert!(acked.len() >= 8 * 40, "most steps write: {}", acked.len());
    let log = all_events(&s, "").await;
    check_log_against_acks(&api, &log, &acked).await;
    let (status, health) = s.get("/api/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["last_seq"], log.len(), "{health}");
    // Both collections and several documents were involved, and the filters agree with the log.
    for c in COLLECTIONS {
        let part = all_events(&s, &format!("&collection={c}")).await;
        let expected: Vec<&Value> = log.iter().filter(|e| e["collection"] == c).collect();
        assert!(expected.len() > 50, "{c}: {}", expected.len());
        assert_eq!(part.iter().collect::<Vec<_>>(), expected, "{c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hub_publishes_every_event_once_in_sequence_order() {
    use eventsync::config::Config;
    use eventsync::server::Server;
    use tokio::sync::broadcast::error::TryRecvError;

    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        static_dir: "static".into(),
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start(listener, config).await.expect("server starts");
    let mut rx = server.hub.subscribe();
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: format!("http://{}", server.addr),
    };

    let acked = run_writers(&api, 8, 40).await;
    let log = api.all_events().await;
    check_log_against_acks(&api, &log, &acked).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut published = Vec::with_capacity(log.len());
    while published.len() < log.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(e)) => published.push(serde_json::to_value(&*e).unwrap()),
            Ok(Err(e)) => panic!("subscriber: {e} after {} events", published.len()),
            Err(_) => panic!("only {} of {} events were published", published.len(), log.len()),
        }
    }
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "more events were published than the log holds"
    );
    for pair in published.windows(2) {
        assert!(
            pair[0]["seq"].as_u64() < pair[1]["seq"].as_u64(),
            "published out of order: {} then {}",
            pair[0]["seq"],
            pair[1]["seq"]
        );
    }
    assert_eq!(published, log, "the subscriber saw exactly the log");

    server.shutdown();
    tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("shutdown within 15 s")
        .expect("clean shutdown");
}
