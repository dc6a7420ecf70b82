//! The configuration layering both programs share: defaults, then a TOML file, then
//! `PHASECAST_*` environment variables (`nats.url` ← `PHASECAST_NATS__URL`).

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

/// A configuration error; its message names the offending key.
pub type ConfigError = Box<figment::Error>;
use serde::{de::DeserializeOwned, Serialize};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "PHASECAST_";

/// Loads a config: `defaults` < `file` < environment. A named file that does not exist is an
/// error (figment would silently skip it); figment's errors name the offending key.
pub fn load<T>(defaults: &T, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(Box::new(figment::Error::from(format!(
                "config file {} does not exist",
                path.display()
            ))));
        }
        figment = figment.merge(Toml::file(path));
    }
    Ok(figment
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .extract()?)
}

/// `[nats]`: where the NATS server is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
        }
    }
}

/// `[log]`: `format = "text"` or `"json"`; the filter comes from `RUST_LOG` (default `info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
