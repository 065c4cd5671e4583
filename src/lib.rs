//! # EventSync
//!
//! A versioned JSON document store whose every write is checked against the document's version,
//! turned into an RFC 6902 patch and appended to a sequenced event log, from which connected clients
//! are kept current.
//!
//! ## The data's path, in order
//!
//! ```text
//!  HTTP request ── api/ ─────────── extract and validate (names, content type, size, depth, headers)
//!        │
//!        ▼
//!  write/ ───────────────────────── plan(): version check → apply → diff      (pure, no I/O)
//!        │                          decide(): replay, refuse, unchanged or apply + event (pure)
//!        │
//!        ▼
//!  store/ (trait Store) ─────────── commit(): one transaction: document + event + snapshot-if-due
//!        │   ├─ sqlite/ ─────────── one writer thread, group commit (one fsync per batch)
//!        │   └─ mongo/ ──────────── batched transactions; a change stream follows the shared log,
//!        │                          so every node publishes every node's writes
//!        ▼
//!  hub.rs ───────────────────────── publish in sequence order; each event serialized once
//!        │
//!        ▼
//!  plan/ ────────────────────────── what a client with state vector V needs, and the reads
//!        │                          that takes (pure); the store answers them in one read
//!  sync/catch_up.rs ─────────────── the catch-up's messages and resulting vector, from those rows
//!  sync/session.rs ──────────────── one connection: sent vector, acks, which live events to forward
//!        │
//!        ▼
//!  api/ws.rs, api/sse.rs ────────── the transports; api/sync.rs: POST /api/sync, client vectors
//!
//!  maintenance.rs ───────────────── timed snapshots and compaction keep the log bounded
//!  server/ ──────────────────────── wiring, connection limit, graceful shutdown
//!  client/ ──────────────────────── the Rust client: WebSocket or SSE, reconnects, keeps a replica
//! ```
//!
//! The library is what behaviour tests drive: [`server::Server::start`] on a `127.0.0.1:0`
//! listener, inside the test process (what only a process shows, such as kill -9, restarts or
//! several nodes, runs the binary); the binary in `main.rs` only parses [`config::Config`] and
//! calls [`server::run`].

mod api;
pub mod config;
pub mod error;
pub mod hub;
mod json;
mod maintenance;
pub mod model;
pub mod plan;
pub mod server;
pub mod store;
pub mod sync;
pub mod write;

/// The sync protocol's messages (the wire crate's `messages`).
pub use eventsync_protocol::messages as protocol;
/// Timestamps on the wire (the wire crate's).
pub use eventsync_protocol::time;
