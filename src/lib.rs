//! # EventSync
//!
//! A versioned JSON document store whose every write is checked against the document's version,
//! turned into an RFC 6902 patch and appended to a sequenced event log, from which connected clients
//! are kept current.
//!
//! ## The data's path, in order
//!
//! ```text
//!  HTTP request ── auth/origin.rs ── a browser Origin that is not allowed: 403, before anything
//!        │        api/ ─────────── extract and validate (names, content type, size, depth, headers)
//!        │        api/auth.rs ───── the Caller: Bearer token → auth/ Principal (who, what it may do)
//!        │        api/documents.rs  REST bodies ─┐
//!        │        sync/driver.rs    protocol `write`s ─┴─ write/wire.rs: one conversion to a Write
//!        │        auth/ ─────────── Principal::authorize_write (both kinds), then the write rate
//!        ▼
//!  write/ ───────────────────────── plan(): version check → apply → diff      (pure, no I/O)
//!        │                          commit::decide(): replay, refuse, unchanged, or apply: the
//!        │                          document record, the event, snapshot-if-due, idempotency (pure)
//!        ▼
//!  store/ (trait Store) ─────────── read what decide() needs, call it, persist it in one transaction
//!        │   ├─ sqlite/ ─────────── one writer thread, group commit (one fsync per batch)
//!        │   └─ mongo/ ──────────── batched transactions, one retry loop; a change stream follows
//!        │                          the shared log, so every node publishes every node's writes
//!        ▼
//!  hub.rs ───────────────────────── publish in sequence order; each event serialized once and put
//!        │                          only in the mailboxes of the sessions interested in it
//!        ▼
//!  sync/open.rs ─────────────────── every session's opening: accept the hello (its token), subscribe
//!        │                          to what the token may read, start vector
//!  scope/ ───────────────────────── what a subscription follows (ids, prefix, `where` filter, window)
//!        │                          and the rules of moving in and out (pure; one filter function)
//!  plan/ ────────────────────────── what a client with state vector V needs, and the reads that
//!        │                          takes (pure, sans-IO); the store answers them in one read
//!  sync/catch_up.rs ─────────────── those rows as messages and the client's resulting vector
//!  sync/driver.rs ───────────────── the one session loop: catch-up → live → re-sync → acks, over a
//!        │                          Transport; sync/session.rs keeps its state (sans-IO);
//!        │                          sync/recheck.rs shares filtered sessions' document reads;
//!        │                          sync/presence.rs: presence channels and broadcasts (ephemeral)
//!        ▼
//!  api/ws.rs, api/sse.rs ────────── the transports: framing, parsing, their own timers only (SSE:
//!                                   registered openings and the back channel too)
//!  api/sync.rs ──────────────────── POST /api/sync (the same opening, once), client vectors
//!
//!  error.rs ─────────────────────── ApiError over the protocol crate's ErrorCode (one enum)
//!  auth/ ────────────────────────── tokens (jsonwebtoken), grants (pure), per-client limits
//!        │                          (governor), origins (tower-http CORS); docs/AUTH.md
//!  config/ ──────────────────────── every option declared once: flag, EVENTSYNC_* variable, file key
//!  maintenance.rs ───────────────── timed snapshots and compaction keep the log bounded
//!  server/ ──────────────────────── wiring; serving connections (hyper, with the header, body and
//!                                   write-progress limits); connection limit; graceful shutdown
//!  metrics.rs ───────────────────── every metric's name, once; Prometheus on --metrics-listen
//! ```
//!
//! Beside this crate, in the same workspace: `crates/protocol` (the wire types — documents,
//! events, every message, the error codes — with serde and nothing async; `model`, `protocol`
//! and `time` here are its modules), `crates/client` (the Rust client, which depends on the wire
//! crate and its transports only) and `crates/conformance` (dev-only: the suite every store
//! backend must pass). The MongoDB store is the cargo feature `mongodb`, on by default.
//!
//! The library is what behaviour tests drive: [`server::Server::start`] on a `127.0.0.1:0`
//! listener, inside the test process (what only a process shows, such as kill -9, restarts or
//! several nodes, runs the binary); the binary in `main.rs` only parses [`config::Config`] and
//! calls [`server::run`].

mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod hub;
mod json;
mod maintenance;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod scope;
pub mod server;
pub mod store;
pub mod sync;
pub mod write;

/// The sync protocol's messages (the wire crate's `messages`).
pub use eventsync_protocol::messages as protocol;
/// Timestamps on the wire (the wire crate's).
pub use eventsync_protocol::time;
