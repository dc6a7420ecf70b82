//! The processes of a benchmark, started the way they run in production, and what they cost.
//!
//! Two sets of them, each process configured only through its `PHASECAST_*` environment:
//! - [`Rig`], for gateway benchmarks: a real nats-server on a random port, the [`Lobby`]
//!   stand-in for the engine (so that they measure the gateway and not the game), as many real
//!   `gateway` binaries as asked, and optionally real nginx with the project's config
//!   (`deploy/nginx/render`) in front of them.
//! - [`GameRig`], for benchmarks through the real game: nats-server, the `game-engine` binary
//!   and one `gateway`.
//!
//! Every process is a [`Service`]: its output goes to a log file, quoted when it fails to
//! start; it counts as started once it answers; and it gets SIGTERM when dropped, so that it
//! stops cleanly however the benchmark ends. Processes are labelled with their role, and CPU
//! ([`CpuMeter`]) and memory ([`rss_kib`]) are read from `/proc` and summed per role.

use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use proto::Subjects;
use test_support::NatsServer;

use crate::fleet::{Fleet, Settled, Tally};
use crate::http::{request_bytes, HttpConn};
use crate::lobby::Lobby;
use crate::servers::{Servers, Topology, FILE_BUDGET};
use crate::unix_ns;

/// How long a process may take to start answering.
const START_WITHIN: Duration = Duration::from_secs(15);

// ---- gateway benchmarks --------------------------------------------------------------------

/// Options every gateway benchmark takes.
#[derive(clap::Args, Debug)]
pub struct RigArgs {
    /// The gateway binary; default: `gateway` next to this binary (target/release/gateway,
    /// built with `cargo build --release -p gateway`).
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// Folder for the CSV results (plotted by bench/plot.sh).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-results"))]
    pub out: PathBuf,
    /// Client connections per worker process (each process may open 20,000 files here).
    #[arg(long, default_value_t = 5000)]
    pub per_worker: usize,
    /// Longest wait, in seconds, for any one step: connections opening, events arriving.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

impl RigArgs {
    /// Client connections (none open yet) on the lobby stream of `rig`.
    pub fn fleet(&self, rig: &Rig) -> Fleet {
        let timeout = Duration::from_secs(self.timeout);
        Fleet::new(rig.target(), "/v1/lobby/events", self.per_worker, timeout)
    }

    fn gateway_binary(&self) -> anyhow::Result<PathBuf> {
        match &self.gateway {
            Some(path) => Ok(path.clone()),
            None => Ok(std::env::current_exe()?.with_file_name("gateway")),
        }
    }
}

/// nats-server, the lobby stand-in and the gateways (and nginx); stopped when dropped, nginx
/// first and nats-server last.
pub struct Rig {
    nginx: Option<Nginx>,
    pub gateways: Vec<Gateway>,
    pub lobby: Lobby,
    nats: NatsServer,
    /// Keys and logs.
    _dir: tempfile::TempDir,
}

impl Rig {
    /// `gateways` gateway processes, each allowing `max_connections` streams, and nginx with
    /// `nginx_workers` worker processes in front of them if asked for. The lobby keeps
    /// `history` events for resuming.
    pub async fn start(
        args: &RigArgs,
        gateways: usize,
        max_connections: usize,
        nginx_workers: Option<usize>,
        history: usize,
    ) -> anyhow::Result<Rig> {
        let binary = args.gateway_binary()?;
        let nats = NatsServer::start();
        let dir = tempfile::tempdir()?;
        let (_, verify) = test_support::write_test_keys(dir.path());
        let client = async_nats::connect(nats.url()).await?;
        let lobby = Lobby::start(client, history).await?;
        let (url, mut started) = (nats.url(), Vec::new());
        for n in 1..=gateways {
            let name = format!("gateway-{n}");
            let gateway = Gateway::start(
                &name,
                &binary,
                &url,
                &verify,
                max_connections,
                None,
                dir.path(),
            );
            started.push(gateway.await?);
        }
        let nginx = match nginx_workers {
            Some(workers) => {
                let upstreams: Vec<SocketAddr> = started.iter().map(|g| g.addr).collect();
                Some(Nginx::start(&upstreams, workers, &[], dir.path()).await?)
            }
            None => None,
        };
        Ok(Rig {
            nginx,
            gateways: started,
            lobby,
            nats,
            _dir: dir,
        })
    }

