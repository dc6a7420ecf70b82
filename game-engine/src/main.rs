//! `game-engine`: runs Mafia rooms over NATS. See `--help` and `deploy/config/engine.toml`.

use std::path::PathBuf;

use clap::Parser;
use game_engine::{Config, Engine};
use proto::process;

/// Runs Phasecast rooms and the lobby over NATS.
///
/// Settings come from defaults, then the TOML file given with --config, then PHASECAST_*
/// environment variables (nats.url is PHASECAST_NATS__URL).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (see deploy/config/engine.toml for every key).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shutdown = process::shutdown_signal()?;
    let config = Config::load(args.config.as_deref())?;
    process::init_logs(&config.log);
    let engine = Engine::build(config).await?;
    engine.run_until(shutdown).await
}
