//! Connect storm (scenario 4 of the benchmarks issue): N clients connect to one gateway at
//! the same moment, each opening the lobby stream and reading its snapshot. Prints the time
//! until every client had its snapshot, connections per second, the spread per client, the
//! failures by reason, and the CPU each process used during the storm.
//!
//! The client workers are started and waiting before the storm; then all of them are told
//! to open their connections at once, and each connection reports when its snapshot arrived.
//! The listen backlog and SYN retries of the kernel are part of what this measures.
//!
//! Results: `<out>/connect-storm.csv`.
//!
//! `cargo build --release -p gateway -p bench && target/release/connect-storm --connections 10000`

use bench::fleet;
use bench::report::Csv;
use bench::rig::{cpu_line, CpuMeter, Rig, RigArgs};
use clap::Parser;

/// Connect storm: N clients open the lobby stream of one gateway at the same moment.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[command(flatten)]
    rig: RigArgs,
}

fn main() -> anyhow::Result<()> {
    fleet::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let rig = Rig::start(&args.rig, 1, args.connections + 1000, None, 1).await?;
    let mut fleet = args.rig.fleet(&rig);
    fleet.add(args.connections).await?;
    let cpu = CpuMeter::start(&rig.processes(&fleet));
    let storm = fleet.open().await?;
    let cpu = cpu.percents();
    let seconds = storm.seconds();
    println!(
        "{} clients connecting at once: {}",
        args.connections,
        storm.describe()
    );
    println!(
        "  {:.0} connections with snapshots per second; per client max {:.3} s",
        storm.reached as f64 / seconds,
        storm.times.max_ms() / 1e3
    );
    println!("  CPU: {}", cpu_line(&cpu));
    let mut csv = Csv::create(
        &args.rig.out,
        "connect-storm.csv",
        &[
            "connections",
            "reached",
            "failed",
            "lagging",
            "all_s",
            "per_s",
            "p50_s",
            "p99_s",
            "max_s",
        ],
    )?;
    csv.row([
        args.connections.to_string(),
        storm.reached.to_string(),
        storm.failures().to_string(),
        storm.lagging.to_string(),
        format!("{seconds:.3}"),
        format!("{:.0}", storm.reached as f64 / seconds),
        format!("{:.3}", storm.times.quantile_ms(0.5) / 1e3),
        format!("{:.3}", storm.times.quantile_ms(0.99) / 1e3),
        format!("{:.3}", storm.times.max_ms() / 1e3),
    ])?;
    println!("results: {}", csv.path().display());
    Ok(())
}
