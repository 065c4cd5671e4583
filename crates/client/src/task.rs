//! The client's background task: connect, run a session (WebSocket or SSE), wait out the backoff,
//! again — until closed. What both transports share lives here: applying messages, the ack
//! position, the resync rules, pending writes, persistence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::replica::{Applied, Replica};
use super::subs::{self, SubOps, Via};
use super::{sse, ws, BroadcastChange, Change, ClientError, Command, Shared, Status, Transport};
use eventsync_protocol::messages::{ResultMessage, ServerMessage, WriteMessage};
use eventsync_protocol::model::Seq;

/// After a protocol-violation close (4xxx) or garbage, the next delay is drawn from this attempt's
/// ceiling (the cap, with the default backoff).
const PENALTY_ATTEMPT: u32 = 6;
/// Catch-ups in a row that still left a gap before the client gives the connection up.
const MAX_DIRTY_SYNCS: u32 = 3;
/// Longest a single send may take before the connection is considered dead.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the replica file is written at most.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Closed: stop the task.
    Exit,
    /// [`Client::disconnect`](super::Client::disconnect): stay offline until told otherwise.
    Offline,
    /// Connect again: at once (`immediate`), or after the backoff (`penalty`: a long one).
    Reconnect { immediate: bool, penalty: bool },
}

impl End {
    pub const RETRY: End = End::Reconnect {
        immediate: false,
        penalty: false,
    };
    pub const PENALTY: End = End::Reconnect {
        immediate: false,
        penalty: true,
    };
}

/// What to do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    /// Ask for what is missing (`sync` over WebSocket; a reconnect over SSE).
    Resync,
    End(End),
}

/// A write waiting for its result (WebSocket).
struct PendingWrite {
    order: u64,
    write: Box<WriteMessage>,
    reply: oneshot::Sender<Result<ResultMessage, ClientError>>,
    /// Sent on the current connection.
    sent: bool,
}

/// Writes waiting for their result, by `op_id`: sent in order, at most `max_inflight` unanswered
/// at once (the server refuses more), and all sent again on every new connection — the same
/// `op_id` is applied at most once by the server.
#[derive(Default)]
pub(crate) struct Pending {
    writes: HashMap<String, PendingWrite>,
    next: u64,
}

impl Pending {
    /// Adds a write; answers at once (and returns false) if it cannot wait.
    pub fn add(
        &mut self,
        write: Box<WriteMessage>,
        reply: oneshot::Sender<Result<ResultMessage, ClientError>>,
        max: usize,
    ) -> bool {
        self.purge();
        if self.writes.len() >= max {
            let _ = reply.send(Err(ClientError::TooManyWrites));
            return false;
        }
        if self.writes.contains_key(&write.op_id) {
            let _ = reply.send(Err(ClientError::InvalidWrite(format!(
                "a write with op_id {:?} is already waiting",
                write.op_id
            ))));
            return false;
        }
        self.next += 1;
        let entry = PendingWrite {
            order: self.next,
            write,
            reply,
            sent: false,
        };
        self.writes.insert(entry.write.op_id.clone(), entry);
        true
    }

    /// Hands a result to its writer. False when nobody waits for it (a replay, a late answer).
    pub fn complete(&mut self, result: ResultMessage) -> bool {
        match self.writes.remove(&result.op_id) {
            Some(p) => p.reply.send(Ok(result)).is_ok(),
            None => false,
        }
    }

    /// Forgets writes whose writer stopped waiting (timed out, dropped).
    pub fn purge(&mut self) {
        self.writes.retain(|_, p| !p.reply.is_closed());
    }

    /// A new connection: nothing is sent on it yet.
    pub fn unsend_all(&mut self) {
        for p in self.writes.values_mut() {
            p.sent = false;
        }
    }

    /// The oldest write not yet sent on this connection, if fewer than `max_inflight` are
    /// unanswered; marked sent.
    pub fn next_to_send(&mut self, max_inflight: usize) -> Option<WriteMessage> {
        if self.writes.values().filter(|p| p.sent).count() >= max_inflight {
            return None;
        }
        let next = self
            .writes
            .values_mut()
            .filter(|p| !p.sent)
            .min_by_key(|p| p.order)?;
        next.sent = true;
        Some((*next.write).clone())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.writes.len()
    }
}

