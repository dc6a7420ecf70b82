//! A running engine on a real nats-server, and clients that talk to it the way a backend or
//! the gateway would: requests for commands, a subscription per watcher.

#![allow(dead_code)] // each test binary uses a different part of this

use std::time::Duration;

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use game_engine::{Config, Engine};
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{PlayerId, RoomCode, StoreNames, Subjects};
use serde_json::{json, Value};
use test_support::NatsServer;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

pub mod tap;

/// How long any single network wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Sends every body as a request to `subject` at once, without waiting for answers; the
/// answers come on the subscription returned, each to `<inbox>.<n>` for the `n`th body (so
/// a test can tell them apart, and see a second answer to one request).
pub async fn send_requests(
    client: &Client,
    subject: String,
    bodies: impl IntoIterator<Item = Value>,
) -> Subscriber {
    let inbox = client.new_inbox();
    let replies = client.subscribe(format!("{inbox}.*")).await.unwrap();
    for (n, body) in bodies.into_iter().enumerate() {
        let to = format!("{inbox}.{n}");
        (client)
            .publish_with_reply(subject.clone(), to, body.to_string().into())
            .await
            .unwrap();
    }
    replies
}

pub struct Harness {
    pub nats: NatsServer,
    pub client: Client,
    pub subjects: Subjects,
    pub names: StoreNames,
    pub admin: std::net::SocketAddr,
    stop: CancellationToken,
    engine: Option<JoinHandle<anyhow::Result<()>>>,
    _keys: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let nats = NatsServer::start();
        let keys = tempfile::tempdir().unwrap();
        let (signing, _) = test_support::write_test_keys(keys.path());
        let mut config = Config::default();
        config.nats.url = nats.url();
        config.engine.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.auth.signing_key_file = Some(signing);
        // The tests play whole games with millisecond phases.
        config.engine.min_phase = Duration::ZERO;
        tweak(&mut config);
        let names = StoreNames::new(&config.subject_prefix);
        let engines_bucket = names.engines_bucket();
        let engine = Engine::build(config).await.expect("engine builds");
        let admin = engine.admin_addr();
        // The engine subscribes its subjects as it starts running, then writes its first
        // heartbeat on the same connection: once the heartbeat is in the bucket (which
        // `build` made), every subscription is in place and a request finds a responder.
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut beats = (async_nats::jetstream::new(client.clone()))
            .get_key_value(engines_bucket)
            .await
            .expect("the engines bucket")
            .watch_with_history(engine.id())
            .await
            .expect("a watch on the engine's heartbeat");
        let stop = CancellationToken::new();
        let engine = tokio::spawn(engine.run_until(stop.clone().cancelled_owned()));
        timeout(WAIT, beats.next())
            .await
            .expect("the engine's first heartbeat in time")
            .expect("the watch open")
            .expect("a heartbeat");
        Harness {
            nats,
            client,
            subjects: Subjects::default(),
            names,
            admin,
            stop,
            engine: Some(engine),
            _keys: keys,
        }
    }

    /// Stops the engine as SIGTERM would and waits for it. The NATS server keeps running
    /// until the harness is dropped, so what the engine published last can still arrive.
    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        let engine = self.engine.take().unwrap();
        timeout(WAIT, engine).await.unwrap().unwrap().unwrap();
    }

    pub async fn request(&self, subject: String, body: Vec<u8>) -> Value {
        let msg = timeout(WAIT, self.client.request(subject, body.into()))
            .await
            .expect("reply in time")
            .expect("a responder");
        serde_json::from_slice(&msg.payload).expect("replies are JSON")
    }

    pub async fn create(&self, settings: Value) -> Value {
        self.request(
            self.subjects.lobby_create(),
            settings.to_string().into_bytes(),
        )
        .await
    }

    /// Creates a room and returns its code, panicking on refusal.
    pub async fn room(&self, settings: Value) -> RoomCode {
        let reply = self.create(settings).await;
        assert_eq!(reply["ok"], true, "create refused: {reply}");
        RoomCode::parse(reply["code"].as_str().unwrap()).unwrap()
    }

    pub async fn cmd(&self, code: &RoomCode, body: Value) -> Value {
        self.request(self.subjects.room_cmd(code), body.to_string().into_bytes())
            .await
    }

    /// Sends a command and asserts it was accepted.
    pub async fn ok(&self, code: &RoomCode, body: Value) -> Value {
        let reply = self.cmd(code, body.clone()).await;
        assert_eq!(reply["ok"], true, "{body} refused: {reply}");
        reply
    }

    /// Sends a command and returns its error code, asserting it was refused.
    /// Sends `body` and asserts it is refused with `error` and a message.
    pub async fn refuses(&self, code: &RoomCode, body: Value, error: &str) {
        let reply = self.cmd(code, body.clone()).await;
        assert_eq!(reply["ok"], false, "{body} was accepted: {reply}");
        assert!(reply["message"].is_string(), "{reply}");
        assert_eq!(reply["error"], error, "{body}");
    }

    pub async fn join(&self, code: &RoomCode, name: &str) -> PlayerId {
        let reply = self.ok(code, json!({"type": "join", "name": name})).await;
        PlayerId::parse(reply["player_id"].as_str().unwrap()).unwrap()
    }

    pub async fn snap(
        &self,
        code: &RoomCode,
        viewer: Option<&PlayerId>,
        since: Option<u64>,
    ) -> Value {
        let body = json!({"viewer": viewer, "since": since}).to_string();
        self.request(self.subjects.room_snap(code), body.into_bytes())
            .await
    }

    pub async fn lobby_snap(&self, since: Option<u64>) -> Value {
        let body = json!({"viewer": null, "since": since}).to_string();
        self.request(self.subjects.lobby_snap(), body.into_bytes())
            .await
    }

    /// Watches a room as `viewer` sees it (public events plus their private ones), or only
    /// the public events.
    pub async fn watch(&self, code: &RoomCode, viewer: Option<&PlayerId>) -> Watcher {
        let sub = self
            .client
            .subscribe(self.subjects.room_wildcard(code))
            .await
            .unwrap();
        test_support::server_has_read(&self.client).await;
        Watcher {
            sub,
            accept: vec![
                self.subjects.room_events(code),
                viewer.map_or_else(String::new, |v| self.subjects.player_events(code, v)),
            ],
            seen: Vec::new(),
        }
    }

    pub async fn watch_lobby(&self) -> Watcher {
        let sub = self
            .client
            .subscribe(self.subjects.lobby_events())
            .await
            .unwrap();
        test_support::server_has_read(&self.client).await;
        Watcher {
            sub,
            accept: vec![self.subjects.lobby_events()],
            seen: Vec::new(),
        }
    }

    /// Returns once room `code`'s log in JetStream holds event `id` (read as it is stored,
    /// from an ordered consumer), within [`WAIT`].
    pub async fn wait_logged(&self, code: &RoomCode, id: u64) {
        use async_nats::jetstream::consumer;
        let log = (async_nats::jetstream::new(self.client.clone()))
            .get_stream(self.names.log_stream())
            .await
            .expect("the log stream");
        let reader = log
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.names.room_log(code),
                ..Default::default()
            })
            .await
            .expect("a reader of the room's log");
        let mut steps = reader.messages().await.expect("the room's log");
        timeout(WAIT, async {
            loop {
                let step = steps
                    .next()
                    .await
                    .expect("the log goes on")
                    .expect("a step");
                let step: Value = serde_json::from_slice(&step.payload).unwrap();
                let ids = step["events"].as_array().unwrap().iter();
                if ids
                    .filter_map(|e| e["id"].as_u64())
                    .any(|logged| logged >= id)
                {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("event {id} of room {code} in its log in time"));
    }

    /// `GET path` on the admin listener: the whole HTTP response, status line included.
    pub async fn admin_get(&self, path: &str) -> String {
        admin_get(self.admin, path).await
    }
}

/// `GET path` on an engine's admin listener (in this process or another): the whole HTTP
/// response, status line included.
pub async fn try_admin_get(admin: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// [`try_admin_get`] within [`WAIT`], or the test fails.
pub async fn admin_get(admin: std::net::SocketAddr, path: &str) -> String {
    timeout(WAIT, try_admin_get(admin, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {admin} in time"))
        .unwrap()
}

/// A metric's value in a `/metrics` text, its labelled series summed
/// (`steps_deferred_total` has a `why`); `None` if the text has no series of it.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = (text.lines())
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// One event as a watcher received it.
#[derive(Clone, Debug)]
pub struct Ev {
    pub id: u64,
    pub name: String,
    pub data: Value,
    pub subject: String,
}

pub struct Watcher {
    sub: Subscriber,
    accept: Vec<String>,
    pub seen: Vec<Ev>,
}

impl Watcher {
    /// The next event this viewer may see.
    pub async fn next(&mut self) -> Ev {
        loop {
            let msg = timeout(WAIT, self.sub.next())
                .await
                .expect("an event in time")
                .expect("subscription open");
            let subject = msg.subject.to_string();
            if !self.accept.contains(&subject) {
                continue;
            }
            let headers = msg.headers.expect("events carry headers");
            let ev = Ev {
                id: headers.get(SSE_ID).unwrap().as_str().parse().unwrap(),
                name: headers.get(SSE_EVENT).unwrap().as_str().to_owned(),
                data: serde_json::from_slice(&msg.payload).unwrap(),
                subject,
            };
            // A committed step may be published again (at least once on NATS: after a
            // takeover or a lost connection), always with the same bytes; a gateway drops it.
            if let Some(before) = self.seen.iter().rev().find(|e| e.id == ev.id) {
                assert_eq!(before.data, ev.data, "id {} with two payloads", ev.id);
                continue;
            }
            if let Some(last) = self.seen.last() {
                assert!(ev.id > last.id, "ids go up: {} after {}", ev.id, last.id);
            }
            self.seen.push(ev.clone());
            return ev;
        }
    }

    /// Waits for the next event named `name` for which `pred` holds.
    pub async fn until(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Ev {
        loop {
            let ev = self.next().await;
            if ev.name == name && pred(&ev.data) {
                return ev;
            }
        }
    }

    /// Waits for the `phase` event entering `phase`.
    pub async fn phase(&mut self, phase: &str) -> Ev {
        self.until("phase", |d| d["phase"] == phase).await
    }

    pub fn names(&self) -> Vec<&str> {
        self.seen.iter().map(|e| e.name.as_str()).collect()
    }
}

/// Room settings with the given roles and millisecond phases; `day_per_player` is long so the
/// day ends by votes, and the night is long enough to act in.
pub fn fast_room(total: u8, mafia: u8, doctor: u8, police: u8) -> Value {
    json!({
        "title": "test room", "total": total, "mafia": mafia, "doctor": doctor,
        "police": police, "private": false,
        "durations_ms": {"day_intro": 20, "notice": 20, "day_per_player": 10000, "vote": 100,
            "vote_result": 20, "night_intro": 20, "night": 400, "ended": 100}
    })
}

/// After a failed test, prints every `*.log` in `dir` (the logs of the processes it ran).
pub fn show_logs_if_panicking(dir: &std::path::Path) {
    if !std::thread::panicking() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            eprintln!("--- {}\n{log}", entry.path().display());
        }
    }
}
