//! Commands per second and their latency on one nats-server (R1) and on a three-node cluster
//! (R3), side by side: the load of `engine-commands` (rooms of three in their day, two
//! players of each voting back and forth) against an engine whose every step is a
//! replicated JetStream write. On the cluster the engine is connected to node 0 and the load
//! comes from connections spread over the three nodes. Every process shares this machine,
//! so the three servers share its cores: the cluster's figures are its cost in CPU and
//! round trips, not what three machines would do.
//!
//! `cargo run --release -p bench --bin cluster-commands -- --nats cluster --rooms 500`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bench::histogram::Recorder;
use bench::rig::CpuMeter;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use game_engine::{Config, Engine};
use proto::{PlayerId, RoomCode, Subjects};
use serde_json::{json, Value};
use test_support::{NatsCluster, NatsServer};

#[derive(Clone, Copy, ValueEnum)]
enum Nats {
    /// One nats-server: one copy of everything (R1).
    Single,
    /// Three nats-servers in a cluster: three copies (R3).
    Cluster,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "single")]
    nats: Nats,
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// NATS connections the load comes from.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Requests in flight, in all.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// The servers, kept alive for the run.
enum Servers {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Servers {
    fn urls(&self) -> Vec<String> {
        match self {
            Servers::Single(s) => vec![s.url()],
            Servers::Cluster(c) => (0..c.len()).map(|i| c.url(i)).collect(),
        }
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        match self {
            Servers::Single(s) => vec![("nats-server", s.pid().unwrap_or(0))],
            Servers::Cluster(c) => ["nats n0", "nats n1", "nats n2"]
                .into_iter()
                .enumerate()
                .map(|(i, name)| (name, c.pid(i).unwrap_or(0)))
                .collect(),
        }
    }
}

async fn ask(client: &async_nats::Client, subject: String, body: Value) -> anyhow::Result<Value> {
    let reply = client.request(subject, body.to_string().into()).await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    anyhow::ensure!(reply["ok"] == true, "refused: {reply}");
    Ok(reply)
}

async fn seated_room(
    client: &async_nats::Client,
    subjects: &Subjects,
    settings: &Value,
) -> anyhow::Result<(RoomCode, Vec<PlayerId>)> {
    let created = ask(client, subjects.lobby_create(), settings.clone()).await?;
    let code = RoomCode::parse(created["code"].as_str().unwrap_or_default())?;
    let mut players = Vec::new();
    for n in 0..3 {
        let joined = ask(
            client,
            subjects.room_cmd(&code),
            json!({"type": "join", "name": format!("p{n}")}),
        )
        .await?;
        players.push(PlayerId::parse(
            joined["player_id"].as_str().unwrap_or_default(),
        )?);
    }
    ask(
        client,
        subjects.room_cmd(&code),
        json!({"type": "start", "player": players[0]}),
    )
    .await?;
    Ok((code, players))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let servers = tokio::task::spawn_blocking(move || match args.nats {
        Nats::Single => Servers::Single(NatsServer::start()),
        Nats::Cluster => Servers::Cluster(NatsCluster::start()),
    })
    .await?;
    let urls = servers.urls();
    let keys = tempfile::tempdir()?;
    let (signing, _) = test_support::write_test_keys(keys.path());
    let mut config = Config::default();
    config.nats.url = urls[0].clone();
    config.engine.admin_listen = "127.0.0.1:0".parse()?;
    config.auth.signing_key_file = Some(signing);
    config.engine.min_phase = Duration::ZERO;
    let engine = Engine::build(config).await.context("engine")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(engine.run_until(async move {
        let _ = stopped.await;
    }));

    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(
            async_nats::ConnectOptions::new()
                .request_timeout(Some(Duration::from_secs(30)))
                .connect(&urls[i % urls.len()])
                .await?,
        );
    }
    let subjects = Subjects::default();
    let settings = json!({"title": "bench", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": 1, "notice": 1, "day_per_player": 3_600_000}});
    let rooms: Vec<_> = futures::stream::iter(0..args.rooms)
        .map(|i| seated_room(&clients[i % clients.len()], &subjects, &settings))
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    // Wait until every room is in its day: a vote is accepted everywhere.
    for (code, players) in &rooms {
        let vote = json!({"type": "vote", "player": players[0], "target": players[1]});
        while ask(&clients[0], subjects.room_cmd(code), vote.clone())
            .await
            .is_err()
        {
            tokio::task::yield_now().await;
        }
    }
    println!("{} rooms in their day", rooms.len());

    let rooms = Arc::new(rooms);
    let running = Arc::new(AtomicBool::new(true));
    let latencies = Arc::new(Recorder::default());
    let mut meters = vec![("engine + load generator", std::process::id())];
    meters.extend(servers.pids());
    let cpu = CpuMeter::start(&meters);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (client, rooms, running) =
                (clients[w % clients.len()].clone(), rooms.clone(), running.clone());
            let (subjects, latencies) = (subjects.clone(), latencies.clone());
            tokio::spawn(async move {
                let mut errors = 0u64;
                let mut i = w;
                while running.load(Ordering::Relaxed) {
                    let (code, players) = &rooms[i % rooms.len()];
                    let (voter, target) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
                    let body = json!({"type": "vote", "player": players[voter], "target": players[target]});
                    let sent = Instant::now();
                    match client.request(subjects.room_cmd(code), body.to_string().into()).await {
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
        match args.nats {
            Nats::Single => "one nats-server (R1)",
            Nats::Cluster => "three-node cluster (R3)",
        },
        latencies.count(),
        span,
        latencies.count() as f64 / span,
        errors,
        args.clients,
        args.concurrency
    );
    println!("latency: {}", latencies.summary());
    let cpu: Vec<String> = cpu
        .iter()
        .map(|(name, pct)| format!("{name} {pct:.0} %"))
        .collect();
    println!("CPU (% of a core): {}", cpu.join(", "));
    drop(stop);
    Ok(())
}
