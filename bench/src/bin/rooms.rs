//! Many rooms: thousands of real Mafia games at once, every player a browser-like client of
//! the real gateway. Prints how long after a phase's deadline each player's SSE connection
//! receives the next `phase` event, the commands per second through the gateway's bridge and
//! their latency, gaps and duplicates per stream, and the CPU of every process.
//!
//! Why: the target is "deadline → client p99 under 10 ms with 2,000 rooms in play".
//! That figure only means something end to end: the engine's scheduler firing, NATS, the
//! gateway's fan-out and the client's socket, with games really being played in every room.
//!
//! What runs: a nats-server (random port), `target/release/game-engine` and
//! `target/release/gateway`, configured through `PHASECAST_*` variables (`engine.min_phase`
//! lowered so rooms may ask for phases of a few seconds; `gateway.max_connections` raised).
//! Every room is created, joined, started and played over HTTP as the web page does:
//! `POST /v1/rooms`, `POST /v1/rooms/<code>/join`, `POST /v1/rooms/<code>/commands` with the
//! token, and one `GET /v1/rooms/<code>/events` SSE stream per player (from 127.0.0.x source
//! addresses). Players' commands share a pool of keep-alive connections, as they would behind
//! nginx; the streams are one socket each.
//!
//! How players play: `bench::bot` (votes by day, some only in the vote phase, night actions
//! at random moments). Games end in a win after a few rounds; the room then closes and its
//! players start a new room, so rooms stay in play for the whole measurement.
//!
//! Deadline → client: a `phase` event carries `ends_at`, the new phase's deadline in unix ms
//! (PROTOCOL.md, "Game messages"). The deadline of the phase that just ended is the `ends_at`
//! of the previous `phase` event on the same stream. The latency of one delivery is the time
//! the frame reached the client's socket (the kernel's receive time, see `sse::Frame`) minus
//! that `ends_at` (one machine, one clock). Only
//! phase changes caused by a deadline count: the only phase that ends early is `day` (every
//! living player voted; nobody leaves here), recognised because the new `vote` phase is timed
//! from the last vote rather than from the day's deadline (its `ends_at` minus its duration
//! is before the day's `ends_at`). `ends_at` is whole milliseconds computed by the engine from
//! the system clock, so single figures are good to about ±1 ms.
//!
//! Gaps and duplicates: ids on a stream must go up (a repeat or step back is a duplicate).
//! A player legitimately sees gaps (other players' private events), so at `game_over` each
//! player asks the engine over NATS for the events after its snapshot that it is in the
//! audience of (`game.room.<code>.snap` with `since`), and compares them with the ids its SSE
//! connection delivered up to `game_over`: an id missing from the stream is a gap. That is one
//! history read from the engine per checked stream and game; `--check-ids` samples fewer.
//!
//! Commands per second count every `POST …/commands` answered while measuring (refusals
//! included, and listed); their latency runs from the player deciding to act to the response,
//! including any wait for one of the `--command-connections` pooled connections.
//!
//! Full scale (on a quiet machine; 16,000 SSE connections, each process under 20,000 fds):
//!
//! `cargo build --release -p game-engine -p gateway -p bench &&
//!  target/release/rooms --rooms 2000 --players 8 --seconds 60`
//!
//! Smoke test: `target/release/rooms --rooms 50 --seconds 10 --stagger 2`

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench::bot::{audience_ids, Action, Bot, Durations, PlayArgs, Wins};
use bench::browser::{self, RoomStream, Seat};
use bench::histogram::{Latencies, Recorder};
use bench::http::{source_address, HttpPool};
use bench::rig::{cpu_line, rss_kib, Buckets, CpuMeter, GameRig, GameRigArgs, Gateway};
use bench::sse::{self, Frame, Sequence, Step};
use clap::Parser;
use proto::event::{GameOver, Phase, PhaseChanged};
use proto::{PlayerId, RoomCode, Subjects};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

