//! The engine's configuration: defaults < `--config` TOML file < `PHASECAST_*` environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::config::{LogConfig, NatsConfig};
use serde::{Deserialize, Serialize};

/// Unknown top-level keys are ignored (the environment may carry the gateway's `PHASECAST_*`
/// variables too); unknown keys inside a section are errors, to catch typos.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub subject_prefix: String,
    pub nats: NatsConfig,
    pub engine: EngineConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Where `/metrics` and `/healthz` listen.
    pub admin_listen: SocketAddr,
    /// Events kept per room (and for the lobby) to answer `since` without a snapshot.
    pub history: usize,
    /// How long rooms get to stop after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The shortest phase a room may ask for in `durations_ms`.
    #[serde(with = "humantime_serde")]
    pub min_phase: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// PKCS#8 PEM Ed25519 private key that signs player tokens. Required.
    pub signing_key_file: Option<PathBuf>,
    /// How long a player token is valid.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            subject_prefix: "game".into(),
            nats: NatsConfig::default(),
            engine: EngineConfig {
                admin_listen: "127.0.0.1:9091".parse().expect("valid address"),
                history: 1000,
                shutdown_grace: Duration::from_secs(10),
                min_phase: Duration::from_millis(250),
            },
            auth: AuthConfig {
                signing_key_file: None,
                token_ttl: Duration::from_secs(24 * 60 * 60),
            },
            log: LogConfig::default(),
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, proto::config::ConfigError> {
        proto::config::load(&Config::default(), file)
    }
}
