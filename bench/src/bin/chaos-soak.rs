//! Chaos soak: bots play real games for a set time on the whole clustered stack while a
//! driver kills, pauses or stops one process after another, and every client and a tap check
//! that nothing a player sees goes wrong.
//!
//! Why: the cluster tests (`game-engine/tests/cluster.rs`, `takeover.rs`,
//! `gateway/tests/cluster.rs`) each prove one fault at one moment of one game. Faults in
//! production come at any moment of many games at once, one after another, hitting processes
//! that are still recovering from the last one. This runs that for minutes and says what
//! players would have seen. It is a benchmark (it prints figures), not a CI test, and it exits
//! non-zero if any check failed.
//!
//! What runs, all on loopback: a three-node nats-server cluster (`test_support::NatsCluster`);
//! three `game-engine` processes (ids `e1`–`e3`, each connected to a different node, state
//! replicated three times, `engine.min_phase` lowered for short phases); two `gateway`
//! processes (connected to nodes `n1` and `n2`) behind one nginx rendered by
//! `deploy/nginx/render` (its create/join rate limit raised: every bot comes from few
//! addresses). Bots are browsers through nginx (`bench::browser`): they create a room of
//! `--players-min`..`--players-max` players, join, open one SSE stream each, start and play it
//! (`bench::bot`), then take a new room, `--rooms` tables at once, until `--seconds` are up;
//! games still in play then finish, with the faults stopped.
//!
//! Faults: every `--fault-every` seconds the driver picks one of the eight processes (3
//! engines, 3 NATS nodes, 2 gateways; `--targets` narrows them) and one fault: `kill -9`
//! then a restart, SIGSTOP then SIGCONT, or SIGTERM (graceful) then a restart, holding it
//! down or paused for a random `--hold-min-ms`..`--hold-max-ms`. It brings the process back
//! and waits until it serves (an engine's `/healthz`, a gateway's `/readyz`, a node routed to
//! the others and healthy with JetStream current) before the next fault, so at most one
//! process is ever down: never two NATS nodes (quorum), always an engine and a gateway. Each
//! fault is logged with its time.
//!
//! Checks:
//! - a tap (a plain NATS client subscribed to every room's and the lobby's events, on node
//!   `n0`, reconnecting to another node when its node dies; it may miss events meanwhile):
//!   no (room, id) ever carries two different payloads, and on a room subject a new id never
//!   comes after a greater one;
//! - every client stream, reopened through nginx with `Last-Event-ID` after it breaks (after
//!   `--reconnect-ms`, the gateway's default `retry:`, as EventSource waits): an id never goes
//!   back or repeats; at game over, the ids it delivered are compared with the engine's history
//!   of what that player was entitled to see (`game.room.<code>.snap` with `since`): an id
//!   missing is a gap, except ids a later snapshot stood in for (the gateway resumes with a
//!   snapshot when the history no longer holds everything), which are counted apart;
//! - every game started reaches `game_over` within `--game-limit` seconds; any that does not
//!   is listed with its code and the last event the tap and its players saw;
//! - commands (`join`, `start`, votes, night actions) carry a `request_id` and are retried on
//!   502/503/504 and on no answer (each try under 10 s), as a client should, for up to
//!   `--retry-for` seconds; retries are counted by cause, and commands that never got an
//!   answer are counted as failed for good.
//!
//! Report: games started and finished, faults by kind and target, the longest stall a player
//! saw (the longest time between two consecutive events on a stream while its game ran, with
//! the fault that preceded it; the phase durations are printed for scale), commands retried
//! and failed, reconnects, and every violation. Exit status 1 on any violation.
//!
//! `cargo build --release -p game-engine -p gateway && cargo build --release -p bench --bin
//! chaos-soak && target/release/chaos-soak --seconds 600`
//!
//! Smoke test: `target/release/chaos-soak --seconds 30 --rooms 5`

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bench::bot::{audience_ids, Action, Bot, Durations, PlayArgs, Wins};
use bench::browser::{self, RoomStream};
use bench::faults::{blocking, fault_node, keep_node_logs, lock, Fault, Pace, SharedCluster};
use bench::http::{source_address, HttpPool, Response};
use bench::rig::{
    engine_command, free_port, loopback, ready, GameRigArgs, Gateway, GatewayConfig, Nginx, Service,
};
use bench::sse::{self, Frame, Sequence, Step};
use clap::Parser;
use futures::StreamExt;
use proto::event::{GameOver, Phase, RoomSnapshot, Team};
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{PlayerId, RoomCode, Subjects};
use rand::Rng;
use serde_json::{json, Value};
use test_support::NatsCluster;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Games played through faults on a three-node cluster, three engines and two gateways behind
/// nginx, checked from a tap and from every player.
#[derive(Parser)]
struct Args {
    /// How long games are started for; games in play then finish (faults stopped).
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Tables playing at once, each one game after another.
    #[arg(long, default_value_t = 50)]
    rooms: usize,
    /// Fewest players in a room (each room draws its size).
    #[arg(long, default_value_t = 5)]
    players_min: u8,
    /// Most players in a room.
    #[arg(long, default_value_t = 8)]
    players_max: u8,
    #[command(flatten)]
    pace: Pace,
    /// Keep the engines', gateways', nginx's and the NATS nodes' logs (printed where) instead
    /// of deleting them.
    #[arg(long)]
    keep_logs: bool,
    /// No faults at all: the same load, for comparison.
    #[arg(long)]
    no_faults: bool,
    /// Which processes faults may hit (`--targets nats --faults pause` pauses only NATS
    /// nodes: the engine on a paused node races the claims of the others as it wakes).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Kind::ALL)]
    targets: Vec<Kind>,
    #[command(flatten)]
    play: PlayArgs,
    /// Wait before reopening a broken stream: the gateway's default `retry:` (2 s), which
    /// EventSource honours.
    #[arg(long, default_value_t = 2000)]
    reconnect_ms: u64,
    /// How long a command is retried while it gets 502/503/504 or no answer.
    #[arg(long, default_value_t = 30)]
    retry_for: u64,
    /// A game not over this many seconds after its start is reported as never ending.
    #[arg(long, default_value_t = 300)]
    game_limit: u64,
    /// The first games start spread over this many seconds.
    #[arg(long, default_value_t = 10)]
    stagger: u64,
    /// Keep-alive connections all players' commands share (to nginx).
    #[arg(long, default_value_t = 64)]
    command_connections: usize,
    #[command(flatten)]
    rig: GameRigArgs,
}

/// Bounds every HTTP exchange and stream opening.
const HTTP_LIMIT: Duration = Duration::from_secs(10);
/// A stream with nothing at all (heartbeats come every 15 s) for this long is broken.
const QUIET_LIMIT: Duration = Duration::from_secs(35);
/// Pause between tries of a command that got 502/503/504 or no answer.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// After `game_over`, how long a player waits for `room_closed`.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Violations printed in full (all are counted).
const SHOWN: usize = 30;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.players_min >= 3 && args.players_min <= args.players_max,
        "--players-min: at least 3, at most --players-max"
    );
    args.pace.check()?;
    let violations = run(args).await?;
    if violations > 0 {
        // Every process of the run has been stopped by now (`run` owned them).
        std::process::exit(1);
    }
    Ok(())
}

