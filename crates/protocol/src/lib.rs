//! # EventSync's wire types
//!
//! What the server and every client agree on, with serde and nothing else — no I/O, nothing async:
//!
//! - [`model`]: documents, events, snapshots, and the rules for collection names and document ids;
//! - [`messages`]: every message of the sync protocol (client → server and server → client) and
//!   the state vector;
//! - [`error`]: the error codes, each with its HTTP status, and the error body clients receive;
//! - [`time`]: timestamps (milliseconds inside, RFC 3339 on the wire).
//!
//! `docs/PROTOCOL.md` in the repository is the reference, with an example exchange per message.

pub mod error;
pub mod messages;
pub mod model;
pub mod time;

pub use error::{ErrorBody, ErrorCode};
