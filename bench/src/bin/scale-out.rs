//! Scale-out (scenario 6 of the benchmarks issue): several gateway processes behind nginx on
//! this machine, holding N lobby streams in all (100,000 by default), and what that costs:
//! the connections held (as the clients count them and as each gateway counts them), the
//! resident memory of the gateways and of nginx in all and per connection, and the CPU of
//! every process while idle and while events flow at a modest rate.
//!
//! Every process may open 20,000 files here, so: each gateway holds at most
//! `--max-per-gateway` streams; nginx, which holds two descriptors per proxied stream, runs
//! enough worker processes (`deploy/nginx/render` with `WORKER_PROCESSES`), its listener with
//! `reuseport` so that the kernel spreads connections evenly over them; and the clients run
//! in `--per-worker`-sized worker processes. Connections open in batches of `--batch` at once.
//!
//! Results: `<out>/scale-out.csv`, a row for the idle phase and one for the events phase.
//!
//! `cargo build --release -p gateway -p bench && target/release/scale-out --connections 100000`

use std::time::Duration;

use anyhow::ensure;
use bench::fleet::{self, Fleet};
use bench::report::Csv;
use bench::rig::{by_role, cpu_line, kib_line, rss_kib, CpuMeter, Rig, RigArgs};
use clap::Parser;

/// Scale-out: N streams over several gateways behind nginx; memory and CPU it costs.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Gateway processes; default: enough for 12,500 streams each. nginx reaches every
    /// gateway from 127.0.0.1, and here its connects to one gateway ran out of ephemeral
    /// ports at 14,124 (about the even half of 32768–60999, the half Linux gives connect()
    /// first): past that they fail with EADDRNOTAVAIL and streams are refused with 502.
    #[arg(long)]
    gateways: Option<usize>,
    /// `gateway.max_connections` of each gateway (its process may open 20,000 files).
    #[arg(long, default_value_t = 19_000)]
    max_per_gateway: usize,
    /// nginx worker processes; default: one per 8,000 streams (16,000 descriptors).
    #[arg(long)]
    nginx_workers: Option<usize>,
    /// Connections opened at the same moment, batch after batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Seconds over which idle CPU is measured (two heartbeat rounds of the gateways' 15 s).
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Events per second in the events phase (each goes to every connection).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of publishing in the events phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[command(flatten)]
    rig: RigArgs,
}

