//! The processes of a gateway benchmark, started the way they run in production: a real
//! nats-server on a random port, the [`Lobby`] stand-in for the engine, real `gateway`
//! binaries, and optionally real nginx with the project's config (`deploy/nginx/render`) in
//! front of them; each process labelled with its role, for memory and CPU per role.
//!
//! Unlike [`crate::processes`], which runs one engine and one gateway for benchmarks through
//! the real game, this runs no engine and as many gateways as asked.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use test_support::NatsServer;

use crate::fleet::{Fleet, Settled, Tally};
use crate::http::unix_ns;
use crate::lobby::Lobby;
use crate::processes::{free_port, get, metric, CpuMeter};

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
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    fn gateway_binary(&self) -> anyhow::Result<PathBuf> {
        let binary = match &self.gateway {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("gateway"),
        };
        ensure!(
            binary.is_file(),
            "no gateway binary at {}: build it with `cargo build --release -p gateway`",
            binary.display()
        );
        Ok(binary)
    }
}

/// nats-server, the lobby stand-in and the gateways (and nginx); stopped when dropped, nginx
/// first and nats-server last.
pub struct Rig {
    pub nginx: Option<Nginx>,
    pub gateways: Vec<GatewayProcess>,
    pub lobby: Lobby,
    pub nats: NatsServer,
    _keys: tempfile::TempDir,
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
        let keys = tempfile::tempdir()?;
        let (_, verify) = test_support::write_test_keys(keys.path());
        let client = async_nats::connect(nats.url()).await?;
        let lobby = Lobby::start(client, history).await?;
        let mut started = Vec::new();
        for _ in 0..gateways {
            started
                .push(GatewayProcess::start(&binary, &nats.url(), &verify, max_connections).await?);
        }
        let nginx = match nginx_workers {
            Some(workers) => Some(Nginx::start(&started, workers).await?),
            None => None,
        };
        Ok(Rig {
            nginx,
            gateways: started,
            lobby,
            nats,
            _keys: keys,
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
        let nginx = self.nginx.iter().flat_map(|n| with_children(n.child.id()));
        let gateways = self.gateways.iter().map(GatewayProcess::pid);
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
        let cpu = by_role(cpu.percents());
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

/// A `gateway` process on its own ports; stopped with SIGTERM when dropped.
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    admin: SocketAddr,
}

impl GatewayProcess {
    async fn start(
        binary: &Path,
        nats_url: &str,
        verify_key: &Path,
        max_connections: usize,
    ) -> anyhow::Result<GatewayProcess> {
        let (addr, admin) = (loopback(free_port()?), loopback(free_port()?));
        let child = Command::new(binary)
            .env("PHASECAST_NATS__URL", nats_url)
            .env("PHASECAST_GATEWAY__LISTEN", addr.to_string())
            .env("PHASECAST_GATEWAY__ADMIN_LISTEN", admin.to_string())
            .env(
                "PHASECAST_GATEWAY__MAX_CONNECTIONS",
                max_connections.to_string(),
            )
            .env("PHASECAST_GATEWAY__SHUTDOWN_GRACE", "1s")
            .env("PHASECAST_AUTH__VERIFY_KEY_FILE", verify_key)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut gateway = GatewayProcess { child, addr, admin };
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open streams as the gateway counts them (`phasecast_gateway_connections`, all streams).
    pub async fn connections(&self) -> anyhow::Result<u64> {
        Ok(metric(self.admin, "phasecast_gateway_connections").await? as u64)
    }

    /// Polls `/readyz` (NATS connected) until it answers 200.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the gateway exited while starting ({status})");
            }
            if matches!(get(self.addr, "/readyz").await, Ok((200, _))) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "gateway {} not ready in 10 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// nginx running `deploy/nginx/nginx.conf.template` as `deploy/nginx/render` renders it.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Renders the config for these gateways with `workers` worker processes (each worker
    /// holds two descriptors per stream under the per-process limit), and starts nginx.
    /// The listener gets `reuseport`, so the kernel spreads new connections evenly over the
    /// workers; without it one busy worker takes most of a connection storm and runs out of
    /// descriptors.
    async fn start(gateways: &[GatewayProcess], workers: usize) -> anyhow::Result<Nginx> {
        let prefix = tempfile::tempdir()?;
        let addr = loopback(free_port()?);
        let render = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx/render");
        let rendered = Command::new(render)
            .env("WORKER_PROCESSES", workers.to_string())
            .arg(prefix.path())
            .arg(format!("{addr} reuseport"))
            .arg(prefix.path())
            // Longer than the gateway's heartbeat (15 s), as deploy/up has it.
            .arg("60s")
            .args(gateways.iter().map(|g| g.addr.to_string()))
            .output()
            .context("run deploy/nginx/render")?;
        ensure!(
            rendered.status.success(),
            "deploy/nginx/render failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let conf = prefix.path().join("nginx.conf");
        std::fs::write(&conf, &rendered.stdout)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .context("start nginx (apt-get install nginx)")?;
        let mut nginx = Nginx {
            child,
            addr,
            _prefix: prefix,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(get(addr, "/healthz").await, Ok((200, _))) {
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited while starting ({status})");
            }
            ensure!(
                Instant::now() < deadline,
                "nginx on {addr} not proxying in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    /// SIGTERM: nginx stops its workers and then exits (a killed master would leave them).
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM to a child we started, then up to 10 s for it to exit, then SIGKILL.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// `pid` and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let parent = |stat: String| -> Option<u32> {
        // Fields after the command name (which may hold spaces): state, then the parent.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if parent(stat) == Some(pid) {
            pids.push(child);
        }
    }
    pids
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

/// `gateways 103 %, nats-server 12 %, ...`.
pub fn cpu_line(percent: &[(&'static str, f64)]) -> String {
    percent
        .iter()
        .map(|(role, p)| format!("{role} {p:.0} %"))
        .collect::<Vec<_>>()
        .join(", ")
}
