//! The polling it replaces: the same players polling a status endpoint twice a second, as the
//! system in our brief did, next to what Phasecast costs when those players sit idle on SSE.
//!
//! Why: the web Mafia game Phasecast replaces had every browser poll its room's state twice a
//! second, a constant load per player even when nothing happens. Phasecast's answer is that an
//! idle player costs a held connection and a heartbeat. This prints both for the same players.
//!
//! What runs: a nats-server, `target/release/game-engine` and `target/release/gateway`
//! (configured through `PHASECAST_*`). `--rooms` rooms of `--players` are created, joined
//! and started through the gateway with phases of an hour, so nothing happens in them while
//! measuring: both sides are measured idle.
//!
//! 1. Phasecast: every player opens their room's SSE stream on the gateway
//!    (`GET /v1/rooms/<code>/events` with their token, from 127.0.0.x source addresses), gets
//!    the snapshot, and then only heartbeats arrive (`gateway.heartbeat`, default 15 s) for
//!    `--seconds`. Printed: gateway CPU and RSS, the other processes' CPU, frames and bytes.
//! 2. Polling: a status server answers `GET /rooms/<code>/status` with the room's state as a
//!    game server would: an in-memory copy of the room, serialised to JSON for each request.
//!    The copy is the engine's public snapshot of the room (`game.room.<code>.snap`), read when
//!    the room is first asked for and read again after each of the room's public events
//!    (`game.room.<code>.evt`), so it is as fresh as a game server's own state at no cost per
//!    poll beyond the HTTP exchange and the serialisation. It is this binary started again as
//!    its own process (`polling status-server`), so its CPU is its own, on the same HTTP stack
//!    as the gateway (axum/hyper), so the difference is the design and not the framework; the
//!    old Spring server would cost more per request, not less. Every player holds one
//!    keep-alive connection (as a browser would) and polls at `--rate` per second, spread
//!    evenly. Printed: requests per second achieved against those wanted, latency, CPU of the
//!    status server, engine, nats-server and load tool, and the server's CPU per 1,000
//!    requests/s (the load tool shares the cores, so the server may be starved of CPU).
//!
//! Full scale (on a quiet machine; 16,000 connections, each process under 20,000 fds):
//!
//! `cargo build --release -p game-engine -p gateway -p bench &&
//!  target/release/polling --rooms 2000 --players 8 --seconds 30`
//!
//! Smoke test: `target/release/polling --rooms 50 --seconds 5 --heartbeat 1s`

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bench::browser::{self, Seat};
use bench::histogram::{Latencies, Recorder};
use bench::http::{request_bytes, source_address, HttpConn, HttpPool};
use bench::rig::{free_port, ready, rss_kib, CpuMeter, GameRig, GameRigArgs, Service};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use proto::{RoomCode, Subjects};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, OnceCell, Semaphore};
use tokio::time::timeout;

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    serve: Option<Serve>,
    #[arg(long, default_value_t = 2000)]
    rooms: usize,
    #[arg(long, default_value_t = 8)]
    players: u8,
    /// Polls per player per second (the system in our brief: 2).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Length of each of the two measurements.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// `gateway.heartbeat` for the SSE side (the shipped default is 15 s).
    #[arg(long, default_value = "15s")]
    heartbeat: String,
    /// Rooms being created and joined at once; also connections being opened at once / 8.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    #[command(flatten)]
    rig: GameRigArgs,
}

