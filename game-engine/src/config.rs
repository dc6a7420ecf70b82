//! The engine's configuration: defaults < `--config` TOML file < `PHASECAST_*` environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::config::{LogConfig, NatsConfig};
use serde::{Deserialize, Serialize};

/// The most `engine.commit_ahead` may be: what an engine that takes a room over waits at
/// most for a step committed ahead of its deadline, whatever the engine that committed it
/// was configured with.
pub const MAX_COMMIT_AHEAD: Duration = Duration::from_secs(5);

/// Unknown top-level keys are ignored (the environment may carry the gateway's `PHASECAST_*`
/// variables too); unknown keys inside a section are errors, to catch typos.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    pub subject_prefix: String,
    pub nats: NatsConfig,
    pub engine: EngineConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
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
    /// This engine's name among engines (`[A-Za-z0-9_-]`, at most 32); empty draws a random
    /// one at each start. A fixed id lets a restarted engine take its own rooms back at once.
    pub id: String,
    /// How long an engine may miss its heartbeat before the others take its rooms over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long before a deadline its step is computed and committed, so that at the
    /// deadline only its events are left to publish (`docs/durability.md`, *A deadline's
    /// step, committed ahead*); `0s` commits it at the deadline.
    #[serde(with = "humantime_serde")]
    pub commit_ahead: Duration,
}

/// How JetStream keeps rooms (`docs/durability.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Copies of each bucket and stream the engine creates (1 to 5): 1 on a single
    /// nats-server, 3 on a cluster. Unset, the engine decides at start
    /// ([`crate::store::choose_replicas`]): the copies of the existing rooms bucket, else 3
    /// if the server it reached is in a cluster of three or more, else 1.
    pub replicas: Option<usize>,
    /// Upper bound, in bytes, of the rooms bucket and of the log stream (each). Unset, they
    /// have none of their own and share the server's `max_file_store`: JetStream reserves a
    /// stream's `max_bytes` on disk when it is created, so a bound larger than the server can
    /// reserve stops the engine from starting.
    pub max_bytes: Option<u64>,
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
                min_phase: Duration::ZERO,
                id: String::new(),
                lease: Duration::from_secs(3),
                commit_ahead: Duration::from_millis(25),
            },
            auth: AuthConfig {
                signing_key_file: None,
                token_ttl: Duration::from_secs(24 * 60 * 60),
            },
            store: StoreConfig {
                replicas: None,
                max_bytes: None,
            },
            log: LogConfig::default(),
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, proto::config::ConfigError> {
        proto::config::load(&Config::default(), file)
    }

    /// `engine.id`, or a fresh random one, once the bounded settings (`engine.lease`,
    /// `store.replicas`) are checked.
    pub fn engine_id(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.engine.lease >= Duration::from_millis(200)
                && self.engine.lease <= Duration::from_secs(5),
            "engine.lease: between 200ms and 5s"
        );
        anyhow::ensure!(
            self.engine.commit_ahead <= MAX_COMMIT_AHEAD,
            "engine.commit_ahead: at most 5s"
        );
        if let Some(replicas) = self.store.replicas {
            anyhow::ensure!(
                (1..=5).contains(&replicas),
                "store.replicas: between 1 and 5 (JetStream's limit), or unset to choose by the server"
            );
        }
        let id = &self.engine.id;
        if id.is_empty() {
            let random: proto::PlayerId = crate::rules::random_token(&mut rand::rng(), 12);
            return Ok(random.to_string());
        }
        anyhow::ensure!(
            id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "engine.id: at most 32 characters of [A-Za-z0-9_-]"
        );
        Ok(id.clone())
    }

    /// How long stored rooms outlive their last write: the token lifetime plus an hour, and
    /// at least a day and an hour (no phase lasts longer than a day).
    pub fn store_retention(&self) -> Duration {
        (self.auth.token_ttl + Duration::from_secs(3600)).max(Duration::from_secs(25 * 3600))
    }
}