/// The whole soak; the number of violations.
async fn run(args: Args) -> anyhow::Result<u64> {
    let durations = args.play.durations()?;
    let keep_logs = args.keep_logs;
    let stack = Stack::start(&args).await?;
    println!("{stack}");
    println!(
        "{} tables of {}–{} players; durations (ms) {}; faults {}",
        args.rooms,
        args.players_min,
        args.players_max,
        serde_json::to_string(&durations.0)?,
        if args.no_faults {
            "none".to_string()
        } else {
            args.pace.to_string()
        }
    );
    let urls: Vec<String> = (0..3).map(|i| stack.url(i)).collect();
    let nats = connect(&urls[..], "soak-checks").await?;
    let tap = Tap::start(&urls, &stack.subjects).await?;

    let t0 = Instant::now();
    let ctx = Arc::new(Ctx {
        http: HttpPool::new(stack.nginx.addr, args.command_connections, HTTP_LIMIT),
        nginx: stack.nginx.addr,
        nats,
        subjects: stack.subjects.clone(),
        durations,
        day_vote_share: args.play.day_vote_share,
        reconnect: Duration::from_millis(args.reconnect_ms),
        retry_for: Duration::from_secs(args.retry_for),
        game_limit: Duration::from_secs(args.game_limit),
        players: (args.players_min, args.players_max),
        next_source: AtomicUsize::new(0),
        next_request: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        t0,
        faults: Mutex::new(Vec::new()),
        stats: Stats::default(),
        tap: tap.state.clone(),
    });

    let mut tables = JoinSet::new();
    for i in 0..args.rooms {
        let offset = Duration::from_secs_f64(args.stagger as f64 * i as f64 / args.rooms as f64);
        tables.spawn(table(ctx.clone(), offset));
    }
    let cpu = MachineCpu::now();
    let end = t0 + Duration::from_secs(args.seconds);
    let plan = FaultPlan {
        start: t0 + Duration::from_secs(args.stagger),
        end,
        pace: args.pace.clone(),
        none: args.no_faults,
        targets: stack.targets(&args.targets),
    };
    // The driver runs on this task (its futures are not `Send`), beside the progress lines.
    // It stops after the fault in progress once the time is up; if it hangs, dropping it
    // stops every process it holds.
    let driver = timeout(
        Duration::from_secs(args.seconds + 120),
        drive_faults(stack, ctx.clone(), plan),
    );
    let progress = async {
        let mut every =
            tokio::time::interval_at(t0 + Duration::from_secs(30), Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = every.tick() => println!("{}", ctx.progress()),
                () = sleep_until(end) => break,
            }
        }
        ctx.stopping.store(true, Ordering::Relaxed);
        println!(
            "[{:6.1} s] time is up: no new games; the {} in play finish (faults stopped)",
            ctx.at(),
            ctx.stats.in_play()
        );
    };
    let (driven, ()) = tokio::join!(driver, progress);
    let busy = cpu.busy_since();
    let (stack, driver_error) = match driven {
        Ok((stack, error)) => (Some(stack), error),
        Err(_) => (
            None,
            Some(anyhow::anyhow!("the fault driver did not stop in time")),
        ),
    };
    // Every game is bounded by --game-limit, its checks by their own timeouts.
    let drained = timeout(ctx.game_limit + Duration::from_secs(60), async {
        while tables.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        ctx.violation(
            "tables",
            "tables still running long after the game limit".into(),
        );
        tables.abort_all();
    }
    // Lets the tap take in what is still on its way.
    if let Err(e) = ctx.nats.flush().await {
        println!("flush: {e}");
    }
    tap.stop();

    if let Some(e) = driver_error {
        ctx.violation("fault driver", format!("{e:#}"));
    }
    let violations = report(&ctx, &tap, busy);
    if let Some(stack) = stack {
        let logs = stack.dir.path().display().to_string();
        if keep_logs {
            if let Err(e) = keep_node_logs(&lock(&stack.cluster), stack.dir.path()) {
                println!("cannot keep the NATS nodes' logs: {e}");
            }
            let _ = stack.dir.keep();
            println!("logs kept in {logs}");
        }
    }
    Ok(violations)
}

// ---- the processes -------------------------------------------------------------------------

/// Everything the soak runs. Fields drop in order: nginx, the gateways, the engines, then the
/// cluster.
struct Stack {
    nginx: Nginx,
    gateways: Vec<GatewaySlot>,
    engines: Vec<EngineSlot>,
    cluster: SharedCluster,
    subjects: Subjects,
    engine_binary: PathBuf,
    gateway_binary: PathBuf,
    min_phase: String,
    signing: PathBuf,
    verify: PathBuf,
    /// Keys and logs.
    dir: tempfile::TempDir,
}

/// An engine's place: its id, node and admin address are kept across restarts.
struct EngineSlot {
    id: String,
    node: usize,
    admin: SocketAddr,
    starts: usize,
    service: Option<Service>,
}

/// A gateway's place: its node and listeners (where nginx sends requests) are kept across
/// restarts.
struct GatewaySlot {
    name: String,
    node: usize,
    listen: [SocketAddr; 2],
    starts: usize,
    gateway: Option<Gateway>,
}

impl Stack {
    async fn start(args: &Args) -> anyhow::Result<Stack> {
        let engine_binary = args.rig.engine_binary()?;
        let gateway_binary = args.rig.gateway_binary()?;
        let cluster = blocking(NatsCluster::start)
            .await
            .context("starting the nats-server cluster")?;
        let dir = tempfile::tempdir()?;
        let (signing, verify) = test_support::write_test_keys(dir.path());
        let mut stack = Stack {
            nginx: Nginx {
                // Replaced below, once the gateways' addresses are known.
                service: placeholder_service(dir.path())?,
                addr: loopback(0),
            },
            gateways: Vec::new(),
            engines: Vec::new(),
            cluster: Arc::new(Mutex::new(cluster)),
            subjects: Subjects::default(),
            engine_binary,
            gateway_binary,
            min_phase: args.play.min_phase.clone(),
            signing,
            verify,
            dir,
        };
        for (n, node) in [(1, 0), (2, 1), (3, 2)] {
            stack.engines.push(EngineSlot {
                id: format!("e{n}"),
                node,
                admin: loopback(free_port()?),
                starts: 0,
                service: None,
            });
            stack.start_engine(n - 1).await?;
        }
        for (n, node) in [(1, 1), (2, 2)] {
            stack.gateways.push(GatewaySlot {
                name: format!("g{n}"),
                node,
                listen: [loopback(free_port()?), loopback(free_port()?)],
                starts: 0,
                gateway: None,
            });
            stack.start_gateway(n - 1).await?;
        }
        let upstreams: Vec<SocketAddr> = stack.gateways.iter().map(|g| g.listen[0]).collect();
        // Every bot's create and join comes from 127.0.0.1: lift the per-address limit.
        let limits = [("CREATE_RATE", "100000r/s"), ("CREATE_BURST", "100000")];
        stack.nginx = Nginx::start(&upstreams, 2, &limits, stack.dir.path()).await?;
        Ok(stack)
    }

    /// Node `i`'s client URL.
    fn url(&self, i: usize) -> String {
        lock(&self.cluster).url(i)
    }