/// What outlives a connection.
pub(crate) struct TaskState {
    pub pending: Pending,
    /// Subscription changes waiting for the server.
    pub subs: SubOps,
    /// The position a new SSE connection resumes from (`Last-Event-ID`): the last one that could
    /// be acknowledged (0: none).
    pub resume_seq: Seq,
    /// Reconnect attempts since the client was last live.
    pub attempt: u32,
    saved_modified: u64,
    last_save: Instant,
}

/// One connection's bookkeeping.
pub(crate) struct Conn {
    /// A `hello` or `sync` is unanswered: events may be catch-up, gaps are expected to be filled.
    pub sync_in_flight: bool,
    /// A gap or an invalid message was seen while a sync was in flight: sync again after `synced`.
    pub dirty: bool,
    dirty_syncs: u32,
    pub reached_live: bool,
    /// Everything up to here is applied (the last `synced`, then live events without a gap).
    pub ack_pos: Seq,
    pub acked: Seq,
    /// A `synced` was just applied: acknowledge without waiting for the interval.
    pub ack_now: bool,
    pub last_ack: Instant,
    pub last_received: Instant,
    /// An SSE stream's id (its first frame), for the back channel.
    pub stream: Option<String>,
    /// The stream just named itself: join the presence channels again over the back channel.
    pub rejoin: bool,
}

impl Conn {
    pub fn new() -> Conn {
        let now = Instant::now();
        Conn {
            sync_in_flight: true,
            dirty: false,
            dirty_syncs: 0,
            reached_live: false,
            ack_pos: 0,
            acked: 0,
            ack_now: false,
            last_ack: now,
            last_received: now,
            stream: None,
            rejoin: false,
        }
    }

    /// The position to acknowledge now, if any.
    pub fn ack_due(&mut self, interval: Duration) -> Option<Seq> {
        if self.sync_in_flight || self.ack_pos <= self.acked {
            return None;
        }
        if !self.ack_now && self.last_ack.elapsed() < interval {
            return None;
        }
        self.ack_now = false;
        self.acked = self.ack_pos;
        self.last_ack = Instant::now();
        Some(self.ack_pos)
    }

    /// A resync was requested: what arrives now is catch-up again.
    pub fn resyncing(&mut self) {
        self.sync_in_flight = true;
        self.dirty = false;
    }
}

/// A server message as read off the wire.
#[derive(Debug)]
pub(crate) enum Parsed {
    Message(ServerMessage),
    /// Valid JSON with a `type` this client does not know: ignored (a newer server).
    Unknown(String),
    /// Not a protocol message: the connection is given up.
    Garbage(String),
}

const KNOWN_TYPES: &[&str] = &[
    "snapshot",
    "event",
    "removed",
    "synced",
    "unsubscribed",
    "result",
    "error",
    "pong",
    "authenticated",
    "presence",
    "broadcast",
    "stream",
];

pub(crate) fn parse(text: &str, sse_event: Option<&str>) -> Parsed {
    let err = match serde_json::from_str::<ServerMessage>(text) {
        Ok(m) => return Parsed::Message(m),
        Err(e) => e,
    };
    let mut value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(_) => return Parsed::Garbage(format!("not JSON: {err}")),
    };
    let Some(object) = value.as_object_mut() else {
        return Parsed::Garbage("not a JSON object".into());
    };
    match object.get("type") {
        Some(Value::String(t)) if !KNOWN_TYPES.contains(&t.as_str()) => return Parsed::Unknown(t.clone()),
        Some(_) => return Parsed::Garbage(format!("invalid message: {err}")),
        None => {}
    }
    // SSE: the type may be left to the `event:` line.
    match sse_event.filter(|t| KNOWN_TYPES.contains(t)) {
        Some(t) => {
            object.insert("type".into(), Value::String(t.to_string()));
            match serde_json::from_value::<ServerMessage>(value) {
                Ok(m) => Parsed::Message(m),
                Err(e) => Parsed::Garbage(format!("invalid message: {e}")),
            }
        }
        None => Parsed::Garbage("a message without a type".into()),
    }
}

