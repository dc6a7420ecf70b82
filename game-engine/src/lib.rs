//! Phasecast's game engine: Mafia rooms and the public lobby, driven over NATS, kept in
//! JetStream so that any engine can carry on any room.
//!
//! [`server::Engine`] is the whole process; the binary only reads the config and waits for a
//! signal. The rules are [`rules`] (pure, serialisable), the per-room task [`room`], what a
//! room commits and logs [`store`] (every compare-and-set through [`cas`]), who runs which
//! room [`ownership`], phase deadlines [`scheduler`], the lobby [`lobby`], resumable history
//! [`history`].

pub mod auth;
pub mod cas;
pub mod config;
pub mod context;
pub mod history;
pub mod lobby;
pub mod metrics;
pub mod outgoing;
pub mod ownership;
pub mod publish;
pub mod room;
pub mod rules;
pub mod scheduler;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::Engine;
