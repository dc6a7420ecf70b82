//! Takeover (the durable-engine issue's benchmark): `--rooms` games in play, every one owned
//! by one engine process, a second engine beside it; `kill -9` the owner, and time, for each
//! room, from the kill until the survivor publishes the room's next phase change, i.e. until
//! its pending deadline has fired on the survivor. Target: every room within `engine.lease`
//! plus 5 s.
//!
//! Nobody votes or acts, so games never end; every phase lasts `--phase-ms`. A tap on
//! `game.room.*.evt` also checks, across the takeover, that no id carries two payloads and
//! that no room's ids go back. Phase changes that reach the tap in the first half second
//! after the kill are the dead engine's, still in flight (the survivor cannot own a room
//! before the lease has run out), and do not count as the survivor's.
//!
//! With `--nats cluster`, on a three-node cluster (R3): A, B and the tap each on their own node.
//!
//! `cargo build --release -p game-engine -p bench && target/release/takeover --rooms 10000`

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use bench::histogram::Recorder;
use bench::rig::{
    cpu_line, engine_command, free_port, loopback, ready, CpuMeter, GameRigArgs, Service,
};
use bench::servers::{Servers, FILE_BUDGET};
use bench::Engines;
use clap::Parser;
use futures::StreamExt;
use proto::headers::{SSE_EVENT, SSE_ID};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    rooms: usize,
    /// Every phase's length (day_per_player is a third of it: rooms of 3).
    #[arg(long, default_value_t = 2_000)]
    phase_ms: u64,
    /// `engine.lease` of both engines, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    lease_ms: u64,
    /// Requests in flight while seating the rooms.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds to wait for every room to fire on the survivor.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[command(flatten)]
    rig: GameRigArgs,
}

/// What the tap saw of one room.
#[derive(Default)]
struct RoomTap {
    /// A hash of each id's payload (ids with one payload each, or a violation).
    payloads: HashMap<u64, u64>,
    last: u64,
    /// The first phase change received after the kill (and its grace), since the kill.
    fired: Option<Duration>,
}

#[derive(Default)]
struct Tap {
    rooms: HashMap<String, RoomTap>,
    /// (room, id) that came with a second, different payload.
    two_payloads: Vec<(String, u64)>,
    /// (room, id, last) where a new id was below one already seen.
    went_back: Vec<(String, u64, u64)>,
    /// The same id with the same payload again (re-publication after a takeover is allowed).
    repeated: u64,
    killed: Option<Instant>,
}

