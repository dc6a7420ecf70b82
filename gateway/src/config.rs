//! The gateway's configuration: defaults < `--config` TOML file < `PHASECAST_*` environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::config::{LogConfig, NatsConfig};
use serde::{Deserialize, Serialize};

/// Unknown top-level keys are ignored (the environment may carry the engine's `PHASECAST_*`
/// variables too); unknown keys inside a section are errors, to catch typos.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub subject_prefix: String,
    pub nats: NatsConfig,
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where browsers (or nginx) connect.
    pub listen: SocketAddr,
    /// Where `/metrics` listens; keep it private.
    pub admin_listen: SocketAddr,
    /// Interval of the `: ping` comment that keeps idle streams open through proxies.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// The `retry:` sent to browsers: how soon EventSource reconnects.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Open SSE streams at most; beyond it, 503 with `Retry-After`.
    pub max_connections: usize,
    /// Events a client may fall behind its stream before it catches up by request: the size
    /// of the lobby's shared ring (a room's is at most 32), and of what a stream holds while
    /// it waits for a catch-up.
    pub client_queue: usize,
    /// A stream whose client takes no bytes at all for this long is dropped (and counted as
    /// a slow consumer); a slow client that keeps reading is not.
    #[serde(with = "humantime_serde")]
    pub write_stall: Duration,
    /// Largest request body of the command bridge.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS; empty allows none (same-origin behind nginx).
    pub cors_origins: Vec<String>,
    /// How long to wait for the engine's reply.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long open streams and requests get to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Mark the token cookie `Secure` (set it when browsers reach you over HTTPS).
    pub cookie_secure: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// SPKI PEM Ed25519 public key matching the engine's signing key. Required.
    pub verify_key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            subject_prefix: "game".into(),
            nats: NatsConfig::default(),
            gateway: GatewayConfig {
                listen: "0.0.0.0:8080".parse().expect("valid address"),
                admin_listen: "127.0.0.1:9090".parse().expect("valid address"),
                heartbeat: Duration::from_secs(15),
                retry: Duration::from_secs(2),
                max_connections: 19_000,
                client_queue: 256,
                write_stall: Duration::from_secs(30),
                max_body_bytes: 64 * 1024,
                cors_origins: Vec::new(),
                request_timeout: Duration::from_secs(5),
                shutdown_grace: Duration::from_secs(10),
                cookie_secure: false,
            },
            auth: AuthConfig {
                verify_key_file: None,
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
