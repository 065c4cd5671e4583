//! The plain HTTP side of sync: `POST /api/sync` (a manual sync, through the same opening step as
//! the transports: [`crate::sync::open`]) and `GET /api/clients/{client_id}`.
//!
//! Both are bound to the caller's subject: the vector read is the one kept under
//! `principal.client_key(client_id)`, so a client id names a client *of this subject*. An admin
//! may read another subject's (`?subject=S`).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{bearer, Caller};
use super::extract::{JsonBody, Path, Query};
use super::AppState;
use crate::auth::{Grants, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::model::{validate_collection, validate_id, Seq};
use crate::plan::Resume;
use crate::sync::open::{accept, once};
use crate::sync::protocol::{Hello, ServerMessage, StateVector, Subscription, SyncedMessage};
use crate::sync::session::ProtocolError;

/// A refused hello, answered over HTTP: 400 with its code, or the status of an authentication or
/// authorization code (401, 403, 429).
impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> ApiError {
        match e.code {
            ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::RateLimited => {
                ApiError::new(e.code, e.message)
            }
            _ => ApiError::bad_request(e.code, e.message),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    client_id: String,
    #[serde(default)]
    subscribe: Vec<Subscription>,
    #[serde(default)]
    state_vector: Option<StateVector>,
    /// `POST /api/sync` only: the `cursor` of the part before (see [`Cursor`]).
    #[serde(default)]
    cursor: Option<String>,
    /// Read from the body before it is parsed (the header's wins).
    #[serde(default, rename = "token")]
    _token: Option<String>,
}

/// Where the next part of a `POST /api/sync` catch-up goes on: a [`Resume`] as a string,
/// `"<position>:<collection>:<after>"` (`after` empty: none of that collection yet). Opaque to
/// clients, which send back the one they were given. Nothing in it widens what is read: the
/// token's scope applies to every part, and a cursor that claims more than the server has read
/// (a position beyond the log's) is ignored; a forged one can only make the client miss what it
/// then claims to have.
pub struct Cursor;

impl Cursor {
    pub fn encode(r: &Resume) -> String {
        format!(
            "{}:{}:{}",
            r.position,
            r.collection,
            r.after.as_deref().unwrap_or("")
        )
    }

    pub fn decode(s: &str) -> Result<Resume, ApiError> {
        let invalid = || ApiError::bad_request(ErrorCode::InvalidCursor, "not a cursor this server gave");
        let mut parts = s.splitn(3, ':');
        let (Some(position), Some(collection), Some(after)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let position: Seq = position.parse().map_err(|_| invalid())?;
        validate_collection(collection).map_err(|_| invalid())?;
        if !after.is_empty() {
            validate_id(after).map_err(|_| invalid())?;
        }
        Ok(Resume {
            position,
            collection: collection.to_string(),
            after: Some(after.to_string()).filter(|a| !a.is_empty()),
        })
    }
}

/// `POST /api/sync`: the messages that bring a client current (subscriptions the token cannot
/// read first, as `error` `forbidden` messages), and its resulting vector. The token: the
/// `Authorization` header, else the body's `token`. Nothing is remembered for the client: a plain
/// HTTP answer may be lost, so it acknowledges nothing. A catch-up larger than its budget is
/// answered a part at a time, each with the `cursor` the next request sends back.
pub async fn manual(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (hello, cursor) = hello_of(&state, &headers, body)?;
    let accepted = accept(&state.auth, hello)?;
    let resume = cursor.as_deref().map(Cursor::decode).transpose()?;
    let (c, vector) = once(&state.sync(), accepted, resume).await?;
    if !c.complete {
        // A part of a catch-up larger than --max-catch-up-bytes: no `synced` (this is not
        // current); posting again with this vector (and the cursor) gives the next part.
        return Ok(Json(json!({
            "messages": c.messages,
            "complete": false,
            "seq": c.position,
            "state_vector": vector,
            "cursor": c.resume.as_ref().map(Cursor::encode),
        })));
    }
    let synced = SyncedMessage {
        seq: c.position,
        state_vector: vector,
        snapshots: c.snapshots,
        events: c.events,
        subscription: None,
    };
    Ok(Json(json!({
        "messages": c.messages,
        "complete": true,
        "synced": ServerMessage::Synced(synced),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuery {
    /// Another subject's client (admin only).
    #[serde(default)]
    subject: Option<String>,
}

/// `GET /api/clients/{client_id}`: the vector the server remembers for the caller's client
/// `client_id`; an admin may name another subject's with `?subject=S`.
pub async fn client(
    State(state): State<AppState>,
    caller: Caller,
    Path(client_id): Path<String>,
    Query(q): Query<ClientQuery>,
) -> Result<Json<crate::store::ClientState>, ApiError> {
    validate_id(&client_id).map_err(|e| ApiError::bad_request(ErrorCode::InvalidClientId, e.to_string()))?;
    let key = match q.subject {
        Some(subject) if caller.subject() != Some(subject.as_str()) => {
            if subject.is_empty() {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidQuery,
                    "subject must not be empty",
                ));
            }
            caller.check_admin()?;
            Principal::new(subject, Grants::nothing(), None).client_key(&client_id)
        }
        _ => caller.client_key(&client_id),
    };
    state
        .store
        .load_client(&key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no client '{client_id}' has synced here")))
}

/// A sync request body (`POST /api/sync`, `POST /sync/sse`) as a hello, with its token (the
/// `Authorization` header's, else the body's `token`) and its `cursor`.
pub fn hello_of(
    state: &AppState,
    headers: &HeaderMap,
    body: JsonBody,
) -> Result<(Hello, Option<String>), ApiError> {
    let header_token = bearer(headers)?.map(str::to_string);
    let token = header_token.or_else(|| {
        body.value
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let req: SyncRequest = match serde_json::from_value::<SyncRequest>(body.value) {
        Ok(req) => req,
        Err(e) => {
            // Authenticate before validating: a caller without a valid token learns nothing more.
            state.auth.authenticate(token.as_deref())?;
            return Err(ApiError::bad_request(
                ErrorCode::InvalidMessage,
                format!("invalid sync request: {e}"),
            ));
        }
    };
    let hello = Hello {
        client_id: req.client_id,
        subscribe: req.subscribe,
        state_vector: req.state_vector,
        token,
    };
    Ok((hello, req.cursor))
}
