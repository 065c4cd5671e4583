//! What the sync transports share — starting vectors and writes over the protocol — and the plain
//! HTTP side of sync: `POST /api/sync` (a manual sync) and `GET /api/clients/{client_id}`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{JsonBody, Path};
use super::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::model::{validate_collection, validate_id};
use crate::store::StoreError;
use crate::sync::protocol::{
    Hello, ResultMessage, ServerMessage, StateVector, SyncedMessage, WriteMessage, WriteOp,
};
use crate::sync::session::{restrict, validate_hello, Session};
use crate::write::{Mutation, Write};

/// A refused protocol message: answered with an `error` message, counted as a violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

/// Where a session starts: the vector the client sent (which is then what the server remembers for
/// it), or else the one the server remembers, or else nothing.
pub async fn initial_vector(state: &AppState, hello: &Hello) -> Result<StateVector, StoreError> {
    match &hello.state_vector {
        Some(v) => {
            let subscribed = restrict(v, &hello.subscribe);
            state
                .store
                .save_client(&hello.client_id, 0, &subscribed, true)
                .await?;
            Ok(v.clone())
        }
        None => Ok(state
            .store
            .load_client(&hello.client_id)
            .await?
            .map(|c| c.state_vector)
            .unwrap_or_default()),
    }
}

/// Records what a session's client acknowledged since the last flush (throttled by the callers to
/// [`crate::sync::VECTOR_FLUSH_INTERVAL`], and done once more when the session ends).
pub async fn flush_acks(state: &AppState, session: &mut Session) {
    if let Some((position, entries)) = session.take_acked() {
        if let Err(e) = state
            .store
            .save_client(session.client_id(), position, &entries, false)
            .await
        {
            tracing::warn!(error = %e, client = session.client_id(), "saving the acknowledged vector failed");
        }
    }
}

fn refused(w: &WriteMessage, error: ErrorBody) -> ResultMessage {
    ResultMessage {
        op_id: w.op_id.clone(),
        ok: false,
        id: w.id.clone(),
        version: None,
        seq: None,
        replayed: false,
        error: Some(error),
    }
}

/// Turns a protocol `write` into a store write, refusing malformed ones.
fn to_write(client_id: &str, w: &WriteMessage) -> Result<Write, ApiError> {
    let bad = |code: ErrorCode, m: &str| ApiError::bad_request(code, m.to_string());
    if w.op_id.is_empty() || w.op_id.len() > 255 || !w.op_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            ErrorCode::InvalidOpId,
            "op_id must be 1-255 visible ASCII characters",
        ));
    }
    validate_collection(&w.collection)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidCollection, e.to_string()))?;
    if let Some(id) = &w.id {
        validate_id(id).map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))?;
    }
    let needs_id = || {
        w.id.clone()
            .ok_or_else(|| bad(ErrorCode::InvalidMessage, "this op needs an id"))
    };
    let data = || {
        w.data
            .clone()
            .ok_or_else(|| bad(ErrorCode::InvalidMessage, "this op needs data (an object)"))
    };
    let patch = || {
        w.patch
            .clone()
            .ok_or_else(|| bad(ErrorCode::InvalidMessage, "this op needs a patch"))
    };
    let (id, mutation) = match w.op {
        WriteOp::Create => {
            // As over REST: a top-level "id" in the body names the document (unless `id` does).
            let mut body = data()?;
            let body_id = match body.shift_remove("id") {
                None => None,
                Some(Value::String(id)) => {
                    validate_id(&id)
                        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidId, e.to_string()))?;
                    Some(id)
                }
                Some(_) => return Err(bad(ErrorCode::InvalidId, "\"id\" must be a string")),
            };
            (w.id.clone().or(body_id), Mutation::Create(body))
        }
        WriteOp::Replace => {
            let (id, mut body) = (needs_id()?, data()?);
            match body.shift_remove("id") {
                None => {}
                Some(Value::String(body_id)) if body_id == id => {}
                Some(_) => {
                    return Err(bad(
                        ErrorCode::IdMismatch,
                        "the body's \"id\" differs from the message's",
                    ))
                }
            }
            (Some(id), Mutation::Replace(body))
        }
        WriteOp::Patch => {
            let p = serde_json::from_value(patch()?).map_err(|e| {
                ApiError::bad_request(ErrorCode::InvalidPatch, format!("invalid JSON Patch: {e}"))
            })?;
            (Some(needs_id()?), Mutation::Patch(p))
        }
        WriteOp::Merge => (Some(needs_id()?), Mutation::Merge(patch()?)),
        WriteOp::Delete => (Some(needs_id()?), Mutation::Delete),
    };
    Ok(Write::new(
        w.collection.clone(),
        id,
        mutation,
        w.expected_version,
        client_id.to_string(),
        Some(w.op_id.clone()),
    ))
}

/// Commits a protocol write; the `op_id` is its idempotency key, so a retry is applied at most once.
pub async fn commit_write(state: &AppState, client_id: &str, w: WriteMessage) -> ResultMessage {
    let write = match to_write(client_id, &w) {
        Ok(write) => write,
        Err(e) => return refused(&w, e.body()),
    };
    match state.store.commit(write).await {
        Ok(c) => {
            let (id, version) = match (&c.document, &c.event) {
                (Some(d), _) => (Some(d.id.clone()), Some(d.version)),
                (None, Some(e)) => (Some(e.id.clone()), Some(e.version)),
                (None, None) => (w.id.clone(), None),
            };
            ResultMessage {
                op_id: w.op_id,
                ok: true,
                id,
                version,
                seq: c.event.as_ref().map(|e| e.seq),
                replayed: c.replayed,
                error: None,
            }
        }
        Err(e) => refused(&w, ApiError::from(e).body()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    client_id: String,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    state_vector: Option<StateVector>,
    #[serde(default)]
    token: Option<String>,
}

/// `POST /api/sync`: the messages that bring a client current, and its resulting vector.
/// Nothing is remembered for the client: a plain HTTP answer may be lost, so it acknowledges nothing.
pub async fn manual(State(state): State<AppState>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let req: SyncRequest = serde_json::from_value(body.value).map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidMessage, format!("invalid sync request: {e}"))
    })?;
    let hello = Hello {
        client_id: req.client_id,
        subscribe: req.subscribe,
        state_vector: req.state_vector,
        token: req.token,
    };
    validate_hello(&hello).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let vector = match hello.state_vector {
        Some(v) => v,
        None => state
            .store
            .load_client(&hello.client_id)
            .await?
            .map(|c| c.state_vector)
            .unwrap_or_default(),
    };
    let mut collections = hello.subscribe.clone();
    collections.sort();
    collections.dedup();
    let c = crate::sync::catch_up(&*state.store, &collections, &restrict(&vector, &collections)).await?;
    let synced = SyncedMessage {
        seq: c.position,
        state_vector: c.vector,
        snapshots: c.snapshots,
        events: c.events,
    };
    Ok(Json(json!({
        "messages": c.messages,
        "synced": ServerMessage::Synced(synced),
    })))
}

/// `GET /api/clients/{client_id}`: the vector the server remembers for a client.
pub async fn client(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
) -> Result<Json<crate::store::ClientState>, ApiError> {
    validate_id(&client_id).map_err(|e| ApiError::bad_request(ErrorCode::InvalidClientId, e.to_string()))?;
    state
        .store
        .load_client(&client_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no client '{client_id}' has synced here")))
}
