//! `gateway`: serves browsers SSE streams fed by NATS. See `--help` and
//! `deploy/config/gateway.toml`.

use std::path::PathBuf;

use clap::Parser;
use gateway::{Config, Gateway};
use proto::process;

/// jemalloc rather than glibc's malloc: a connect storm opens thousands of streams at once,
/// each briefly holding its request, its snapshot and a connection task bigger than the stream
/// it becomes. glibc keeps that peak as fragmented heap for good; jemalloc keeps sizes apart
/// and its background thread gives emptied pages back within seconds (10,000 streams opened
/// at once: 58 MB at the peak, 33 MB ten seconds later), so memory follows the connections
/// held, not the last storm.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Serves Phasecast's SSE streams and command bridge to browsers.
///
/// Settings come from defaults, then the TOML file given with --config, then PHASECAST_*
/// environment variables (gateway.listen is PHASECAST_GATEWAY__LISTEN).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (see deploy/config/gateway.toml for every key).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shutdown = process::shutdown_signal()?;
    let config = Config::load(args.config.as_deref())?;
    process::init_logs(&config.log);
    let gateway = Gateway::build(config).await?;
    tracing::info!(listen = %gateway.addr(), admin = %gateway.admin_addr(), "gateway ready");
    gateway.run_until(shutdown).await
}
