//! One WebSocket session: `GET /sync/ws`, `hello` with the current subscriptions and the replica's
//! vector, then messages both ways until the connection ends (live subscription changes among
//! them: `subscribe` / `unsubscribe`, see [`super::subs`]).

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::subs::{self, Via};
use super::task::{self, Conn, End, Next, TaskState, SEND_TIMEOUT};
use super::{endpoint, Command, Shared, Status};
use eventsync_protocol::messages::{ClientMessage, Hello};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs one connection to its end.
pub(crate) async fn session(
    shared: &Shared,
    st: &mut TaskState,
    commands: &mut mpsc::Receiver<Command>,
    cancel: &CancellationToken,
) -> End {
    let options = &shared.options;
    let client = options.client_id.as_str();
    let mut url = endpoint(&shared.base, &["sync", "ws"]);
    if url.set_scheme("ws").is_err() {
        return End::PENALTY;
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_message_bytes))
        .max_frame_size(Some(options.max_message_bytes))
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(options.max_message_bytes.saturating_mul(2));
    let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
    let connected = tokio::select! {
        _ = cancel.cancelled() => return End::Exit,
        r = tokio::time::timeout(options.connect_timeout, connect) => r,
    };
    let mut ws = match connected {
        Ok(Ok((ws, _response))) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%client, %url, error = %e, "WebSocket connect failed");
            shared.stat(|s| s.connect_failures += 1);
            return End::RETRY;
        }
        Err(_) => {
            tracing::debug!(%client, %url, "WebSocket connect timed out");
            shared.stat(|s| s.connect_failures += 1);
            return End::RETRY;
        }
    };
    shared.stat(|s| s.connects += 1);
    tracing::debug!(%client, "WebSocket connected");
    let mut conn = Conn::new();
    let token = shared.fresh_token().await;
    // Changes not yet carried out go with the hello, which says the current set.
    subs::absorb(shared, &mut st.subs);
    let hello = ClientMessage::Hello(Hello {
        client_id: options.client_id.clone(),
        subscribe: shared.subscriptions(),
        state_vector: Some(shared.replica().vector().clone()),
        token,
    });
    if send(&mut ws, &hello).await.is_err() {
        return End::RETRY;
    }
    // The presence channels joined, again (the server answers each after the catch-up's start).
    let joins = shared.presence().rejoin();
    for join in &joins {
        if send(&mut ws, join).await.is_err() {
            return End::RETRY;
        }
    }
    shared.set_status(Status::Syncing);
    st.pending.unsend_all();
    while let Some(write) = st.pending.next_to_send(options.max_inflight_writes) {
        if send(&mut ws, &ClientMessage::Write(write)).await.is_err() {
            return End::RETRY;
        }
        shared.stat(|s| s.writes_sent += 1);
    }

    let mut tick = tokio::time::interval(task::tick_period(shared));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = tokio::time::Instant::now();
    let mut ping_id: u64 = 0;
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                close(&mut ws).await;
                return End::Exit;
            }
            command = commands.recv() => match command {
                None => {
                    close(&mut ws).await;
                    return End::Exit;
                }
                Some(Command::Write(write, reply)) => {
                    st.pending.add(write, reply, options.max_pending_writes);
                    Next::Continue
                }
                Some(Command::Sync) => Next::Resync,
                Some(Command::Disconnect) => {
                    close(&mut ws).await;
                    return End::Offline;
                }
                Some(Command::Reconnect) => Next::Continue,
                Some(Command::Auth) => match shared.token() {
                    Some(token) => {
                        if send(&mut ws, &ClientMessage::Auth { token }).await.is_err() {
                            return End::RETRY;
                        }
                        Next::Continue
                    }
                    None => Next::Continue,
                },
                // Queued: sent once live, one at a time (below).
                Some(Command::Subscribe(s, reply)) => {
                    subs::subscribe(shared, &mut st.subs, *s, reply, Via::Socket);
                    Next::Continue
                }
                Some(Command::Unsubscribe(id, reply)) => {
                    subs::unsubscribe(shared, &mut st.subs, id, reply, Via::Socket);
                    Next::Continue
                }
                Some(Command::Ephemeral(message)) => {
                    if send(&mut ws, &message).await.is_err() {
                        return End::RETRY;
                    }
                    Next::Continue
                }
            },
            message = ws.next() => match message {
                None => {
                    tracing::debug!(%client, "WebSocket ended");
                    return End::RETRY;
                }
                Some(Err(e)) => {
                    tracing::debug!(%client, error = %e, "WebSocket error");
                    if matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                        shared.stat(|s| s.garbage += 1);
                        tracing::warn!(%client, error = %e, "oversized message from the server; reconnecting");
                        return End::PENALTY;
                    }
                    return End::RETRY;
                }
                Some(Ok(Message::Text(text))) => task::on_text(shared, st, &mut conn, text.as_str(), None),
                Some(Ok(Message::Binary(_))) => {
                    tracing::warn!(%client, "binary message from the server; reconnecting");
                    shared.stat(|s| s.garbage += 1);
                    return End::PENALTY;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    conn.last_received = tokio::time::Instant::now();
                    Next::Continue
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return closed(shared, code, &reason);
                }
            },
            _ = tick.tick() => {
                if let Some(end) = task::housekeeping(shared, st, &conn).await {
                    close(&mut ws).await;
                    return end;
                }
                if shared.refresh_due() {
                    if let Some(token) = shared.fresh_token().await {
                        if send(&mut ws, &ClientMessage::Auth { token }).await.is_err() {
                            return End::RETRY;
                        }
                    }
                }
                let quiet = conn.last_received.elapsed().min(last_ping.elapsed());
                if quiet >= options.ping_interval {
                    ping_id += 1;
                    last_ping = tokio::time::Instant::now();
                    let ping = ClientMessage::Ping { id: Some(ping_id.into()) };
                    if send(&mut ws, &ping).await.is_err() {
                        return End::RETRY;
                    }
                }
                Next::Continue
            }
        };
        match next {
            Next::Continue => {}
            Next::End(end) => {
                close(&mut ws).await;
                return end;
            }
            Next::Resync => {
                conn.resyncing();
                shared.set_status(Status::Syncing);
                shared.stat(|s| s.resyncs += 1);
                let vector = shared.replica().vector().clone();
                let sync = ClientMessage::Sync {
                    state_vector: Some(vector),
                };
                if send(&mut ws, &sync).await.is_err() {
                    return End::RETRY;
                }
            }
        }
        // A subscription change, when no catch-up runs and none is unanswered.
        if let Some(change) = subs::next_to_send(&mut st.subs, !conn.sync_in_flight) {
            if send(&mut ws, &change).await.is_err() {
                return End::RETRY;
            }
        }
        // Writes waiting, within the in-flight bound (new ones, or room made by a result).
        while let Some(write) = st.pending.next_to_send(options.max_inflight_writes) {
            if send(&mut ws, &ClientMessage::Write(write)).await.is_err() {
                return End::RETRY;
            }
            shared.stat(|s| s.writes_sent += 1);
        }
        if let Some(seq) = conn.ack_due(options.ack_interval) {
            if send(&mut ws, &ClientMessage::Ack { seq }).await.is_err() {
                return End::RETRY;
            }
            shared.stat(|s| {
                s.acks += 1;
                s.last_ack = seq;
            });
        }
    }
}