#[derive(Subcommand)]
enum Serve {
    /// Only the status server (the benchmark starts it as its own process).
    StatusServer {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Bounds every HTTP exchange, stream opening and NATS request.
const LIMIT: Duration = Duration::from_secs(10);
/// Phases that outlast any measurement: the rooms are in play and idle.
const HOUR_MS: u64 = 3_600_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.serve {
        Some(Serve::StatusServer { nats, listen }) => status_server(nats, *listen).await,
        None => run(args).await,
    }
}

/// One side's figures.
#[derive(Default)]
struct Side {
    connections: usize,
    span: f64,
    /// Requests (polling) or frames (SSE) received.
    received: u64,
    /// Of which SSE events (should be none while idle).
    events: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Latencies,
    cpu: Vec<(&'static str, f64)>,
    server_rss_kib: u64,
    /// The server's RSS before any client connected.
    server_rss_before_kib: u64,
}

impl Side {
    fn cpu_of(&self, name: &str) -> String {
        self.cpu
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("—".into(), |(_, pct)| format!("{pct:.1}"))
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.players;
    anyhow::ensure!(n >= 3, "--players: at least 3");
    let players_total = args.rooms * n as usize;
    let heartbeat = Some(args.heartbeat.as_str());
    let rig = GameRig::start(&args.rig, "250ms", players_total + 1000, heartbeat).await?;
    println!("{rig}");

    // Rooms in play, with nothing due to happen while measuring.
    let durations: HashMap<&str, u64> = [
        "day_intro",
        "notice",
        "day_per_player",
        "vote",
        "vote_result",
        "night_intro",
        "night",
        "ended",
    ]
    .into_iter()
    .map(|k| (k, HOUR_MS))
    .collect();
    let settings = browser::room_settings(n, &durations);
    let pool = HttpPool::new(rig.gateway.addr, 64, LIMIT);
    let seating = Instant::now();
    let rooms: Vec<(RoomCode, Vec<Seat>)> = futures::stream::iter(0..args.rooms)
        .map(|_| async {
            let (code, seats) = browser::seat_room(&pool, &settings).await?;
            let started =
                browser::command(&pool, &code, &seats[0].token, &json!({"type": "start"})).await?;
            browser::ensure_ok(&started, "start")?;
            anyhow::Ok((code, seats))
        })
        .buffer_unordered(args.setup_concurrency)
        .try_collect()
        .await?;
    drop(pool);
    let players: Vec<(RoomCode, Seat)> = rooms
        .into_iter()
        .flat_map(|(code, seats)| seats.into_iter().map(move |s| (code.clone(), s)))
        .collect();
    println!(
        "{} rooms × {} players seated and started through the gateway in {:.1} s; phases of an hour, so both sides are measured idle",
        args.rooms,
        n,
        seating.elapsed().as_secs_f64()
    );

    let sse = idle_sse(&rig, &players, &args).await?;
    println!(
        "Phasecast: {} idle SSE connections measured for {:.1} s",
        sse.connections, sse.span
    );
    let poll = polling(&rig, &players, &args).await?;
    println!(
        "polling: {} players measured for {:.1} s",
        poll.connections, poll.span
    );
    print_side_by_side(&poll, &sse, players_total as f64 * args.rate);
    Ok(())
}

/// Every player holds their room's stream on the gateway; only heartbeats flow.
async fn idle_sse(
    rig: &GameRig,
    players: &[(RoomCode, Seat)],
    args: &Args,
) -> anyhow::Result<Side> {
    let gateway = rig.gateway.addr;
    let rss_before = rss_kib(rig.gateway.pid());
    let opening = Instant::now();
    let streams: Vec<_> = futures::stream::iter(players.iter().enumerate())
        .map(|(i, (code, seat))| {
            browser::room_events(gateway, source_address(i), code, &seat.token, LIMIT)
        })
        .buffer_unordered(args.setup_concurrency * 8)
        .try_collect()
        .await?;
    println!(
        "Phasecast: {} SSE streams open with their snapshots in {:.1} s",
        streams.len(),
        opening.elapsed().as_secs_f64()
    );
    let cpu = CpuMeter::start(&rig.processes());
    let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|room| {
            tokio::spawn(async move {
                let mut stream = room.stream;
                let (mut bytes, mut frames, mut events) = (0, 0u64, 0u64);
                let outcome = loop {
                    match tokio::time::timeout_at(end, stream.readable()).await {
                        Err(_) => break Ok(()),
                        Ok(Err(e)) => break Err(e.into()),
                        Ok(Ok(())) => {}
                    }
                    let mut read = 0;
                    let received = stream.read_frames(|_| {
                        read += 1;
                        ControlFlow::Continue(())
                    });
                    let received = match received {
                        Ok(received) => received,
                        Err(e) => break Err(e),
                    };
                    bytes += received.bytes as u64;
                    events += read;
                    frames += read + received.comments as u64;
                    if !received.open {
                        break Err(anyhow::anyhow!("stream ended"));
                    }
                };
                (frames, events, bytes, outcome, stream)
            })
        })
        .collect();
    let mut side = Side {
        connections: players.len(),
        ..Side::default()
    };
    let mut open = Vec::with_capacity(readers.len());
    for reader in readers {
        let (frames, events, bytes, outcome, stream) = reader.await?;
        side.received += frames;
        side.events += events;
        side.bytes += bytes;
        if let Err(e) = outcome {
            side.errors += 1;
            side.first_error.get_or_insert(format!("{e:#}"));
        }
        open.push(stream);
    }
    side.span = cpu.elapsed();
    side.cpu = cpu.percents();
    side.server_rss_kib = rss_kib(rig.gateway.pid());
    side.server_rss_before_kib = rss_before;
    drop(open);
    // Let the gateway see every connection close before the next measurement (bounded).
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(20) {
        match rig.gateway.connections().await {
            Ok(0) => break,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(side)
}

/// Every player polls the status server at `--rate`, on their own keep-alive connection.
async fn polling(rig: &GameRig, players: &[(RoomCode, Seat)], args: &Args) -> anyhow::Result<Side> {
    let listen: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()?).into();
    let mut server = std::process::Command::new(std::env::current_exe()?);
    server
        .arg("status-server")
        .args(["--nats", &rig.nats.url(0)])
        .args(["--listen", &listen.to_string()]);
    let mut server = Service::spawn("status-server", &mut server, rig.dir.path())?;
    server
        .wait_ready(async || ready(listen, "/healthz").await)
        .await?;
    let rss_before = rss_kib(server.pid());

    // Connect everyone and poll once (the server reads each room's snapshot on its first
    // poll), then start everyone's clock together.
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let (ready_tx, mut ready_rx) = mpsc::channel(players.len());
    let (go, go_rx) = watch::channel(None);
    let connecting = Arc::new(Semaphore::new(args.setup_concurrency * 8));
    let latencies = Arc::new(Recorder::default());
    let pollers: Vec<_> = players
        .iter()
        .enumerate()
        .map(|(i, (code, _))| {
            tokio::spawn(poller(
                listen,
                source_address(i),
                format!("/rooms/{code}/status"),
                period,
                connecting.clone(),
                ready_tx.clone(),
                go_rx.clone(),
                args.seconds,
                latencies.clone(),
            ))
        })
        .collect();
    for done in 0..players.len() {
        timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .with_context(|| format!("pollers stalled: {done} of {} ready in 60 s", players.len()))?
            .context("every poller stopped")?
            .with_context(|| format!("poller {}", done + 1))?;
    }
    let mut pids = vec![("status server", server.pid())];
    pids.extend(rig.processes());
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    go.send_replace(Some(start));
    tokio::time::sleep_until(start).await;
    let cpu = CpuMeter::start(&pids);
    let mut side = Side {
        connections: players.len(),
        ..Side::default()
    };
    for poller in pollers {
        let polled = poller.await??;
        side.received += polled.completed;
        side.bytes += polled.bytes;
        side.errors += polled.errors;
        if side.first_error.is_none() {
            side.first_error = polled.first_error;
        }
    }
    side.span = cpu.elapsed();
    side.cpu = cpu.percents();
    side.latencies = latencies.take();
    side.server_rss_kib = rss_kib(server.pid());
    side.server_rss_before_kib = rss_before;
    Ok(side)
}

/// What one poller saw.
struct Polled {
    completed: u64,
    errors: u64,
    first_error: Option<String>,
    bytes: u64,
}

#[allow(clippy::too_many_arguments)]
async fn poller(
    server: SocketAddr,
    source: Ipv4Addr,
    path: String,
    period: Duration,
    connecting: Arc<Semaphore>,
    ready: mpsc::Sender<anyhow::Result<()>>,
    mut go: watch::Receiver<Option<tokio::time::Instant>>,
    seconds: u64,
    latencies: Arc<Recorder>,
) -> anyhow::Result<Polled> {
    let request = request_bytes("GET", &path, &[], b"");
    let first = async {
        let _turn = connecting.acquire().await?;
        let mut conn = HttpConn::connect(server, source, LIMIT).await?;
        let response = timeout(LIMIT, conn.send(&request))
            .await
            .context("first poll: no response in time")??;
        anyhow::ensure!(
            response.status == 200,
            "first poll: HTTP {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        Ok(conn)
    }
    .await
    .with_context(|| format!("GET {path} from {source}"));
    let conn = match first {
        Ok(conn) => {
            let _ = ready.send(Ok(())).await;
            conn
        }
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("{e:#}"))).await;
            return Err(e);
        }
    };
    let start = *go.wait_for(Option::is_some).await?;
    let start = start.expect("set");
    let end = start + Duration::from_secs(seconds);
    // Each player's polls are evenly spaced, and the players evenly spread over a period.
    let offset = period.mul_f64(rand::rng().random::<f64>());
    let mut ticks = tokio::time::interval_at(start + offset, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut polled = Polled {
        completed: 0,
        errors: 0,
        first_error: None,
        bytes: 0,
    };
    let mut base = conn.bytes_read;
    let mut conn = Some(conn);
    loop {
        // The window ends at `end` sharp, not at the first tick after it.
        if tokio::time::timeout_at(end, ticks.tick()).await.is_err() {
            break;
        }
        let sent = Instant::now();
        let outcome = async {
            if conn.is_none() {
                // The last exchange failed: a new connection, as a browser would open.
                conn = Some(HttpConn::connect(server, source, LIMIT).await?);
            }
            let c = conn.as_mut().expect("connected");
            let response = timeout(LIMIT, c.send(&request))
                .await
                .context("no response in time")??;
            anyhow::ensure!(response.status == 200, "HTTP {}", response.status);
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                polled.completed += 1;
                latencies.record(sent.elapsed().as_nanos() as u64);
            }
            Err(e) => {
                polled.errors += 1;
                polled.first_error.get_or_insert(format!("{e:#}"));
                if let Some(c) = conn.take() {
                    polled.bytes += c.bytes_read - base;
                }
                base = 0;
            }
        }
    }
    if let Some(c) = conn {
        polled.bytes += c.bytes_read - base;
    }
    Ok(polled)
}

fn print_side_by_side(poll: &Side, sse: &Side, wanted: f64) {
    let row = |label: &str, a: String, b: String| println!("{label:<30} {a:>30} {b:>30}");
    println!();
    row(
        "",
        "polling (status server)".into(),
        "Phasecast (idle SSE)".into(),
    );
    row(
        "players (connections)",
        poll.connections.to_string(),
        sse.connections.to_string(),
    );
    row(
        "requests/s",
        format!(
            "{:.0} of {:.0} wanted",
            poll.received as f64 / poll.span,
            wanted
        ),
        "0".into(),
    );
    row(
        "frames/s to clients",
        "—".into(),
        format!(
            "{:.0} heartbeats, {} events",
            (sse.received - sse.events) as f64 / sse.span,
            sse.events
        ),
    );
    row(
        "KiB/s to clients",
        format!("{:.0}", poll.bytes as f64 / 1024.0 / poll.span),
        format!("{:.1}", sse.bytes as f64 / 1024.0 / sse.span),
    );
    row(
        "server CPU, % of a core",
        format!("{} (status server)", poll.cpu_of("status server")),
        format!("{} (gateway)", sse.cpu_of("gateway")),
    );
    row(
        "game-engine CPU",
        poll.cpu_of("game-engine"),
        sse.cpu_of("game-engine"),
    );
    row(
        "nats-server CPU",
        poll.cpu_of("nats-server"),
        sse.cpu_of("nats-server"),
    );
    row(
        "load tool CPU",
        poll.cpu_of("load tool"),
        sse.cpu_of("load tool"),
    );
    row(
        "server RSS (before clients)",
        format!(
            "{:.0} MiB ({:.0})",
            poll.server_rss_kib as f64 / 1024.0,
            poll.server_rss_before_kib as f64 / 1024.0
        ),
        format!(
            "{:.0} MiB ({:.0})",
            sse.server_rss_kib as f64 / 1024.0,
            sse.server_rss_before_kib as f64 / 1024.0
        ),
    );
    let server_cpu = poll
        .cpu
        .iter()
        .find(|(n, _)| *n == "status server")
        .map_or(0.0, |(_, p)| *p);
    let rate = poll.received as f64 / poll.span;
    row(
        "server CPU per 1,000 req/s",
        format!("{:.1} %", server_cpu / (rate / 1000.0)),
        "—".into(),
    );
    row("errors", poll.errors.to_string(), sse.errors.to_string());
    println!();
    println!("poll latency: {}", poll.latencies.summary());
    for (side, name) in [(poll, "polling"), (sse, "Phasecast")] {
        if let Some(e) = &side.first_error {
            println!("{name}: first error: {e}");
        }
    }
}

// ---- The status server ----

/// Rooms by code, each read from the engine once and kept fresh by its events.
struct StatusState {
    client: async_nats::Client,
    subjects: Subjects,
    rooms: Mutex<HashMap<RoomCode, Arc<OnceCell<Arc<RoomStatus>>>>>,
}

/// The room's public state, as the engine's public snapshot shows it.
struct RoomStatus {
    state: RwLock<Value>,
}

async fn status_server(nats: &str, listen: SocketAddr) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(LIMIT))
        .connect(nats)
        .await
        .with_context(|| format!("status server: connecting to {nats}"))?;
    let state = Arc::new(StatusState {
        client,
        subjects: Subjects::default(),
        rooms: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/rooms/{code}/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("status server: bind {listen}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// `GET /rooms/<code>/status`: the room's state as JSON, serialised for this request.
async fn status(State(state): State<Arc<StatusState>>, Path(code): Path<String>) -> Response {
    let Ok(code) = RoomCode::parse(&code) else {
        return (StatusCode::NOT_FOUND, "no such room\n").into_response();
    };
    match state.room(&code).await {
        Ok(room) => {
            let body = serde_json::to_vec(&*room.state.read().expect("lock")).unwrap_or_default();
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response(),
    }
}

impl StatusState {
    async fn room(self: &Arc<Self>, code: &RoomCode) -> anyhow::Result<Arc<RoomStatus>> {
        let cell = self
            .rooms
            .lock()
            .expect("lock")
            .entry(code.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.watch(code)).await.cloned()
    }

    /// Subscribes to the room's public events first, then reads its snapshot; afterwards a
    /// task reads the snapshot again after each event, so no change is missed.
    async fn watch(self: &Arc<Self>, code: &RoomCode) -> anyhow::Result<Arc<RoomStatus>> {
        let mut events = self
            .client
            .subscribe(self.subjects.room_events(code))
            .await?;
        self.client.flush().await?;
        let room = Arc::new(RoomStatus {
            state: RwLock::new(self.snapshot(code).await?),
        });
        let (me, kept, code) = (self.clone(), room.clone(), code.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let closed = event
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(proto::headers::SSE_EVENT))
                    .is_some_and(|name| name.as_str() == "room_closed");
                if closed {
                    me.rooms.lock().expect("lock").remove(&code);
                    return;
                }
                if let Ok(fresh) = me.snapshot(&code).await {
                    *kept.state.write().expect("lock") = fresh;
                }
            }
        });
        Ok(room)
    }

    /// The room's public snapshot data from the engine.
    async fn snapshot(&self, code: &RoomCode) -> anyhow::Result<Value> {
        let request = json!({"viewer": null, "since": null}).to_string();
        let reply = self
            .client
            .request(self.subjects.room_snap(code), request.into())
            .await
            .with_context(|| format!("snapshot of {code}"))?;
        let mut reply: Value = serde_json::from_slice(&reply.payload)?;
        anyhow::ensure!(reply["ok"] == true, "snapshot of {code} refused: {reply}");
        Ok(reply["events"][0]["data"].take())
    }
}
