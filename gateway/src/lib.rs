//! Phasecast's gateway: holds browsers' SSE connections and feeds them from NATS.
//!
//! It keeps no game state. Dependencies run one way, from the leaves up:
//!
//! - [`state`] (what everything shares), [`backend`] (requests to whoever serves rooms, over
//!   NATS), [`auth`] (tokens), [`frame`] (SSE bytes), [`error`], [`config`], [`metrics`];
//! - [`hub`]: the NATS subscriptions of each watched stream (the lobby's subject; a room's public
//!   and private subjects), shared by all its connections and fanned out to them;
//! - [`stream`]: one browser's stream (snapshot, resume, catch-up, heartbeats);
//! - HTTP: [`connection`] serves each accepted connection (streams by hand, the rest through
//!   axum), [`bridge`] forwards commands, and [`server::Gateway`] is the whole process;
//!   [`heap`] reports the allocator's account of its memory.

pub mod auth;
pub mod backend;
pub mod bridge;
pub mod config;
pub mod connection;
pub mod error;
pub mod frame;
pub mod heap;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod state;
pub mod stream;

pub use config::Config;
pub use server::Gateway;