    /// Where clients connect: nginx if it runs, else the first gateway.
    pub fn target(&self) -> SocketAddr {
        match &self.nginx {
            Some(nginx) => nginx.addr,
            None => self.gateways[0].addr,
        }
    }

    /// Every process to account for, labelled with its role (several per role).
    pub fn processes(&self, fleet: &Fleet) -> Vec<(&'static str, u32)> {
        let nginx = self
            .nginx
            .iter()
            .flat_map(|n| with_children(n.service.pid()));
        let gateways = self.gateways.iter().map(Gateway::pid);
        (nginx.map(|pid| ("nginx", pid)))
            .chain(gateways.map(|pid| ("gateways", pid)))
            .chain(self.nats.pid().map(|pid| ("nats-server", pid)))
            .chain(fleet.pids().into_iter().map(|pid| ("clients", pid)))
            .chain([("publisher", std::process::id())])
            .collect()
    }

    /// The roles of [`Rig::processes`], in order.
    pub fn roles(&self, fleet: &Fleet) -> Vec<&'static str> {
        let mut roles = Vec::new();
        for (role, _) in self.processes(fleet) {
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        roles
    }

    /// Publishes `rate` events a second for `duration`, waits until every connection has
    /// the last one, and measures what that took.
    pub async fn publish(
        &self,
        fleet: &mut Fleet,
        rate: f64,
        duration: Duration,
    ) -> anyhow::Result<Published> {
        fleet.tally().await?; // start from clean counters
        let first_id = self.lobby.last_id().await? + 1;
        let cpu = CpuMeter::start(&self.processes(fleet));
        let started_ns = unix_ns();
        let last_id = self.lobby.publish_for(rate, duration).await?;
        let drained = fleet.reach(last_id).await?;
        let cpu = cpu.percents();
        let tally = fleet.tally().await?;
        let end_ns = match drained.lagging {
            0 => drained.last_ns.max(started_ns + 1),
            _ => unix_ns(),
        };
        Ok(Published {
            events: (last_id + 1).saturating_sub(first_id),
            per_second: tally.delivered as f64 * 1e9 / (end_ns - started_ns) as f64,
            drained,
            tally,
            cpu,
        })
    }
}

/// What a [`Rig::publish`] run delivered and cost.
pub struct Published {
    pub events: u64,
    /// Deliveries per second, from the first publish until every connection had the last
    /// event (or until giving up on the lagging ones).
    pub per_second: f64,
    /// Every connection reaching the last event: when the last one did, who never did.
    pub drained: Settled,
    /// Deliveries, faults and latency over the run.
    pub tally: Tally,
    /// Per role, per cent of a core.
    pub cpu: Vec<(&'static str, f64)>,
}

/// nginx running `deploy/nginx/nginx.conf.template` as `deploy/nginx/render` renders it.
pub struct Nginx {
    pub service: Service,
    pub addr: SocketAddr,
}

impl Nginx {
    /// Renders the config for gateways at `upstreams` with `workers` worker processes (each
    /// worker holds two descriptors per stream under the per-process limit) and render's
    /// other settings from `env` (e.g. `CREATE_RATE`), and starts nginx.
    /// The listener gets `reuseport`, so the kernel spreads new connections evenly over the
    /// workers; without it one busy worker takes most of a connection storm and runs out of
    /// descriptors.
    pub async fn start(
        upstreams: &[SocketAddr],
        workers: usize,
        env: &[(&str, &str)],
        dir: &Path,
    ) -> anyhow::Result<Nginx> {
        let prefix = dir.join("nginx");
        let addr = loopback(free_port()?);
        let render = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx/render");
        let rendered = Command::new(render)
            .envs(env.iter().copied())
            .env("WORKER_PROCESSES", workers.to_string())
            .arg(&prefix)
            .arg(format!("{addr} reuseport"))
            .arg(&prefix)
            // Longer than the gateway's heartbeat (15 s), as deploy/up has it.
            .arg("60s")
            .args(upstreams.iter().map(|a| a.to_string()))
            .output()
            .context("run deploy/nginx/render")?;
        ensure!(
            rendered.status.success(),
            "deploy/nginx/render failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, &rendered.stdout)?;
        let mut nginx = Command::new("nginx");
        nginx
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .args(["-g", "daemon off;"]);
        let mut service = Service::spawn("nginx", &mut nginx, dir)
            .context("starting nginx (apt-get install nginx)")?;
        service
            .wait_ready(async || ready(addr, "/healthz").await)
            .await?;
        Ok(Nginx { service, addr })
    }
}

// ---- benchmarks through the real game ------------------------------------------------------

/// Options every benchmark through the real game takes.
#[derive(clap::Args, Debug)]
pub struct GameRigArgs {
    /// The engine binary; default: `game-engine` next to this binary (target/release/,
    /// wherever CARGO_TARGET_DIR puts it, built with `cargo build --release -p game-engine`).
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// The gateway binary; default: `gateway` next to this binary (built with
    /// `cargo build --release -p gateway`).
    #[arg(long)]
    pub gateway: Option<PathBuf>,
    /// One nats-server (R1) or a three-node cluster (R3).
    #[arg(long, value_enum, default_value_t = Topology::Single)]
    pub nats: Topology,
}

impl GameRigArgs {
    fn binary(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
        let path = match given {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name(name),
        };
        check_built(&path, name)?;
        Ok(path)
    }

