//! Shared pieces of the benchmarks: an engine on a real nats-server (or cluster) with rooms
//! full of players, the wall clock events are stamped with, and the modules below.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use game_engine::{Config, Engine};
use proto::{PlayerId, RoomCode, Subjects};
use serde_json::{json, Value};
use servers::{Servers, Topology};
use tokio::sync::oneshot;

/// The engine binary's allocator, so that the engines these benchmarks run in-process are
/// measured as they run in production.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod bot;
pub mod browser;
pub mod faults;
pub mod fleet;
pub mod histogram;
pub mod http;
pub mod lobby;
pub mod report;
pub mod rig;
pub mod servers;
pub mod sse;

/// NATS (one server or a cluster) and an in-process engine on it (on the first server); the
/// engine stops when this is dropped.
pub struct Stack {
    pub nats: Servers,
    pub engines: Engines,
    _stop: oneshot::Sender<()>,
    _keys: tempfile::TempDir,
}

impl Stack {
    pub async fn start(topology: Topology) -> anyhow::Result<Stack> {
        let nats = Servers::start(topology, servers::FILE_BUDGET).await?;
        let keys = tempfile::tempdir()?;
        let (signing, _) = test_support::write_test_keys(keys.path());
        // Defaults and the `PHASECAST_*` environment, as the binary reads them (say
        // `PHASECAST_ENGINE__COMMIT_AHEAD=0s` to compare a setting), then this stack's own.
        let mut config = Config::load(None)?;
        config.nats.url = nats.url(0);
        config.engine.admin_listen = "127.0.0.1:0".parse()?;
        config.auth.signing_key_file = Some(signing);
        // The command benchmark uses 1 ms phases to reach the day at once.
        config.engine.min_phase = Duration::ZERO;
        let engine = Engine::build(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(engine.run_until(async move {
            let _ = stopped.await;
        }));
        let engines = Engines::connect(&nats.url(0)).await?;
        Ok(Stack {
            nats,
            engines,
            _stop: stop,
            _keys: keys,
        })
    }
}

/// A client of whichever engines serve a NATS server, as a backend would be.
pub struct Engines {
    pub client: async_nats::Client,
    pub subjects: Subjects,
}

impl Engines {
    /// Another client connection (load spread over several, as several backends would).
    pub async fn connect(url: &str) -> anyhow::Result<Engines> {
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(30)))
            .connect(url)
            .await?;
        Ok(Engines {
            client,
            subjects: Subjects::default(),
        })
    }

    /// Sends a request and returns the reply, failing on a refusal.
    pub async fn ask(&self, subject: String, body: Value) -> anyhow::Result<Value> {
        let reply = self
            .client
            .request(subject, body.to_string().into())
            .await?;
        let reply: Value = serde_json::from_slice(&reply.payload)?;
        anyhow::ensure!(reply["ok"] == true, "refused: {reply}");
        Ok(reply)
    }

    /// Creates a room with `settings` and seats `total` players; returns the code and players.
    pub async fn seated_room(&self, settings: &Value) -> anyhow::Result<(RoomCode, Vec<PlayerId>)> {
        let created = self
            .ask(self.subjects.lobby_create(), settings.clone())
            .await?;
        let code = RoomCode::parse(created["code"].as_str().unwrap_or_default())?;
        let mut players = Vec::new();
        for n in 0..settings["total"].as_u64().unwrap_or(0) {
            let joined = self
                .ask(
                    self.subjects.room_cmd(&code),
                    json!({"type": "join", "name": format!("p{n}")}),
                )
                .await?;
            players.push(PlayerId::parse(
                joined["player_id"].as_str().unwrap_or_default(),
            )?);
        }
        Ok((code, players))
    }

    /// `n` rooms seated as [`Engines::seated_room`] does, `concurrency` at a time.
    pub async fn seated_rooms(
        &self,
        n: usize,
        settings: &Value,
        concurrency: usize,
    ) -> anyhow::Result<Vec<(RoomCode, Vec<PlayerId>)>> {
        futures::stream::iter(0..n)
            .map(|_| self.seated_room(settings))
            .buffer_unordered(concurrency)
            .try_collect()
            .await
    }

    /// Starts the game of every room, each by its first player, `concurrency` at a time.
    pub async fn start_games(
        &self,
        rooms: &[(RoomCode, Vec<PlayerId>)],
        concurrency: usize,
    ) -> anyhow::Result<()> {
        futures::stream::iter(rooms)
            .map(|(code, players)| self.start_game(code, &players[0]))
            .buffer_unordered(concurrency)
            .try_collect()
            .await
    }

    pub async fn start_game(&self, code: &RoomCode, host: &PlayerId) -> anyhow::Result<()> {
        self.ask(
            self.subjects.room_cmd(code),
            json!({"type": "start", "player": host}),
        )
        .await
        .map(drop)
    }
}

/// Wall-clock time in unix nanoseconds: events are stamped with it when published and when
/// received, which works because both ends of a benchmark share this machine's clock.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
