//! The wire contract between the game engine, the gateway and anyone else on NATS.
//!
//! Everything that crosses a process boundary is defined here and only here: subject names,
//! header names, request and reply bodies, event payloads and the validated identifiers that
//! appear in them. `docs/protocol.md` is the prose version of this crate; the shapes are tested
//! against the JSON of PROTOCOL.md in `tests/shapes.rs`. It also holds what both processes
//! do alike around that contract: loading their config ([`config`]), and, behind the
//! `process` feature (so that the wire types alone bring no tokio or axum), logging, stopping
//! and serving metrics.

pub mod auth;
pub mod command;
pub mod config;
pub mod error;
pub mod event;
pub mod ids;
pub mod lobby;
#[cfg(feature = "process")]
pub mod process;
pub mod snap;
pub mod store;
pub mod subject;

pub use command::{Command, CommandOk, Reply, RequestId};
pub use error::{ErrorCode, Rejection};
pub use ids::{ChatText, PlayerId, PlayerName, RoomCode};
pub use snap::{SnapEvent, SnapReply, SnapRequest};
pub use store::StoreNames;
pub use subject::Subjects;

/// NATS header names carried by every published event.
pub mod headers {
    /// The stream's sequence number, a decimal `u64`; becomes the SSE `id:`.
    pub const SSE_ID: &str = "Sse-Id";
    /// The SSE event name; becomes the SSE `event:`.
    pub const SSE_EVENT: &str = "Sse-Event";
}

/// Largest request body the engine accepts (64 KiB); larger ones are rejected as `too_large`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