    /// The `game-engine` binary to run, checked to exist.
    pub fn engine_binary(&self) -> anyhow::Result<PathBuf> {
        Self::binary(&self.engine, "game-engine")
    }

    /// The `gateway` binary to run, checked to exist.
    pub fn gateway_binary(&self) -> anyhow::Result<PathBuf> {
        Self::binary(&self.gateway, "gateway")
    }
}

/// nats-server, game-engine and gateway, running; stopped when dropped, gateway first.
pub struct GameRig {
    pub gateway: Gateway,
    engine: Service,
    /// The engine's admin listener (`/metrics`).
    pub engine_admin: SocketAddr,
    /// A NATS connection for the benchmark's own checks.
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub nats: Servers,
    /// Keys and logs.
    pub dir: tempfile::TempDir,
}

impl GameRig {
    /// Starts nats-server, then the engine (started once it answers `game.lobby.snap`) with
    /// `engine.min_phase` (e.g. `"100ms"`, so that rooms may ask for short phases), then the
    /// gateway with `gateway.max_connections` and, when given, `gateway.heartbeat`.
    pub async fn start(
        args: &GameRigArgs,
        min_phase: &str,
        max_connections: usize,
        heartbeat: Option<&str>,
    ) -> anyhow::Result<GameRig> {
        let engine_binary = args.engine_binary()?;
        let nats = Servers::start(args.nats, FILE_BUDGET).await?;
        let dir = tempfile::tempdir()?;
        let (signing, verify) = test_support::write_test_keys(dir.path());
        let admin = loopback(free_port()?);
        // On a cluster, the engine, the gateway and this tool each on their own node.
        let mut engine = engine_command(&engine_binary, &nats.url(0), admin, min_phase, &signing);
        let mut engine = Service::spawn("game-engine", &mut engine, dir.path())?;
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(nats.url(2))
            .await
            .context("connecting the benchmark to nats-server")?;
        let subjects = Subjects::default();
        let snap = r#"{"viewer":null,"since":null}"#;
        let answers = async || {
            let probe = client.request(subjects.lobby_snap(), snap.into());
            probe.await.is_ok()
        };
        engine.wait_ready(answers).await?;
        let gateway = Gateway::start(
            "gateway",
            &args.gateway_binary()?,
            &nats.url(1),
            &verify,
            max_connections,
            heartbeat,
            dir.path(),
        )
        .await?;
        Ok(GameRig {
            gateway,
            engine,
            engine_admin: admin,
            client,
            subjects,
            nats,
            dir,
        })
    }