/// What a close frame from the server means for the next connection.
fn closed(shared: &Shared, code: u16, reason: &str) -> End {
    let client = shared.options.client_id.as_str();
    match code {
        4401 => {
            // The token was refused or ran out: try again after a backoff, with whatever token
            // `set_token` has put in place by then.
            tracing::warn!(%client, code, %reason, "the server refused the token; reconnecting");
            shared.stat(|s| s.unauthenticated += 1);
            End::PENALTY
        }
        1000 | 1001 | 1005 | 1006 | 1012 | 1013 => {
            tracing::debug!(%client, code, %reason, "closed by the server; reconnecting");
            End::RETRY
        }
        4000..=4999 => {
            tracing::warn!(%client, code, %reason, "closed by the server for a protocol violation; reconnecting");
            End::PENALTY
        }
        _ => {
            tracing::info!(%client, code, %reason, "closed by the server; reconnecting");
            End::RETRY
        }
    }
}

async fn send(ws: &mut Socket, message: &ClientMessage) -> Result<(), ()> {
    let text = match serde_json::to_string(message) {
        Ok(t) => t,
        Err(_) => return Err(()),
    };
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket send failed");
            Err(())
        }
        Err(_) => {
            tracing::debug!("WebSocket send timed out");
            Err(())
        }
    }
}

/// A normal close, bounded in time (a dead peer must not hold us).
async fn close(ws: &mut Socket) {
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(Some(frame))).await;
}
