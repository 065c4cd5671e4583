//! Publisher: writes updates through the REST API at a steady rate, optionally mixed with malformed
//! requests, and counts what the server answered.
//!
//! ```sh
//! cargo run --release --example publisher -- --url http://127.0.0.1:8080 --rate 100 --seconds 10 \
//!     --docs 10 --collection games --malformed-ratio 0.1
//! ```
//!
//! It first creates `--docs` documents (`<prefix>-0` ...; existing ones are reused), then sends
//! `--rate` requests per second (at most `--concurrency` at once) for `--seconds`: JSON Patch updates
//! of a random document, and with probability `--malformed-ratio` one of four malformed requests
//! instead — bad JSON, a bad patch (an unknown op, a remove of a missing field, an object), a wrong
//! content type, or an `If-Match` with a stale version. Each must be refused with a 4xx.
//!
//! The summary counts answers by kind and status. Afterwards (unless `--no-verify`) every document's
//! version is checked against its starting version plus the updates acknowledged with an event.
//!
//! Exit status: 1 if a malformed request got a 2xx, any request got a 5xx, a request failed in
//! transit (unless `--allow-transport-errors`) or a version does not add up; 2 if the setup failed.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(name = "publisher", about = "Steady-rate REST writer for EventSync")]
struct Opts {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How long to send.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Documents to update.
    #[arg(long, default_value_t = 10)]
    docs: usize,
    #[arg(long, default_value = "games")]
    collection: String,
    /// Share of requests that are malformed (0..=1).
    #[arg(long, default_value_t = 0.0)]
    malformed_ratio: f64,
    /// Most requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Document ids are `<prefix>-<i>`.
    #[arg(long, default_value = "pub")]
    prefix: String,
    /// Sent as X-Client-Id.
    #[arg(long, default_value = "publisher")]
    client_id: String,
    /// Skip the final version check (e.g. when others write the same documents).
    #[arg(long)]
    no_verify: bool,
    /// Do not fail on requests that failed in transit (e.g. when the server is restarted on purpose).
    #[arg(long)]
    allow_transport_errors: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Update,
    BadJson,
    BadPatch,
    WrongContentType,
    StaleIfMatch,
}

impl Kind {
    const MALFORMED: [Kind; 4] = [
        Kind::BadJson,
        Kind::BadPatch,
        Kind::WrongContentType,
        Kind::StaleIfMatch,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::BadJson => "bad_json",
            Kind::BadPatch => "bad_patch",
            Kind::WrongContentType => "wrong_content_type",
            Kind::StaleIfMatch => "stale_if_match",
        }
    }
}

/// What every request task shares.
struct Run {
    http: reqwest::Client,
    opts: Opts,
    /// Highest version seen per document.
    known: Vec<AtomicU64>,
    /// Updates acknowledged with an event, per document.
    events: Vec<AtomicU64>,
    /// (kind, status or "transport error") → count.
    outcomes: Mutex<BTreeMap<(Kind, String), u64>>,
    latencies_us: Mutex<Vec<u32>>,
    counter: AtomicU64,
}

impl Run {
    fn doc_url(&self, i: usize) -> String {
        format!(
            "{}/api/{}/{}-{i}",
            self.opts.url.trim_end_matches('/'),
            self.opts.collection,
            self.opts.prefix
        )
    }