    /// Starts engine `i` on its node and waits until its `/healthz` answers.
    async fn start_engine(&mut self, i: usize) -> anyhow::Result<()> {
        let url = self.url(self.engines[i].node);
        let slot = &mut self.engines[i];
        slot.starts += 1;
        let mut command = engine_command(
            &self.engine_binary,
            &url,
            slot.admin,
            &self.min_phase,
            &self.signing,
        );
        command
            .env("PHASECAST_ENGINE__ID", &slot.id)
            .env("PHASECAST_STORE__REPLICAS", "3");
        let name = format!("engine-{}.{}", slot.id, slot.starts);
        let mut service = Service::spawn(&name, &mut command, self.dir.path())?;
        let admin = slot.admin;
        service
            .wait_ready(async || ready(admin, "/healthz").await)
            .await?;
        slot.service = Some(service);
        Ok(())
    }

    /// Starts gateway `i` on its node and listeners and waits until `/readyz` answers.
    async fn start_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let url = self.url(self.gateways[i].node);
        let slot = &mut self.gateways[i];
        slot.starts += 1;
        let config = GatewayConfig {
            nats_url: &url,
            verify_key: &self.verify,
            max_connections: 20_000,
            heartbeat: None,
        };
        let name = format!("gateway-{}.{}", slot.name, slot.starts);
        let gateway = Gateway::start_at(
            &name,
            &self.gateway_binary,
            &config,
            slot.listen,
            self.dir.path(),
        )
        .await?;
        slot.gateway = Some(gateway);
        Ok(())
    }
}

impl std::fmt::Display for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cluster = lock(&self.cluster);
        writeln!(
            f,
            "3-node NATS cluster: {}",
            (0..cluster.len())
                .map(|i| format!("{} {}", cluster.name(i), cluster.url(i)))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        for e in &self.engines {
            writeln!(f, "engine {} on {}", e.id, cluster.name(e.node))?;
        }
        for g in &self.gateways {
            writeln!(
                f,
                "gateway {} on {}, {}",
                g.name,
                cluster.name(g.node),
                g.listen[0]
            )?;
        }
        write!(
            f,
            "nginx {} in front of both; logs in {}",
            self.nginx.addr,
            self.dir.path().display()
        )
    }
}

/// A process that exits at once, standing in for nginx until it starts.
fn placeholder_service(dir: &std::path::Path) -> anyhow::Result<Service> {
    Service::spawn("placeholder", &mut std::process::Command::new("true"), dir)
}

/// A NATS client that knows every node and reconnects to another when its own dies.
async fn connect(urls: &[String], name: &str) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> =
        (urls.iter()).map(|u| u.parse()).collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .name(name)
        .request_timeout(Some(Duration::from_secs(5)))
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .with_context(|| format!("{name}: connecting to the cluster"))
}

// ---- the fault driver ----------------------------------------------------------------------

struct FaultPlan {
    start: Instant,
    end: Instant,
    pace: Pace,
    none: bool,
    /// Every process faults may hit, one drawn at a time.
    targets: Vec<Target>,
}

/// A kind of process faults may hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Engines,
    Nats,
    Gateways,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Engines, Kind::Nats, Kind::Gateways];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Engine(usize),
    Nats(usize),
    Gateway(usize),
}

/// One fault as it happened.
struct FaultRecord {
    /// Seconds since the soak began.
    at: f64,
    target: String,
    kind: &'static str,
    /// How long it was down or paused, and how long it then took to serve again.
    held: Duration,
    recovered_in: Duration,
}

/// Injects faults until the plan's end; hands the stack back, with the error that stopped it
/// (a process that did not come back), if any.
async fn drive_faults(
    mut stack: Stack,
    ctx: Arc<Ctx>,
    plan: FaultPlan,
) -> (Stack, Option<anyhow::Error>) {
    if plan.none {
        return (stack, None);
    }
    let mut next = plan.start;
    loop {
        sleep_until(next).await;
        if Instant::now() >= plan.end {
            return (stack, None);
        }
        let began = Instant::now();
        let (target, fault, hold) = {
            let mut rng = rand::rng();
            let target = plan.targets[rng.random_range(0..plan.targets.len())];
            let (fault, hold) = plan.pace.draw(&mut rng);
            let fault = match target {
                Target::Nats(_) => fault,
                Target::Engine(_) | Target::Gateway(_) => fault.for_process(),
            };
            (target, fault, hold)
        };
        let name = stack.name(target);
        let at = ctx.at();
        println!(
            "[{at:6.1} s] fault {}: {} {name} for {:.1} s",
            ctx.faults.lock().expect("lock").len() + 1,
            fault.name(),
            hold.as_secs_f64()
        );
        ctx.faults.lock().expect("lock").push(FaultRecord {
            at,
            target: name.clone(),
            kind: fault.name(),
            held: hold,
            recovered_in: Duration::ZERO,
        });
        let undone = Instant::now() + hold;
        if let Err(e) = stack.inject(target, fault, hold).await {
            return (stack, Some(e.context(format!("{} {name}", fault.name()))));
        }
        let recovered_in = Instant::now().saturating_duration_since(undone);
        if let Some(last) = ctx.faults.lock().expect("lock").last_mut() {
            last.recovered_in = recovered_in;
        }
        println!(
            "[{:6.1} s]   {name} serves again, {:.2} s after it was brought back",
            ctx.at(),
            recovered_in.as_secs_f64()
        );
        next = (began + plan.pace.every()).max(Instant::now() + Duration::from_millis(500));
    }
}

impl Stack {
    /// Every process of the given kinds.
    fn targets(&self, kinds: &[Kind]) -> Vec<Target> {
        let mut targets = Vec::new();
        for kind in kinds {
            match kind {
                Kind::Engines => targets.extend((0..self.engines.len()).map(Target::Engine)),
                Kind::Nats => targets.extend((0..lock(&self.cluster).len()).map(Target::Nats)),
                Kind::Gateways => targets.extend((0..self.gateways.len()).map(Target::Gateway)),
            }
        }
        targets.sort();
        targets.dedup();
        targets
    }

    fn name(&self, target: Target) -> String {
        match target {
            Target::Engine(i) => format!("engine {}", self.engines[i].id),
            Target::Nats(i) => format!("nats {}", lock(&self.cluster).name(i)),
            Target::Gateway(i) => format!("gateway {}", self.gateways[i].name),
        }
    }

    /// Applies `fault` to `target`, holds it for `hold`, undoes it, and returns once the
    /// process serves again.
    async fn inject(&mut self, target: Target, fault: Fault, hold: Duration) -> anyhow::Result<()> {
        match target {
            Target::Engine(i) => {
                let service = self.engines[i]
                    .service
                    .as_mut()
                    .context("engine not running")?;
                stop_or_pause(service, fault, hold).await?;
                if fault != Fault::Pause {
                    self.engines[i].service = None;
                    self.start_engine(i).await?;
                }
            }
            Target::Gateway(i) => {
                let gateway = self.gateways[i]
                    .gateway
                    .as_mut()
                    .context("gateway not running")?;
                stop_or_pause(gateway.service_mut(), fault, hold).await?;
                if fault != Fault::Pause {
                    self.gateways[i].gateway = None;
                    self.start_gateway(i).await?;
                }
            }
            Target::Nats(i) => fault_node(&self.cluster, i, fault, hold).await?,
        }
        Ok(())
    }
}

