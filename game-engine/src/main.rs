//! `game-engine`: runs Mafia rooms over NATS. See `--help` and `deploy/config/engine.toml`.

use std::path::PathBuf;

use clap::Parser;
use game_engine::{Config, Engine};
use proto::config::LogFormat;

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
    let shutdown = shutdown_signal()?;
    let config = Config::load(args.config.as_deref())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log.format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let engine = Engine::build(config).await?;
    engine.run_until(shutdown).await
}

/// SIGTERM or Ctrl-C. The handler is installed at once, before anything is bound, so a
/// signal during startup is a clean stop too rather than the default kill.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
