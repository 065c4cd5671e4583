//! One SSE session, then events until the stream ends. It opens one of two ways:
//!
//! - every subscription a whole collection: `GET /sync/sse?client_id=..&subscribe=..&state_vector=..`
//!   (with `Last-Event-ID` when resuming);
//! - any scope among them (or a URL that would be too long): `POST /sync/sse` with
//!   `{"client_id", "subscribe", "state_vector"}`, answered `{"resume": id, ...}`, then
//!   `GET /sync/sse?resume=<id>` — without `Last-Event-ID`: the registration's vector says what the
//!   client has. A resume id is single-use and short-lived, so every (re)connection registers again.
//!
//! Receive-only: a resync is a reconnect, so is a change of subscriptions; writes go over REST
//! ([`super::rest`]); acknowledgements are implied by `Last-Event-ID` (or the next registration's
//! vector). Presence messages go over the stream's back channel (`POST /sync/sse/{stream}`, the
//! stream named by its first frame; [`super::presence`]).

use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::subs::{self, Via};
use super::task::{self, Conn, End, Next, TaskState};
use super::{endpoint, ClientError, Command, Shared, Status};
use eventsync_protocol::messages::{ClientMessage, Subscription};

/// A `GET` URL longer than this registers with `POST /sync/sse` instead (the server reads URIs of
/// up to 64 KiB).
const MAX_GET_URL: usize = 32 * 1024;

pub(crate) async fn session(
    shared: &Shared,
    st: &mut TaskState,
    commands: &mut mpsc::Receiver<Command>,
    cancel: &CancellationToken,
    http: &reqwest::Client,
) -> End {
    let options = &shared.options;
    let client = options.client_id.as_str();
    let subscriptions = shared.subscriptions();
    let vector = shared.replica().vector().clone();
    let token = shared.fresh_token().await;
    let mut url = endpoint(&shared.base, &["sync", "sse"]);
    let names: Option<Vec<&str>> = subscriptions
        .iter()
        .map(|s| match s {
            Subscription::Collection(c) => Some(c.as_str()),
            Subscription::Scope(_) => None,
        })
        .collect();
    let mut resuming = st.resume_seq > 0;
    if let Some(names) = names {
        let vector = match serde_json::to_string(&vector) {
            Ok(v) => v,
            Err(_) => return End::PENALTY,
        };
        url.query_pairs_mut()
            .append_pair("client_id", &options.client_id)
            .append_pair("subscribe", &names.join(","))
            .append_pair("state_vector", &vector);
    }
    if url.query().is_none() || url.as_str().len() > MAX_GET_URL {
        let body = serde_json::json!({
            "client_id": options.client_id,
            "subscribe": subscriptions,
            "state_vector": vector,
        });
        let resume = tokio::select! {
            _ = cancel.cancelled() => return End::Exit,
            r = register(shared, http, &url, &body, token.as_deref()) => r,
        };
        let resume = match resume {
            Err(Refused::Hello(body)) if refused_subscribes(shared, st, &body) => {
                return End::Reconnect {
                    immediate: true,
                    penalty: false,
                };
            }
            Err(Refused::Hello(_)) => Err(End::PENALTY),
            Err(Refused::End(end)) => Err(end),
            Ok(resume) => Ok(resume),
        };
        url = match resume {
            Ok(resume) => url_with_resume(&shared.base, &resume),
            Err(end) => return end,
        };
        resuming = false;
    }
    let mut request = http
        .get(url)
        .header(ACCEPT, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache");
    if resuming {
        request = request.header("Last-Event-ID", st.resume_seq.to_string());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::select! {
        _ = cancel.cancelled() => return End::Exit,
        r = tokio::time::timeout(options.connect_timeout, request.send()) => r,
    };
    let mut response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "SSE connect failed");
            shared.stat(|s| s.connect_failures += 1);
            return End::RETRY;
        }
        Err(_) => {
            tracing::debug!(%client, "SSE connect timed out");
            shared.stat(|s| s.connect_failures += 1);
            return End::RETRY;
        }
    };
    let status = response.status();
    let is_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if status != StatusCode::OK || !is_stream {
        let body = tokio::time::timeout(std::time::Duration::from_secs(2), response.chunk())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned())
            .unwrap_or_default();
        tracing::warn!(%client, %status, %body, "SSE refused; reconnecting");
        shared.stat(|s| {
            s.connect_failures += 1;
            if status == StatusCode::UNAUTHORIZED {
                s.unauthenticated += 1;
            }
        });
        if refused_subscribes(shared, st, body.as_bytes()) {
            return End::Reconnect {
                immediate: true,
                penalty: false,
            };
        }
        // Our request was refused (4xx): do not hammer the server with it.
        return if status.is_client_error() || (status.is_success() && !is_stream) {
            End::PENALTY
        } else {
            End::RETRY
        };
    }
    shared.stat(|s| s.connects += 1);
    shared.set_status(Status::Syncing);
    tracing::debug!(%client, "SSE connected");

    let mut conn = Conn::new();
    let mut parser = SseParser::new(options.max_message_bytes);
    let mut events = Vec::new();
    let mut tick = tokio::time::interval(task::tick_period(shared));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => return End::Exit,
            command = commands.recv() => match command {
                None => return End::Exit,
                Some(Command::Write(_, reply)) => {
                    // Writes with SSE go over REST, not through the task.
                    let _ = reply.send(Err(ClientError::InvalidWrite("SSE writes go over REST".into())));
                    Next::Continue
                }
                Some(Command::Sync) => Next::Resync,
                Some(Command::Disconnect) => return End::Offline,
                Some(Command::Reconnect) => Next::Continue,
                // The stream carries the token it was opened with: reopen it with the new one.
                Some(Command::Auth) => return End::RETRY,
                // The stream carries the subscriptions it was opened with: reopen it with the new
                // set (from the vector: a resume position says nothing of a new subscription).
                Some(Command::Subscribe(s, reply)) => {
                    if subs::subscribe(shared, &mut st.subs, *s, reply, Via::Hello) {
                        st.resume_seq = 0;
                        return End::Reconnect { immediate: true, penalty: false };
                    }
                    Next::Continue
                }
                Some(Command::Unsubscribe(id, reply)) => {
                    if subs::unsubscribe(shared, &mut st.subs, id, reply, Via::Hello) {
                        st.resume_seq = 0;
                        return End::Reconnect { immediate: true, penalty: false };
                    }
                    Next::Continue
                }
                // Over the back channel, once the stream has named itself (until then, the
                // stream's first frame makes it join every channel, this one included).
                Some(Command::Ephemeral(message)) => {
                    if let Some(stream) = conn.stream.clone() {
                        back_channel(shared, http, &stream, &message).await;
                    }
                    Next::Continue
                }
            },
            chunk = response.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    conn.last_received = tokio::time::Instant::now();
                    if let Err(why) = parser.feed(&bytes, &mut events) {
                        tracing::warn!(%client, %why, "bad SSE stream; reconnecting");
                        shared.stat(|s| s.garbage += 1);
                        return End::PENALTY;
                    }
                    let mut next = Next::Continue;
                    for event in events.drain(..) {
                        next = task::on_text(shared, st, &mut conn, &event.data, Some(&event.event));
                        if next != Next::Continue {
                            break;
                        }
                    }
                    events.clear();
                    if conn.rejoin {
                        conn.rejoin = false;
                        if let Some(stream) = conn.stream.clone() {
                            let joins = shared.presence().rejoin();
                            for join in &joins {
                                back_channel(shared, http, &stream, join).await;
                            }
                        }
                    }
                    next
                }
                Ok(None) => {
                    tracing::debug!(%client, "SSE stream ended");
                    return End::RETRY;
                }
                Err(e) => {
                    tracing::debug!(%client, error = %e, "SSE stream failed");
                    return End::RETRY;
                }
            },
            _ = tick.tick() => match task::housekeeping(shared, st, &conn).await {
                Some(end) => return end,
                None => Next::Continue,
            },
        };
        match next {
            Next::Continue => {}
            Next::End(end) => return end,
            Next::Resync => {
                // The vector of a new connection says what we have. Without Last-Event-ID: the
                // server skips catch-up events at or below it, which could be the very ones missing.
                st.resume_seq = 0;
                shared.stat(|s| s.resyncs += 1);
                return End::Reconnect {
                    immediate: conn.reached_live,
                    penalty: false,
                };
            }
        }
    }
}