/// Kills, stops or pauses a process and holds it so; for a pause, wakes it after.
async fn stop_or_pause(service: &mut Service, fault: Fault, hold: Duration) -> anyhow::Result<()> {
    match fault {
        Fault::Kill => {
            service.signal("KILL")?;
            service.wait_exit(Duration::from_secs(5)).await?;
            sleep(hold).await;
        }
        // Lame duck never reaches a process (`Fault::for_process`): SIGTERM is its stop.
        Fault::Term | Fault::LameDuck => {
            service.signal("TERM")?;
            // A gateway ends its streams within its grace, an engine hands its rooms over.
            service.wait_exit(Duration::from_secs(20)).await?;
            sleep(hold).await;
        }
        Fault::Pause => {
            service.signal("STOP")?;
            sleep(hold).await;
            service.signal("CONT")?;
        }
    }
    Ok(())
}

// ---- the tap -------------------------------------------------------------------------------

/// A plain NATS subscriber to every room's and the lobby's events.
struct Tap {
    state: Arc<Mutex<TapState>>,
    task: tokio::task::JoinHandle<()>,
    _client: async_nats::Client,
}

#[derive(Default)]
struct TapState {
    /// (room code or `lobby`, id) → hash of (event, data), the subjects it went out on, and
    /// how it was first seen (for a report of two payloads). An event for several players
    /// (`mafia_pick` to every mafia) goes out on each one's subject with the same id and
    /// payload.
    payloads: HashMap<(String, u64), (u64, Vec<String>, String)>,
    /// Room subject → the greatest id seen on it.
    last_on: HashMap<String, u64>,
    /// Room → the newest event seen: (id, event, data).
    last_event: HashMap<String, (u64, String, String)>,
    events: u64,
    /// A room's committed id published again on the same subject with the same payload
    /// (after a takeover, or a paused engine waking).
    republished: u64,
    /// Lobby changes, which every engine publishes.
    lobby_copies: u64,
    /// Same id, different payload.
    two_payloads: Vec<String>,
    /// A new id below the greatest already seen on its subject.
    went_back: Vec<String>,
    disconnects: u64,
}

impl Tap {
    async fn start(urls: &[String], subjects: &Subjects) -> anyhow::Result<Tap> {
        let state = Arc::new(Mutex::new(TapState::default()));
        let counted = state.clone();
        let addrs: Vec<async_nats::ServerAddr> =
            (urls.iter()).map(|u| u.parse()).collect::<Result<_, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name("soak-tap")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let counted = counted.clone();
                async move {
                    if matches!(event, async_nats::Event::Disconnected) {
                        lock(&counted).disconnects += 1;
                    }
                }
            })
            .connect(addrs)
            .await?;
        let lobby = subjects.lobby_events();
        // `game.room.<code>.evt` and `game.room.<code>.evt.<player>`.
        let prefix = lobby.trim_end_matches(".lobby.evt").to_owned();
        let room = format!("{prefix}.room.*.evt");
        let mut subs = Vec::new();
        for subject in [lobby, room.clone(), format!("{room}.*")] {
            subs.push(client.subscribe(subject).await?);
        }
        client.flush().await?;
        let mut all = futures::stream::select_all(subs);
        let seen = state.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = all.next().await {
                lock(&seen).take(&msg);
            }
        });
        Ok(Tap {
            state,
            task,
            _client: client,
        })
    }

    fn stop(&self) {
        self.task.abort();
    }
}

