//! `GET /metrics` on `--metrics-listen`: the figures move as traffic flows — sessions open and
//! close, writes by outcome, commits, deliveries, bytes, catch-ups, refusals — and metrics are not
//! served on the public port, nor anything else on theirs.
//!
//! One test in this binary, since the recorder is the process's: no other server here counts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{poll, rest_create, send, TestServer, WsClient};
use serde_json::json;

/// The samples of a scrape: `name{labels}` → value.
async fn scrape(s: &TestServer) -> BTreeMap<String, f64> {
    let url = s.metrics_url().expect("the server serves metrics");
    let resp = s.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
            (
                name.to_string(),
                value.parse().unwrap_or_else(|_| panic!("not a value: {l}")),
            )
        })
        .collect()
}

fn get(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn the_figures_move_as_traffic_flows() {
    let s = TestServer::start(&["--metrics-listen", "127.0.0.1:0"]);
    let before = scrape(&s).await;
    assert_eq!(get(&before, r#"eventsync_sessions{transport="ws"}"#), 0.0);

    // A WebSocket session: open, caught up.
    let mut ws = WsClient::connect(&s).await;
    ws.hello("m1", &["games"], None).await;
    let open = scrape(&s).await;
    assert_eq!(get(&open, r#"eventsync_sessions{transport="ws"}"#), 1.0);
    assert!(get(&open, "eventsync_catch_ups_total") >= get(&before, "eventsync_catch_ups_total") + 1.0);
    assert!(get(&open, "eventsync_catch_up_seconds_count") >= 1.0);

    // Five writes, each delivered live to the session.
    let mut last = 0;
    for i in 0..5 {
        last = rest_create(&s, "games", &format!("g{i}"), json!({ "n": i })).await;
    }
    ws.recv_through_seq(last).await;
    // A refusal by the rules, and one of the HTTP layer's.
    let (status, _) = send(
        s.http
            .put(format!("{}/api/games/g0", s.url))
            .header("if-match", "\"7\"")
            .json(&json!({ "n": 9 })),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = send(
        s.http
            .post(format!("{}/api/games", s.url))
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    assert_eq!(status, 400);

    let after = scrape(&s).await;
    let delta = |name: &str| get(&after, name) - get(&before, name);
    assert_eq!(delta(r#"eventsync_writes_total{outcome="applied"}"#), 5.0);
    assert_eq!(delta(r#"eventsync_writes_total{outcome="refused"}"#), 1.0);
    assert!(delta("eventsync_commit_seconds_count") >= 1.0);
    assert!(
        delta("eventsync_commit_batch_size_sum") >= 6.0,
        "six writes went through a commit"
    );
    assert!(get(&after, "eventsync_write_queue_depth") >= 0.0);
    assert_eq!(delta(r#"eventsync_deliveries_total{transport="ws"}"#), 5.0);
    assert!(
        delta("eventsync_bytes_out_total") > 1000.0,
        "five answers and five events were written"
    );
    assert_eq!(
        delta(r#"eventsync_refusals_total{reason="version_conflict"}"#),
        1.0
    );
    assert_eq!(delta(r#"eventsync_refusals_total{reason="invalid_json"}"#), 1.0);

    // An SSE stream counts while it is open; closing the WebSocket is counted down.
    let sse = s
        .http
        .get(format!("{}/sync/sse?client_id=m2&subscribe=games", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    drop(ws);
    poll(
        Duration::from_secs(10),
        "the gauges follow the sessions",
        || async {
            let now = scrape(&s).await;
            (get(&now, r#"eventsync_sessions{transport="sse"}"#) == 1.0
                && get(&now, r#"eventsync_sessions{transport="ws"}"#) == 0.0)
                .then_some(())
        },
    )
    .await;
    drop(sse);

    // Not on the public port; nothing but metrics on theirs.
    let (status, _) = send(s.http.get(format!("{}/metrics", s.url))).await;
    assert_eq!(status, 404);
    let metrics = s.metrics_url().unwrap();
    let (status, body) = send(s.http.get(metrics.replace("/metrics", "/api/health"))).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}
