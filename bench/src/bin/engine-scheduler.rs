//! The deadline scheduler at scale: many rooms in timed phases, real NATS.
//!
//! First every room waits (each with its 12-hour idle deadline pending) and the engine's CPU
//! is measured while nothing is due. Then every room starts a game with GAME.md's phase
//! durations divided by `--speed` (nobody votes or acts, so games never end), and the lateness
//! of every phase change (fire time minus deadline, as the engine itself records it) is
//! collected.
//!
//! `cargo run --release -p bench --bin engine-scheduler -- --rooms 100000 --speed 1 --seconds 130`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::{cpu_seconds, latency_line, Stack};
use clap::Parser;
use futures::StreamExt;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
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

/// Keeps every scheduler-lateness sample; every other metric goes nowhere. The buffer is
/// allocated up front: growing it under the lock would stall the rooms being measured.
struct Samples(Mutex<Vec<f64>>);

impl Samples {
    fn with_capacity(n: usize) -> Self {
        Samples(Mutex::new(Vec::with_capacity(n)))
    }
}

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().expect("samples lock").push(value);
    }
}

struct Capture(Arc<Samples>);

impl Recorder for Capture {
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
    let samples = Arc::new(Samples::with_capacity(args.rooms * args.seconds as usize));
    metrics::set_global_recorder(Capture(samples.clone()))
        .map_err(|_| anyhow::anyhow!("a recorder is already installed"))?;
    let stack = Stack::start().await?;
    let engine_pid = std::process::id();
    let nats_pid = stack.nats.pid().unwrap_or(0);

    let ms = |default_ms: f64| (default_ms / args.speed).round() as u64;
    let settings = json!({"title": "bench", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": ms(3000.0), "notice": ms(3000.0),
            "day_per_player": ms(20_000.0), "vote": ms(10_000.0), "vote_result": ms(3000.0),
            "night_intro": ms(3000.0), "night": ms(40_000.0), "ended": ms(30_000.0)}});
    let setup = Instant::now();
    let rooms: Vec<_> = futures::stream::iter(0..args.rooms)
        .map(|_| stack.seated_room(&settings))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!(
        "seated {} rooms of 3 in {:.1} s",
        rooms.len(),
        setup.elapsed().as_secs_f64()
    );

    // Idle: every room has a deadline pending, none is due.
    let (engine0, nats0) = (cpu_seconds(engine_pid), cpu_seconds(nats_pid));
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let span = idle.elapsed().as_secs_f64();
    println!(
        "idle with {} deadlines pending: engine CPU {:.2} % of a core, nats-server {:.2} %",
        rooms.len(),
        100.0 * (cpu_seconds(engine_pid) - engine0) / span,
        100.0 * (cpu_seconds(nats_pid) - nats0) / span,
    );

    let started = Instant::now();
    futures::stream::iter(&rooms)
        .map(|(code, players)| stack.start_game(code, &players[0]))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "started every game in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    samples.0.lock().expect("samples lock").clear();
    let (engine0, nats0) = (cpu_seconds(engine_pid), cpu_seconds(nats_pid));
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let span = window.elapsed().as_secs_f64();
    let (engine_cpu, nats_cpu) = (
        cpu_seconds(engine_pid) - engine0,
        cpu_seconds(nats_pid) - nats0,
    );
    let lateness = samples.0.lock().expect("samples lock").clone();
    println!(
        "{} phase changes in {:.1} s ({:.0}/s) across {} rooms",
        lateness.len(),
        span,
        lateness.len() as f64 / span,
        rooms.len()
    );
    println!("{}", latency_line("lateness", lateness));
    println!(
        "CPU while changing phases (engine and this load in one process): {:.0} % of a core, nats-server {:.0} %",
        100.0 * engine_cpu / span,
        100.0 * nats_cpu / span
    );
    Ok(())
}