/// The dead engine's last phase changes may still be on their way this long after the kill.
const IN_FLIGHT: Duration = Duration::from_millis(500);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = args.rig.engine_binary()?;
    let nats = Servers::start(args.rig.nats, FILE_BUDGET).await?;
    let dir = tempfile::tempdir()?;
    let (signing, _) = test_support::write_test_keys(dir.path());
    // On a cluster, A, B and the tap each on their own node.
    let start_engine = |name: &str, node: usize| -> anyhow::Result<_> {
        let admin = loopback(free_port()?);
        let mut command = engine_command(&binary, &nats.url(node), admin, "100ms", &signing);
        command.env("PHASECAST_ENGINE__LEASE", format!("{}ms", args.lease_ms));
        Ok((Service::spawn(name, &mut command, dir.path())?, admin))
    };
    let (mut owner, owner_admin) = start_engine("engine-a", 0)?;
    owner
        .wait_ready(async || ready(owner_admin, "/healthz").await)
        .await?;
    let engines = Engines::connect(&nats.url(2)).await?;

    let tap = Arc::new(Mutex::new(Tap::default()));
    let mut events = engines.client.subscribe("game.room.*.evt").await?;
    engines.client.flush().await?;
    let tapping = tokio::spawn({
        let tap = tap.clone();
        async move {
            while let Some(msg) = events.next().await {
                watch(&tap, &msg);
            }
        }
    });

    let phase = args.phase_ms;
    let settings = json!({"title": "takeover", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": phase, "notice": phase, "day_per_player": phase / 3,
            "vote": phase, "vote_result": phase, "night_intro": phase, "night": phase,
            "ended": phase}});
    let seating = Instant::now();
    let seated = (engines)
        .seated_rooms(args.rooms, &settings, args.concurrency)
        .await?;
    engines.start_games(&seated, args.concurrency).await?;
    let rooms: Vec<_> = seated.into_iter().map(|(code, _)| code).collect();
    println!(
        "{} games of 3 started on engine A in {:.1} s; phases of {} ms, lease {} ms",
        rooms.len(),
        seating.elapsed().as_secs_f64(),
        phase,
        args.lease_ms
    );

    // The survivor, up for more than a lease before the kill: it counts another engine's
    // silence only once its own heartbeats have come back for a whole lease.
    let (mut survivor, survivor_admin) = start_engine("engine-b", 1)?;
    survivor
        .wait_ready(async || ready(survivor_admin, "/healthz").await)
        .await?;
    let lease = Duration::from_millis(args.lease_ms);
    tokio::time::sleep(lease * 2).await;
    let store = nats.store_bytes();
    println!(
        "JetStream before the kill, {nats}: {:.1} MiB on disk ({:.1} KiB per room), RSS {:.0} MiB",
        store as f64 / (1 << 20) as f64,
        store as f64 / 1024.0 / rooms.len() as f64,
        nats.rss_kib() as f64 / 1024.0
    );

    let mut meters = vec![("survivor", survivor.pid())];
    meters.extend(nats.pids());
    let cpu = CpuMeter::start(&meters);
    tap.lock().expect("tap").killed = Some(Instant::now());
    let killed = Command::new("kill")
        .args(["-KILL", &owner.pid().to_string()])
        .status()?;
    ensure!(killed.success(), "kill -9 of engine A failed");
    let kill = Instant::now();
    println!("kill -9 engine A (pid {})", owner.pid());

    let deadline = kill + Duration::from_secs(args.timeout);
    let mut next_report = kill + Duration::from_secs(1);
    loop {
        let fired = fired_count(&tap, &rooms);
        if fired == rooms.len() || Instant::now() >= deadline {
            break;
        }
        if Instant::now() >= next_report {
            println!(
                "  {:>5.1} s: {fired} of {} rooms fired on the survivor",
                kill.elapsed().as_secs_f64(),
                rooms.len()
            );
            next_report += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // progress poll
    }
    let cpu = cpu.percents();
    tapping.abort();

    let tap = tap.lock().expect("tap");
    let times = Recorder::default();
    let mut missing = Vec::new();
    for code in &rooms {
        match tap.rooms.get(code.as_str()).and_then(|room| room.fired) {
            Some(after) => times.record(after.as_nanos() as u64),
            None => missing.push(code.to_string()),
        }
    }
    let times = times.take();
    let target = lease + Duration::from_secs(5);
    let within = tap
        .rooms
        .values()
        .filter(|room| room.fired.is_some_and(|t| t <= target))
        .count();
    println!(
        "kill → next deadline fired on the survivor, per room: {}",
        times.summary()
    );
    println!(
        "within lease + 5 s ({:?}): {within} of {} rooms; never fired within {} s: {}{}",
        target,
        rooms.len(),
        args.timeout,
        missing.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", missing[..missing.len().min(5)].join(", "))
        }
    );
    println!(
        "tap: ids with two payloads {}, ids that went back {}, same id and payload again {}",
        tap.two_payloads.len(),
        tap.went_back.len(),
        tap.repeated
    );
    for (room, id) in tap.two_payloads.iter().take(5) {
        println!("  two payloads: room {room} id {id}");
    }
    for (room, id, last) in tap.went_back.iter().take(5) {
        println!("  went back: room {room} id {id} after {last}");
    }
    println!(
        "CPU from the kill until the last room fired (% of a core): {}",
        cpu_line(&cpu)
    );
    drop(survivor);
    if !(missing.is_empty() && tap.two_payloads.is_empty() && tap.went_back.is_empty()) {
        let logs = dir.keep();
        anyhow::bail!(
            "takeover incomplete or inconsistent (see above); the engines' logs are kept in {}",
            logs.display()
        );
    }
    Ok(())
}

/// Records one public event in the tap.
fn watch(tap: &Mutex<Tap>, msg: &async_nats::Message) {
    let Some(room) = msg.subject.as_str().split('.').nth(2) else {
        return;
    };
    let headers = msg.headers.as_ref();
    let id = headers
        .and_then(|h| h.get(SSE_ID))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let Some(id) = id else { return };
    let is_phase = headers
        .and_then(|h| h.get(SSE_EVENT))
        .is_some_and(|v| v.as_str() == "phase");
    let mut hasher = DefaultHasher::new();
    msg.payload.hash(&mut hasher);
    let payload = hasher.finish();

    let mut tap = tap.lock().expect("tap");
    let killed = tap.killed;
    let entry = tap.rooms.entry(room.to_owned()).or_default();
    match entry.payloads.get(&id) {
        Some(&seen) if seen != payload => tap.two_payloads.push((room.to_owned(), id)),
        Some(_) => tap.repeated += 1,
        None if id < entry.last => {
            let last = entry.last;
            tap.went_back.push((room.to_owned(), id, last));
        }
        None => {
            entry.payloads.insert(id, payload);
            entry.last = id;
            let since = killed.map(|killed| killed.elapsed());
            if let Some(since) = since.filter(|since| *since >= IN_FLIGHT) {
                if is_phase && entry.fired.is_none() {
                    entry.fired = Some(since);
                }
            }
        }
    }
}

fn fired_count(tap: &Mutex<Tap>, rooms: &[proto::RoomCode]) -> usize {
    let tap = tap.lock().expect("tap");
    rooms
        .iter()
        .filter(|code| {
            tap.rooms
                .get(code.as_str())
                .is_some_and(|room| room.fired.is_some())
        })
        .count()
}
