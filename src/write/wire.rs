//! From the wire to a [`Write`] — the one conversion every write request goes through, whether it
//! arrived as a REST call (`POST`/`PUT`/`PATCH`/`DELETE /api/{collection}[/{id}]`) or as a protocol
//! `write` message (WebSocket).
//!
//! A request is first a [`Target`] (the collection and id, their names checked), then a
//! [`WriteSpec`]: the protocol's [`WriteOp`] with what that op needs (`data` or `patch`), the
//! expected version, who writes, and its idempotency key. [`WriteSpec::into_write`] applies the rules
//! both transports share — what each op needs, a body's own `"id"`, parsing a JSON Patch — and
//! refuses with a [`WireError`] carrying the [`ErrorCode`] clients see.
//!
//! The REST handlers only map HTTP into a spec (path, headers, content type and the body's JSON
//! kind), and [`from_message`] maps a protocol message. The target is built before the body is
//! looked at, so a bad name is reported before a bad body on either path. Two differences are the
//! transports' own and stay so: a `replace` whose body names another id says whose id it differs
//! from ("the URL's", "the message's"), and an id in a URL is as strict about a body's `"id"` as a
//! create is, while a message's only compares it.

use serde_json::Value;

use super::{Mutation, Write};
use crate::error::{ErrorBody, ErrorCode};
use crate::model::{validate_collection, validate_id, Data, Version};
use crate::protocol::{WriteMessage, WriteOp};

/// Longest `op_id` (and `Idempotency-Key`) accepted.
pub const MAX_OP_ID: usize = 255;

/// Whether `key` may be an idempotency key — a protocol `op_id` or a REST `Idempotency-Key`:
/// 1 to [`MAX_OP_ID`] visible ASCII characters. The one rule for both transports.
pub fn is_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_OP_ID && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A write refused before it reached the store (always a 400 over REST).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }

    /// The refusal as clients receive it (a refused write's `result.error`).
    pub fn body(self) -> ErrorBody {
        ErrorBody::new(self.code, self.message)
    }
}

/// Checks a collection name and, if given, a document id.
pub fn check_names(collection: &str, id: Option<&str>) -> Result<(), WireError> {
    validate_collection(collection)
        .map_err(|e| WireError::new(ErrorCode::InvalidCollection, e.to_string()))?;
    if let Some(id) = id {
        check_id(id)?;
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), WireError> {
    validate_id(id).map_err(|e| WireError::new(ErrorCode::InvalidId, e.to_string()))
}

/// Where a document's id was named: decides how a body's own `"id"` is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// In the URL (REST).
    Url,
    /// In the `write` message's `id`.
    Message,
}

impl Named {
    fn whose(self) -> &'static str {
        match self {
            Named::Url => "URL's",
            Named::Message => "message's",
        }
    }
}

/// The document a write is for: a valid collection and, unless the server is to choose it, a valid
/// id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    collection: String,
    id: Option<String>,
    named: Named,
}

impl Target {
    pub fn new(collection: String, id: Option<String>, named: Named) -> Result<Target, WireError> {
        check_names(&collection, id.as_deref())?;
        Ok(Target {
            collection,
            id,
            named,
        })
    }
}

/// A write as the wire states it.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub op: WriteOp,
    pub target: Target,
    /// The document (create, replace).
    pub data: Option<Data>,
    /// An RFC 6902 JSON Patch (an array) for [`WriteOp::Patch`], an RFC 7396 merge patch for
    /// [`WriteOp::Merge`].
    pub patch: Option<Value>,
    pub expected_version: Option<Version>,
    pub client_id: String,
    pub idempotency_key: Option<String>,
}

impl WriteSpec {
    /// The store's write, or why there is none. Members an op does not use are ignored.
    pub fn into_write(self) -> Result<Write, WireError> {
        let WriteSpec {
            op,
            target:
                Target {
                    collection,
                    id,
                    named,
                },
            data,
            patch,
            expected_version,
            client_id,
            idempotency_key,
        } = self;
        let (id, mutation) = match op {
            WriteOp::Create => {
                let mut body = data.ok_or_else(no_data)?;
                let body_id = take_id(&mut body)?;
                (id.or(body_id), Mutation::Create(body))
            }
            WriteOp::Replace => {
                let id = id.ok_or_else(no_id)?;
                let mut body = data.ok_or_else(no_data)?;
                check_body_id(&mut body, &id, named)?;
                (Some(id), Mutation::Replace(body))
            }
            WriteOp::Patch => {
                let patch = serde_json::from_value(patch.ok_or_else(no_patch)?).map_err(|e| {
                    WireError::new(ErrorCode::InvalidPatch, format!("invalid JSON Patch: {e}"))
                })?;
                (Some(id.ok_or_else(no_id)?), Mutation::Patch(patch))
            }
            WriteOp::Merge => (
                Some(id.ok_or_else(no_id)?),
                Mutation::Merge(patch.ok_or_else(no_patch)?),
            ),
            WriteOp::Delete => (Some(id.ok_or_else(no_id)?), Mutation::Delete),
        };
        Ok(Write::new(
            collection,
            id,
            mutation,
            expected_version,
            client_id,
            idempotency_key,
        ))
    }
}