/// Reads one message off the wire and applies it; what the session does next.
pub(crate) fn on_text(
    shared: &Shared,
    st: &mut TaskState,
    conn: &mut Conn,
    text: &str,
    sse_event: Option<&str>,
) -> Next {
    conn.last_received = Instant::now();
    match parse(text, sse_event) {
        Parsed::Message(m) => on_message(shared, st, conn, m),
        Parsed::Unknown(t) => {
            tracing::debug!(client = %shared.options.client_id, r#type = %t, "unknown message type ignored");
            shared.stat(|s| s.unknown += 1);
            Next::Continue
        }
        Parsed::Garbage(why) => {
            tracing::warn!(client = %shared.options.client_id, %why, "garbage from the server; reconnecting");
            shared.stat(|s| s.garbage += 1);
            Next::End(End::PENALTY)
        }
    }
}

/// Applies one message by the protocol's rules.
pub(crate) fn on_message(shared: &Shared, st: &mut TaskState, conn: &mut Conn, m: ServerMessage) -> Next {
    let client = &shared.options.client_id;
    match m {
        ServerMessage::Snapshot(_) | ServerMessage::Event(_) => {
            let event_seq = match &m {
                ServerMessage::Event(e) => Some(e.seq),
                _ => None,
            };
            let applied = shared.replica().apply(&m);
            if applied == Applied::Applied {
                shared.state().modified += 1;
                shared.publish(|| match m {
                    ServerMessage::Event(e) => Some(Change::Event(Arc::new(e))),
                    ServerMessage::Snapshot(s) => Some(Change::Snapshot(Arc::new(s))),
                    _ => None,
                });
            }
            shared.bump();
            match applied {
                Applied::Gap { .. } | Applied::Invalid { .. } => {
                    tracing::debug!(%client, ?applied, in_sync = conn.sync_in_flight, "missing data");
                    if conn.sync_in_flight {
                        conn.dirty = true;
                        Next::Continue
                    } else {
                        Next::Resync
                    }
                }
                _ => {
                    // A live event applied (or already had), nothing missing: acknowledgeable.
                    if let (Some(seq), false) = (event_seq, conn.sync_in_flight) {
                        conn.ack_pos = conn.ack_pos.max(seq);
                        st.resume_seq = conn.ack_pos;
                    }
                    Next::Continue
                }
            }
        }
        ServerMessage::Synced(s) if s.subscription.is_some() => {
            // The end of a live `subscribe`'s catch-up: that subscription is current. It is not
            // the end of a `hello`'s or `sync`'s catch-up, which may be running meanwhile.
            shared.replica().apply_synced(&s);
            shared.stat(|x| x.synced += 1);
            if !conn.sync_in_flight {
                conn.ack_pos = conn.ack_pos.max(s.seq);
                conn.ack_now = true;
                st.resume_seq = conn.ack_pos;
            }
            let id = s.subscription.clone().unwrap_or_default();
            subs::on_named_synced(shared, &mut st.subs, &id);
            shared.publish(|| Some(Change::Synced(Arc::new(s))));
            shared.bump();
            Next::Continue
        }
        ServerMessage::Synced(s) => {
            let applied = shared.replica().apply_synced(&s);
            if let Applied::Synced { mismatched } = applied {
                if mismatched > 0 {
                    tracing::debug!(%client, mismatched, "the server's vector differs from ours");
                }
            }
            shared.stat(|x| x.synced += 1);
            let seq = s.seq;
            shared.publish(|| Some(Change::Synced(Arc::new(s))));
            if conn.dirty {
                conn.dirty = false;
                conn.dirty_syncs += 1;
                shared.bump();
                if conn.dirty_syncs > MAX_DIRTY_SYNCS {
                    tracing::warn!(%client, "catch-ups keep leaving gaps; reconnecting");
                    return Next::End(End::PENALTY);
                }
                return Next::Resync;
            }
            conn.dirty_syncs = 0;
            conn.sync_in_flight = false;
            conn.reached_live = true;
            conn.ack_pos = conn.ack_pos.max(seq);
            conn.ack_now = true;
            st.resume_seq = conn.ack_pos;
            st.attempt = 0;
            subs::on_full_synced(shared, &mut st.subs);
            shared.state().live += 1;
            shared.set_status(Status::Live);
            shared.bump();
            Next::Continue
        }
        ServerMessage::Result(r) => {
            shared.stat(|x| x.results += 1);
            let op_id = r.op_id.clone();
            if !st.pending.complete(r) {
                tracing::debug!(%client, %op_id, "a result nobody waits for");
            }
            Next::Continue
        }
        ServerMessage::Error {
            code,
            message,
            subscription,
        } => {
            if subs::on_error(shared, &mut st.subs, code, &message, subscription.as_deref()) {
                tracing::info!(%client, %code, %message, "subscription change refused");
            } else {
                tracing::warn!(%client, %code, %message, "error from the server");
            }
            shared.stat(|x| x.server_errors += 1);
            shared.bump();
            Next::Continue
        }
        ServerMessage::Removed(r) => {
            // Live, moved out by the event `seq`: acknowledgeable as that event would be.
            if let (Some(seq), false) = (r.seq, conn.sync_in_flight) {
                conn.ack_pos = conn.ack_pos.max(seq);
                st.resume_seq = conn.ack_pos;
            }
            if shared.replica().apply_removed(&r) == Applied::Applied {
                shared.state().modified += 1;
                shared.publish(|| Some(Change::Removed(Arc::new(r))));
            }
            shared.bump();
            Next::Continue
        }
        ServerMessage::Unsubscribed { id } => {
            subs::on_unsubscribed(shared, &mut st.subs, &id);
            shared.bump();
            Next::Continue
        }
        // Presence is not part of the replica: the channels joined keep their members.
        ServerMessage::Presence {
            channel,
            event,
            member,
            members,
        } => {
            let change = shared
                .presence()
                .on_presence(channel, event, member.map(|m| *m), members);
            if let Some(change) = change {
                shared.publish(|| Some(Change::Presence(Arc::new(change))));
            }
            Next::Continue
        }
        ServerMessage::Broadcast { channel, from, data } => {
            let from = *from;
            shared.publish(|| {
                Some(Change::Broadcast(Arc::new(BroadcastChange {
                    channel,
                    from,
                    data,
                })))
            });
            Next::Continue
        }
        // An SSE stream's id: its back channel, over which the presence channels are joined again.
        ServerMessage::Stream { stream } => {
            conn.stream = Some(stream);
            conn.rejoin = true;
            Next::Continue
        }
        ServerMessage::Pong { .. } => Next::Continue,
        ServerMessage::Authenticated { .. } => {
            shared.stat(|s| s.authenticated += 1);
            Next::Continue
        }
    }
}

/// The task: sessions and the waits between them, until cancelled.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    cancel: CancellationToken,
    http: reqwest::Client,
) {
    let mut st = TaskState {
        pending: Pending::default(),
        subs: SubOps::default(),
        resume_seq: 0,
        attempt: 0,
        saved_modified: 0,
        last_save: Instant::now(),
    };
    let mut offline = false;
    let mut first = true;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if offline {
            shared.set_status(Status::Offline);
            match wait(&shared, &mut st, &mut commands, &cancel, None).await {
                Wake::Exit => break,
                Wake::Offline => continue,
                Wake::Connect => offline = false,
            }
        }
        if !first {
            shared.stat(|s| s.reconnects += 1);
        }
        first = false;
        subs::connection_started(&shared);
        shared.set_status(Status::Connecting);
        let end = match shared.options.transport {
            Transport::WebSocket => ws::session(&shared, &mut st, &mut commands, &cancel).await,
            Transport::Sse => sse::session(&shared, &mut st, &mut commands, &cancel, &http).await,
        };
        tracing::debug!(client = %shared.options.client_id, ?end, "session ended");
        match end {
            End::Exit => break,
            End::Offline => offline = true,
            End::Reconnect { immediate, penalty } => {
                if penalty {
                    st.attempt = st.attempt.max(PENALTY_ATTEMPT);
                }
                let delay = if immediate {
                    Duration::ZERO
                } else {
                    let d = shared.options.reconnect.delay(st.attempt);
                    st.attempt = st.attempt.saturating_add(1);
                    d
                };
                shared.set_status(Status::Offline);
                match wait(&shared, &mut st, &mut commands, &cancel, Some(delay)).await {
                    Wake::Exit => break,
                    Wake::Offline => offline = true,
                    Wake::Connect => {}
                }
            }
        }
    }
    // Writers still waiting learn that no answer will come.
    for w in std::mem::take(&mut st.pending).writes.into_values() {
        let _ = w.reply.send(Err(ClientError::Closed));
    }
    st.subs.close();
    maybe_save(&shared, &mut st, true).await;
    shared.close_changes();
    shared.set_status(Status::Closed);
}