    /// The engine, gateway, nats-server and this load tool, for a [`CpuMeter`].
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("game-engine", self.engine.pid()),
            ("gateway", self.gateway.pid()),
            ("load tool", std::process::id()),
        ]
        .into_iter()
        .chain(self.nats.pids())
        .collect()
    }
}

impl fmt::Display for GameRig {
    /// Which processes run where, and where their logs are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, game-engine (pid {}) and gateway (pid {}, {}) running; logs in {}",
            self.nats,
            self.engine.pid(),
            self.gateway.pid(),
            self.gateway.addr,
            self.dir.path().display()
        )
    }
}

/// The command that runs `game-engine` on `nats_url` with its admin listener (`/healthz`,
/// `/metrics`) on `admin`, `engine.min_phase`, a 2 s shutdown grace and the token key
/// `signing`; add further `PHASECAST_*` variables to it before spawning.
pub fn engine_command(
    binary: &Path,
    nats_url: &str,
    admin: SocketAddr,
    min_phase: &str,
    signing: &Path,
) -> Command {
    let mut engine = Command::new(binary);
    engine
        .env("PHASECAST_NATS__URL", nats_url)
        .env("PHASECAST_ENGINE__ADMIN_LISTEN", admin.to_string())
        .env("PHASECAST_ENGINE__MIN_PHASE", min_phase)
        .env("PHASECAST_ENGINE__SHUTDOWN_GRACE", "2s")
        .env("PHASECAST_AUTH__SIGNING_KEY_FILE", signing);
    engine
}

// ---- processes -----------------------------------------------------------------------------

/// A child process whose output goes to `<dir>/<name>.log`; SIGTERM when dropped.
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `command` with its output going to `<dir>/<name>.log`; `RUST_LOG` is passed on,
    /// `warn` when unset.
    pub fn spawn(name: &str, command: &mut Command, dir: &Path) -> anyhow::Result<Service> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let program = Path::new(command.get_program()).display().to_string();
        let child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {program}"))?;
        Ok(Service {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`, ...) to the process, unless it has
    /// exited: an unreaped child's pid cannot belong to anyone else.
    pub fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} has exited ({status}): not signalled", self.name);
        }
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .context("run kill")?;
        ensure!(status.success(), "kill -{signal} {}: {status}", self.pid());
        Ok(())
    }

    /// Waits up to `within` for the process to exit (checked every 10 ms); its exit status,
    /// or an error naming the process if it still runs.
    pub async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                began.elapsed() < within,
                "{} still runs {within:?} after it was told to stop",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Where its output goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until `answers` says the process serves; fails, quoting the end of its log, if it
    /// exits first or takes longer than 15 s.
    pub async fn wait_ready(
        &mut self,
        mut answers: impl AsyncFnMut() -> bool,
    ) -> anyhow::Result<()> {
        let began = Instant::now();
        while !answers().await {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited while starting ({status}); {}",
                    self.name,
                    self.log_tail()
                );
            }
            ensure!(
                began.elapsed() < START_WITHIN,
                "{} did not answer within {START_WITHIN:?}; {}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The last lines of the process's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }
}

impl Drop for Service {
    /// SIGTERM, so that the process stops cleanly (nginx's master stops its workers, which a
    /// SIGKILL would leave behind); SIGKILL if it has not exited within 10 s.
    fn drop(&mut self) {
        // Once reaped (`wait_exit`), the pid may be someone else's: signal only a child that
        // has not exited.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a gateway is configured with (`PHASECAST_*`), besides its listeners.
#[derive(Clone, Copy, Debug)]
pub struct GatewayConfig<'a> {
    pub nats_url: &'a str,
    /// `auth.verify_key_file`.
    pub verify_key: &'a Path,
    /// `gateway.max_connections`.
    pub max_connections: usize,
    /// `gateway.heartbeat`, when not the default.
    pub heartbeat: Option<&'a str>,
}

/// A `gateway` process on its own ports.
pub struct Gateway {
    service: Service,
    /// The public listener (`/v1/…`).
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`).
    admin: SocketAddr,
}