    fn count(&self, kind: Kind, outcome: String) {
        let mut o = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        *o.entry((kind, outcome)).or_default() += 1;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Opts::parse();
    let valid = opts.rate > 0.0
        && opts.rate.is_finite()
        && opts.seconds > 0.0
        && opts.seconds.is_finite()
        && (0.0..=1.0).contains(&opts.malformed_ratio)
        && opts.docs > 0
        && opts.concurrency > 0;
    if !valid {
        eprintln!("publisher: need --rate > 0, --seconds > 0, --docs > 0, --concurrency > 0, --malformed-ratio in 0..=1");
        return ExitCode::from(2);
    }
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("publisher: {e}");
            return ExitCode::from(2);
        }
    };
    let run = Arc::new(Run {
        http,
        known: (0..opts.docs).map(|_| AtomicU64::new(0)).collect(),
        events: (0..opts.docs).map(|_| AtomicU64::new(0)).collect(),
        outcomes: Mutex::new(BTreeMap::new()),
        latencies_us: Mutex::new(Vec::new()),
        counter: AtomicU64::new(0),
        opts,
    });

    // 1. The documents.
    let mut initial = Vec::with_capacity(run.opts.docs);
    for i in 0..run.opts.docs {
        match create(&run, i).await {
            Ok(v) => {
                run.known[i].store(v, Ordering::Relaxed);
                initial.push(v);
            }
            Err(e) => {
                eprintln!("publisher: creating {}-{i}: {e}", run.opts.prefix);
                return ExitCode::from(2);
            }
        }
    }

    // 2. Requests at the rate.
    let period = Duration::from_secs_f64(1.0 / run.opts.rate);
    let permits = Arc::new(Semaphore::new(run.opts.concurrency));
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(run.opts.seconds);
    let mut sent: u64 = 0;
    loop {
        let at = start + period.mul_f64(sent as f64);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (kind, doc) = {
            let mut rng = rand::rng();
            let kind = if rng.random_bool(run.opts.malformed_ratio) {
                Kind::MALFORMED[rng.random_range(0..Kind::MALFORMED.len())]
            } else {
                Kind::Update
            };
            (kind, rng.random_range(0..run.opts.docs))
        };
        let run = run.clone();
        tokio::spawn(async move {
            request(&run, kind, doc).await;
            drop(permit);
        });
        sent += 1;
    }
    let _ = permits.acquire_many(run.opts.concurrency as u32).await;
    let elapsed = start.elapsed();

    // 3. Summary.
    let outcomes = run.outcomes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "publisher: {sent} requests in {:.1}s ({:.1}/s; asked {}/s) to {}/api/{} ({} docs)",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        run.opts.rate,
        run.opts.url.trim_end_matches('/'),
        run.opts.collection,
        run.opts.docs
    );
    let mut malformed_accepted = 0;
    let mut server_errors = 0;
    let mut transport_errors = 0;
    for ((kind, outcome), n) in &outcomes {
        println!("  {:<20} {outcome:<16} {n}", kind.name());
        // "409 version_conflict" → 409; "transport error" → none.
        let status = outcome.split(' ').next().and_then(|s| s.parse::<u16>().ok());
        if *kind != Kind::Update && status.is_some_and(|s| (200..300).contains(&s)) {
            malformed_accepted += n;
        }
        if status.is_some_and(|s| s >= 500) {
            server_errors += n;
        }
        if status.is_none() {
            transport_errors += n;
        }
    }
    let mut lat = run.latencies_us.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !lat.is_empty() {
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        println!(
            "  update latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
    let mut failed = false;
    if malformed_accepted > 0 {
        eprintln!("publisher: FAIL: {malformed_accepted} malformed request(s) were accepted (2xx)");
        failed = true;
    }
    if server_errors > 0 {
        eprintln!("publisher: FAIL: {server_errors} request(s) answered 5xx");
        failed = true;
    }
    if transport_errors > 0 && !run.opts.allow_transport_errors {
        eprintln!("publisher: FAIL: {transport_errors} request(s) failed in transit");
        failed = true;
    }

    // 4. Versions add up: start + updates acknowledged with an event (only meaningful when no
    //    request's fate is unknown).
    if !run.opts.no_verify {
        if transport_errors > 0 {
            println!("  verify: skipped (requests failed in transit may or may not have applied)");
        } else {
            let mut wrong = 0;
            let mut total = 0;
            for (i, start) in initial.iter().enumerate() {
                let events = run.events[i].load(Ordering::Relaxed);
                total += events;
                match current_version(&run, i).await {
                    Ok(v) if v == start + events => {}
                    Ok(v) => {
                        eprintln!(
                            "publisher: {}-{i}: version {v}, expected {start} + {events} = {}",
                            run.opts.prefix,
                            start + events
                        );
                        wrong += 1;
                    }
                    Err(e) => {
                        eprintln!("publisher: reading {}-{i}: {e}", run.opts.prefix);
                        wrong += 1;
                    }
                }
            }
            if wrong == 0 {
                println!(
                    "  verify: {} docs, versions add up ({total} events)",
                    run.opts.docs
                );
            } else {
                eprintln!("publisher: FAIL: {wrong} document(s) whose version does not add up");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Creates document `i` (or finds it): its version.
async fn create(run: &Run, i: usize) -> Result<u64, String> {
    let url = format!(
        "{}/api/{}",
        run.opts.url.trim_end_matches('/'),
        run.opts.collection
    );
    let body = json!({"id": format!("{}-{i}", run.opts.prefix), "name": format!("Doc {i}"),
                      "gold": 0, "level": 1, "experience": 0});
    let response = run
        .http
        .post(url)
        .header("X-Client-Id", &run.opts.client_id)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        StatusCode::CREATED => body["document"]["version"]
            .as_u64()
            .ok_or_else(|| format!("no version in {body}")),
        StatusCode::CONFLICT if body["error"]["code"] == "already_exists" => current_version(run, i).await,
        s => Err(format!("{s}: {body}")),
    }
}

async fn current_version(run: &Run, i: usize) -> Result<u64, String> {
    let response = run
        .http
        .get(run.doc_url(i))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != StatusCode::OK {
        return Err(format!("{status}: {body}"));
    }
    body["version"]
        .as_u64()
        .ok_or_else(|| format!("no version in {body}"))
}

/// Sends one request of `kind` against document `doc` and counts the answer.
async fn request(run: &Run, kind: Kind, doc: usize) {
    let n = run.counter.fetch_add(1, Ordering::Relaxed);
    let gold = rand::rng().random_range(0..1_000_000);
    let good_patch = json!([
        {"op": "add", "path": "/gold", "value": gold},
        {"op": "add", "path": "/experience", "value": n},
    ])
    .to_string();
    let json_patch = "application/json-patch+json";
    let (content_type, body, if_match) = match kind {
        Kind::Update => (json_patch, good_patch, None),
        Kind::BadJson => (
            json_patch,
            r#"[{"op": "add", "path": "/gold", "value": 1"#.to_string(),
            None,
        ),
        Kind::BadPatch => {
            let bad = match n % 3 {
                0 => json!([{"op": "frobnicate", "path": "/gold"}]),
                1 => json!([{"op": "remove", "path": "/no_such_field/at_all"}]),
                _ => json!({"op": "add", "path": "/gold", "value": 1}),
            };
            (json_patch, bad.to_string(), None)
        }
        Kind::WrongContentType => ("text/plain", good_patch, None),
        Kind::StaleIfMatch => {
            // Any version below the highest seen is stale: the document is at least there.
            let known = run.known[doc].load(Ordering::Relaxed);
            let stale = if known >= 2 { known - 1 } else { known + 1_000_000 };
            (json_patch, good_patch, Some(format!("\"{stale}\"")))
        }
    };
    let mut req = run
        .http
        .request(Method::PATCH, run.doc_url(doc))
        .header("X-Client-Id", &run.opts.client_id)
        .header(CONTENT_TYPE, content_type)
        .body(body);
    if let Some(v) = if_match {
        req = req.header(IF_MATCH, v);
    }
    let started = Instant::now();
    let response = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                "timeout"
            } else {
                "transport error"
            };
            run.count(kind, what.to_string());
            return;
        }
    };
    let status = response.status();
    let body: Value = match response.bytes().await {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        Err(_) => {
            run.count(kind, "transport error".to_string());
            return;
        }
    };
    if kind == Kind::Update {
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        run.latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(us);
    }
    if status.is_success() {
        if let Some(v) = body["document"]["version"].as_u64() {
            run.known[doc].fetch_max(v, Ordering::Relaxed);
        }
        if body["event"].is_object() {
            run.events[doc].fetch_add(1, Ordering::Relaxed);
        }
    }
    let code = body["error"]["code"]
        .as_str()
        .map(|c| format!(" {c}"))
        .unwrap_or_default();
    run.count(kind, format!("{}{code}", status.as_u16()));
}
