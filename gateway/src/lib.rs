//! Phasecast's gateway: holds browsers' SSE connections and feeds them from NATS.
//!
//! It keeps no game state. [`server::Gateway`] is the whole process; [`hub`] shares one NATS
//! subscription per watched stream and fans frames out, [`stream`] runs one browser's stream
//! (snapshot, resume, heartbeats), [`connection`] serves each accepted connection (streams by
//! hand, the rest through axum), [`bridge`] forwards commands, [`auth`] checks tokens.

pub mod auth;
pub mod bridge;
pub mod config;
pub mod connection;
pub mod error;
pub mod frame;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod stream;

pub use config::Config;
pub use server::Gateway;