impl Gateway {
    /// Starts `binary` on `nats_url` with `gateway.max_connections` and, when given,
    /// `gateway.heartbeat`; started once `/readyz` (NATS connected) answers 200.
    async fn start(
        name: &str,
        binary: &Path,
        nats_url: &str,
        verify_key: &Path,
        max_connections: usize,
        heartbeat: Option<&str>,
        dir: &Path,
    ) -> anyhow::Result<Gateway> {
        let (addr, admin) = (loopback(free_port()?), loopback(free_port()?));
        let listen = [addr, admin];
        let config = GatewayConfig {
            nats_url,
            verify_key,
            max_connections,
            heartbeat,
        };
        Self::start_at(name, binary, &config, listen, dir).await
    }

    /// Starts `binary` with `config`, its public listener on `listen[0]` and its admin
    /// listener on `listen[1]` (a gateway restarted where nginx expects it); started once
    /// `/readyz` answers 200.
    pub async fn start_at(
        name: &str,
        binary: &Path,
        config: &GatewayConfig<'_>,
        listen: [SocketAddr; 2],
        dir: &Path,
    ) -> anyhow::Result<Gateway> {
        check_built(binary, "gateway")?;
        let [addr, admin] = listen;
        let GatewayConfig {
            nats_url,
            verify_key,
            max_connections,
            heartbeat,
        } = *config;
        let mut command = Command::new(binary);
        command
            .env("PHASECAST_NATS__URL", nats_url)
            .env("PHASECAST_GATEWAY__LISTEN", addr.to_string())
            .env("PHASECAST_GATEWAY__ADMIN_LISTEN", admin.to_string())
            .env(
                "PHASECAST_GATEWAY__MAX_CONNECTIONS",
                max_connections.to_string(),
            )
            .env("PHASECAST_GATEWAY__SHUTDOWN_GRACE", "1s")
            .env("PHASECAST_AUTH__VERIFY_KEY_FILE", verify_key);
        if let Some(heartbeat) = heartbeat {
            command.env("PHASECAST_GATEWAY__HEARTBEAT", heartbeat);
        }
        let mut service = Service::spawn(name, &mut command, dir)?;
        service
            .wait_ready(async || ready(addr, "/readyz").await)
            .await?;
        Ok(Gateway {
            service,
            addr,
            admin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// The admin listener (`/metrics`).
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The process, to signal it.
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.service
    }

    /// Open streams as the gateway counts them (`phasecast_gateway_connections`, all streams).
    pub async fn connections(&self) -> anyhow::Result<u64> {
        Ok(self.metric("phasecast_gateway_connections").await? as u64)
    }

    /// The sum of every sample of metric `name` on the gateway's `/metrics` page.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (status, page) = get(self.admin, "/metrics").await?;
        ensure!(
            status == 200,
            "GET /metrics on {}: HTTP {status}",
            self.admin
        );
        Ok(page
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

/// Fails clearly when a binary the benchmark runs has not been built.
fn check_built(binary: &Path, package: &str) -> anyhow::Result<()> {
    ensure!(
        binary.is_file(),
        "no {package} binary at {}: build it with `cargo build --release -p {package}` (or \
         pass its path)",
        binary.display()
    );
    Ok(())
}

/// A port nothing listens on right now (the kernel's pick; it may be taken again before use).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `127.0.0.1:<port>`.
pub fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// A histogram as a process's `/metrics` renders it: cumulative counts by upper bound.
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// Reads histogram `name` (all its series summed) from the admin listener at `admin`.
    pub async fn read(admin: SocketAddr, name: &str) -> anyhow::Result<Buckets> {
        let (status, page) = get(admin, "/metrics").await?;
        ensure!(status == 200, "GET /metrics on {admin}: HTTP {status}");
        let prefix = format!("{name}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in page.lines().filter(|l| l.starts_with(&prefix)) {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next());
            let count = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
            let (Some(le), Some(count)) = (le, count) else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, sum)) => *sum += count,
                None => buckets.push((le, count)),
            }
        }
        ensure!(!buckets.is_empty(), "{admin} has no histogram {name}");
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(Buckets(buckets))
    }

