//! A real three-node `nats-server` cluster on loopback, for tests that kill servers.
//!
//! Each node has its own client, route and monitoring port (chosen free up front, so that a
//! restarted node comes back where clients and the other nodes look for it), its own
//! JetStream store directory and a `server_name` (`n0`, `n1`, `n2`). A node can be killed
//! (`kill -9`) and restarted on the same store. The monitoring endpoint (`/jsz`, `/routez`,
//! `/healthz`) tells which node is the JetStream meta leader, which leads a stream, and
//! whether a node has caught up.
//!
//! Every wait here is a condition polled every 20 ms under a deadline, never a bare sleep.
//! The calls block: from an async test, run them in `tokio::task::block_in_place` (a
//! multi-thread runtime) or `spawn_blocking`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{nats_server_binary, JETSTREAM_FILE_BUDGET, JETSTREAM_MEMORY_BUDGET};

/// How long a cluster may take to form, a node to start, a leader to be elected.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);
/// The cluster's name in every node's config.
pub const CLUSTER_NAME: &str = "phasecast-test";
/// The longest a node in lame-duck mode (SIGUSR2) takes to close its clients and exit: the
/// least nats-server 2.9.10 accepts (its default is two minutes).
pub const LAME_DUCK: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// One node: its ports, config and process.
struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster, every node killed when dropped and every store deleted.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts a three-node cluster and waits until it has formed: every node routes to
    /// every other, and all agree on a JetStream meta leader.
    pub fn start() -> Self {
        Self::start_nodes(3)
    }

    /// As [`NatsCluster::start`], with room on each node for `bytes` of JetStream data:
    /// benchmarks with thousands of rooms need more than tests do.
    pub fn start_with_file_budget(bytes: u64) -> Self {
        Self::start_sized(3, bytes)
    }

    /// Starts an `n`-node cluster (at least 2) and waits until it has formed.
    pub fn start_nodes(n: usize) -> Self {
        Self::start_sized(n, JETSTREAM_FILE_BUDGET)
    }

    fn start_sized(n: usize, file_budget: u64) -> Self {
        assert!(n >= 2, "a cluster has at least two nodes");
        // A port found free can be taken before its node binds it; then start again with
        // other ports.
        for _ in 0..4 {
            if let Some(cluster) = Self::try_start(n, file_budget) {
                return cluster;
            }
        }
        panic!("a nats-server cluster did not start with four sets of ports");
    }

    fn try_start(n: usize, file_budget: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        // All ports are chosen before any node starts: each node's routes name the others.
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, &(client_port, route_port, http_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let others: Vec<&String> = (routes.iter().enumerate())
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r)
                .collect();
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client_port}\n\
                     http: 127.0.0.1:{http_port}\n\
                     lame_duck_duration: \"{lame_duck}s\"\n\
                     lame_duck_grace_period: \"1s\"\n\
                     jetstream {{\n  store_dir: {store:?}\n  max_file_store: {file}\n  max_memory_store: {memory}\n}}\n\
                     cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route_port}\n  routes: [{routes}]\n}}\n",
                    store = store_dir(dir.path(), &name),
                    file = file_budget,
                    lame_duck = LAME_DUCK.as_secs(),
                    memory = JETSTREAM_MEMORY_BUDGET,
                    routes = others
                        .iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            )
            .expect("write node config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                route_port,
                http_port,
                config,
                child: None,
            });
        }
        let mut cluster = NatsCluster { nodes, dir };
        for i in 0..n {
            if !cluster.spawn(i) {
                return None;
            }
        }
        cluster.wait_formed();
        Some(cluster)
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's client URL, comma-separated (a seed list for clients that take one).
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s `server_name` (what a client's `server_info().server_name` says).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with this `server_name`, or of the node listening on this
    /// client port (`server_info().port`).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    pub fn index_of_port(&self, client_port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.client_port == client_port)
    }

    /// Node `i`'s monitoring address.
    pub fn monitor(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].http_port))
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Node indices that run now.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Kills node `i` with SIGKILL (no lame-duck mode, no flush) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again, on the same ports and store, and waits until it has rejoined:
    /// routes to every running node, and it knows the meta leader.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        assert!(self.spawn(i), "{} did not start again", self.nodes[i].name);
        self.wait_formed();
    }

    /// What node `i` logged, across its restarts.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Where the nodes' configs, logs and stores are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Where node `i` keeps its JetStream data (to measure what it takes on disk).
    pub fn store_dir(&self, i: usize) -> PathBuf {
        store_dir(self.dir.path(), &self.nodes[i].name)
    }

    /// `GET /<path>` on node `i`'s monitoring port as JSON; `None` if the node does not
    /// answer or does not answer with JSON.
    pub fn monitoring(&self, i: usize, path: &str) -> Option<Value> {
        if !self.is_running(i) {
            return None;
        }
        let body = http_get(self.monitor(i), path)?;
        serde_json::from_str(&body).ok()
    }

    /// The JetStream meta leader, as the leader itself says: the index of the running node
    /// whose `/jsz` names itself as leader. `None` while none does (an election).
    pub fn meta_leader(&self) -> Option<usize> {
        self.running().into_iter().find(|&i| {
            self.monitoring(i, "jsz")
                .is_some_and(|j| j["meta_cluster"]["leader"] == self.nodes[i].name.as_str())
        })
    }

    /// Waits (up to [`CLUSTER_WAIT`]) for a meta leader, and one that every running node
    /// agrees on.
    pub fn wait_meta_leader(&self) -> usize {
        self.wait("a JetStream meta leader every node agrees on", || {
            let leader = self.meta_leader()?;
            let name = self.nodes[leader].name.as_str();
            self.running()
                .into_iter()
                .all(|i| {
                    self.monitoring(i, "jsz")
                        .is_some_and(|j| j["meta_cluster"]["leader"] == name)
                })
                .then_some(leader)
        })
    }

    /// The leader of a stream (of the global account), as the leader itself says; `None`
    /// while none does.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.running().into_iter().find(|&i| {
            self.stream_detail(i, stream)
                .is_some_and(|s| s["cluster"]["leader"] == self.nodes[i].name.as_str())
        })
    }

    /// Waits (up to [`CLUSTER_WAIT`]) for the stream to have a leader.
    pub fn wait_stream_leader(&self, stream: &str) -> usize {
        self.wait(&format!("a leader for the stream {stream}"), || {
            self.stream_leader(stream)
        })
    }

    /// Node `i`'s view of a stream: `/jsz?accounts=true&streams=true`'s entry for it (with
    /// `state` {messages, last_seq, ...} and `cluster` {leader, replicas}).
    pub fn stream_detail(&self, i: usize, stream: &str) -> Option<Value> {
        let jsz = self.monitoring(i, "jsz?accounts=true&streams=true")?;
        let accounts = jsz["account_details"].as_array()?;
        accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == stream)
            .cloned()
    }

    /// True once node `i` holds the stream with the same last sequence and message count
    /// as its leader, and the leader counts it current.
    pub fn caught_up(&self, i: usize, stream: &str) -> bool {
        let Some(leader) = self.stream_leader(stream) else {
            return false;
        };
        let (Some(on_leader), Some(here)) = (
            self.stream_detail(leader, stream),
            self.stream_detail(i, stream),
        ) else {
            return false;
        };
        let same = on_leader["state"]["last_seq"] == here["state"]["last_seq"]
            && on_leader["state"]["messages"] == here["state"]["messages"];
        let current = leader == i
            || on_leader["cluster"]["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["name"] == self.nodes[i].name.as_str() && r["current"] == true);
        same && current
    }

    /// Polls `probe` every 20 ms until it gives a value; panics after [`CLUSTER_WAIT`],
    /// naming `what`.
    pub fn wait<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; node logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until every running node routes to every other running node and all agree on
    /// a meta leader, and every running node says it is healthy (`/healthz`: JetStream
    /// current).
    pub fn wait_formed(&self) {
        let running = self.running();
        self.wait("every running node to route to every other", || {
            running
                .iter()
                .all(|&i| {
                    self.monitoring(i, "routez")
                        .and_then(|r| r["num_routes"].as_u64())
                        .is_some_and(|n| n as usize >= running.len() - 1)
                })
                .then_some(())
        });
        if running.len() * 2 > self.len() {
            self.wait_meta_leader();
            self.wait("every running node to be healthy", || {
                running
                    .iter()
                    .all(|&i| {
                        self.monitoring(i, "healthz")
                            .is_some_and(|h| h["status"] == "ok")
                    })
                    .then_some(())
            });
        }
    }

    /// Starts node `i` and waits until it accepts clients; false if it exited instead (a
    /// port taken).
    fn spawn(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        node.child = Some(child);
        // Up once it listens for clients, routes and monitoring (the last two come after
        // the first, and a taken port stops it there).
        let ports = [node.client_port, node.route_port, node.http_port];
        let name = node.name.clone();
        let deadline = Instant::now() + CLUSTER_WAIT;
        let started = loop {
            let child = self.nodes[i].child.as_mut().expect("spawned");
            if !matches!(child.try_wait(), Ok(None)) {
                break false;
            }
            if ports.iter().all(|&port| {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            }) {
                break true;
            }
            assert!(Instant::now() < deadline, "{name} did not accept clients");
            std::thread::sleep(POLL);
        };
        if !started {
            self.nodes[i].child = None;
        }
        started
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- nats-server {} (last lines)", node.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A port nothing listens on now (bound, then released), drawn from 20000–31999: below
/// Linux's ephemeral range (32768 and up), so that no outgoing connection (a route being
/// dialled, say) is given it before its node binds it.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u64(Instant::now().elapsed().as_nanos() as u64);
        let port = 20000 + (random.finish() % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A minimal HTTP/1.1 GET: the body of a 200 response, `None` otherwise.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(dechunk(body));
    }
    Some(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The JetStream store of the node called `name`, in the cluster's directory.
fn store_dir(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-js"))
}
