//! Helpers shared by the integration tests: a real `nats-server` per test and a fixed Ed25519
//! key pair for tokens.
//!
//! One server per test keeps tests independent and parallel-safe; it listens on a random port
//! (`-p -1`), is killed on drop, and its store directory is deleted with it. Tests that kill
//! servers use [`NatsCluster`]: three nodes, any of which can die; tests that lose a client's
//! last writes with its connection put a [`CutProxy`] between it and the server. Taps that
//! watch what other connections publish wait with [`server_has_read`] until the server has
//! their subscription.

mod cluster;
mod cut;
pub use cluster::{NatsCluster, CLUSTER_NAME, CLUSTER_WAIT, LAME_DUCK};
pub use cut::CutProxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Disk a test's JetStream may use: far more than any test writes, far less than a machine has.
pub(crate) const JETSTREAM_FILE_BUDGET: u64 = 256 << 20;
/// Memory a test's JetStream may use.
pub(crate) const JETSTREAM_MEMORY_BUDGET: u64 = 64 << 20;

/// A running `nats-server`, stopped when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` on a random port and waits until it accepts clients.
    pub fn start() -> Self {
        Self::start_with_file_budget(JETSTREAM_FILE_BUDGET)
    }

    /// As [`NatsServer::start`], with room on disk for `bytes` of JetStream data: benchmarks
    /// with tens of thousands of rooms need more than tests do.
    pub fn start_with_file_budget(bytes: u64) -> Self {
        let store = tempfile::tempdir().expect("temp dir for nats-server");
        // JetStream on, in the server's own store: the engine keeps rooms there, and a restart
        // on the same store is how tests prove they survive one. Its disk budget is small on
        // purpose, as on a CI machine with little free disk (by default nats-server takes 75%
        // of what is free): what the engine creates must fit, whatever the machine.
        let config = store.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "jetstream {{\n  store_dir: {:?}\n  max_file_store: {}\n  max_memory_store: {}\n}}\n",
                store.path().join("js"),
                bytes,
                JETSTREAM_MEMORY_BUDGET,
            ),
        )
        .expect("write nats.conf");
        let mut server = NatsServer {
            child: None,
            port: 0,
            args: vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                "-1".into(),
                "-c".into(),
                config.display().to_string(),
            ],
            store,
        };
        server.spawn();
        server
    }

    /// A `nats-server` without JetStream: what a backend that keeps no store may run on.
    pub fn start_without_jetstream() -> Self {
        let mut server = NatsServer {
            child: None,
            port: 0,
            args: ["-a", "127.0.0.1", "-p", "-1"].map(String::from).to_vec(),
            store: tempfile::tempdir().expect("temp dir for nats-server"),
        };
        server.spawn();
        server
    }

    /// Where the server keeps its JetStream data (to measure what it takes on disk).
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.store.path().join("js")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage), keeping its port for [`NatsServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let at = self.args.iter().position(|a| a == "-p").expect("-p") + 1;
        self.args[at] = port;
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut child = Command::new(nats_server_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        // The server logs "Listening for client connections on 127.0.0.1:<port>" once ready.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("Listening for client connections on") {
                    let port = line.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                    let _ = tx.send(port);
                    sent = true;
                }
            }
        });
        let port: u16 = rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .flatten()
            .expect("nats-server did not report its port within 10 s");
        self.port = port;
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn nats_server_binary() -> PathBuf {
    std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A fixed Ed25519 key pair, for tests only: PKCS#8 private and SPKI public, PEM.
pub const TEST_SIGNING_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIAHa3luhUekWt2BELCz+NY2gv0EHXhai6dzaK7P4ig7Q
-----END PRIVATE KEY-----
";
pub const TEST_VERIFY_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAqzCniSCWw70fnNfM8xzBdLCHjLJNWN1DWNjKC5G4z5s=
-----END PUBLIC KEY-----
";

/// Writes both test keys into `dir` and returns (signing key file, verify key file).
pub fn write_test_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let signing = dir.join("signing.pem");
    let verify = dir.join("verify.pem");
    std::fs::write(&signing, TEST_SIGNING_KEY_PEM).expect("write signing key");
    std::fs::write(&verify, TEST_VERIFY_KEY_PEM).expect("write verify key");
    (signing, verify)
}

impl NatsServer {
    /// The server's process id (for reading its CPU time in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A game of three (one mafia) whose every phase before the night is short and whose night
/// lasts `night_ms`: the setting of the tests that fault something at night.
pub fn three_to_night(title: &str, night_ms: u64) -> serde_json::Value {
    serde_json::json!({"title": title, "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": 50, "notice": 50, "day_per_player": 20000,
            "vote": 100, "vote_result": 50, "night_intro": 50, "night": night_ms,
            "ended": 60000}})
}

/// Returns once the server `client` is connected to has read everything it sent before, its
/// subscriptions included. `Client::flush` only empties async-nats's write buffer (0.51
/// sends no PING for it); a request nobody answers comes back, as "no responders", only
/// after the server has read what came before it on the connection. (On a cluster, the
/// other servers learn of the subscription over their routes a moment later.)
pub async fn server_has_read(client: &async_nats::Client) {
    let probe = tokio::time::timeout(
        Duration::from_secs(10),
        client.request("_phasecast_test.nobody", Default::default()),
    )
    .await
    .expect("the server answers a request with no responders in time");
    match probe {
        Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
        other => panic!("a request to nobody came back as {other:?}"),
    }
}

/// Polls (every 10 ms, up to 10 s) until something listens on `addr`; false if nothing does.
pub fn wait_until_listening(addr: std::net::SocketAddr) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs binary `bin` once per case, with `base` and then the case's environment, and asserts
/// that it exits non-zero naming the case's config key (figment names environment keys in
/// upper case, files in lower).
pub fn assert_bad_config_named(
    bin: &str,
    base: &[(&str, &str)],
    cases: &[(&[(&str, &str)], &str)],
) {
    for &(env, key) in cases {
        let out = Command::new(bin)
            .envs(base.iter().copied())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}: exited successfully");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.to_lowercase().contains(key),
            "{key} not named in: {stderr}"
        );
    }
}