    /// What was recorded between `before` and this reading.
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            (self.0.iter())
                .map(|&(le, count)| {
                    let earlier = before.0.iter().find(|(b, _)| *b == le).map_or(0.0, |c| c.1);
                    (le, count - earlier)
                })
                .collect(),
        )
    }

    fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |&(_, count)| count)
    }

    /// The upper bound of the bucket that holds quantile `q`: the histogram tells no more.
    fn bound(&self, q: f64) -> f64 {
        let rank = q * self.count();
        (self.0.iter())
            .find(|&&(_, count)| count >= rank)
            .map_or(f64::INFINITY, |&(le, _)| le)
    }
}

impl fmt::Display for Buckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |q: f64| match self.bound(q) {
            b if b.is_finite() => format!("≤ {} ms", b * 1000.0),
            _ => "over the largest bucket".to_owned(),
        };
        write!(
            f,
            "p50 {}, p99 {}, p99.9 {} ({} samples)",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.count()
        )
    }
}

/// `GET path` answered 200 (`/readyz`, `/healthz`).
pub async fn ready(addr: SocketAddr, path: &str) -> bool {
    get(addr, path).await.is_ok_and(|(status, _)| status == 200)
}

/// `GET path` on a fresh connection, within 5 s: (status, body).
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let limit = Duration::from_secs(5);
    tokio::time::timeout(limit, async {
        let mut conn = HttpConn::connect(addr, Ipv4Addr::LOCALHOST, limit).await?;
        let response = conn
            .send(&request_bytes("GET", path, &[("Connection", "close")], b""))
            .await?;
        Ok((
            response.status,
            String::from_utf8_lossy(&response.body).into_owned(),
        ))
    })
    .await
    .with_context(|| format!("GET {path} on {addr}: timed out"))?
}

// ---- what processes cost, from /proc -------------------------------------------------------

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces, so the
/// fields start past the last `)`): state, parent, …; empty once the process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let fields = stat_fields(pid);
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, fields 14 and 15 of the line (11 and 12 after the name); 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

/// `pid` and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if stat_fields(child).get(1).and_then(|p| p.parse().ok()) == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU used by labelled processes from a starting point on, as a share of one core.
pub struct CpuMeter {
    began: Instant,
    start: Vec<(&'static str, u32, f64)>,
}

impl CpuMeter {
    pub fn start(processes: &[(&'static str, u32)]) -> CpuMeter {
        CpuMeter {
            began: Instant::now(),
            start: processes
                .iter()
                .map(|&(role, pid)| (role, pid, cpu_seconds(pid)))
                .collect(),
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    /// (role, % of one core) since the start, summed over the processes of each role.
    pub fn percents(&self) -> Vec<(&'static str, f64)> {
        let span = self.elapsed();
        by_role(
            self.start
                .iter()
                .map(|&(role, pid, cpu0)| (role, 100.0 * (cpu_seconds(pid) - cpu0) / span)),
        )
    }
}

/// Sums values per role, roles in order of first appearance:
/// `[("gateways", 3), ("nginx", 1), ("gateways", 4)]` → `[("gateways", 7), ("nginx", 1)]`.
pub fn by_role<T: Copy + std::ops::Add<Output = T>>(
    values: impl IntoIterator<Item = (&'static str, T)>,
) -> Vec<(&'static str, T)> {
    let mut sums: Vec<(&'static str, T)> = Vec::new();
    for (role, value) in values {
        match sums.iter_mut().find(|(r, _)| *r == role) {
            Some((_, sum)) => *sum = *sum + value,
            None => sums.push((role, value)),
        }
    }
    sums
}

/// `gateways 20480 KiB, nats-server 11616 KiB, ...`.
pub fn kib_line(kib: &[(&'static str, u64)]) -> String {
    kib.iter()
        .map(|(role, k)| format!("{role} {k} KiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `gateways 103.2 %, nats-server 12.0 %, ...`, each a share of one core.
pub fn cpu_line(percent: &[(&'static str, f64)]) -> String {
    percent
        .iter()
        .map(|(role, p)| format!("{role} {p:.1} %"))
        .collect::<Vec<_>>()
        .join(", ")
}
