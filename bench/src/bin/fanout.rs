//! Gateway fan-out (scenario 2 of the benchmarks issue): N SSE connections on the lobby
//! stream of one gateway process, and publish rates swept upward until the gateway
//! saturates. Per rate: deliveries per second, publish→receive latency p50/p99/p99.9, gaps and
//! duplicates (both must be 0), and the CPU of the gateway, nats-server, the client workers
//! and the publisher.
//!
//! Events come from the [`Lobby`](bench::lobby::Lobby) stand-in straight to NATS, stamped
//! with their send time; the clients are [`Fleet`](bench::fleet::Fleet) workers from
//! 127.0.0.x addresses. A rate is saturated when the stream falls behind (some connection
//! misses the last event for `--timeout` seconds, or the gateway drops one as a slow
//! consumer), when deliveries fall under 90 % of rate × connections, or when they stop rising
//! (under 5 % above the best rate so far); the sweep ends there.
//!
//! Results: `<out>/fanout-<N>.csv` (one row per rate) and `<out>/fanout-cdf-<N>-<rate>.csv`
//! (the latency CDF of each rate, for bench/plot.sh).
//!
//! `cargo build --release -p gateway -p bench &&
//!  target/release/fanout --connections 10000 --rates 10,20,50,100,200,500`

use std::time::Duration;

use anyhow::ensure;
use bench::fleet;
use bench::histogram::Latencies;
use bench::report::{remove_earlier, write_cdf, Csv};
use bench::rig::{cpu_line, Rig, RigArgs};
use clap::Parser;

/// Fan-out: N connections on one gateway's lobby stream, publish rates swept to saturation.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Events per second, swept in this order until the gateway saturates.
    #[arg(
        long,
        alias = "rate",
        value_delimiter = ',',
        default_value = "10,20,50,100,200,500,1000,2000,5000,10000"
    )]
    rates: Vec<f64>,
    /// Seconds of publishing at each rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
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
    let opened = fleet.open().await?;
    println!(
        "{} connections on the lobby stream, each with its snapshot: {}",
        args.connections,
        opened.describe()
    );
    ensure!(opened.reached > 0, "no connection opened");
    let mut alive = opened.reached;

    let mut header = vec![
        "connections",
        "rate",
        "events",
        "deliveries",
        "expected",
        "deliveries_per_s",
    ];
    header.extend(Latencies::COLUMNS);
    header.extend(["gaps", "duplicates", "resets", "lost", "lagging", "drain_s"]);
    let cpu_columns: Vec<String> = (rig.roles(&fleet).iter())
        .map(|role| format!("cpu_{role}"))
        .collect();
    header.extend(cpu_columns.iter().map(String::as_str));
    let mut csv = Csv::create(
        &args.rig.out,
        &format!("fanout-{}.csv", args.connections),
        &header,
    )?;

    remove_earlier(&args.rig.out, &format!("fanout-cdf-{}-", args.connections))?;
    let mut best = 0.0f64;
    for &rate in &args.rates {
        let connections = alive;
        let run = rig
            .publish(&mut fleet, rate, Duration::from_secs(args.seconds))
            .await?;
        let (tally, drained, latency) = (&run.tally, &run.drained, &run.tally.latency);
        let expected = run.events * connections as u64;
        let lost = drained.failures();
        alive -= lost;
        println!(
            "\n{rate} events/s × {connections} connections: {} of {expected} delivered, {:.0} \
             deliveries/s; last event everywhere {:.3} s after the last publish",
            tally.delivered,
            run.per_second,
            drained.seconds()
        );
        println!("  publish→receive: {}", latency.summary());
        println!(
            "  {}; connections lost {lost}, lagging {}",
            tally.faults(),
            drained.lagging
        );
        for (reason, n) in &drained.failed {
            println!("    {n} × {reason}");
        }
        println!("  CPU: {}", cpu_line(&run.cpu));

        let mut row: Vec<String> = vec![
            args.connections.to_string(),
            rate.to_string(),
            run.events.to_string(),
            tally.delivered.to_string(),
            expected.to_string(),
            format!("{:.0}", run.per_second),
        ];
        row.extend(latency.columns());
        row.extend([
            tally.gaps.to_string(),
            tally.duplicates.to_string(),
            tally.resets.to_string(),
            lost.to_string(),
            drained.lagging.to_string(),
            format!("{:.3}", drained.seconds()),
        ]);
        row.extend(run.cpu.iter().map(|(_, p)| format!("{p:.1}")));
        csv.row(&row)?;
        write_cdf(
            &args.rig.out,
            &format!("fanout-cdf-{}-{rate}.csv", args.connections),
            latency,
        )?;

        let saturated = if drained.lagging > 0 || lost > 0 {
            Some("the stream fell behind or dropped connections")
        } else if run.per_second < 0.9 * expected as f64 / args.seconds as f64 {
            // Against what was published, not the nominal rate: the last event of a step
            // can race the stop, which is not the gateway falling behind.
            Some("deliveries under 90 % of events published × connections")
        } else if run.per_second < 1.05 * best {
            Some("deliveries stopped rising")
        } else {
            None
        };
        if let Some(why) = saturated {
            println!("\nsaturated at {rate} events/s ({why}); best {best:.0} deliveries/s");
            break;
        }
        best = best.max(run.per_second);
    }
    println!("\nresults: {}", csv.path().display());
    Ok(())
}