enum Wake {
    Exit,
    Offline,
    Connect,
}

/// Waits while not connected: `delay` (a backoff) or, with `None`, until [`Command::Reconnect`].
/// Writes made meanwhile wait in `pending`.
async fn wait(
    shared: &Shared,
    st: &mut TaskState,
    commands: &mut mpsc::Receiver<Command>,
    cancel: &CancellationToken,
    delay: Option<Duration>,
) -> Wake {
    let until = delay.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Wake::Exit,
            command = commands.recv() => match command {
                None => return Wake::Exit,
                Some(Command::Write(w, reply)) => {
                    st.pending.add(w, reply, shared.options.max_pending_writes);
                }
                Some(Command::Disconnect) => return Wake::Offline,
                Some(Command::Reconnect) => return Wake::Connect,
                // A new token: the next attempt uses it, without waiting out a refusal's backoff
                // (but a disconnected client stays so).
                Some(Command::Auth) => {
                    if until.is_some() {
                        return Wake::Connect;
                    }
                }
                Some(Command::Sync) => {
                    if until.is_some() {
                        return Wake::Connect;
                    }
                }
                // Not connected: the next connection's hello carries the change.
                Some(Command::Subscribe(s, reply)) => {
                    if subs::subscribe(shared, &mut st.subs, *s, reply, Via::Hello) {
                        st.resume_seq = 0;
                    }
                }
                Some(Command::Unsubscribe(id, reply)) => {
                    if subs::unsubscribe(shared, &mut st.subs, id, reply, Via::Hello) {
                        st.resume_seq = 0;
                    }
                }
                // Not connected: the next connection joins the channels again.
                Some(Command::Ephemeral(_)) => {}
            },
            _ = sleep_until(until) => return Wake::Connect,
            _ = tick.tick() => {
                st.pending.purge();
                maybe_save(shared, st, false).await;
            }
        }
    }
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The period of a session's housekeeping tick (acks, pings, idle check, persistence).
pub(crate) fn tick_period(shared: &Shared) -> Duration {
    (shared.options.ack_interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// Housekeeping common to both transports; `Some` when the connection must end.
pub(crate) async fn housekeeping(shared: &Shared, st: &mut TaskState, conn: &Conn) -> Option<End> {
    st.pending.purge();
    maybe_save(shared, st, false).await;
    if conn.last_received.elapsed() > shared.options.idle_timeout {
        tracing::info!(client = %shared.options.client_id, "nothing from the server for too long; reconnecting");
        return Some(End::RETRY);
    }
    None
}

/// Loads a persisted replica: a missing file is an empty replica, an unreadable one too (with a
/// warning: the server sends everything again).
pub(crate) async fn load(path: &Path) -> Result<Replica, ClientError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => match serde_json::from_slice::<Replica>(&bytes) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "persisted replica unreadable; starting empty");
                Ok(Replica::new())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Replica::new()),
        Err(e) => Err(ClientError::Persist(format!("{}: {e}", path.display()))),
    }
}

