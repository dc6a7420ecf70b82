//! The deadline scheduler at scale: many rooms in timed phases, real NATS.
//!
//! First every room waits (each with its 12-hour idle deadline pending) and the engine's CPU
//! is measured while nothing is due. Then every room starts a game with GAME.md's phase
//! durations divided by `--speed` (nobody votes or acts, so games never end), and the lateness
//! of every phase change (fire time minus deadline, as the engine itself records it) is
//! collected.
//!
//! `cargo run --release -p bench --bin engine-scheduler -- --rooms 100000 --speed 1 --seconds 130`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::histogram::Recorder;
use bench::rig::CpuMeter;
use bench::servers::Topology;
use bench::Stack;
use clap::Parser;
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    rooms: usize,
    /// How long to collect phase changes.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of idle CPU measurement.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Divides GAME.md's phase durations (1: the real game; a full cycle takes 122 s).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
}

/// The scheduler's lateness, recorded without a lock so that recording never stalls the
/// rooms being measured.
#[derive(Default)]
struct Lateness(Recorder);

impl HistogramFn for Lateness {
    /// `value` in seconds.
    fn record(&self, value: f64) {
        self.0.record((value * 1e9) as u64);
    }
}

/// Sends the scheduler's lateness to a [`Lateness`]; every other metric goes nowhere.
struct Capture(Arc<Lateness>);

impl metrics::Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == game_engine::metrics::SCHEDULER_LATENESS {
            Histogram::from_arc(self.0.clone())
        } else {
            Histogram::noop()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lateness = Arc::new(Lateness::default());
    metrics::set_global_recorder(Capture(lateness.clone()))
        .map_err(|_| anyhow::anyhow!("a recorder is already installed"))?;
    let stack = Stack::start(Topology::Single).await?;
    // The engine runs in this process.
    let processes = [("engine", std::process::id()), stack.nats.pids()[0]];

    let ms = |default_ms: f64| (default_ms / args.speed).round() as u64;
    let settings = json!({"title": "bench", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": ms(3000.0), "notice": ms(3000.0),
            "day_per_player": ms(20_000.0), "vote": ms(10_000.0), "vote_result": ms(3000.0),
            "night_intro": ms(3000.0), "night": ms(40_000.0), "ended": ms(30_000.0)}});
    let setup = Instant::now();
    let rooms = (stack.engines)
        .seated_rooms(args.rooms, &settings, args.concurrency)
        .await?;
    println!(
        "seated {} rooms of 3 in {:.1} s",
        rooms.len(),
        setup.elapsed().as_secs_f64()
    );
    let store = stack.nats.store_bytes();
    println!(
        "JetStream: {:.1} MiB on disk ({:.1} KiB per room), nats-server RSS {:.0} MiB ({:.1} KiB per room)",
        store as f64 / (1 << 20) as f64,
        store as f64 / 1024.0 / rooms.len() as f64,
        stack.nats.rss_kib() as f64 / 1024.0,
        stack.nats.rss_kib() as f64 / rooms.len() as f64,
    );

    // Idle: every room has a deadline pending, none is due.
    let idle = CpuMeter::start(&processes);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle = idle.percents();
    println!(
        "idle with {} deadlines pending: engine CPU {:.2} % of a core, nats-server {:.2} %",
        rooms.len(),
        idle[0].1,
        idle[1].1,
    );

    let started = Instant::now();
    stack.engines.start_games(&rooms, args.concurrency).await?;
    println!(
        "started every game in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    lateness.0.take(); // only what comes from now on
    let busy = CpuMeter::start(&processes);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (span, cpu) = (busy.elapsed(), busy.percents());
    let lateness = lateness.0.take();
    println!(
        "{} phase changes in {:.1} s ({:.0}/s) across {} rooms",
        lateness.count(),
        span,
        lateness.count() as f64 / span,
        rooms.len()
    );
    println!("lateness: {}", lateness.summary());
    println!(
        "CPU while changing phases (engine and this load in one process): {:.0} % of a core, nats-server {:.0} %",
        cpu[0].1, cpu[1].1
    );
    Ok(())
}
