//! `game-engine`: runs Mafia rooms over NATS. See `--help` and `deploy/config/engine.toml`.

use std::path::PathBuf;

use clap::Parser;
use game_engine::{Config, Engine};
use proto::process;

/// jemalloc rather than glibc's malloc: every step clones, serialises and drops a room's
/// record across worker threads, and glibc's arenas spent a quarter of the engine's CPU on
/// that under load (their locks, `malloc_consolidate`, `unlink_chunk`; docs/benchmarks.md,
/// commands over NATS).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