/// Saves the replica if persisted, changed, and (unless `force`) not saved within the last second.
pub(crate) async fn maybe_save(shared: &Shared, st: &mut TaskState, force: bool) {
    let Some(path) = shared.options.persist.clone() else {
        return;
    };
    let modified = shared.state().modified;
    if modified == st.saved_modified || (!force && st.last_save.elapsed() < SAVE_INTERVAL) {
        return;
    }
    let replica = shared.replica().clone();
    st.saved_modified = modified;
    st.last_save = Instant::now();
    let result = tokio::task::spawn_blocking(move || save(&path, &replica)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(client = %shared.options.client_id, error = %e, "saving the replica failed")
        }
        Err(e) => tracing::warn!(client = %shared.options.client_id, error = %e, "saving the replica failed"),
    }
}

/// Writes the replica atomically: a temporary file beside it, then a rename.
fn save(path: &Path, replica: &Replica) -> std::io::Result<()> {
    let json = serde_json::to_vec(replica).map_err(std::io::Error::other)?;
    let mut tmp = PathBuf::from(path);
    let name = format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    );
    tmp.set_file_name(name);
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parsing_tells_messages_unknown_types_and_garbage_apart() {
        assert!(matches!(
            parse(r#"{"type":"pong","id":1}"#, None),
            Parsed::Message(ServerMessage::Pong { .. })
        ));
        assert!(matches!(parse(r#"{"type":"future","x":1}"#, None), Parsed::Unknown(t) if t == "future"));
        for garbage in [
            "",
            "{",
            "[1]",
            "null",
            r#"{"type":"event","seq":"x"}"#,
            r#"{"type":7}"#,
            r#"{"seq":1}"#,
            r#"{"type":"snapshot","collection":"g","id":"x","version":-1,"data":null}"#,
        ] {
            assert!(matches!(parse(garbage, None), Parsed::Garbage(_)), "{garbage}");
        }
        // SSE: the type may come from the `event:` line only.
        let synced = json!({"seq": 3, "state_vector": {}, "snapshots": 0, "events": 0}).to_string();
        assert!(matches!(
            parse(&synced, Some("synced")),
            Parsed::Message(ServerMessage::Synced(_))
        ));
        assert!(matches!(parse(&synced, Some("whatever")), Parsed::Garbage(_)));
    }

    #[test]
    fn acks_wait_for_the_sync_and_the_interval() {
        let mut c = Conn::new();
        c.ack_pos = 5;
        assert_eq!(c.ack_due(Duration::ZERO), None, "not while a sync is in flight");
        c.sync_in_flight = false;
        c.ack_now = true;
        assert_eq!(
            c.ack_due(Duration::from_secs(3600)),
            Some(5),
            "a synced is acknowledged at once"
        );
        c.ack_pos = 9;
        assert_eq!(
            c.ack_due(Duration::from_secs(3600)),
            None,
            "then at most once per interval"
        );
        assert_eq!(c.ack_due(Duration::ZERO), Some(9));
        assert_eq!(c.ack_due(Duration::ZERO), None, "nothing new");
        c.resyncing();
        c.ack_pos = 12;
        assert_eq!(c.ack_due(Duration::ZERO), None);
    }

    #[test]
    fn pending_writes_keep_their_order_and_bound() {
        let w = |op_id: &str| {
            Box::new(WriteMessage {
                op_id: op_id.into(),
                op: eventsync_protocol::messages::WriteOp::Delete,
                collection: "g".into(),
                id: Some("x".into()),
                data: None,
                patch: None,
                expected_version: None,
            })
        };
        let mut p = Pending::default();
        let (t1, mut r1) = oneshot::channel();
        let (t2, _r2) = oneshot::channel();
        let (t3, mut r3) = oneshot::channel();
        let (t4, mut r4) = oneshot::channel();
        assert!(p.add(w("b"), t1, 2));
        assert!(p.add(w("a"), t2, 2));
        assert!(!p.add(w("c"), t3, 2));
        assert!(matches!(r3.try_recv(), Ok(Err(ClientError::TooManyWrites))));
        // In order, at most one unanswered at a time here.
        assert_eq!(p.next_to_send(1).unwrap().op_id, "b");
        assert!(p.next_to_send(1).is_none());
        assert_eq!(p.next_to_send(2).unwrap().op_id, "a");
        assert!(p.next_to_send(5).is_none(), "all sent");
        p.unsend_all();
        assert_eq!(
            p.next_to_send(5).unwrap().op_id,
            "b",
            "a new connection sends all again"
        );
        assert!(!p.add(w("a"), t4, 5));
        assert!(matches!(r4.try_recv(), Ok(Err(ClientError::InvalidWrite(_)))));
        let result = ResultMessage {
            op_id: "b".into(),
            ok: true,
            id: None,
            version: None,
            seq: None,
            replayed: false,
            error: None,
        };
        assert!(p.complete(result.clone()));
        assert!(matches!(r1.try_recv(), Ok(Ok(r)) if r.op_id == "b"));
        assert!(!p.complete(result));
        drop(_r2);
        p.purge();
        assert_eq!(p.len(), 0);
    }
}
