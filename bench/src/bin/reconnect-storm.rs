//! Reconnect storm (scenario 5 of the benchmarks issue): N clients hold the lobby stream of
//! one gateway while events keep flowing; then every client drops its connection at the same
//! moment, stays away `--offline-ms` (events keep flowing, so each resume has events to
//! replay), and all reconnect at once with `Last-Event-ID: <last id it saw>`, as EventSource
//! does. Prints the time from the reconnect until every client has caught up (has received
//! the last id published when the reconnect began, with no gap on the way), the spread per
//! client, failures, gaps, duplicates and resets (all must be 0), and CPU during the storm.
//!
//! The [`Lobby`](bench::lobby::Lobby) stand-in answers each resume from its history, as the
//! engine does (`since` = N gets every event after N), so a resume that started over with a
//! snapshot shows as a reset. After the catch-up, one more live event must reach everyone,
//! which shows the resumed streams are live, not only replayed.
//!
//! Results: `<out>/reconnect-storm.csv`.
//!
//! `cargo build --release -p gateway -p bench &&
//!  target/release/reconnect-storm --connections 10000 --rate 10`

use std::time::Duration;

use anyhow::ensure;
use bench::fleet;
use bench::report::Csv;
use bench::rig::{cpu_line, CpuMeter, Rig, RigArgs};
use clap::Parser;

/// Reconnect storm: N clients drop their streams at once and resume with Last-Event-ID.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Events per second published throughout, storm included.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Milliseconds between dropping and reconnecting (EventSource waits the `retry` the
    /// gateway sends, 2 s by default; 0 reconnects at once).
    #[arg(long, default_value_t = 1000)]
    offline_ms: u64,
    #[command(flatten)]
    rig: RigArgs,
}

fn main() -> anyhow::Result<()> {
    fleet::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.rate > 0.0, "events must flow: --rate above 0");
    // Old connections may still be open at the gateway while their replacements arrive.
    let rig = Rig::start(&args.rig, 1, 2 * args.connections + 1000, None, 100_000).await?;
    let mut fleet = args.rig.fleet(&rig);
    fleet.add(args.connections).await?;
    let opened = fleet.open().await?;
    println!(
        "{} clients on the lobby stream: {}",
        args.connections,
        opened.describe()
    );

    rig.lobby.set_rate(args.rate);
    // Events are reaching every client before the storm.
    let flowing = fleet.reach(rig.lobby.last_id().await? + 1).await?;
    ensure!(
        flowing.lagging == 0 && flowing.failures() == 0,
        "events did not reach every client before the storm: {}",
        flowing.describe()
    );
    fleet.tally().await?;

    let dropped = fleet.disconnect().await?;
    tokio::time::sleep(Duration::from_millis(args.offline_ms)).await;
    let cpu = CpuMeter::start(&rig.processes(&fleet));
    let at_storm = rig.lobby.last_id().await?;
    let storm = fleet.resume(at_storm).await?;
    let cpu = cpu.percents();
    let live = fleet.reach(rig.lobby.last_id().await? + 1).await?;
    rig.lobby.set_rate(0.0);
    let tally = fleet.tally().await?;

    println!("all dropped their connections: {}", dropped.describe());
    println!(
        "{} ms later all resumed with Last-Event-ID while {} events/s flowed; caught up to id \
         {at_storm}: {}",
        args.offline_ms,
        args.rate,
        storm.describe()
    );
    println!("  then the next live event: {}", live.describe());
    println!(
        "  {} (must all be 0); {} events received in all, publish→receive (replays included) {}",
        tally.faults(),
        tally.delivered,
        tally.latency.summary()
    );
    println!("  CPU during the storm: {}", cpu_line(&cpu));

    let mut csv = Csv::create(
        &args.rig.out,
        "reconnect-storm.csv",
        &[
            "connections",
            "rate",
            "offline_ms",
            "caught_up",
            "failed",
            "lagging",
            "all_s",
            "p50_s",
            "p99_s",
            "gaps",
            "duplicates",
            "resets",
        ],
    )?;
    csv.row([
        args.connections.to_string(),
        args.rate.to_string(),
        args.offline_ms.to_string(),
        storm.reached.to_string(),
        storm.failures().to_string(),
        storm.lagging.to_string(),
        format!("{:.3}", storm.seconds()),
        format!("{:.3}", storm.times.quantile_ms(0.5) / 1e3),
        format!("{:.3}", storm.times.quantile_ms(0.99) / 1e3),
        tally.gaps.to_string(),
        tally.duplicates.to_string(),
        tally.resets.to_string(),
    ])?;
    println!("results: {}", csv.path().display());
    Ok(())
}