#[derive(Parser)]
struct Args {
    /// Rooms in play at once.
    #[arg(long, default_value_t = 2000)]
    rooms: usize,
    /// Players per room: a quarter of them mafia, one doctor, one police, the rest citizens.
    #[arg(long, default_value_t = 8)]
    players: u8,
    /// Length of the measurement, which starts once every room has started its first game.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The first games start spread evenly over this many seconds, as real rooms would.
    #[arg(long, default_value_t = 10)]
    stagger: u64,
    #[command(flatten)]
    play: PlayArgs,
    /// Share of streams whose ids are checked against the engine's history at game over
    /// (one history read from the engine per checked stream; 0.125 is one player per room).
    #[arg(long, default_value_t = 1.0)]
    check_ids: f64,
    /// Keep-alive connections all players' commands share.
    #[arg(long, default_value_t = 64)]
    command_connections: usize,
    /// Rooms being created, joined and connected at once.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    #[command(flatten)]
    rig: GameRigArgs,
}

/// Bounds every HTTP exchange and stream opening.
const HTTP_LIMIT: Duration = Duration::from_secs(10);
/// Tolerance when comparing `ends_at` values: each is whole ms from the system clock.
const SLACK_MS: i64 = 2;

/// Figures gathered while measuring.
#[derive(Default)]
struct Stats {
    measuring: AtomicBool,
    /// Deadline → client, by the phase that ended.
    phase_latency: Mutex<BTreeMap<&'static str, Recorder>>,
    early_phase_changes: AtomicU64,
    /// Deadline-caused changes whose `ends_at` is not the previous one plus the duration.
    timing_anomalies: AtomicU64,
    commands_ok: AtomicU64,
    commands_refused: Mutex<BTreeMap<String, u64>>,
    command_errors: AtomicU64,
    /// Of every command answered.
    command_latency: Recorder,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    extra_ids: AtomicU64,
    streams_verified: AtomicU64,
    streams_unverifiable: AtomicU64,
    games_won: Wins,
    rooms_playing: AtomicI64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Stats {
    fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    fn error(&self, error: anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().expect("lock");
        if first.len() < 5 {
            first.push(format!("{error:#}"));
        }
    }
}

/// Everything the tables and players share.
struct Ctx {
    http: HttpPool,
    gateway: SocketAddr,
    nats: async_nats::Client,
    subjects: Subjects,
    settings: Value,
    durations: Durations,
    day_vote_share: f64,
    check_ids: f64,
    setup: Semaphore,
    next_source: AtomicUsize,
    stopping: AtomicBool,
    stats: Stats,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.players >= 3, "--players: at least 3");
    let durations = args.play.durations()?;
    let settings = browser::room_settings(args.players, &durations.0);
    let connections = args.rooms * args.players as usize;
    let rig = GameRig::start(&args.rig, &args.play.min_phase, connections + 1000, None).await?;
    // The gateway before any stream: what the figures per stream leave out.
    let idle = Memory::of(&rig.gateway).await;
    println!("{rig}");
    println!(
        "{} rooms × {} players = {} SSE connections; durations (ms) {}",
        args.rooms,
        args.players,
        connections,
        serde_json::to_string(&durations.0)?
    );

    let ctx = Arc::new(Ctx {
        http: HttpPool::new(rig.gateway.addr, args.command_connections, HTTP_LIMIT),
        gateway: rig.gateway.addr,
        nats: rig.client.clone(),
        subjects: rig.subjects.clone(),
        settings,
        durations,
        day_vote_share: args.play.day_vote_share,
        check_ids: args.check_ids.clamp(0.0, 1.0),
        setup: Semaphore::new(args.setup_concurrency),
        next_source: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        stats: Stats::default(),
    });

    // Seat every room, then start the first games spread over --stagger seconds.
    let seating = Instant::now();
    let (seated_tx, mut seated) = mpsc::channel(args.rooms);
    let (go, go_rx) = watch::channel(None);
    let mut tables = JoinSet::new();
    for i in 0..args.rooms {
        let offset = Duration::from_secs_f64(args.stagger as f64 * i as f64 / args.rooms as f64);
        tables.spawn(table(ctx.clone(), seated_tx.clone(), go_rx.clone(), offset));
    }
    for done in 0..args.rooms {
        let report = timeout(Duration::from_secs(60), seated.recv())
            .await
            .with_context(|| format!("seating stalled: {done} of {} rooms in 60 s", args.rooms))?
            .context("every table stopped")?;
        report.with_context(|| format!("seating room {}", done + 1))?;
    }
    println!(
        "seated {} rooms with their streams open in {:.1} s; starting their games over {} s",
        args.rooms,
        seating.elapsed().as_secs_f64(),
        args.stagger
    );
    let t0 = Instant::now();
    go.send_replace(Some(t0));
    tokio::time::sleep_until((t0 + Duration::from_secs(args.stagger)).into()).await;