fn no_id() -> WireError {
    WireError::new(ErrorCode::InvalidMessage, "this op needs an id")
}

fn no_data() -> WireError {
    WireError::new(ErrorCode::InvalidMessage, "this op needs data (an object)")
}

fn no_patch() -> WireError {
    WireError::new(ErrorCode::InvalidMessage, "this op needs a patch")
}

/// Takes a top-level `"id"` out of a body: it names the document and lives in the envelope.
fn take_id(body: &mut Data) -> Result<Option<String>, WireError> {
    match body.shift_remove("id") {
        None => Ok(None),
        Some(Value::String(id)) => {
            check_id(&id)?;
            Ok(Some(id))
        }
        Some(_) => Err(WireError::new(ErrorCode::InvalidId, "\"id\" must be a string")),
    }
}

/// A replace's body may repeat the document's id, not name another.
fn check_body_id(body: &mut Data, id: &str, named: Named) -> Result<(), WireError> {
    let same = match named {
        Named::Url => take_id(body)?.is_none_or(|body_id| body_id == id),
        Named::Message => match body.shift_remove("id") {
            None => true,
            Some(Value::String(body_id)) => body_id == id,
            Some(_) => false,
        },
    };
    if same {
        return Ok(());
    }
    Err(WireError::new(
        ErrorCode::IdMismatch,
        format!("the body's \"id\" differs from the {}", named.whose()),
    ))
}

