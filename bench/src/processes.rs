//! The whole system as separate processes, for benchmarks that go through the gateway as
//! browsers do: a real nats-server, the `game-engine` binary and the `gateway` binary, each
//! configured only through its `PHASECAST_*` environment. Also CPU and memory from `/proc` and
//! one figure from a `/metrics` page.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::Subjects;
use test_support::NatsServer;
use tokio::process::{Child, Command};

use crate::cpu_seconds;
use crate::http::{request_bytes, HttpConn};

/// How the engine and gateway are started.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// `target/release/game-engine` (from `cargo build --release -p game-engine`).
    pub engine_bin: PathBuf,
    /// `target/release/gateway` (from `cargo build --release -p gateway`).
    pub gateway_bin: PathBuf,
    /// `engine.min_phase`, e.g. `"100ms"`, so that rooms may ask for short phases.
    pub min_phase: String,
    /// `gateway.max_connections`.
    pub max_connections: usize,
    /// `gateway.heartbeat`; `None` keeps the default (15 s).
    pub heartbeat: Option<String>,
}

/// nats-server, game-engine and gateway, running; stopped on [`Processes::stop`] or drop.
pub struct Processes {
    pub nats: NatsServer,
    pub engine: Service,
    pub gateway: Service,
    /// The gateway's public listener (`/v1/…`).
    pub gateway_addr: SocketAddr,
    /// The gateway's admin listener (`/metrics`).
    pub gateway_admin: SocketAddr,
    /// The engine's admin listener (`/metrics`).
    pub engine_admin: SocketAddr,
    /// A NATS connection for the benchmark's own checks.
    pub client: async_nats::Client,
    pub subjects: Subjects,
    /// Keys and logs.
    pub dir: tempfile::TempDir,
}

/// One child process whose output goes to a log file.
pub struct Service {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Service {
    /// Starts `binary args…` with `env` added, its output going to `<dir>/<name>.log`.
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[String],
        env: &[(&str, String)],
        dir: &Path,
    ) -> anyhow::Result<Service> {
        anyhow::ensure!(
            binary.is_file(),
            "{} not found; build it with `cargo build --release -p {name}` (or pass its path)",
            binary.display()
        );
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Service { name, child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Fails, quoting the end of its log, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); {}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}

/// A port nothing listens on right now (the kernel's pick; it may be taken again before use).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Processes {
    /// Starts nats-server, then the engine (ready once it answers `game.lobby.snap`), then the
    /// gateway (ready once `/readyz` says so).
    pub async fn start(options: &StackOptions) -> anyhow::Result<Processes> {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir()?;
        let (signing, verify) = test_support::write_test_keys(dir.path());
        let engine_admin: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()?).into();
        let mut engine = Service::spawn(
            "game-engine",
            &options.engine_bin,
            &[],
            &[
                ("PHASECAST_NATS__URL", nats.url()),
                ("PHASECAST_ENGINE__ADMIN_LISTEN", engine_admin.to_string()),
                ("PHASECAST_ENGINE__MIN_PHASE", options.min_phase.clone()),
                ("PHASECAST_ENGINE__SHUTDOWN_GRACE", "2s".into()),
                (
                    "PHASECAST_AUTH__SIGNING_KEY_FILE",
                    signing.display().to_string(),
                ),
            ],
            dir.path(),
        )?;
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(nats.url())
            .await
            .context("connecting the benchmark to nats-server")?;
        let subjects = Subjects::default();
        let began = Instant::now();
        loop {
            let probe = client
                .request(
                    subjects.lobby_snap(),
                    r#"{"viewer":null,"since":null}"#.into(),
                )
                .await;
            if probe.is_ok() {
                break;
            }
            engine.check_running()?;
            if began.elapsed() > Duration::from_secs(15) {
                bail!(
                    "the engine did not answer within 15 s; {}",
                    engine.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let gateway_addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()?).into();
        let gateway_admin: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()?).into();
        let mut env = vec![
            ("PHASECAST_NATS__URL", nats.url()),
            ("PHASECAST_GATEWAY__LISTEN", gateway_addr.to_string()),
            ("PHASECAST_GATEWAY__ADMIN_LISTEN", gateway_admin.to_string()),
            (
                "PHASECAST_GATEWAY__MAX_CONNECTIONS",
                options.max_connections.to_string(),
            ),
            ("PHASECAST_GATEWAY__SHUTDOWN_GRACE", "2s".into()),
            (
                "PHASECAST_AUTH__VERIFY_KEY_FILE",
                verify.display().to_string(),
            ),
        ];
        if let Some(heartbeat) = &options.heartbeat {
            env.push(("PHASECAST_GATEWAY__HEARTBEAT", heartbeat.clone()));
        }
        let mut gateway = Service::spawn("gateway", &options.gateway_bin, &[], &env, dir.path())?;
        let began = Instant::now();
        while !ready(gateway_addr, "/readyz").await {
            gateway.check_running()?;
            if began.elapsed() > Duration::from_secs(15) {
                bail!(
                    "the gateway was not ready within 15 s; {}",
                    gateway.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Processes {
            nats,
            engine,
            gateway,
            gateway_addr,
            gateway_admin,
            engine_admin,
            client,
            subjects,
            dir,
        })
    }

    /// (name, pid) of nats-server, engine and gateway, for a [`CpuMeter`].
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("game-engine", self.engine.pid()),
            ("gateway", self.gateway.pid()),
            ("nats-server", self.nats.pid().unwrap_or(0)),
        ]
    }

    /// Stops the gateway, then the engine (nats-server stops on drop).
    pub async fn stop(mut self) {
        self.gateway.stop(Duration::from_secs(5)).await;
        self.engine.stop(Duration::from_secs(5)).await;
    }
}

/// `GET path` answered 200 (`/readyz`, `/healthz`).
pub async fn ready(addr: SocketAddr, path: &str) -> bool {
    get(addr, path).await.is_ok_and(|(status, _)| status == 200)
}

/// `GET path` on a fresh connection, within 5 s: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
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

/// The sum of every sample of metric `name` on the Prometheus page at `admin`.
pub async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let (status, page) = get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "GET /metrics on {admin}: HTTP {status}");
    Ok(page
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
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

/// CPU used by a set of processes from a starting point on, as a share of one core.
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
                .map(|&(name, pid)| (name, pid, cpu_seconds(pid)))
                .collect(),
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    /// (name, % of one core) for each process since the start.
    pub fn percents(&self) -> Vec<(&'static str, f64)> {
        let span = self.elapsed();
        self.start
            .iter()
            .map(|&(name, pid, cpu0)| (name, 100.0 * (cpu_seconds(pid) - cpu0) / span))
            .collect()
    }

    /// `CPU (% of one core): a 12.0, b 3.4`.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self
            .percents()
            .iter()
            .map(|(name, pct)| format!("{name} {pct:.1}"))
            .collect();
        format!("CPU (% of one core): {}", parts.join(", "))
    }
}