    // Every stream open and every first game started: the load the memory target names.
    let full = Memory::of(&rig.gateway).await;
    let full_streams = rig.gateway.connections().await;
    // Measure.
    let engine_times = async || {
        let admin = rig.engine_admin;
        let lateness = Buckets::read(admin, "phasecast_engine_scheduler_lateness_seconds");
        let commits = Buckets::read(admin, "phasecast_engine_commit_seconds");
        Ok::<_, anyhow::Error>((lateness.await?, commits.await?))
    };
    let engine_before = engine_times().await?;
    let cpu = CpuMeter::start(&rig.processes());
    ctx.stats.measuring.store(true, Ordering::Relaxed);
    let mut in_play = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while tokio::time::Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => in_play.push(ctx.stats.rooms_playing.load(Ordering::Relaxed)),
            () = tokio::time::sleep_until(end) => {}
        }
    }
    ctx.stats.measuring.store(false, Ordering::Relaxed);
    let span = cpu.elapsed();
    let cpu = cpu.percents();
    let memory = Memory::of(&rig.gateway).await;
    let engine_after = engine_times().await?;
    let open_streams = rig.gateway.connections().await;
    let slow = (rig.gateway)
        .metric("phasecast_gateway_slow_consumer_disconnects_total")
        .await;

    ctx.stopping.store(true, Ordering::Relaxed);
    tables.abort_all();
    report(&ctx.stats, span, &in_play, args.rooms);
    // Where deadline → client goes: the engine's own histograms over the same span.
    println!(
        "engine, same span: deadlines fired late by {}",
        engine_after.0.since(&engine_before.0)
    );
    println!(
        "engine, same span: JetStream answered commits in {}",
        engine_after.1.since(&engine_before.1)
    );
    println!(
        "gateway: {} streams open at the end, {} slow-consumer disconnects",
        open_streams.as_ref().map_or("?".into(), |v| v.to_string()),
        slow.map_or("?".into(), |v| format!("{v:.0}")),
    );
    if let Ok(&streams) = full_streams.as_ref() {
        println!(
            "gateway memory with {streams} streams open, as the measurement began: {}",
            full.per_stream(&idle, streams)
        );
    }
    // Streams of ended games close, but the allocator keeps much of what they held: per
    // stream still open, this overstates what one costs.
    if let Ok(&streams) = open_streams.as_ref() {
        println!(
            "gateway memory at the end, per stream open then: {}",
            memory.per_stream(&idle, streams)
        );
    }
    println!("CPU: {}", cpu_line(&cpu));
    let errors = ctx.stats.errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("errors: {errors}; the first:");
        for e in ctx.stats.first_errors.lock().expect("lock").iter() {
            println!("  {e}");
        }
    }
    while tables.join_next().await.is_some() {}
    Ok(())
}

fn report(stats: &Stats, span: f64, in_play: &[i64], rooms: usize) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let min = in_play.iter().min().copied().unwrap_or(0);
    let mean = in_play.iter().sum::<i64>() as f64 / in_play.len().max(1) as f64;
    println!(
        "measured {span:.1} s: rooms in play min {min}, mean {mean:.0} of {rooms}; games won {}",
        stats.games_won.summary("")
    );
    let by_phase: Vec<(&str, Latencies)> = (stats.phase_latency.lock().expect("lock").iter())
        .map(|(phase, recorder)| (*phase, recorder.take()))
        .collect();
    let mut all = Latencies::default();
    for (_, latencies) in &by_phase {
        all.merge(latencies);
    }
    println!(
        "phase changes by deadline: {} deliveries ({:.0}/s); ended early by votes, not counted: {}; timing anomalies: {}",
        all.count(),
        all.count() as f64 / span,
        load(&stats.early_phase_changes),
        load(&stats.timing_anomalies)
    );
    println!("deadline → client: {}", all.summary());
    for (phase, latencies) in by_phase {
        println!("  after {phase}: {}", latencies.summary());
    }
    let latencies = stats.command_latency.take();
    let refused = stats.commands_refused.lock().expect("lock").clone();
    println!(
        "commands through the bridge: {} in {span:.1} s ({:.0}/s), refused {} {:?}, failed {}",
        latencies.count(),
        latencies.count() as f64 / span,
        refused.values().sum::<u64>(),
        refused,
        load(&stats.command_errors)
    );
    println!("command latency: {}", latencies.summary());
    println!(
        "SSE ids: duplicates {}, gaps {} ({} streams checked against the engine's history at game over, {} uncheckable, {} ids the history lacks)",
        load(&stats.duplicates),
        load(&stats.gaps),
        load(&stats.streams_verified),
        load(&stats.streams_unverifiable),
        load(&stats.extra_ids)
    );
}