/// A protocol `write` from `client_id`: its `op_id` is the idempotency key, so a retry is applied at
/// most once.
pub fn from_message(client_id: &str, w: WriteMessage) -> Result<Write, WireError> {
    let op_id = w.op_id;
    if !is_idempotency_key(&op_id) {
        return Err(WireError::new(
            ErrorCode::InvalidOpId,
            format!("op_id must be 1-{MAX_OP_ID} visible ASCII characters"),
        ));
    }
    WriteSpec {
        op: w.op,
        target: Target::new(w.collection, w.id, Named::Message)?,
        data: w.data,
        patch: w.patch,
        expected_version: w.expected_version,
        client_id: client_id.to_string(),
        idempotency_key: Some(op_id),
    }
    .into_write()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(op: WriteOp, id: Option<&str>) -> WriteMessage {
        WriteMessage {
            op_id: "op-1".into(),
            op,
            collection: "games".into(),
            id: id.map(str::to_string),
            data: None,
            patch: None,
            expected_version: None,
        }
    }

    fn object(v: Value) -> Data {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn url_spec(op: WriteOp, id: Option<&str>) -> WriteSpec {
        WriteSpec {
            op,
            target: Target::new("games".into(), id.map(str::to_string), Named::Url).unwrap(),
            data: None,
            patch: None,
            expected_version: Some(3),
            client_id: "c1".into(),
            idempotency_key: Some("k".into()),
        }
    }

    fn refusal(r: Result<Write, WireError>) -> (ErrorCode, String) {
        let e = r.unwrap_err();
        (e.code, e.message)
    }

    #[test]
    fn a_create_takes_its_id_from_the_body_unless_one_is_named() {
        let mut w = message(WriteOp::Create, None);
        w.data = Some(object(json!({"id": "g1", "score": 1})));
        let write = from_message("c1", w.clone()).unwrap();
        assert_eq!(write.id.as_deref(), Some("g1"));
        assert!(matches!(&write.mutation, Mutation::Create(d) if d == &object(json!({"score": 1}))));
        assert_eq!(write.idempotency_key.as_deref(), Some("op-1"));
        assert_eq!(write.client_id, "c1");

        w.id = Some("named".into());
        assert_eq!(from_message("c1", w).unwrap().id.as_deref(), Some("named"));

        let mut spec = url_spec(WriteOp::Create, None);
        spec.data = Some(object(json!({"score": 1})));
        let write = spec.into_write().unwrap();
        assert_eq!(write.id, None, "the server chooses");
        assert_eq!(write.expected_version, Some(3));
        assert_eq!(write.idempotency_key.as_deref(), Some("k"));
    }

    #[test]
    fn a_create_refuses_a_bad_body_id_or_no_data() {
        let mut w = message(WriteOp::Create, None);
        assert_eq!(
            refusal(from_message("c1", w.clone())),
            (ErrorCode::InvalidMessage, "this op needs data (an object)".into())
        );
        w.data = Some(object(json!({"id": 7})));
        assert_eq!(
            refusal(from_message("c1", w.clone())),
            (ErrorCode::InvalidId, "\"id\" must be a string".into())
        );
        w.data = Some(object(json!({"id": "a b"})));
        assert_eq!(refusal(from_message("c1", w)).0, ErrorCode::InvalidId);
    }

    #[test]
    fn a_replace_may_repeat_its_id_in_the_body() {
        let mut spec = url_spec(WriteOp::Replace, Some("g1"));
        spec.data = Some(object(json!({"id": "g1", "score": 2})));
        let write = spec.into_write().unwrap();
        assert_eq!(write.id.as_deref(), Some("g1"));
        assert!(matches!(&write.mutation, Mutation::Replace(d) if d == &object(json!({"score": 2}))));
    }

    #[test]
    fn a_replace_naming_another_id_says_whose_it_differs_from() {
        let mut spec = url_spec(WriteOp::Replace, Some("g1"));
        spec.data = Some(object(json!({"id": "g2"})));
        assert_eq!(
            refusal(spec.clone().into_write()),
            (
                ErrorCode::IdMismatch,
                "the body's \"id\" differs from the URL's".into()
            )
        );
        // A URL's id is as strict about the body's as a create is; a message's only compares.
        spec.data = Some(object(json!({"id": 5})));
        assert_eq!(refusal(spec.into_write()).0, ErrorCode::InvalidId);

        let mut w = message(WriteOp::Replace, Some("g1"));
        w.data = Some(object(json!({"id": 5})));
        assert_eq!(
            refusal(from_message("c1", w)),
            (
                ErrorCode::IdMismatch,
                "the body's \"id\" differs from the message's".into()
            )
        );
    }

    #[test]
    fn a_replace_needs_an_id_before_data() {
        let w = message(WriteOp::Replace, None);
        assert_eq!(
            refusal(from_message("c1", w)),
            (ErrorCode::InvalidMessage, "this op needs an id".into())
        );
        let w = message(WriteOp::Replace, Some("g1"));
        assert_eq!(refusal(from_message("c1", w)).1, "this op needs data (an object)");
    }

    #[test]
    fn a_patch_is_parsed_before_its_id_is_asked_for() {
        let mut w = message(WriteOp::Patch, None);
        assert_eq!(
            refusal(from_message("c1", w.clone())),
            (ErrorCode::InvalidMessage, "this op needs a patch".into())
        );
        w.patch = Some(json!({"op": "add"}));
        let (code, message) = refusal(from_message("c1", w.clone()));
        assert_eq!(code, ErrorCode::InvalidPatch);
        assert!(message.starts_with("invalid JSON Patch: "), "{message}");
        w.patch = Some(json!([{"op": "add", "path": "/a", "value": 1}]));
        assert_eq!(refusal(from_message("c1", w.clone())).1, "this op needs an id");
        w.id = Some("g1".into());
        let write = from_message("c1", w).unwrap();
        assert!(matches!(&write.mutation, Mutation::Patch(p) if p.0.len() == 1));
    }

    #[test]
    fn a_merge_asks_for_its_id_before_its_patch() {
        let mut w = message(WriteOp::Merge, None);
        assert_eq!(refusal(from_message("c1", w.clone())).1, "this op needs an id");
        w.id = Some("g1".into());
        assert_eq!(refusal(from_message("c1", w.clone())).1, "this op needs a patch");
        // Any JSON value is a merge patch (a non-object replaces the document, which plan refuses).
        w.patch = Some(json!([1]));
        assert!(matches!(
            from_message("c1", w).unwrap().mutation,
            Mutation::Merge(Value::Array(_))
        ));
    }

    #[test]
    fn a_delete_needs_an_id_and_ignores_extra_members() {
        let mut w = message(WriteOp::Delete, None);
        assert_eq!(refusal(from_message("c1", w.clone())).1, "this op needs an id");
        w.id = Some("g1".into());
        w.data = Some(object(json!({"x": 1})));
        let write = from_message("c1", w).unwrap();
        assert!(matches!(write.mutation, Mutation::Delete));
        assert_eq!(
            url_spec(WriteOp::Delete, Some("g1"))
                .into_write()
                .unwrap()
                .id
                .as_deref(),
            Some("g1")
        );
    }

    #[test]
    fn names_are_checked_collection_first() {
        let mut w = message(WriteOp::Delete, Some("a b"));
        assert_eq!(refusal(from_message("c1", w.clone())).0, ErrorCode::InvalidId);
        w.collection = "2bad".into();
        assert_eq!(refusal(from_message("c1", w)).0, ErrorCode::InvalidCollection);
        let target = Target::new("games".into(), Some("a b".into()), Named::Url);
        assert_eq!(target.unwrap_err().code, ErrorCode::InvalidId);
    }

    #[test]
    fn an_op_id_is_checked_before_anything_else() {
        for bad in ["", "has space", &"x".repeat(MAX_OP_ID + 1)] {
            let mut w = message(WriteOp::Delete, Some("a b"));
            w.collection = "2bad".into();
            w.op_id = bad.to_string();
            assert_eq!(
                refusal(from_message("c1", w)),
                (
                    ErrorCode::InvalidOpId,
                    "op_id must be 1-255 visible ASCII characters".into()
                )
            );
        }
    }

    #[test]
    fn the_same_write_over_either_transport_has_the_same_fingerprint() {
        let mut w = message(WriteOp::Merge, Some("g1"));
        w.patch = Some(json!({"a": 1}));
        w.expected_version = Some(3);
        let mut spec = url_spec(WriteOp::Merge, Some("g1"));
        spec.patch = Some(json!({"a": 1}));
        assert_eq!(
            from_message("c1", w).unwrap().fingerprint,
            spec.into_write().unwrap().fingerprint
        );
    }
}