fn main() -> anyhow::Result<()> {
    fleet::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.connections;
    let gateways = args.gateways.unwrap_or(n.div_ceil(12_500)).max(1);
    let nginx_workers = args.nginx_workers.unwrap_or(n.div_ceil(8_000)).max(1);
    // nginx spreads streams round-robin over the gateways, and the kernel spreads them
    // (nearly) evenly over nginx's workers: leave each some room for unevenness.
    ensure!(
        n.div_ceil(gateways) <= args.max_per_gateway * 95 / 100,
        "{n} connections over {gateways} gateways of {} each: add gateways",
        args.max_per_gateway
    );
    ensure!(
        2 * n.div_ceil(nginx_workers) <= 18_000,
        "{n} connections need more than {nginx_workers} nginx workers under a 20,000-file limit"
    );
    let rig = Rig::start(
        &args.rig,
        gateways,
        args.max_per_gateway,
        Some(nginx_workers),
        1,
    )
    .await?;
    let mut fleet = args.rig.fleet(&rig);
    let memory = |fleet: &Fleet| {
        by_role(
            rig.processes(fleet)
                .into_iter()
                .map(|(r, pid)| (r, rss_kib(pid))),
        )
    };
    let before = memory(&fleet);
    println!(
        "{gateways} gateways behind nginx with {nginx_workers} workers; RSS before any \
         connection: {}",
        kib_line(&before)
    );

    let mut held = 0;
    while fleet.added() < n {
        let batch = args.batch.min(n - fleet.added());
        fleet.add(batch).await?;
        let opened = fleet.open().await?;
        held += opened.reached;
        println!("{batch} more: {}; {held} held", opened.describe());
    }
    let mut per_gateway = Vec::new();
    for gateway in &rig.gateways {
        per_gateway.push(gateway.connections().await?);
    }
    println!(
        "{held} streams held by the clients; the gateways count {} ({per_gateway:?})",
        per_gateway.iter().sum::<u64>()
    );

    let after = memory(&fleet);
    let grown = |role: &str| {
        let of = |m: &[(&str, u64)]| m.iter().find(|(r, _)| *r == role).map_or(0, |&(_, v)| v);
        (
            of(&after),
            of(&after).saturating_sub(of(&before)) as f64 / held.max(1) as f64,
        )
    };
    let (gateway_rss, gateway_per) = grown("gateways");
    let (nginx_rss, nginx_per) = grown("nginx");
    let (client_rss, _) = grown("clients");
    println!(
        "RSS: gateways {gateway_rss} KiB ({gateway_per:.2} KiB per connection), nginx \
         {nginx_rss} KiB ({nginx_per:.2} KiB per connection), clients {client_rss} KiB"
    );

    let cpu = CpuMeter::start(&rig.processes(&fleet));
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle = cpu.percents();
    println!(
        "CPU while idle ({} s): {}",
        args.idle_seconds,
        cpu_line(&idle)
    );

    let run = rig
        .publish(&mut fleet, args.rate, Duration::from_secs(args.seconds))
        .await?;
    let (tally, drained) = (&run.tally, &run.drained);
    println!(
        "{} events/s to every stream for {} s: {} deliveries ({:.0}/s); every stream had the \
         last one {:.3} s after it was published; {} lost, {} lagging",
        args.rate,
        args.seconds,
        tally.delivered,
        run.per_second,
        drained.seconds(),
        drained.failures(),
        drained.lagging
    );
    println!(
        "  publish→receive {}; {}",
        tally.latency.summary(),
        tally.faults()
    );
    println!("  CPU: {}", cpu_line(&run.cpu));

    let mut header = vec![
        "phase",
        "connections",
        "held",
        "gateways",
        "nginx_workers",
        "gateway_rss_kib",
        "gateway_kib_per_connection",
        "nginx_rss_kib",
        "nginx_kib_per_connection",
        "client_rss_kib",
        "rate",
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
        "gaps",
        "duplicates",
    ];
    let cpu_columns: Vec<String> = idle.iter().map(|(role, _)| format!("cpu_{role}")).collect();
    header.extend(cpu_columns.iter().map(String::as_str));
    let mut csv = Csv::create(&args.rig.out, "scale-out.csv", &header)?;
    let common = [
        n.to_string(),
        held.to_string(),
        gateways.to_string(),
        nginx_workers.to_string(),
        gateway_rss.to_string(),
        format!("{gateway_per:.3}"),
        nginx_rss.to_string(),
        format!("{nginx_per:.3}"),
        client_rss.to_string(),
    ];
    let idle_row = ["0", "0", "", "", "0", "0"].map(String::from);
    let busy_row = [
        args.rate.to_string(),
        format!("{:.0}", run.per_second),
        format!("{:.3}", tally.latency.quantile_ms(0.5)),
        format!("{:.3}", tally.latency.quantile_ms(0.99)),
        tally.gaps.to_string(),
        tally.duplicates.to_string(),
    ];
    for (phase, figures, cpu) in [("idle", idle_row, &idle), ("events", busy_row, &run.cpu)] {
        let cpu = cpu.iter().map(|(_, p)| format!("{p:.1}"));
        let row = std::iter::once(phase.to_owned())
            .chain(common.iter().cloned())
            .chain(figures)
            .chain(cpu);
        csv.row(row)?;
    }
    println!("results: {}", csv.path().display());
    Ok(())
}