/// One table of players: seats a room, plays it to the end, and again, until stopped. The
/// first time it reports being seated and waits for its start time.
async fn table(
    ctx: Arc<Ctx>,
    seated: mpsc::Sender<anyhow::Result<()>>,
    mut go: watch::Receiver<Option<Instant>>,
    offset: Duration,
) {
    let mut first = true;
    while !ctx.stopping.load(Ordering::Relaxed) {
        let room = {
            let _turn = ctx.setup.acquire().await;
            seat(&ctx).await
        };
        if first {
            first = false;
            let failed = room.as_ref().err().map(|e| anyhow::anyhow!("{e:#}"));
            let _ = seated.send(failed.map_or(Ok(()), Err)).await;
            let Ok(t0) = go.wait_for(Option::is_some).await.map(|t| t.expect("set")) else {
                return;
            };
            tokio::time::sleep_until((t0 + offset).into()).await;
        }
        match room {
            Ok(room) => {
                if let Err(e) = play(&ctx, room).await {
                    ctx.stats.error(e);
                }
            }
            Err(e) => {
                ctx.stats.error(e);
                // Pacing after a failure, so that a broken stack is not hammered.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A room with every player joined and their streams open.
struct Room {
    code: RoomCode,
    players: Vec<(Seat, RoomStream)>,
}

async fn seat(ctx: &Ctx) -> anyhow::Result<Room> {
    let (code, seats) = browser::seat_room(&ctx.http, &ctx.settings).await?;
    let streams = futures::future::try_join_all(seats.iter().map(|seat| {
        let source = source_address(ctx.next_source.fetch_add(1, Ordering::Relaxed));
        browser::room_events(ctx.gateway, source, &code, &seat.token, HTTP_LIMIT)
    }))
    .await?;
    Ok(Room {
        code,
        players: seats.into_iter().zip(streams).collect(),
    })
}

/// The host starts the game; every player plays until the room closes.
async fn play(ctx: &Arc<Ctx>, room: Room) -> anyhow::Result<()> {
    let host = &room.players[0].0;
    let started = send_command(ctx, &room.code, &host.token, json!({"type": "start"})).await?;
    browser::ensure_ok(&started, "start")?;
    ctx.stats.rooms_playing.fetch_add(1, Ordering::Relaxed);
    let mut players = JoinSet::new();
    for (i, (seat, stream)) in room.players.into_iter().enumerate() {
        let (player, stream) = Player::new(ctx.clone(), room.code.clone(), seat, stream, i == 0);
        players.spawn(player.play(stream));
    }
    let mut result = Ok(());
    while let Some(done) = players.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(e.into()),
        }
    }
    ctx.stats.rooms_playing.fetch_sub(1, Ordering::Relaxed);
    result
}

/// `POST …/commands`, counted while measuring.
async fn send_command(
    ctx: &Ctx,
    code: &RoomCode,
    token: &str,
    body: Value,
) -> anyhow::Result<bench::http::Response> {
    let sent = Instant::now();
    let result = browser::command(&ctx.http, code, token, &body).await;
    let stats = &ctx.stats;
    if stats.measuring() {
        match &result {
            Ok(response) => {
                let latency = sent.elapsed().as_nanos() as u64;
                stats.command_latency.record(latency);
                if response.status == 200 {
                    stats.commands_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    *stats
                        .commands_refused
                        .lock()
                        .expect("lock")
                        .entry(response.error_code())
                        .or_default() += 1;
                }
            }
            Err(_) => {
                stats.command_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    result
}

/// One player: reads their stream as the page would and acts on what it shows.
struct Player {
    ctx: Arc<Ctx>,
    code: RoomCode,
    token: Arc<str>,
    /// The one player of the table who counts the game's result.
    counts_result: bool,
    /// What the player knows of the game, and what it plans.
    bot: Bot,
    /// The stream's ids so far, for duplicates (gaps are checked at game over).
    sequence: Sequence,
    snapshot_id: u64,
    /// Ids delivered after the snapshot, for the check at game over.
    delivered: Vec<u64>,
    pending: Option<(tokio::time::Instant, Action)>,
}

impl Player {
    /// The player as their snapshot shows them, and the stream to play from.
    fn new(
        ctx: Arc<Ctx>,
        code: RoomCode,
        seat: Seat,
        stream: RoomStream,
        counts: bool,
    ) -> (Self, sse::Stream) {
        let bot = Bot::new(seat.player_id, &stream.snapshot, ctx.day_vote_share);
        let player = Player {
            bot,
            sequence: stream.sequence,
            snapshot_id: stream.snapshot_id,
            ctx,
            code,
            token: seat.token.into(),
            counts_result: counts,
            delivered: Vec::new(),
            pending: None,
        };
        (player, stream.stream)
    }

    /// Plays until `room_closed`.
    async fn play(mut self, mut stream: sse::Stream) -> anyhow::Result<()> {
        // Phases are seconds long and heartbeats come every 15 s: a minute of silence is a
        // broken stream.
        let quiet_limit = Duration::from_secs(60);
        loop {
            let at = self.pending.map(|(at, _)| at);
            let act = async move {
                match at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                readable = timeout(quiet_limit, stream.readable()) => match readable {
                    Ok(ready) => ready.with_context(|| format!("room {}", self.code))?,
                    Err(_) => bail!("room {}: nothing read for {quiet_limit:?}", self.code),
                },
                () = act => {
                    let (_, action) = self.pending.take().expect("pending");
                    self.act(action);
                    continue;
                }
            }
            // Ok(true) once the room has closed.
            let mut outcome = Ok(false);
            let received = stream.read_frames(|frame| {
                outcome = self.on_frame(&frame);
                match outcome {
                    Ok(false) => ControlFlow::Continue(()),
                    _ => ControlFlow::Break(()),
                }
            });
            let received = received.with_context(|| format!("room {}", self.code))?;
            // The gateway ends the stream right after `room_closed`, often in the same read.
            if outcome? {
                return Ok(());
            }
            if !received.open {
                bail!("room {}: stream ended before room_closed", self.code);
            }
        }
    }

    /// Counts the frame's id and acts on it; true once the room has closed.
    fn on_frame(&mut self, frame: &Frame<'_>) -> anyhow::Result<bool> {
        if self.sequence.observe(frame) == Step::Duplicate {
            self.ctx.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(id) = frame.id {
            self.delivered.push(id);
        }
        if frame.event == "room_closed" {
            return Ok(true);
        }
        self.on_event(frame)
            .with_context(|| format!("room {}: {} {}", self.code, frame.event, frame.data))?;
        Ok(false)
    }

    fn on_event(&mut self, frame: &Frame<'_>) -> anyhow::Result<()> {
        match frame.event {
            "phase" => self.on_phase(serde_json::from_str(frame.data)?, frame.received_ns),
            "game_over" => {
                let over: GameOver = serde_json::from_str(frame.data)?;
                if self.counts_result {
                    self.ctx.stats.games_won.count(over.winner);
                }
                let upto = frame.id.context("game_over without an id")?;
                let delivered = std::mem::take(&mut self.delivered);
                if !rand::rng().random_bool(self.ctx.check_ids) {
                    return Ok(());
                }
                tokio::spawn(check_ids(
                    self.ctx.clone(),
                    self.code.clone(),
                    self.bot.me.clone(),
                    self.snapshot_id,
                    delivered,
                    upto,
                ));
            }
            event => {
                self.bot.on_event(event, frame.data)?;
            }
        }
        Ok(())
    }

    fn on_phase(&mut self, change: PhaseChanged, received_ns: u64) {
        let stats = &self.ctx.stats;
        let bot = &self.bot;
        if let (Some(ended_at), Some(ends_at), true) = (
            bot.ends_at,
            change.ends_at,
            bot.phase != Phase::Waiting && stats.measuring(),
        ) {
            // When the new phase began, by the engine's own account.
            let duration = self.ctx.durations.of(change.phase, bot.living().count());
            let began = ends_at as i64 - duration as i64;
            if bot.phase == Phase::Day && began + SLACK_MS < ended_at as i64 {
                stats.early_phase_changes.fetch_add(1, Ordering::Relaxed);
            } else {
                if (began - ended_at as i64).abs() > SLACK_MS {
                    stats.timing_anomalies.fetch_add(1, Ordering::Relaxed);
                }
                let latency = received_ns.saturating_sub(ended_at * 1_000_000);
                stats
                    .phase_latency
                    .lock()
                    .expect("lock")
                    .entry(bot.phase.as_str())
                    .or_default()
                    .record(latency);
            }
        }
        self.pending = (self.bot.on_phase(change))
            .map(|(delay, action)| (tokio::time::Instant::now() + delay, action));
    }

    /// Sends the action's command in the background, so the stream keeps being read.
    fn act(&mut self, action: Action) {
        let Some(body) = self.bot.command(action) else {
            return;
        };
        let (ctx, code, token) = (self.ctx.clone(), self.code.clone(), self.token.clone());
        tokio::spawn(async move {
            if let Err(e) = send_command(&ctx, &code, &token, body).await {
                if ctx.stats.measuring() {
                    ctx.stats.error(e);
                }
            }
        });
    }
}

/// Compares the ids a stream delivered after its snapshot, up to `upto`, with the events the
/// engine's history says this viewer is in the audience of.
async fn check_ids(
    ctx: Arc<Ctx>,
    code: RoomCode,
    viewer: PlayerId,
    snapshot_id: u64,
    delivered: Vec<u64>,
    upto: u64,
) {
    let stats = &ctx.stats;
    let history = audience_ids(
        &ctx.nats,
        &ctx.subjects,
        &code,
        &viewer,
        snapshot_id,
        Duration::from_secs(5),
    );
    let events = match history.await {
        Ok(Some(ids)) => ids,
        Ok(None) => {
            stats.streams_unverifiable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(e) => return stats.error(e),
    };
    let expected: BTreeSet<u64> = events.into_iter().filter(|id| *id <= upto).collect();
    let got: BTreeSet<u64> = delivered.into_iter().filter(|id| *id <= upto).collect();
    stats
        .gaps
        .fetch_add(expected.difference(&got).count() as u64, Ordering::Relaxed);
    stats
        .extra_ids
        .fetch_add(got.difference(&expected).count() as u64, Ordering::Relaxed);
    stats.streams_verified.fetch_add(1, Ordering::Relaxed);
}

/// The gateway's memory at one moment: its RSS and the heap its data holds (the allocator's
/// count, `phasecast_gateway_heap_allocated_bytes`, which leaves out the allocator's slack).
struct Memory {
    rss_kib: u64,
    heap_kib: Option<u64>,
}

impl Memory {
    async fn of(gateway: &Gateway) -> Memory {
        let heap = gateway
            .metric("phasecast_gateway_heap_allocated_bytes")
            .await;
        Memory {
            rss_kib: rss_kib(gateway.pid()),
            heap_kib: heap.ok().map(|bytes| bytes as u64 / 1024),
        }
    }

    /// Both figures, and what each grew by per stream since `idle`.
    fn per_stream(&self, idle: &Memory, streams: u64) -> String {
        let grown = |now: u64, then: u64| now.saturating_sub(then) as f64 / streams.max(1) as f64;
        let mut line = format!(
            "RSS {:.1} MiB ({:.1} MiB before the first stream: {:.2} KiB per stream)",
            self.rss_kib as f64 / 1024.0,
            idle.rss_kib as f64 / 1024.0,
            grown(self.rss_kib, idle.rss_kib),
        );
        if let (Some(now), Some(then)) = (self.heap_kib, idle.heap_kib) {
            line += &format!(
                ", heap allocated {:.1} MiB ({:.1} MiB before: {:.2} KiB per stream)",
                now as f64 / 1024.0,
                then as f64 / 1024.0,
                grown(now, then),
            );
        }
        line
    }
}
