//! The NATS a benchmark runs on, chosen with `--nats`: one nats-server, where the engine
//! keeps one copy of everything (R1), or a three-node cluster, where it keeps three (R3). So
//! that every benchmark of the engine reads the same on both, side by side.
//!
//! Every node shares this machine's cores: a cluster's figures are its cost in CPU and round
//! trips, not what three machines would do.

use std::path::{Path, PathBuf};

use test_support::{NatsCluster, NatsServer};

/// Room on disk, per server, for every benchmark's rooms: 100,000 rooms take about 600 MiB
/// of JetStream, where a test's default budget is 256 MiB.
pub const FILE_BUDGET: u64 = 4 << 30;

/// What `--nats` chooses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// One nats-server: one copy of everything (R1).
    #[default]
    Single,
    /// Three nats-servers in a cluster: three copies (R3).
    Cluster,
}

/// The running servers; stopped (and their stores deleted) when dropped.
pub enum Servers {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Servers {
    /// Starts `topology` with room for `file_budget` bytes of JetStream data on each server,
    /// and returns once every server serves (a cluster: once it has formed).
    pub async fn start(topology: Topology, file_budget: u64) -> anyhow::Result<Servers> {
        Ok(tokio::task::spawn_blocking(move || match topology {
            Topology::Single => Servers::Single(NatsServer::start_with_file_budget(file_budget)),
            Topology::Cluster => Servers::Cluster(NatsCluster::start_with_file_budget(file_budget)),
        })
        .await?)
    }

    /// The URL of server `i`, counted round the servers there are: on one server every `i`
    /// is that server, so code that spreads connections over nodes runs on both.
    pub fn url(&self, i: usize) -> String {
        match self {
            Servers::Single(server) => server.url(),
            Servers::Cluster(cluster) => cluster.url(i % cluster.len()),
        }
    }

    /// Each server's name and pid, for a [`crate::rig::CpuMeter`].
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        match self {
            Servers::Single(server) => vec![("nats-server", server.pid().unwrap_or(0))],
            Servers::Cluster(cluster) => ["nats n0", "nats n1", "nats n2"]
                .into_iter()
                .enumerate()
                .take(cluster.len())
                .map(|(i, name)| (name, cluster.pid(i).unwrap_or(0)))
                .collect(),
        }
    }

    /// The JetStream store of each server (a cluster's nodes each hold every copy they keep).
    fn store_dirs(&self) -> Vec<PathBuf> {
        match self {
            Servers::Single(server) => vec![server.store_dir()],
            Servers::Cluster(cluster) => (0..cluster.len()).map(|i| cluster.store_dir(i)).collect(),
        }
    }

    /// Bytes of JetStream data on disk, every server's together.
    pub fn store_bytes(&self) -> u64 {
        self.store_dirs().iter().map(|dir| dir_bytes(dir)).sum()
    }

    /// Resident memory of every server together, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .map(|(_, pid)| crate::rig::rss_kib(*pid))
            .sum()
    }
}

/// Bytes in the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

impl std::fmt::Display for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Servers::Single(_) => f.write_str("one nats-server (R1)"),
            Servers::Cluster(_) => f.write_str("three-node NATS cluster (R3)"),
        }
    }
}