impl TapState {
    fn take(&mut self, msg: &async_nats::Message) {
        let Some(headers) = &msg.headers else { return };
        let Some(id) = headers
            .get(SSE_ID)
            .and_then(|v| v.as_str().parse::<u64>().ok())
        else {
            return;
        };
        let event = headers.get(SSE_EVENT).map(|v| v.as_str()).unwrap_or("");
        let subject = msg.subject.as_str();
        let data = String::from_utf8_lossy(&msg.payload);
        // game.room.<code>.evt[.<player>] or game.lobby.evt
        let room = match subject.split('.').nth(1) {
            Some("room") => subject.split('.').nth(2).unwrap_or("?").to_owned(),
            _ => "lobby".to_owned(),
        };
        self.events += 1;
        let hash = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
            h.write(event.as_bytes());
            h.write_u8(0);
            h.write(&msg.payload);
            h.finish()
        };
        // Unix milliseconds when the tap read it, to line a report up with the processes' logs.
        let seen = format!(
            "{subject}: {event} {} (read at unix ms {})",
            clip(&data),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        match self.payloads.get_mut(&(room.clone(), id)) {
            Some((before, subjects, _)) if *before == hash => {
                // A committed id published again (a takeover, or every engine for the
                // lobby), or the same event to another player: allowed, with the same bytes.
                if room == "lobby" {
                    self.lobby_copies += 1;
                } else if subjects.iter().any(|s| s == subject) {
                    self.republished += 1;
                } else {
                    subjects.push(subject.to_owned());
                }
                return;
            }
            Some((_, _, first)) => {
                self.two_payloads
                    .push(format!("{room} id {id}: first {first}; then {seen}"));
                return;
            }
            None => {}
        }
        self.payloads
            .insert((room.clone(), id), (hash, vec![subject.to_owned()], seen));
        if room != "lobby" {
            let last = self.last_on.entry(subject.to_owned()).or_insert(0);
            if id < *last {
                self.went_back
                    .push(format!("{subject}: new id {id} ({event}) after {last}"));
            }
            *last = (*last).max(id);
            let newest = self
                .last_event
                .entry(room)
                .or_insert((0, String::new(), String::new()));
            if id > newest.0 {
                *newest = (id, event.to_owned(), clip(&data));
            }
        }
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(160) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

// ---- the players ---------------------------------------------------------------------------

/// What every table and player shares.
struct Ctx {
    http: HttpPool,
    nginx: SocketAddr,
    /// For history reads at game over.
    nats: async_nats::Client,
    subjects: Subjects,
    durations: Durations,
    day_vote_share: f64,
    reconnect: Duration,
    retry_for: Duration,
    game_limit: Duration,
    players: (u8, u8),
    next_source: AtomicUsize,
    next_request: AtomicU64,
    stopping: AtomicBool,
    t0: Instant,
    faults: Mutex<Vec<FaultRecord>>,
    stats: Stats,
    tap: Arc<Mutex<TapState>>,
}

#[derive(Default)]
struct Stats {
    games_started: AtomicU64,
    /// Games whose players have all stopped, over or not.
    finished: AtomicU64,
    games_over: AtomicU64,
    games_won: Wins,
    /// Tables that could not seat or start a room (not games: never started).
    setup_failures: Mutex<BTreeMap<String, u64>>,
    commands: AtomicU64,
    commands_refused: Mutex<BTreeMap<String, u64>>,
    /// Commands answered only after one or more retries.
    commands_retried: AtomicU64,
    /// Retries, by what the try before got.
    retries: Mutex<BTreeMap<String, u64>>,
    commands_failed: AtomicU64,
    /// Streams reopened, by what ended them.
    reconnects: Mutex<BTreeMap<String, u64>>,
    /// Failed attempts to reopen a stream, by cause.
    reopen_failures: Mutex<BTreeMap<String, u64>>,
    /// Snapshots a resumed stream got instead of the events it missed, and the ids they
    /// stood in for.
    resync_snapshots: AtomicU64,
    ids_covered_by_snapshots: AtomicU64,
    streams_checked: AtomicU64,
    streams_unverifiable: AtomicU64,
    history_unavailable: AtomicU64,
    /// Ids a stream delivered that the engine's history does not list for that player.
    extra_ids: AtomicU64,
    /// The same, by stream: (room, player, ids), told apart at the end by the tap's record
    /// of the subjects each id went out on.
    extra: Mutex<Vec<(RoomCode, PlayerId, Vec<u64>)>>,
    /// Streams that broke before game over and came back to a closed room (404).
    cut_off: AtomicU64,
    /// Streams that fell silent (no heartbeat either) for `QUIET_LIMIT`.
    silences: Mutex<Vec<String>>,
    /// The longest stalls: (seconds, what).
    stalls: Mutex<Vec<(f64, String)>>,
    /// Violations by kind, with details.
    violations: Mutex<BTreeMap<&'static str, Vec<String>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn in_play(&self) -> u64 {
        let started = self.games_started.load(Ordering::Relaxed);
        started.saturating_sub(self.finished.load(Ordering::Relaxed))
    }
}

impl Ctx {
    /// Seconds since the soak began.
    fn at(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn violation(&self, kind: &'static str, detail: String) {
        let at = self.at();
        println!("[{at:6.1} s] VIOLATION {kind}: {detail}");
        let mut all = self.stats.violations.lock().expect("lock");
        all.entry(kind)
            .or_default()
            .push(format!("[{at:.1} s] {detail}"));
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
        *map.lock().expect("lock").entry(key).or_default() += 1;
    }

    /// The last fault that began at or before `at` (seconds), as text.
    fn fault_before(&self, at: f64) -> String {
        let faults = self.faults.lock().expect("lock");
        match faults.iter().rev().find(|f| f.at <= at) {
            Some(f) => format!("{} {} at {:.1} s", f.kind, f.target, f.at),
            None => "no fault before it".into(),
        }
    }

    fn progress(&self) -> String {
        let s = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let violations: usize = s
            .violations
            .lock()
            .expect("lock")
            .values()
            .map(Vec::len)
            .sum();
        format!(
            "[{:6.1} s] games started {}, over {}; faults {}; commands {} ({} retried, {} failed); violations {}",
            self.at(),
            load(&s.games_started),
            load(&s.games_over),
            self.faults.lock().expect("lock").len(),
            load(&s.commands),
            load(&s.commands_retried),
            load(&s.commands_failed),
            violations
        )
    }

    /// `POST path` as a client that retries: a fresh `request_id` in the body (when asked),
    /// retried on 502/503/504 and on no answer (each try within 10 s) for up to
    /// `--retry-for`. Any other answer is returned; an error means it failed for good.
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        mut body: Value,
        with_request_id: bool,
    ) -> anyhow::Result<Response> {
        if with_request_id {
            let n = self.next_request.fetch_add(1, Ordering::Relaxed);
            body["request_id"] = json!(format!("soak-{n}"));
        }
        let body = body.to_string();
        let s = &self.stats;
        s.commands.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + self.retry_for;
        let mut tries = 0;
        loop {
            let cause = match self.http.post_json(path, token, &body).await {
                Ok(r) if matches!(r.status, 502..=504) => {
                    format!("HTTP {} {}", r.status, r.error_code())
                }
                Ok(r) => {
                    if tries > 0 {
                        s.commands_retried.fetch_add(1, Ordering::Relaxed);
                    }
                    if r.status != 200 {
                        Ctx::count(
                            &s.commands_refused,
                            format!("{} {}", r.status, r.error_code()),
                        );
                    }
                    return Ok(r);
                }
                Err(e) => format!("no answer: {}", e.root_cause()),
            };
            tries += 1;
            Ctx::count(&s.retries, cause.clone());
            if Instant::now() + RETRY_PAUSE >= deadline {
                s.commands_failed.fetch_add(1, Ordering::Relaxed);
                bail!(
                    "POST {path}: {tries} tries in {:?}, the last: {cause}",
                    self.retry_for
                );
            }
            // A client's retry cadence, not a wait for anything.
            sleep(RETRY_PAUSE).await;
        }
    }
}

/// One table: seats a room, plays it to the end, and again, until the time is up.
async fn table(ctx: Arc<Ctx>, offset: Duration) {
    sleep(offset).await;
    while !ctx.stopping.load(Ordering::Relaxed) {
        let players = rand::rng().random_range(ctx.players.0..=ctx.players.1);
        match seat(&ctx, players).await {
            Ok(room) => game(&ctx, room).await,
            Err(e) => {
                Ctx::count(&ctx.stats.setup_failures, format!("{:#}", e.root_cause()));
                // Pacing after a failure, so that a broken stack is not hammered.
                sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A room with every player joined and their streams open.
struct Room {
    code: RoomCode,
    players: Vec<(PlayerId, String, RoomStream)>,
}

/// Creates a room of `players`, joins them and opens their streams (each retried).
async fn seat(ctx: &Ctx, players: u8) -> anyhow::Result<Room> {
    let settings = browser::room_settings(players, &ctx.durations.0);
    let created = ctx.post("/v1/rooms", None, settings, false).await?;
    browser::ensure_ok(&created, "create")?;
    let code = RoomCode::parse(created.json()?["code"].as_str().unwrap_or_default())?;
    let mut seats = Vec::new();
    for n in 0..players {
        let path = format!("/v1/rooms/{code}/join");
        let joined = ctx
            .post(&path, None, json!({"name": format!("p{n}")}), true)
            .await?;
        browser::ensure_ok(&joined, "join")?;
        let body = joined.json()?;
        seats.push((
            PlayerId::parse(body["player_id"].as_str().unwrap_or_default())?,
            body["token"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let streams =
        futures::future::try_join_all(seats.iter().map(|(_, token)| first_open(ctx, &code, token)))
            .await?;
    Ok(Room {
        code,
        players: seats
            .into_iter()
            .zip(streams)
            .map(|((id, token), stream)| (id, token, stream))
            .collect(),
    })
}

/// Opens a player's stream up to its snapshot, retrying as EventSource would.
async fn first_open(ctx: &Ctx, code: &RoomCode, token: &str) -> anyhow::Result<RoomStream> {
    let deadline = Instant::now() + ctx.retry_for;
    loop {
        let source = source_address(ctx.next_source.fetch_add(1, Ordering::Relaxed));
        match browser::room_events(ctx.nginx, source, code, token, HTTP_LIMIT).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() + ctx.reconnect < deadline => {
                Ctx::count(
                    &ctx.stats.reopen_failures,
                    format!("first open: {}", e.root_cause()),
                );
                sleep(ctx.reconnect).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a table knows of its game while the players play it.
#[derive(Default)]
struct GameState {
    over: AtomicBool,
    /// When the first player saw `game_over`.
    over_at: Mutex<Option<Instant>>,
    /// Players whose reopened stream was refused with 404 (the room had closed) before they
    /// saw `game_over`: (player, when their stream broke, when it was refused). EventSource
    /// gives up on a 404, so these players would never learn how the game ended.
    refused: Mutex<Vec<(PlayerId, Instant, Instant)>>,
    /// The newest event any player saw: (id, event, data).
    last_seen: Mutex<(u64, String, String)>,
}

/// Starts the game and plays it; reports a game that never reached `game_over`.
async fn game(ctx: &Arc<Ctx>, room: Room) {
    let code = room.code.clone();
    let host_token = room.players[0].1.clone();
    let path = format!("/v1/rooms/{code}/commands");
    let started = ctx
        .post(&path, Some(&host_token), json!({"type": "start"}), true)
        .await
        .and_then(|r| browser::ensure_ok(&r, "start"));
    if let Err(e) = started {
        Ctx::count(
            &ctx.stats.setup_failures,
            format!("start: {:#}", e.root_cause()),
        );
        return;
    }
    let s = &ctx.stats;
    s.games_started.fetch_add(1, Ordering::Relaxed);
    let began = ctx.at();
    let state = Arc::new(GameState::default());
    let deadline = Instant::now() + ctx.game_limit;
    let mut players = JoinSet::new();
    for (i, (id, token, stream)) in room.players.into_iter().enumerate() {
        let (player, stream) = Player::new(
            ctx.clone(),
            code.clone(),
            id,
            token,
            stream,
            i == 0,
            state.clone(),
            deadline,
        );
        players.spawn(player.play(stream));
    }
    while players.join_next().await.is_some() {}
    s.finished.fetch_add(1, Ordering::Relaxed);
    let over_at = *state.over_at.lock().expect("lock");
    for (player, broke, refused) in state.refused.lock().expect("lock").iter() {
        let at = |i: &Instant| ctx.at() - i.elapsed().as_secs_f64();
        match over_at {
            // Over (by another player's stream) a second or more before this stream broke:
            // it was open, yet never delivered `game_over`.
            Some(over) if over + Duration::from_secs(1) < *broke => ctx.violation(
                "client missed events",
                format!(
                    "room {code} player {player}: its stream ended at {:.1} s without game_over, which other players had at {:.1} s; reopened, 404 (room closed)",
                    at(broke),
                    at(&over)
                ),
            ),
            Some(over) if over <= *refused => {
                s.cut_off.fetch_add(1, Ordering::Relaxed);
            }
            _ => ctx.violation(
                "404 for a live room",
                format!(
                    "room {code} player {player}: stream reopened at {:.1} s refused with 404 before the game was over",
                    at(refused)
                ),
            ),
        };
    }
    if state.over.load(Ordering::Relaxed) {
        s.games_over.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let seen = state.last_seen.lock().expect("lock").clone();
    let tapped = lock(&ctx.tap).last_event.get(code.as_str()).cloned();
    ctx.violation(
        "game never over",
        format!(
            "room {code}, started at {began:.1} s, not over {:?} later; last event its players saw: {} {} {}; the tap: {:?}; {}",
            ctx.game_limit,
            seen.0,
            seen.1,
            seen.2,
            tapped,
            ctx.fault_before(began + ctx.game_limit.as_secs_f64())
        ),
    );
}

/// One player: reads their stream as the page would, acts on what it shows, reopens it when
/// it breaks, and checks its ids.
struct Player {
    ctx: Arc<Ctx>,
    code: RoomCode,
    token: Arc<str>,
    bot: Bot,
    counts_result: bool,
    game: Arc<GameState>,
    /// Until when this player plays: the game's limit, or a while after `game_over`.
    deadline: Instant,
    sequence: Sequence,
    first_snapshot: u64,
    /// Ids delivered after the first snapshot.
    delivered: Vec<u64>,
    /// (last id before, id of a later snapshot): ids in between a snapshot stood in for.
    covered: Vec<(u64, u64)>,
    /// The id of `game_over`, once seen (0 if the game ended while the stream was away and
    /// a snapshot said so).
    over: Option<u64>,
    /// The last event while the game ran, for stalls.
    last_event: Instant,
    /// When the stream last broke.
    broke_at: Instant,
    pending: Option<(Instant, Action)>,
    /// The check of this stream's ids against the engine's history, started at game over
    /// (while the room still answers: it closes a few seconds later).
    check: Option<tokio::task::JoinHandle<()>>,
}

/// Why a stream stopped being read.
enum Ended {
    RoomClosed,
    Broken(String),
    TimeUp,
}

impl Player {
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: Arc<Ctx>,
        code: RoomCode,
        id: PlayerId,
        token: String,
        stream: RoomStream,
        counts_result: bool,
        game: Arc<GameState>,
        deadline: Instant,
    ) -> (Player, sse::Stream) {
        let bot = Bot::new(id, &stream.snapshot, ctx.day_vote_share);
        let player = Player {
            ctx,
            code,
            token: token.into(),
            bot,
            counts_result,
            game,
            deadline,
            // Has seen the snapshot: later ids must be greater.
            sequence: stream.sequence,
            first_snapshot: stream.snapshot_id,
            delivered: Vec::new(),
            covered: Vec::new(),
            over: None,
            last_event: Instant::now(),
            broke_at: Instant::now(),
            pending: None,
            check: None,
        };
        (player, stream.stream)
    }

    /// Plays until the room closes (or the game is over and its stream ends), then checks
    /// the ids the stream delivered.
    async fn play(mut self, stream: sse::Stream) {
        let mut stream = Some(stream);
        while let Some(mut open) = stream.take() {
            match self.read(&mut open).await {
                Ended::RoomClosed | Ended::TimeUp => break,
                Ended::Broken(_) if self.over.is_some() => break,
                Ended::Broken(why) => {
                    self.broke_at = Instant::now();
                    if why.starts_with("silent") {
                        let detail = format!(
                            "room {} player {} at {:.1} s, last event at {:.1} s; {}",
                            self.code,
                            self.bot.me,
                            self.ctx.at(),
                            self.ctx.at() - self.last_event.elapsed().as_secs_f64(),
                            self.ctx
                                .fault_before(self.ctx.at() - QUIET_LIMIT.as_secs_f64())
                        );
                        self.ctx.stats.silences.lock().expect("lock").push(detail);
                    }
                    Ctx::count(&self.ctx.stats.reconnects, why);
                    drop(open);
                    stream = self.reopen().await;
                }
            }
        }
        if let Some(check) = self.check.take() {
            // Each history read is under a timeout.
            let _ = check.await;
        }
    }

    /// Reads and plays until the stream ends, breaks or falls silent, or time is up.
    async fn read(&mut self, stream: &mut sse::Stream) -> Ended {
        loop {
            let at = self.pending.map(|(at, _)| at);
            let act = async move {
                match at {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                readable = timeout(QUIET_LIMIT, stream.readable()) => match readable {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Broken(format!("read: {}", e.kind())),
                    Err(_) => return Ended::Broken(format!("silent for {QUIET_LIMIT:?}")),
                },
                () = act => {
                    let (_, action) = self.pending.take().expect("pending");
                    self.act(action);
                    continue;
                }
                () = sleep_until(self.deadline) => return Ended::TimeUp,
            }
            let mut closed = false;
            let received = stream.read_frames(|frame| {
                closed = self.on_frame(&frame);
                if closed {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            match received {
                _ if closed => return Ended::RoomClosed,
                Err(e) => return Ended::Broken(format!("read: {}", e.root_cause())),
                Ok(r) if !r.open => return Ended::Broken("stream ended".into()),
                Ok(_) => {}
            }
        }
    }

    /// Reopens the stream through nginx with `Last-Event-ID`, after the `retry:` wait, as
    /// EventSource does; `None` once the game is over or time is up.
    async fn reopen(&mut self) -> Option<sse::Stream> {
        let path = format!("/v1/rooms/{}/events", self.code);
        loop {
            tokio::select! {
                () = sleep(self.ctx.reconnect) => {}
                () = sleep_until(self.deadline) => return None,
            }
            let source = source_address(self.ctx.next_source.fetch_add(1, Ordering::Relaxed));
            let request = sse::Request {
                target: self.ctx.nginx,
                source,
                path: &path,
                token: Some(&self.token),
                last_event_id: self.sequence.last(),
            };
            let why = match timeout(HTTP_LIMIT, sse::Stream::open(&request)).await {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(e)) if e.root_cause().to_string() == "HTTP 404" => {
                    // No such room: EventSource gives up here, and so does the player.
                    let refused = (self.bot.me.clone(), self.broke_at, Instant::now());
                    self.game.refused.lock().expect("lock").push(refused);
                    return None;
                }
                Ok(Err(e)) => format!("{}", e.root_cause()),
                Err(_) => format!("no response head within {HTTP_LIMIT:?}"),
            };
            Ctx::count(&self.ctx.stats.reopen_failures, why);
        }
    }

    /// Checks and plays one frame; true once the room has closed.
    fn on_frame(&mut self, frame: &Frame<'_>) -> bool {
        let Some(id) = frame.id else {
            return false;
        };
        let ctx = self.ctx.clone();
        let last = self.sequence.last();
        // A snapshot may repeat the last id (nothing happened meanwhile), never go below it.
        let step = match self.sequence.observe(frame) {
            Step::Reset if last.is_some_and(|last| id < last) => Step::Duplicate,
            step => step,
        };
        match step {
            Step::Duplicate => {
                ctx.violation(
                    "client id went back",
                    format!(
                        "room {} player {}: id {id} ({}) after {}; {}",
                        self.code,
                        self.bot.me,
                        frame.event,
                        last.unwrap_or(0),
                        ctx.fault_before(ctx.at())
                    ),
                );
                return false;
            }
            Step::Reset => {
                self.covered.push((last.unwrap_or(0), id));
                ctx.stats.resync_snapshots.fetch_add(1, Ordering::Relaxed);
            }
            Step::Next | Step::Gap => {}
        }
        if self.over.is_none() {
            let now = Instant::now();
            let stall = now.duration_since(self.last_event).as_secs_f64();
            self.last_event = now;
            self.note_stall(stall);
        }
        {
            let mut newest = self.game.last_seen.lock().expect("lock");
            if id > newest.0 {
                *newest = (id, frame.event.to_owned(), clip(frame.data));
            }
        }
        self.delivered.push(id);
        if let Err(e) = self.on_event(frame, id) {
            Ctx::count(&ctx.stats.errors, format!("{:#}", e));
        }
        frame.event == "room_closed"
    }

    fn on_event(&mut self, frame: &Frame<'_>, id: u64) -> anyhow::Result<()> {
        match frame.event {
            "snapshot" => {
                let snapshot: RoomSnapshot = serde_json::from_str(frame.data)?;
                self.bot.resync(&snapshot);
                self.pending = None;
                if snapshot.winner.is_some() || snapshot.phase == Phase::Ended {
                    // Over while the stream was away: nothing to compare ids against.
                    self.game_over(None, id);
                }
            }
            "game_over" => {
                let over: GameOver = serde_json::from_str(frame.data)?;
                self.game_over(Some(over.winner), id);
            }
            event => {
                if let Some((delay, action)) = self.bot.on_event(event, frame.data)? {
                    self.pending = Some((Instant::now() + delay, action));
                } else if event == "phase" {
                    self.pending = None;
                }
            }
        }
        Ok(())
    }

    fn game_over(&mut self, winner: Option<Team>, id: u64) {
        if self.over.is_some() {
            return;
        }
        self.over = Some(if winner.is_some() { id } else { 0 });
        self.pending = None;
        self.check = Some(tokio::spawn(check_ids(
            self.ctx.clone(),
            self.code.clone(),
            self.bot.me.clone(),
            self.first_snapshot,
            self.delivered.clone(),
            self.covered.clone(),
            self.over.unwrap_or(0),
        )));
        self.game.over.store(true, Ordering::Relaxed);
        self.game
            .over_at
            .lock()
            .expect("lock")
            .get_or_insert_with(Instant::now);
        self.deadline = self.deadline.min(Instant::now() + CLOSE_WAIT);
        if let (true, Some(winner)) = (self.counts_result, winner) {
            self.ctx.stats.games_won.count(winner);
        }
    }

    fn note_stall(&self, seconds: f64) {
        let mut stalls = self.ctx.stats.stalls.lock().expect("lock");
        if stalls.len() >= 5 && stalls.last().is_some_and(|(s, _)| *s >= seconds) {
            return;
        }
        let began = self.ctx.at() - seconds;
        stalls.push((
            seconds,
            format!(
                "room {} player {} from {began:.1} s, in {:?}; {}",
                self.code,
                self.bot.me,
                self.bot.phase,
                self.ctx.fault_before(began + 0.001)
            ),
        ));
        stalls.sort_by(|a, b| b.0.total_cmp(&a.0));
        stalls.truncate(5);
    }

    /// Sends the action's command in the background, so the stream keeps being read.
    fn act(&mut self, action: Action) {
        let Some(body) = self.bot.command(action) else {
            return;
        };
        let (ctx, token) = (self.ctx.clone(), self.token.clone());
        let path = format!("/v1/rooms/{}/commands", self.code);
        tokio::spawn(async move {
            // Refusals (a vote after its phase ended, say) are counted by `post`; a command
            // that failed for good is counted there too.
            let _ = ctx.post(&path, Some(&token), body, true).await;
        });
    }
}

/// Compares the ids a stream delivered after its first snapshot `since`, up to `game_over`
/// (`upto`; 0 when a snapshot said the game was over), with what the engine's history says
/// this player was entitled to see; ids in `covered` (after a, up to b) were stood in for by
/// a resync snapshot.
async fn check_ids(
    ctx: Arc<Ctx>,
    code: RoomCode,
    me: PlayerId,
    since: u64,
    delivered: Vec<u64>,
    covered: Vec<(u64, u64)>,
    upto: u64,
) {
    let s = &ctx.stats;
    if upto == 0 {
        s.streams_unverifiable.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut history = None;
    let mut failure = String::new();
    for _ in 0..3 {
        let limit = Duration::from_secs(5);
        match audience_ids(&ctx.nats, &ctx.subjects, &code, &me, since, limit).await {
            Ok(ids) => {
                history = Some(ids);
                break;
            }
            // A room changing hands, or a node down: try again, as a client would.
            Err(e) => {
                failure = format!("{:#}", e).replace(code.as_str(), "<code>");
                sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let Some(history) = history else {
        s.history_unavailable.fetch_add(1, Ordering::Relaxed);
        Ctx::count(
            &s.errors,
            format!("history read failed 3 times, the last: {failure}"),
        );
        return;
    };
    let Some(expected) = history else {
        s.streams_unverifiable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let got: std::collections::BTreeSet<u64> =
        delivered.iter().copied().filter(|id| *id <= upto).collect();
    let is_covered = |id: u64| covered.iter().any(|&(a, b)| a < id && id <= b);
    let mut missing = Vec::new();
    for &id in expected
        .iter()
        .filter(|id| **id <= upto && !got.contains(id))
    {
        if is_covered(id) {
            s.ids_covered_by_snapshots.fetch_add(1, Ordering::Relaxed);
        } else {
            missing.push(id);
        }
    }
    let extra: Vec<u64> = (got.iter())
        .filter(|id| !expected.contains(id) && !is_covered(**id))
        .copied()
        .collect();
    s.extra_ids.fetch_add(extra.len() as u64, Ordering::Relaxed);
    if !extra.is_empty() {
        (s.extra.lock().expect("lock")).push((code.clone(), me.clone(), extra));
    }
    s.streams_checked.fetch_add(1, Ordering::Relaxed);
    if !missing.is_empty() {
        ctx.violation(
            "client missed events",
            format!(
                "room {code} player {me}: ids {missing:?} of the history never delivered \
                 (ids after {since} up to game_over {upto}; resync snapshots {covered:?})"
            ),
        );
    }
}

// ---- the report ----------------------------------------------------------------------------

/// The machine's CPU time from `/proc/stat` (all cores, in ticks): processes here die and
/// restart, so per-process figures would lose what the dead ones used.
struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = (stat.lines().next().unwrap_or_default().split_whitespace())
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        MachineCpu {
            busy: total - idle,
            total,
        }
    }

    /// The share of all cores busy since `self`.
    fn busy_since(&self) -> f64 {
        let now = MachineCpu::now();
        (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64
    }
}

/// Tells apart the ids streams delivered that the engine's history lacked: published for that
/// player (on the room's public subject or the player's own: the history, read back from a
/// store that can lose writes, lacks them) or only for others, which would be another
/// player's data: a violation.
fn extra_ids_by_subject(ctx: &Ctx, tap: &TapState) {
    let extra = ctx.stats.extra.lock().expect("lock");
    if extra.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for (code, me, ids) in extra.iter() {
        let (public, own) = (
            ctx.subjects.room_events(code),
            ctx.subjects.player_events(code, me),
        );
        for &id in ids {
            let kind = match tap.payloads.get(&(code.to_string(), id)) {
                None => "not seen by the tap",
                Some((_, subjects, _)) if subjects.iter().any(|s| *s == public || *s == own) => {
                    "published for that player"
                }
                Some((_, subjects, _)) => {
                    ctx.violation(
                        "another player's event delivered",
                        format!("room {code} player {me}: id {id}, published only on {subjects:?}"),
                    );
                    "published only for other players"
                }
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    println!("  ids the history lacks, by where the tap saw them: {kinds:?}");
    for (code, me, ids) in extra.iter().take(SHOWN) {
        println!("    room {code} player {me}: {ids:?}");
    }
}

/// Prints every figure and violation; the number of violations.
fn report(ctx: &Ctx, tap: &Tap, busy: f64) -> u64 {
    let s = &ctx.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let map = |m: &Mutex<BTreeMap<String, u64>>| {
        let m = m.lock().expect("lock");
        if m.is_empty() {
            return "none".to_string();
        }
        m.iter()
            .map(|(k, v)| format!("{v}× {k}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!();
    println!("==== chaos soak: {:.0} s ====", ctx.at());
    println!(
        "games: {} started, {} reached game_over ({}); setup failures (no game started): {}",
        load(&s.games_started),
        load(&s.games_over),
        s.games_won.summary("won "),
        map(&s.setup_failures)
    );
    let faults = ctx.faults.lock().expect("lock");
    let mut by: BTreeMap<(String, &'static str), (u64, f64)> = BTreeMap::new();
    for f in faults.iter() {
        let entry = by.entry((f.target.clone(), f.kind)).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(f.recovered_in.as_secs_f64());
    }
    let held: f64 = faults.iter().map(|f| f.held.as_secs_f64()).sum();
    println!(
        "faults: {} injected ({:.0} s held in all); by target and kind (count, slowest recovery after being brought back):",
        faults.len(),
        held
    );
    for ((target, kind), (n, slowest)) in &by {
        println!("  {target:<12} {kind:<8} {n:>3}  {slowest:.2} s");
    }
    drop(faults);
    println!(
        "phase durations (ms) for scale: {}",
        serde_json::to_string(&ctx.durations.0).unwrap_or_default()
    );
    let stalls = s.stalls.lock().expect("lock").clone();
    println!("longest stalls a player saw (between two events while its game ran):");
    for (seconds, what) in &stalls {
        println!("  {seconds:.2} s: {what}");
    }
    println!(
        "commands: {} sent; {} answered only after retries; {} failed for good; refused (answered, not retried): {}",
        load(&s.commands),
        load(&s.commands_retried),
        load(&s.commands_failed),
        map(&s.commands_refused)
    );
    println!("  retries by what the try before got: {}", map(&s.retries));
    println!("streams: reopened after {}", map(&s.reconnects));
    for silence in s.silences.lock().expect("lock").iter() {
        println!("  silent: {silence}");
    }
    println!(
        "  {} broke before game over and came back to a closed room (404: game_over never seen; EventSource stops there too)",
        load(&s.cut_off)
    );
    println!(
        "  failed reopen attempts (retried): {}",
        map(&s.reopen_failures)
    );
    println!(
        "  {} streams checked against the engine's history at game over; {} uncheckable (over while away, or history gone), {} with the history unreachable; {} resync snapshots standing in for {} ids; {} ids delivered that the history lacks",
        load(&s.streams_checked),
        load(&s.streams_unverifiable),
        load(&s.history_unavailable),
        load(&s.resync_snapshots),
        load(&s.ids_covered_by_snapshots),
        load(&s.extra_ids)
    );
    {
        let t = lock(&tap.state);
        println!(
            "tap: {} events ({} lobby copies from every engine); {} room events published again on their subject with the same payload; {} disconnects; ids with two payloads: {}, new ids going back: {}",
            t.events,
            t.lobby_copies,
            t.republished,
            t.disconnects,
            t.two_payloads.len(),
            t.went_back.len()
        );
        for v in &t.two_payloads {
            ctx.violation("tap: two payloads", v.clone());
        }
        for v in &t.went_back {
            ctx.violation("tap: id went back", v.clone());
        }
        extra_ids_by_subject(ctx, &t);
    }
    println!("errors (not violations): {}", map(&s.errors));
    println!(
        "machine CPU while faults ran: {:.0} % of its {} cores busy (every process here, restarts included, and anything else running)",
        busy * 100.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let violations = s.violations.lock().expect("lock");
    let total: usize = violations.values().map(Vec::len).sum();
    println!("violations: {total}");
    for (kind, list) in violations.iter() {
        println!("  {kind}: {}", list.len());
        for v in list.iter().take(SHOWN) {
            println!("    {v}");
        }
    }
    total as u64
}