/// Hands a message to the stream's session (`POST /sync/sse/{stream}`), bounded in time. A refusal
/// or a failure is logged, not retried: presence is ephemeral, and the next stream joins again.
async fn back_channel(shared: &Shared, http: &reqwest::Client, stream: &str, message: &ClientMessage) {
    let client = &shared.options.client_id;
    let url = endpoint(&shared.base, &["sync", "sse", stream]);
    let mut request = http.post(url).json(message);
    if let Some(token) = shared.token() {
        request = request.bearer_auth(token);
    }
    match tokio::time::timeout(shared.options.write_timeout, request.send()).await {
        Ok(Ok(r)) if r.status().is_success() => {}
        Ok(Ok(r)) => tracing::debug!(%client, status = %r.status(), "back channel refused a message"),
        Ok(Err(e)) => tracing::debug!(%client, error = %e, "back channel failed"),
        Err(_) => tracing::debug!(%client, "back channel timed out"),
    }
}

/// A refused opening whose error body refuses the subscribes it carried: they leave the set and
/// their `subscribe` fails (see [`subs::on_hello_refused`]). True when some did.
fn refused_subscribes(shared: &Shared, st: &mut TaskState, body: &[u8]) -> bool {
    let Some(error) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|answer| super::rest::error_of(&answer))
    else {
        return false;
    };
    subs::on_hello_refused(shared, &mut st.subs, error.code, &error.message)
}

/// Why a registration gave no resume id.
enum Refused {
    /// The server refused it (4xx) with this body.
    Hello(Vec<u8>),
    /// Anything else: how the session ends.
    End(End),
}

