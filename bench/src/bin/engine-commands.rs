//! Commands over real NATS: requests per second and latency with many rooms in play.
//!
//! Rooms of three are seated and started; in the day, two of each room's three players vote
//! back and forth (the third never votes, so the day never ends early), from `--clients`
//! connections with `--concurrency` requests in flight in all. Generator, nats-server and
//! engine share this machine. With `--nats cluster` every step is a JetStream write kept on
//! three nodes (R3): the engine is connected to node 0 and the load comes from connections
//! spread over the three.
//!
//! `cargo run --release -p bench --bin engine-commands -- --rooms 1000 --seconds 10`
//! `cargo run --release -p bench --bin engine-commands -- --nats cluster --rooms 1000`
//! `cargo run --release -p bench --bin engine-commands -- --rooms 100 --chat-every 4`
//! `cargo run --release -p bench --bin engine-commands -- --rooms 1000 --request-ids`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::histogram::Recorder;
use bench::rig::{cpu_line, CpuMeter};
use bench::servers::Topology;
use bench::{Engines, Stack};
use clap::Parser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Topology::Single)]
    nats: Topology,
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// NATS connections the load comes from.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Requests in flight, in all.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Make every n-th command of each sender a 100-character chat line instead of a vote
    /// (0: votes only), as in a room whose players talk.
    #[arg(long, default_value_t = 0)]
    chat_every: u64,
    /// Give every command a `request_id` of its own (36 characters, as a UUID), as a
    /// client that retries safely does.
    #[arg(long)]
    request_ids: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = Stack::start(args.nats).await?;
    let settings = json!({"title": "bench", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": 1, "notice": 1, "day_per_player": 3_600_000}});
    let rooms = stack
        .engines
        .seated_rooms(args.rooms, &settings, 256)
        .await?;
    for (code, players) in &rooms {
        stack.engines.start_game(code, &players[0]).await?;
    }
    // Wait until every room is in its day: a vote is accepted everywhere.
    for (code, players) in &rooms {
        let vote = json!({"type": "vote", "player": players[0], "target": players[1]});
        while stack
            .engines
            .ask(stack.engines.subjects.room_cmd(code), vote.clone())
            .await
            .is_err()
        {
            tokio::task::yield_now().await;
        }
    }
    println!("{} rooms in their day", rooms.len());

    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(Engines::connect(&stack.nats.url(i)).await?.client);
    }
    let rooms = Arc::new(rooms);
    let running = Arc::new(AtomicBool::new(true));
    let latencies = Arc::new(Recorder::default());
    let mut meters = vec![("engine + load generator", std::process::id())];
    meters.extend(stack.nats.pids());
    let cpu = CpuMeter::start(&meters);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (client, rooms, running) = (
                clients[w % clients.len()].clone(),
                rooms.clone(),
                running.clone(),
            );
            let (subjects, latencies) = (stack.engines.subjects.clone(), latencies.clone());
            tokio::spawn(async move {
                let mut errors = 0u64;
                let mut i = w;
                let mut sent_here = 0u64;
                while running.load(Ordering::Relaxed) {
                    let (code, players) = &rooms[i % rooms.len()];
                    let (voter, target) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
                    sent_here += 1;
                    let mut body = if args.chat_every > 0
                        && sent_here.is_multiple_of(args.chat_every)
                    {
                        // Digits, zero-padded: the engine trims a line's spaces.
                        let text = format!("{sent_here:0>100}");
                        json!({"type": "chat", "player": players[voter], "text": text})
                    } else {
                        json!({"type": "vote", "player": players[voter], "target": players[target]})
                    };
                    if args.request_ids {
                        body["request_id"] = json!(format!("{w:08x}-{sent_here:027x}"));
                    }
                    let sent = Instant::now();
                    match client
                        .request(subjects.room_cmd(code), body.to_string().into())
                        .await
                    {
                        Ok(reply) if reply.payload.starts_with(b"{\"ok\":true") => {
                            latencies.record(sent.elapsed().as_nanos() as u64)
                        }
                        _ => errors += 1,
                    }
                    i += args.concurrency;
                }
                errors
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    running.store(false, Ordering::Relaxed);
    let mut errors = 0;
    for worker in workers {
        errors += worker.await?;
    }
    let (span, cpu) = (cpu.elapsed(), cpu.percents());
    let latencies = latencies.take();
    println!(
        "{}: {} commands in {:.1} s: {:.0}/s, {} errors; {} connections, {} in flight",
        stack.nats,
        latencies.count(),
        span,
        latencies.count() as f64 / span,
        errors,
        args.clients,
        args.concurrency
    );
    println!("latency: {}", latencies.summary());
    println!("CPU (% of a core): {}", cpu_line(&cpu));
    // nats-server keeps the message id of every write for its stream's duplicate window
    // (2 minutes), so this grows with the run's length up to that.
    println!(
        "nats-server resident memory at the end: {} MiB",
        stack.nats.rss_kib() / 1024
    );
    Ok(())
}
