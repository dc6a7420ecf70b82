//! Gateway memory per idle connection (scenario 1 of the benchmarks issue): one gateway
//! process, and idle SSE connections on the lobby stream grown step by step along a ladder
//! (1,000, 5,000, 10,000, 19,000 by default). At each step, once every connection has its
//! snapshot, the gateway's resident memory is read from `/proc/<pid>/status`, and again after
//! the connections have sat idle for `--idle-seconds` (an allocator returns what the opening
//! burst took over some seconds, so the first figure is the peak and the second the idle
//! cost). Memory per connection is the idle figure's growth over the gateway's memory before
//! the first connection, divided by the connections held.
//!
//! Results: `<out>/idle-memory.csv`, one row per step (memory against connections, for
//! bench/plot.sh).
//!
//! `cargo build --release -p gateway -p bench &&
//!  target/release/idle-memory --connections 1000,5000,10000,19000`

use std::time::Duration;

use anyhow::ensure;
use bench::fleet;
use bench::report::Csv;
use bench::rig::{rss_kib, Rig, RigArgs};
use clap::Parser;

/// Gateway memory per idle connection, along a ladder of connection counts.
#[derive(Parser)]
struct Args {
    /// Connections held at each step, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,19000")]
    connections: Vec<usize>,
    /// Seconds the connections sit idle at each step before the memory is read.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    #[command(flatten)]
    rig: RigArgs,
}

fn main() -> anyhow::Result<()> {
    fleet::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.connections.windows(2).all(|w| w[0] < w[1]),
        "--connections must go up: each step adds connections to the ones already open"
    );
    let top = args.connections.last().copied().unwrap_or(0);
    let rig = Rig::start(&args.rig, 1, top + 1000, None, 1).await?;
    let gateway = rig.gateways[0].pid();
    let mut fleet = args.rig.fleet(&rig);
    let baseline = rss_kib(gateway);
    println!("gateway RSS before any connection: {baseline} KiB");
    let mut csv = Csv::create(
        &args.rig.out,
        "idle-memory.csv",
        &[
            "connections",
            "held",
            "gateway_rss_kib",
            "kib_per_connection",
            "client_rss_kib",
            "open_s",
            "failed",
            "gateway_rss_after_open_kib",
        ],
    )?;
    let mut held = 0;
    for &step in &args.connections {
        let added = step - fleet.added();
        fleet.add(added).await?;
        let opened = fleet.open().await?;
        held += opened.reached;
        let peak = rss_kib(gateway);
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        let rss = rss_kib(gateway);
        let per_connection = rss.saturating_sub(baseline) as f64 / held.max(1) as f64;
        let clients: u64 = fleet.pids().into_iter().map(rss_kib).sum();
        println!(
            "{held:>6} connections held: gateway RSS {peak} KiB once open, {rss} KiB after {} s \
             idle: {per_connection:.2} KiB per connection (clients {:.2} KiB per connection); \
             {added} more opened: {}",
            args.idle_seconds,
            clients as f64 / held.max(1) as f64,
            opened.describe()
        );
        csv.row([
            step.to_string(),
            held.to_string(),
            rss.to_string(),
            format!("{per_connection:.3}"),
            clients.to_string(),
            format!("{:.3}", opened.seconds()),
            (opened.failures() + opened.lagging).to_string(),
            peak.to_string(),
        ])?;
    }
    println!("results: {}", csv.path().display());
    Ok(())
}
