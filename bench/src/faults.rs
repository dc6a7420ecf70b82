//! Faults a benchmark injects into processes: `kill -9`, SIGSTOP, SIGTERM, lame-duck mode,
//! held for a while and undone; and the same for a node of a NATS cluster, which the
//! cluster itself restarts.
//! Shared by the chaos soak and the acknowledged-writes probe, so both fault nodes alike.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use test_support::NatsCluster;
use tokio::time::sleep;

/// What is done to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fault {
    /// `kill -9`, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// SIGTERM (a graceful stop), then a restart.
    Term,
    /// A NATS node's lame-duck stop (SIGUSR2: it hands its stream leaderships over, closes
    /// its clients within [`test_support::LAME_DUCK`] and exits), then a restart. Drawn only
    /// when asked for; see [`Fault::for_process`].
    LameDuck,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::Kill, Fault::Pause, Fault::Term];

    /// The fault as an engine or a gateway gets it: they have one graceful stop, SIGTERM,
    /// which stands in for lame-duck mode (a NATS server's).
    pub fn for_process(self) -> Fault {
        match self {
            Fault::LameDuck => Fault::Term,
            other => other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Pause => "SIGSTOP",
            Fault::Term => "SIGTERM",
            Fault::LameDuck => "lame duck",
        }
    }
}

/// How often faults come and how long each is held: the options every fault driver takes.
#[derive(Clone, Debug, clap::Args)]
pub struct Pace {
    /// Seconds from one fault's start to the next (later if the last one took longer to
    /// recover from).
    #[arg(long, default_value_t = 5.0)]
    pub fault_every: f64,
    /// Shortest time a process stays down or paused, ms.
    #[arg(long, default_value_t = 500)]
    pub hold_min_ms: u64,
    /// Longest time a process stays down or paused, ms.
    #[arg(long, default_value_t = 3000)]
    pub hold_max_ms: u64,
    /// Which faults to draw from, comma-separated (to tell which of them does harm).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Fault::ALL)]
    pub faults: Vec<Fault>,
}

impl Pace {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.hold_min_ms <= self.hold_max_ms,
            "--hold-min-ms over --hold-max-ms"
        );
        anyhow::ensure!(self.fault_every > 0.0, "--fault-every must be positive");
        anyhow::ensure!(!self.faults.is_empty(), "--faults names none");
        Ok(())
    }

    pub fn every(&self) -> Duration {
        Duration::from_secs_f64(self.fault_every)
    }

    /// A fault drawn from those asked for, and its hold drawn between the shortest and the
    /// longest.
    pub fn draw(&self, rng: &mut impl rand::Rng) -> (Fault, Duration) {
        let fault = self.faults[rng.random_range(0..self.faults.len())];
        let hold = Duration::from_millis(rng.random_range(self.hold_min_ms..=self.hold_max_ms));
        (fault, hold)
    }
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<_> = self.faults.iter().map(|fault| fault.name()).collect();
        write!(
            f,
            "{} every {} s, held {}–{} ms",
            faults.join(" / "),
            self.fault_every,
            self.hold_min_ms,
            self.hold_max_ms
        )
    }
}

/// The cluster, shared between the fault driver and whoever reads it.
pub type SharedCluster = Arc<Mutex<NatsCluster>>;

/// Locks the cluster even if a panic poisoned it: a panic while holding it (a node that did
/// not come back) is reported by its task, and the cluster is still there to be stopped.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies `fault` to node `i`, holds it for `hold`, undoes it (restart on the same store, or
/// SIGCONT), and returns once the cluster has formed again.
pub async fn fault_node(
    cluster: &SharedCluster,
    i: usize,
    fault: Fault,
    hold: Duration,
) -> anyhow::Result<()> {
    let pid = lock(cluster)
        .pid(i)
        .ok_or_else(|| anyhow::anyhow!("node {i} is not running"))?;
    match fault {
        Fault::Kill => {
            let cluster = cluster.clone();
            blocking(move || lock(&cluster).kill(i)).await?;
        }
        Fault::Pause => signal_pid(pid, "STOP")?,
        Fault::Term => {
            signal_pid(pid, "TERM")?;
            exited(pid, Duration::from_secs(15)).await?;
        }
        Fault::LameDuck => {
            signal_pid(pid, "USR2")?;
            exited(pid, test_support::LAME_DUCK + Duration::from_secs(15)).await?;
        }
    }
    sleep(hold).await;
    let cluster = cluster.clone();
    if fault == Fault::Pause {
        signal_pid(pid, "CONT")?;
        blocking(move || lock(&cluster).wait_formed()).await
    } else {
        blocking(move || lock(&cluster).restart(i)).await
    }
}

/// Runs a blocking cluster call (they poll with sleeps under their own deadline, and panic
/// past it) off the runtime; a panic becomes an error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `kill -<signal> <pid>`.
pub fn signal_pid(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}

/// Waits (checking every 20 ms, up to `within`) until process `pid`, a child not yet
/// reaped, has exited: a zombie.
pub async fn exited(pid: u32, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z")) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pid {pid} still runs after {within:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Copies every node's log (across its restarts) into `dir` as `nats-<node>.log`, so that
/// they outlive the cluster's temporary folder.
pub fn keep_node_logs(cluster: &NatsCluster, dir: &std::path::Path) -> std::io::Result<()> {
    for i in 0..cluster.len() {
        std::fs::write(
            dir.join(format!("nats-{}.log", cluster.name(i))),
            cluster.log(i),
        )?;
    }
    Ok(())
}
