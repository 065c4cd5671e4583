//! The plain HTTP side of sync: `POST /api/sync` (a manual sync, through the same opening step as
//! the transports: [`crate::sync::open`]) and `GET /api/clients/{client_id}`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{JsonBody, Path};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::model::validate_id;
use crate::sync::open::{accept, once};
use crate::sync::protocol::{Hello, ServerMessage, StateVector, SyncedMessage};
use crate::sync::session::ProtocolError;

/// A refused hello, answered over HTTP: 400 with its code.
impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> ApiError {
        ApiError::bad_request(e.code, e.message)
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
    let accepted = accept(Hello {
        client_id: req.client_id,
        subscribe: req.subscribe,
        state_vector: req.state_vector,
        token: req.token,
    })?;
    let c = once(&state.sync(), accepted).await?;
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
