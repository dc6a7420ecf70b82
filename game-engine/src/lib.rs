//! Phasecast's game engine: Mafia rooms and the public lobby, driven over NATS.
//!
//! [`server::Engine`] is the whole process; the binary only reads the config and waits for a
//! signal. Rules live in [`room::game`], the per-room task in [`room`], phase deadlines in
//! [`scheduler`], the lobby in [`lobby`], resumable history in [`history`].

pub mod auth;
pub mod config;
pub mod history;
pub mod lobby;
pub mod metrics;
pub mod room;
pub mod scheduler;
pub mod server;

pub use config::Config;
pub use server::Engine;
