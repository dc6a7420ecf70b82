//! Gateways on a real nats-server, reached over real HTTP; a stand-in engine for streams the
//! tests drive event by event, and the real engine binary for the command bridge.

#![allow(dead_code)] // each test binary uses a different part of this

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use gateway::{Config, Gateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::Claims;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{PlayerId, RoomCode, Subjects};
use serde_json::{json, Value};
use test_support::NatsServer;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How long any single network wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Keys {
    pub dir: tempfile::TempDir,
    pub signing: PathBuf,
    pub verify: PathBuf,
}

impl Keys {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (signing, verify) = test_support::write_test_keys(dir.path());
        Keys {
            dir,
            signing,
            verify,
        }
    }
}

/// Polls `check` every 10 ms until it holds, failing after [`WAIT`].
pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    timeout(WAIT, async {
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"));
}

/// A token as the engine would sign it, valid for `ttl_secs` (negative: already expired).
pub fn token(room: &RoomCode, player: &PlayerId, ttl_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: player.clone(),
        room: room.clone(),
        name: "tester".into(),
        iat: now,
        exp: (now as i64 + ttl_secs) as u64,
    };
    let key = EncodingKey::from_ed_pem(test_support::TEST_SIGNING_KEY_PEM.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    pub async fn start(nats_url: &str, keys: &Keys, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default();
        config.nats.url = nats_url.to_owned();
        config.gateway.listen = "127.0.0.1:0".parse().unwrap();
        config.gateway.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.gateway.heartbeat = Duration::from_millis(500);
        config.auth.verify_key_file = Some(keys.verify.clone());
        tweak(&mut config);
        let gateway = Gateway::build(config).await.expect("gateway builds");
        let (addr, admin) = (gateway.addr(), gateway.admin_addr());
        let stop = CancellationToken::new();
        let task = tokio::spawn(gateway.run_until(stop.clone().cancelled_owned()));
        let gw = TestGateway {
            addr,
            admin,
            stop,
            task: Some(task),
        };
        gw.wait_ready().await;
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn wait_ready(&self) {
        let url = self.url("/readyz");
        poll_until("gateway ready", || ready(&url)).await;
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        let scrape = async { reqwest::get(url).await?.text().await };
        timeout(WAIT, scrape)
            .await
            .expect("scrape in time")
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        let task = self.task.take().unwrap();
        timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    }
}

/// Whether `url` answers 200.
pub async fn ready(url: &str) -> bool {
    let asked = timeout(WAIT, reqwest::get(url)).await;
    matches!(asked, Ok(Ok(r)) if r.status() == 200)
}

/// Whether `url` answers 503.
pub async fn refused(url: &str) -> bool {
    let asked = timeout(WAIT, reqwest::get(url)).await;
    matches!(asked, Ok(Ok(r)) if r.status() == 503)
}

/// The value of a metric line `name` (exact series, labels included) in a scrape.
pub fn metric(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics"))
}

/// One SSE event as a client parsed it off the socket.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// An open SSE response, parsed frame by frame.
pub struct Sse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<Bytes>>>,
    /// The JSON body of a refused request.
    error: Value,
    buf: String,
    pub retry: Option<u64>,
    pub pings: usize,
}

impl Sse {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = timeout(WAIT, req.send())
            .await
            .expect("response in time")
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (body, error) = if status == 200 {
            (Some(resp.bytes_stream().boxed()), Value::Null)
        } else {
            let raw = timeout(WAIT, resp.bytes()).await.unwrap().unwrap();
            let error = serde_json::from_slice(&raw).unwrap_or_else(|e| {
                panic!(
                    "{url}: a {status} whose body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
            (None, error)
        };
        Sse {
            status,
            headers,
            body,
            error,
            buf: String::new(),
            retry: None,
            pings: 0,
        }
    }

    /// The body of a refused request.
    pub async fn error_body(self) -> Value {
        self.error
    }

    /// The next event, or `None` when the server ended the stream.
    /// The next event, within [`WAIT`] (heartbeats do not count: a stream that only pings
    /// has sent nothing).
    pub async fn next(&mut self) -> Option<SseEvent> {
        assert_eq!(self.status, 200, "not a stream: {}", self.error);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.pings += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = Some(v.parse().unwrap());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.as_mut()?.next())
                .await
                .expect("an event in time");
            match chunk {
                Some(Ok(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                _ => return None,
            }
        }
    }

    /// Reads until an event named `name`.
    pub async fn until(&mut self, name: &str) -> SseEvent {
        loop {
            let ev = self.next().await.expect("stream open");
            if ev.event == name {
                return ev;
            }
        }
    }

    /// Reads until the stream has sent `n` heartbeat comments.
    pub async fn until_pings(&mut self, n: usize) {
        while self.pings < n {
            let chunk = timeout(WAIT, self.body.as_mut().unwrap().next())
                .await
                .expect("heartbeat in time")
                .expect("stream open")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                self.pings += block.lines().filter(|l| l.starts_with(':')).count();
            }
        }
    }
}

/// A stand-in for the engine's stream side: it publishes numbered events on one subject and
/// answers snapshot requests from the same task, so a snapshot's id is always the id of the
/// last event published before it, exactly as the engine does.
pub struct FakeStream {
    pub published: Arc<Mutex<u64>>,
    /// Every snapshot request received, in order.
    pub snap_requests: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
    publish: tokio::sync::mpsc::UnboundedSender<Publish>,
}

pub enum Publish {
    /// `n` public events of `size` bytes of data each.
    Public {
        n: u64,
        size: usize,
    },
    /// One event for one player only.
    Private(PlayerId),
    /// One public event with this name.
    Named(&'static str),
    /// `n` events alternating public and private to this player, as fast as possible.
    Interleaved {
        n: u64,
        player: PlayerId,
    },
    /// A message without `Sse-Id`.
    Malformed,
    /// Answer snapshot requests only at [`Publish::ReleaseSnaps`] (each as of when it came):
    /// a slow engine.
    HoldSnaps,
    ReleaseSnaps,
}

impl FakeStream {
    /// Serves `events` (a public subject) and `snap`; `history` decides whether `since`
    /// requests are answered with the missed events or with a snapshot.
    pub async fn start(setup: &Setup, room: Option<RoomCode>, history: bool) -> Self {
        let (client, subjects, nats_url) = (
            setup.client.clone(),
            setup.subjects.clone(),
            setup.nats.url(),
        );
        let (publish, mut orders) = tokio::sync::mpsc::unbounded_channel::<Publish>();
        let (events, snap) = match &room {
            Some(code) => (subjects.room_events(code), subjects.room_snap(code)),
            None => (subjects.lobby_events(), subjects.lobby_snap()),
        };
        let snap_subject = snap.clone();
        let mut snaps = client.subscribe(snap).await.unwrap();
        test_support::server_has_read(&client).await;
        let published = Arc::new(Mutex::new(0u64));
        let seq = published.clone();
        let snap_requests = Arc::new(Mutex::new(Vec::new()));
        let requests = snap_requests.clone();
        let task = tokio::spawn(async move {
            // (id, subject, data) of every event, for `since`.
            let mut log: Vec<(u64, String, String)> = Vec::new();
            // Requests held back, each with the reply it would have had when it came.
            let mut held: Option<Vec<(async_nats::Subject, String)>> = None;
            loop {
                tokio::select! {
                    Some(order) = orders.recv() => {
                        let batch: Vec<(String, String)> = match order {
                            Publish::HoldSnaps => {
                                held.get_or_insert_with(Vec::new);
                                continue;
                            }
                            Publish::ReleaseSnaps => {
                                for (reply, body) in held.take().unwrap_or_default() {
                                    let _ = client.publish(reply, body.into()).await;
                                }
                                continue;
                            }
                            Publish::Public { n, size } => (0..n)
                                .map(|_| (events.clone(), format!("{{\"pad\":\"{}\"}}", "x".repeat(size))))
                                .collect(),
                            Publish::Interleaved { n, player } => {
                                let code = room.as_ref().expect("private events need a room");
                                (0..n)
                                    .map(|i| match i % 2 {
                                        0 => (events.clone(), "{}".to_owned()),
                                        _ => (subjects.player_events(code, &player), "{}".to_owned()),
                                    })
                                    .collect()
                            }
                            Publish::Named(name) => vec![(events.clone(), format!("{{\"name\":\"{name}\"}}"))],
                            Publish::Private(player) => {
                                let code = room.as_ref().expect("private events need a room");
                                vec![(subjects.player_events(code, &player), format!("{{\"for\":\"{player}\"}}"))]
                            }
                            Publish::Malformed => {
                                client.publish(events.clone(), "{}".into()).await.unwrap();
                                continue;
                            }
                        };
                        for (subject, data) in batch {
                            let id = {
                                let mut seq = seq.lock().unwrap();
                                *seq += 1;
                                *seq
                            };
                            let mut headers = HeaderMap::new();
                            headers.insert(SSE_ID, id.to_string().as_str());
                            let name = serde_json::from_str::<Value>(&data).ok()
                                .and_then(|d| d["name"].as_str().map(str::to_owned))
                                .unwrap_or_else(|| "tick".to_owned());
                            headers.insert(SSE_EVENT, name.as_str());
                            // Like an engine cut off from NATS: the event is in the history, but
                            // nobody receives it live; only a resync can recover it.
                            if client.connection_state() == async_nats::connection::State::Connected {
                                let _ = client.publish_with_headers(subject.clone(), headers, data.clone().into()).await;
                            }
                            log.push((id, subject, data));
                        }
                    }
                    Some(msg) = snaps.next() => {
                        let req: Value = serde_json::from_slice(&msg.payload).unwrap();
                        requests.lock().unwrap().push(req.clone());
                        let current = *seq.lock().unwrap();
                        let viewer = req["viewer"].as_str().map(str::to_owned);
                        let visible = |subject: &str| match subject.rsplit_once(".evt.") {
                            Some((_, player)) => viewer.as_deref() == Some(player),
                            None => true,
                        };
                        let events: Vec<Value> = match req["since"].as_u64() {
                            // Like the engine: an id it never issued gets a snapshot.
                            Some(since) if history && since <= current => log
                                .iter()
                                .filter(|(id, subject, _)| *id > since && visible(subject))
                                .map(|(id, _, data)| json!({"id": id, "event": "tick", "data": serde_json::from_str::<Value>(data).unwrap()}))
                                .collect(),
                            _ => vec![json!({"id": current, "event": "snapshot", "data": {"at": current}})],
                        };
                        let body = json!({"ok": true, "events": events}).to_string();
                        match (msg.reply, &mut held) {
                            (Some(reply), Some(held)) => held.push((reply, body)),
                            (Some(reply), None) => {
                                let _ = client.publish(reply, body.into()).await;
                            }
                            (None, _) => {}
                        }
                    }
                    else => break,
                }
            }
        });
        // A SUB from one connection may reach the server after a request from another; only an
        // answer to a second connection proves the server routes the snapshot subject to us.
        let probe = async_nats::connect(nats_url).await.unwrap();
        poll_until("the stand-in answers", || async {
            probe
                .request(snap_subject.clone(), "{}".into())
                .await
                .is_ok()
        })
        .await;
        FakeStream {
            published,
            snap_requests,
            task,
            publish,
        }
    }

    pub fn send(&self, order: Publish) {
        self.publish.send(order).unwrap();
    }

    pub fn published(&self) -> u64 {
        *self.published.lock().unwrap()
    }

    /// The snapshot requests received so far that asked for events after an id.
    pub fn catch_up_requests(&self) -> Vec<Value> {
        let requests = self.snap_requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r["since"].is_u64())
            .cloned()
            .collect()
    }
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The real engine binary, on a real NATS.
pub struct EngineProcess {
    child: Child,
}

impl EngineProcess {
    pub fn start(nats_url: &str, keys: &Keys, env: &[(&str, &str)]) -> Self {
        // Another package's binary, so no CARGO_BIN_EXE_: it sits in the folder above this
        // test's own (<target>/<profile>/deps/<test>-<hash>), wherever CARGO_TARGET_DIR put it.
        let bin = std::env::var_os("PHASECAST_ENGINE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let test = std::env::current_exe().unwrap();
                let profile = test.parent().and_then(|deps| deps.parent()).unwrap();
                profile.join(format!("game-engine{}", std::env::consts::EXE_SUFFIX))
            });
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p game-engine` first (deploy/test does)",
            bin.display()
        );
        let child = Command::new(bin)
            .env("PHASECAST_NATS__URL", nats_url)
            .env("PHASECAST_ENGINE__ADMIN_LISTEN", "127.0.0.1:0")
            .env("PHASECAST_AUTH__SIGNING_KEY_FILE", &keys.signing)
            // The tests play games with millisecond phases.
            .env("PHASECAST_ENGINE__MIN_PHASE", "0ms")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        EngineProcess { child }
    }

    /// Waits until the engine answers on NATS.
    pub async fn ready(&self, client: &Client) {
        let subject = Subjects::default().lobby_snap();
        poll_until("engine answers", || async {
            client.request(subject.clone(), "{}".into()).await.is_ok()
        })
        .await;
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NATS, keys, one gateway and a client for the test's own publishing.
pub struct Setup {
    pub nats: NatsServer,
    pub keys: Keys,
    pub gateway: TestGateway,
    pub client: Client,
    pub subjects: Subjects,
}

impl Setup {
    pub async fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        let nats = NatsServer::start();
        let keys = Keys::new();
        let gateway = TestGateway::start(&nats.url(), &keys, tweak).await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        Setup {
            nats,
            keys,
            gateway,
            client,
            subjects: Subjects::default(),
        }
    }
}

/// A port nothing listens on right now (for processes that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real gateway binary, for what only a process shows: signals and exit codes.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl GatewayProcess {
    pub async fn start(nats_url: &str, keys: &Keys, env: &[(&str, &str)]) -> Self {
        Self::start_logging(nats_url, keys, env, None).await
    }

    /// As [`GatewayProcess::start`], with everything the process writes going to `log`.
    pub async fn start_logging(
        nats_url: &str,
        keys: &Keys,
        env: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> Self {
        let (out, err) = match log {
            Some(file) => (file.try_clone().unwrap().into(), file.into()),
            None => (Stdio::null(), Stdio::null()),
        };
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env("PHASECAST_NATS__URL", nats_url)
            .env("PHASECAST_GATEWAY__LISTEN", addr.to_string())
            .env("PHASECAST_GATEWAY__ADMIN_LISTEN", admin.to_string())
            .env("PHASECAST_AUTH__VERIFY_KEY_FILE", &keys.verify)
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let gw = GatewayProcess { child, addr, admin };
        let url = format!("http://{addr}/readyz");
        poll_until("gateway process ready", || ready(&url)).await;
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM, as systemd or Ctrl-C would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Open SSE connections, from this process's own metrics.
    pub async fn connections(&self, stream: &str) -> f64 {
        let url = format!("http://{}/metrics", self.admin);
        let scrape = async { reqwest::get(url).await?.text().await };
        let scrape = timeout(WAIT, scrape)
            .await
            .expect("scrape in time")
            .unwrap();
        metric(
            &scrape,
            &format!("phasecast_gateway_connections{{stream=\"{stream}\"}}"),
        )
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