/// `POST /sync/sse`: registers the stream's hello, answered with a single-use resume id.
async fn register(
    shared: &Shared,
    http: &reqwest::Client,
    url: &Url,
    body: &Value,
    token: Option<&str>,
) -> Result<String, Refused> {
    let options = &shared.options;
    let client = options.client_id.as_str();
    let mut request = http.post(url.clone()).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let failed = |penalty: bool, unauthenticated: bool| {
        shared.stat(|s| {
            s.connect_failures += 1;
            if unauthenticated {
                s.unauthenticated += 1;
            }
        });
        Err(Refused::End(if penalty { End::PENALTY } else { End::RETRY }))
    };
    let answer = tokio::time::timeout(options.connect_timeout, async {
        let mut response = request.send().await?;
        let status = response.status();
        // Bounded: an answer is a small JSON object (more is read no further).
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > options.max_message_bytes {
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, bytes))
    })
    .await;
    let (status, bytes) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "SSE registration failed");
            return failed(false, false);
        }
        Err(_) => {
            tracing::debug!(%client, "SSE registration timed out");
            return failed(false, false);
        }
    };
    if !status.is_success() {
        let body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        tracing::warn!(%client, %status, %body, "SSE registration refused; reconnecting");
        let refused = failed(status.is_client_error(), status == StatusCode::UNAUTHORIZED);
        // Our request was refused (4xx): the caller decides, from the error, whether a
        // subscription caused it (else it waits its penalty: do not hammer the server with it).
        return if status.is_client_error() {
            Err(Refused::Hello(bytes))
        } else {
            refused
        };
    }
    let resume = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("resume")?.as_str().map(str::to_string))
        .filter(|r| !r.is_empty());
    match resume {
        Some(resume) => Ok(resume),
        None => {
            tracing::warn!(%client, %status, "SSE registration answered without a resume id; reconnecting");
            shared.stat(|s| s.garbage += 1);
            failed(true, false)
        }
    }
}

/// `GET /sync/sse?resume=<id>`.
fn url_with_resume(base: &Url, resume: &str) -> Url {
    let mut url = endpoint(base, &["sync", "sse"]);
    url.query_pairs_mut().append_pair("resume", resume);
    url
}

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    pub data: String,
    /// The last event id, as the SSE spec keeps it (it persists across events).
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser (the WHATWG rules: `\n`, `\r\n` or `\r` end lines;
/// `:` starts a comment; `data` lines join with `\n`; an empty line dispatches), bounded: a line
/// or an event's data longer than `max` is an error.
pub(crate) struct SseParser {
    max: usize,
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    pub fn new(max: usize) -> SseParser {
        SseParser {
            max,
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            id: None,
        }
    }

    /// Feeds bytes; complete events go to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            match bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
                Some(i) => {
                    self.push(&bytes[..i])?;
                    self.after_cr = bytes[i] == b'\r';
                    self.end_line(out)?;
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.push(bytes)?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.line.len() + bytes.len() > self.max {
            return Err(format!("a line longer than {} bytes", self.max));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) -> Result<(), String> {
        let raw = std::mem::take(&mut self.line);
        let mut line = std::str::from_utf8(&raw).map_err(|_| "a line that is not UTF-8".to_string())?;
        if !self.started {
            self.started = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: std::mem::take(&mut self.data),
                    id: self.id.clone(),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(format!("an event larger than {} bytes", self.max));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]], max: usize) -> Result<Vec<SseEvent>, String> {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn parses_events_comments_and_ids() {
        let stream = b": keepalive\n\nevent: event\nid: 7\ndata: {\"a\":1}\n\n: ping\nevent: synced\ndata: x\ndata:y\n\n";
        let events = parse_all(&[stream], 1024).unwrap();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "event".into(),
                    data: "{\"a\":1}".into(),
                    id: Some("7".into())
                },
                SseEvent {
                    event: "synced".into(),
                    data: "x\ny".into(),
                    id: Some("7".into())
                },
            ]
        );
    }

    #[test]
    fn any_line_ending_and_any_chunking() {
        let text: &[u8] = b"\xEF\xBB\xBFevent: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\ndata\n\n";
        let whole = parse_all(&[text], 1024).unwrap();
        assert_eq!(
            whole
                .iter()
                .map(|e| (e.event.as_str(), e.data.as_str()))
                .collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("message", "3"), ("message", "")]
        );
        // Byte by byte (a \r\n split between chunks included) gives the same.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse_all(&bytes, 1024).unwrap(), whole);
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(parse_all(&[a, b], 1024).unwrap(), whole, "split at {split}");
        }
    }

    #[test]
    fn events_without_data_and_unfinished_events_are_not_dispatched() {
        assert!(parse_all(&[b"event: x\n\nid: 3\n\n: c\n\ndata: partial"], 1024)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bounds_and_bad_bytes_are_errors() {
        assert!(parse_all(&[&[b'a'; 100][..]], 64).is_err(), "an endless line");
        assert!(
            parse_all(&[b"data: 0123456789\n", b"data: 0123456789\n"], 20).is_err(),
            "a huge event"
        );
        assert!(parse_all(&[b"data: \xff\xfe\n\n"], 64).is_err(), "not UTF-8");
    }
}
