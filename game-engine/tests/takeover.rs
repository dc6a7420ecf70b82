//! Engines that die: real `game-engine` processes on a real nats-server with JetStream,
//! killed (-9), paused (SIGSTOP), stopped (SIGTERM) and restarted while games run. A tap on
//! every room subject checks the invariants of `docs/durability.md` throughout: an id never
//! carries two payloads, and on each subject ids never go back.

mod common;

use common::tap::Tap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{RoomCode, Subjects};
use serde_json::{json, Value};
use test_support::{three_to_night, NatsServer};
use tokio::time::{timeout, Instant};

/// How long any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(30);
/// The lease the engines run with here: short, so a takeover test takes seconds.
const LEASE: Duration = Duration::from_secs(1);

/// A `game-engine` process, killed when dropped.
struct Engine {
    child: tokio::process::Child,
    id: String,
    admin: std::net::SocketAddr,
}

impl Engine {
    fn start(nats: &NatsServer, dir: &Path, id: &str, env: &[(&str, &str)]) -> Engine {
        let admin = free_port();
        let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_game-engine"))
            .envs(env.iter().copied())
            .env("PHASECAST_NATS__URL", nats.url())
            .env("PHASECAST_ENGINE__ID", id)
            .env(
                "PHASECAST_ENGINE__LEASE",
                format!("{}ms", LEASE.as_millis()),
            )
            .env("PHASECAST_ENGINE__MIN_PHASE", "0s")
            .env("PHASECAST_ENGINE__ADMIN_LISTEN", admin.to_string())
            .env("PHASECAST_AUTH__SIGNING_KEY_FILE", dir.join("signing.pem"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Engine {
            child,
            id: id.to_owned(),
            admin,
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("a running engine");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits (up to [`WAIT`]) for the process to exit; its exit status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let exit = timeout(WAIT, self.child.wait()).await;
        exit.unwrap_or_else(|_| panic!("{} did not exit", self.id))
            .unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = common::admin_get(self.admin, "/metrics").await;
        common::metric_value(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The test's side: a NATS client, a JetStream handle to read records, and the tap.
struct World {
    nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        test_support::write_test_keys(dir.path());
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        World {
            nats,
            client,
            js,
            subjects: Subjects::default(),
            dir,
        }
    }

    /// Starts an engine and waits for its first heartbeat (watched as the KV put's own
    /// message, so that it works before the first engine has made the bucket).
    async fn engine(&self, id: &str) -> Engine {
        self.engine_with(id, &[]).await
    }

    /// [`World::engine`] with more `PHASECAST_*` settings.
    async fn engine_with(&self, id: &str, env: &[(&str, &str)]) -> Engine {
        let mut beats = self
            .client
            .subscribe(format!("$KV.game_engines.{id}"))
            .await
            .unwrap();
        test_support::server_has_read(&self.client).await;
        let engine = Engine::start(&self.nats, self.dir.path(), id, env);
        loop {
            let beat = timeout(WAIT, beats.next())
                .await
                .unwrap_or_else(|_| panic!("no heartbeat from {id}"))
                .unwrap();
            if beat.payload.as_ref() == b"alive" {
                return engine;
            }
        }
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// Tries `probe` until it gives a value, again after each change of the engines' shared
    /// state (a heartbeat, every quarter lease; a room's record written or claimed); fails
    /// after [`WAIT`].
    async fn until<T, F: std::future::Future<Output = Option<T>>>(
        &self,
        what: &str,
        mut probe: impl FnMut() -> F,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        if let Some(v) = probe().await {
            return v;
        }
        // A change missed between the probe and this subscription is no loss: heartbeats
        // keep coming.
        let mut changes = self.client.subscribe("$KV.>").await.unwrap();
        self.client.flush().await.unwrap();
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            let changed = tokio::time::timeout_at(deadline, changes.next()).await;
            assert!(changed.is_ok(), "gave up waiting for {what}");
        }
    }

    /// A request answered by whichever engine owns the subject now: "no responders" and
    /// `unavailable` (a room changing hands) are retried, as a client would.
    async fn ask(&self, subject: String, body: Value) -> Value {
        self.until(&format!("an answer on {subject}"), || async {
            let reply = timeout(
                Duration::from_secs(2),
                self.client
                    .request(subject.clone(), body.to_string().into()),
            )
            .await
            .ok()?
            .ok()?;
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            (reply["error"] != "unavailable").then_some(reply)
        })
        .await
    }

    async fn ok(&self, code: &RoomCode, body: Value) -> Value {
        let reply = self.ask(self.subjects.room_cmd(code), body.clone()).await;
        assert_eq!(reply["ok"], true, "{body} refused: {reply}");
        reply
    }

    async fn create(&self, settings: Value) -> RoomCode {
        let reply = self.ask(self.subjects.lobby_create(), settings).await;
        assert_eq!(reply["ok"], true, "{reply}");
        RoomCode::parse(reply["code"].as_str().unwrap()).unwrap()
    }

    async fn record(&self, code: &RoomCode) -> Value {
        let kv = self.js.get_key_value("game_rooms").await.unwrap();
        let value = kv.get(code.as_str()).await.unwrap().expect("a stored room");
        serde_json::from_slice(&value).unwrap()
    }

    async fn owner(&self, code: &RoomCode) -> String {
        self.record(code).await["owner"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn tap(&self, code: &RoomCode) -> Tap {
        Tap::on(self.client.clone(), self.subjects.room_wildcard(code)).await
    }
}

impl Drop for World {
    /// A failed test shows what the engines logged.
    fn drop(&mut self) {
        common::show_logs_if_panicking(self.dir.path());
    }
}

/// A lobby event as it went out on NATS: its id, name and data.
fn lobby_event(msg: &async_nats::Message) -> (u64, String, Value) {
    let headers = msg.headers.as_ref().expect("events carry headers");
    let id = headers.get(SSE_ID).unwrap().as_str().parse().unwrap();
    let name = headers.get(SSE_EVENT).unwrap().as_str().to_owned();
    (id, name, serde_json::from_slice(&msg.payload).unwrap())
}

/// Three players (one mafia) in a room whose night lasts `night_ms`; returns the code, the
/// players' ids and the mafia's id, with the game started.
async fn seated_game(w: &World, tap_night_ms: u64) -> (RoomCode, Tap, Vec<String>, String) {
    let code = w.create(three_to_night("takeover", tap_night_ms)).await;
    let mut tap = w.tap(&code).await;
    let mut ids = Vec::new();
    for name in ["Ann", "Bob", "Cat"] {
        let join = json!({"type": "join", "name": name, "request_id": format!("join-{name}")});
        let reply = w.ok(&code, join).await;
        ids.push(reply["player_id"].as_str().unwrap().to_owned());
    }
    w.ok(&code, json!({"type": "start", "player": ids[0]}))
        .await;
    let mafia = tap.mafia().await;
    (code, tap, ids, mafia)
}

/// Everyone abstains in the day, so the game reaches its first night; its `phase` event.
async fn to_night(w: &World, code: &RoomCode, tap: &mut Tap, ids: &[String]) -> Value {
    tap.until("phase", |d| d["phase"] == "day").await;
    for id in ids {
        w.ok(code, json!({"type": "vote", "player": id, "target": null}))
            .await;
    }
    tap.until("phase", |d| d["phase"] == "night").await
}

/// Kills (-9) the engine that owns `code` and waits for it to exit; its id.
async fn kill_owner(w: &World, engines: &mut [Engine], code: &RoomCode) -> String {
    let owner = w.owner(code).await;
    let at = engines.iter().position(|e| e.id == owner).unwrap();
    engines[at].signal("KILL");
    engines[at].exited().await;
    owner
}

/// Two left after the first night, one of them mafia: the mafia win when `notice` ends, and
/// the night's deadline fired exactly once, whoever ran it.
async fn mafia_win_after_one_dawn(tap: &mut Tap) {
    let over = tap.until("game_over", |_| true).await;
    assert_eq!(over["winner"], "mafia");
    assert_eq!(
        tap.count("phase", |d| d["phase"] == "day_intro" && d["round"] == 1),
        1,
        "the night's deadline fired exactly once"
    );
}

/// A game in its first night (of `night_ms`), in which the mafia has picked: the room, its
/// tap, the victim, and when the night ends.
async fn night_with_a_pick(w: &World, night_ms: u64) -> (RoomCode, Tap, String, u64) {
    let (code, mut tap, ids, mafia) = seated_game(w, night_ms).await;
    let night = to_night(w, &code, &mut tap, &ids).await;
    let ends_at = night["ends_at"].as_u64().unwrap();
    let victim = ids.iter().find(|id| **id != mafia).unwrap().clone();
    w.ok(
        &code,
        json!({"type": "skill", "player": mafia, "target": victim}),
    )
    .await;
    (code, tap, victim, ends_at)
}

/// The dawn comes: the mafia's pick dies, at the night's deadline `ends_at` or after it,
/// never before (whoever publishes it).
async fn dawn_at(tap: &mut Tap, victim: &str, ends_at: u64) {
    let death = tap.until("death", |_| true).await;
    let arrived = unix_ms_now();
    assert_eq!(death["player_id"], json!(victim), "the pick counted");
    assert!(
        arrived >= ends_at,
        "the dawn came {} ms before its deadline",
        ends_at - arrived
    );
}

fn unix_ms_now() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_millis() as u64
}

/// Waits until the room's record holds the step of the deadline `ends_at` committed ahead of
/// it (`engine.commit_ahead`), which must be before the deadline; the record.
async fn committed_ahead(w: &World, code: &RoomCode, ends_at: u64) -> Value {
    let record = w
        .until("the deadline's step committed ahead", || async {
            let record = w.record(code).await;
            (record["outbox_at"].as_u64() == Some(ends_at)).then_some(record)
        })
        .await;
    assert!(
        unix_ms_now() < ends_at,
        "the test was too slow: the deadline passed before it saw the step committed ahead"
    );
    record
}

#[tokio::test]
async fn a_killed_owner_s_game_goes_on_elsewhere_with_its_deadline_fired_once() {
    let w = World::start().await;
    let mut engines = [w.engine("e1").await, w.engine("e2").await];
    let (code, mut tap, ids, mafia) = seated_game(&w, 3000).await;
    to_night(&w, &code, &mut tap, &ids).await;
    let victim = ids.iter().find(|id| **id != mafia).unwrap().clone();
    w.ok(
        &code,
        json!({"type": "skill", "player": mafia, "target": victim}),
    )
    .await;
    // Two lines: the last step's events come with the room's record, the ones before only
    // from its log.
    for text in ["we pick", "done"] {
        w.ok(
            &code,
            json!({"type": "chat", "player": mafia, "text": text}),
        )
        .await;
    }

    // Ann's join, retried: its first reply again, token and all.
    let join_again = json!({"type": "join", "name": "Ann", "request_id": "join-Ann"});
    let joined = w.ok(&code, join_again.clone()).await;
    assert_eq!(joined["player_id"], json!(ids[0]));

    let owner = kill_owner(&w, &mut engines, &code).await;

    // The survivor fires the night's deadline: the pick dies, one day begins.
    let death = tap.until("death", |_| true).await;
    assert_eq!(death["player_id"], json!(victim));
    assert_eq!(death["cause"], "mafia");
    tap.until("phase", |d| d["phase"] == "day_intro").await;
    assert_ne!(w.owner(&code).await, owner, "another engine owns the room");
    // The record keeps the token's claims; the survivor signs them again with the same key,
    // and Ed25519 gives the same token.
    assert_eq!(
        w.ok(&code, join_again).await,
        joined,
        "the retried join on the survivor"
    );
    // Old player ids act (the survivor has the same signing key, so their tokens hold too).
    w.ok(
        &code,
        json!({"type": "chat", "player": mafia, "text": "morning"}),
    )
    .await;
    // Snapshots from the survivor show the chat from before the takeover too (the game
    // keeps none: it comes from the room's log), each viewer only the lines they may see.
    let survivor = ids
        .iter()
        .find(|id| **id != mafia && **id != victim)
        .unwrap();
    for (viewer, lines) in [
        (&mafia, vec!["we pick", "done", "morning"]),
        (survivor, vec!["morning"]),
    ] {
        let body = json!({"viewer": viewer, "since": null});
        let reply = w.ask(w.subjects.room_snap(&code), body).await;
        let snapshot = &reply["events"][0]["data"];
        let chat: Vec<&str> = snapshot["chat"]
            .as_array()
            .unwrap_or_else(|| panic!("a snapshot: {reply}"))
            .iter()
            .map(|line| line["text"].as_str().unwrap())
            .collect();
        assert_eq!(chat, lines, "{viewer}'s snapshot");
    }
    mafia_win_after_one_dawn(&mut tap).await;
}

/// A deadline's step committed ahead (`engine.commit_ahead`, long here) by an engine killed
/// before the deadline: the engine that takes the room over, before the deadline, publishes
/// the step at the deadline, not when it takes over, and once.
#[tokio::test]
async fn a_step_committed_ahead_by_an_engine_that_died_goes_out_at_its_deadline() {
    let w = World::start().await;
    let ahead = [("PHASECAST_ENGINE__COMMIT_AHEAD", "4s")];
    let mut engines = [
        w.engine_with("e1", &ahead).await,
        w.engine_with("e2", &ahead).await,
    ];
    let (code, mut tap, victim, ends_at) = night_with_a_pick(&w, 7000).await;
    committed_ahead(&w, &code, ends_at).await;
    let owner = kill_owner(&w, &mut engines, &code).await;

    dawn_at(&mut tap, &victim, ends_at).await;
    tap.until("phase", |d| d["phase"] == "day_intro").await;
    assert_ne!(w.owner(&code).await, owner, "another engine owns the room");
    mafia_win_after_one_dawn(&mut tap).await;
}

/// A command that comes after the deadline's step was committed ahead, but before the
/// deadline, counts before the deadline: the mafia's pick made then kills at dawn, and until
/// the deadline a snapshot shows the night.
#[tokio::test]
async fn a_command_before_the_deadline_counts_though_its_step_was_committed_ahead() {
    let w = World::start().await;
    let _engine = w
        .engine_with("e1", &[("PHASECAST_ENGINE__COMMIT_AHEAD", "4s")])
        .await;
    let (code, mut tap, ids, mafia) = seated_game(&w, 6000).await;
    let night = to_night(&w, &code, &mut tap, &ids).await;
    let ends_at = night["ends_at"].as_u64().unwrap();
    let record = committed_ahead(&w, &code, ends_at).await;
    let names: Vec<&str> = (record["outbox"].as_array().unwrap().iter())
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"phase") && !names.contains(&"death"),
        "the step committed ahead is a dawn with no pick: {names:?}"
    );
    let body = json!({"viewer": mafia, "since": null});
    let snapshot = w.ask(w.subjects.room_snap(&code), body).await;
    assert_eq!(
        snapshot["events"][0]["data"]["phase"], "night",
        "{snapshot}"
    );

    let victim = ids.iter().find(|id| **id != mafia).unwrap().clone();
    w.ok(
        &code,
        json!({"type": "skill", "player": mafia, "target": victim}),
    )
    .await;
    dawn_at(&mut tap, &victim, ends_at).await;
    tap.until("phase", |d| d["phase"] == "day_intro").await;
    assert_eq!(
        tap.count("phase", |d| d["phase"] == "day_intro" && d["round"] == 1),
        1,
        "one dawn"
    );
}

/// The engine that took over a room whose dawn was committed ahead waits for the deadline to
/// publish it; stopped (SIGTERM) while it waits, it hands the room on with the dawn still
/// unpublished, and the next engine publishes it at the deadline, once.
#[tokio::test]
async fn a_successor_stopped_while_it_waits_for_the_deadline_hands_the_step_on() {
    let w = World::start().await;
    let ahead = [("PHASECAST_ENGINE__COMMIT_AHEAD", "5s")];
    let mut engines = [
        w.engine_with("e1", &ahead).await,
        w.engine_with("e2", &ahead).await,
        w.engine_with("e3", &ahead).await,
    ];
    let (code, mut tap, victim, ends_at) = night_with_a_pick(&w, 9000).await;
    committed_ahead(&w, &code, ends_at).await;
    let first = kill_owner(&w, &mut engines, &code).await;
    let successor = w
        .until("another engine's claim", || async {
            let owner = w.owner(&code).await;
            (owner != first).then_some(owner)
        })
        .await;
    let at = engines.iter().position(|e| e.id == successor).unwrap();
    engines[at].signal("TERM");
    assert!(engines[at].exited().await.success(), "a clean exit");
    assert!(
        unix_ms_now() < ends_at,
        "the test was too slow: the deadline passed before the successor stopped"
    );

    dawn_at(&mut tap, &victim, ends_at).await;
    let last = w.owner(&code).await;
    assert!(
        last != first && last != successor,
        "the third engine runs it"
    );
    mafia_win_after_one_dawn(&mut tap).await;
}

#[tokio::test]
async fn sigterm_hands_rooms_over_without_closing_them() {
    let w = World::start().await;
    let mut engines = [w.engine("e1").await, w.engine("e2").await];
    let (code, mut tap, ids, _) = seated_game(&w, 60_000).await;
    tap.until("phase", |d| d["phase"] == "day").await;
    let owner = w.owner(&code).await;
    let at = engines.iter().position(|e| e.id == owner).unwrap();
    engines[at].signal("TERM");
    assert!(engines[at].exited().await.success(), "a clean exit");
    let handed = Instant::now();
    // The game goes on: a vote is answered by the other engine, soon.
    w.ok(
        &code,
        json!({"type": "chat", "player": ids[1], "text": "still here"}),
    )
    .await;
    let pause = handed.elapsed();
    assert!(pause < Duration::from_secs(3), "rooms moved in {pause:?}");
    for id in &ids {
        w.ok(&code, json!({"type": "vote", "player": id, "target": null}))
            .await;
    }
    tap.until("phase", |d| d["phase"] == "vote").await;
    assert_eq!(
        tap.count("room_closed", |_| true),
        0,
        "no room_closed on handover"
    );
    assert_ne!(w.owner(&code).await, owner);
}

#[tokio::test]
async fn after_every_engine_died_new_ones_resume_the_games_and_the_lobby() {
    let w = World::start().await;
    let mut lobby = w.client.subscribe(w.subjects.lobby_events()).await.unwrap();
    let mut engines = [w.engine("e1").await, w.engine("e2").await];
    let (code, mut tap, ids, _) = seated_game(&w, 60_000).await;
    tap.until("phase", |d| d["phase"] == "day").await;
    for engine in &mut engines {
        engine.signal("KILL");
        engine.exited().await;
    }
    // First by id among the engines it sees (the dead ones' heartbeats are recent): the
    // lobby's publisher from its start, while it reads the bucket.
    let _fresh = w.engine("e0").await;
    // The day resumes: its votes end it.
    for id in &ids {
        w.ok(&code, json!({"type": "vote", "player": id, "target": null}))
            .await;
    }
    tap.until("phase", |d| d["phase"] == "vote").await;
    // The lobby goes on with ids above every earlier one.
    let later = w
        .create(json!({"title": "after the restart", "total": 3, "mafia": 1}))
        .await;
    let mut last = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let msg = timeout(deadline - Instant::now(), lobby.next())
            .await
            .expect("the new room in the lobby")
            .unwrap();
        let (id, name, data) = lobby_event(&msg);
        // Not even the new engine's start sends the bucket's old listings again.
        assert!(
            id > last,
            "lobby ids rise across the restart: {id} after {last}"
        );
        last = id;
        if data["code"] == json!(later) {
            assert_eq!(name, "room_opened");
            break;
        }
    }
}

#[tokio::test]
async fn a_paused_owner_is_fenced_when_it_wakes() {
    let w = World::start().await;
    let engines = [w.engine("e1").await, w.engine("e2").await];
    let (code, mut tap, ids, _) = seated_game(&w, 60_000).await;
    tap.until("phase", |d| d["phase"] == "day").await;
    let owner = w.owner(&code).await;
    let stale = engines.iter().find(|e| e.id == owner).unwrap();
    stale.signal("STOP");
    // Beyond the lease another engine takes the room and the game goes on there.
    w.until("the room to change hands", || async {
        (w.owner(&code).await != owner).then_some(())
    })
    .await;
    w.ok(
        &code,
        json!({"type": "vote", "player": ids[0], "target": null}),
    )
    .await;
    // The paused engine is still subscribed (its connection is open), but in the queue group
    // of its own tenure: the new owner receives and answers every request, while the stale
    // one sleeps.
    let chats =
        (0..8).map(|i| json!({"type": "chat", "player": ids[1], "text": format!("line {i}")}));
    let mut replies = common::send_requests(&w.client, w.subjects.room_cmd(&code), chats).await;
    let mut answered = HashSet::new();
    while answered.len() < 8 {
        let reply = timeout(WAIT, replies.next()).await;
        let reply = reply.expect("every request is answered while the old owner sleeps");
        let reply = reply.unwrap();
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(body["ok"], true, "answered by the new owner: {body}");
        answered.insert(reply.subject.to_string());
    }
    stale.signal("CONT");
    // Woken, the old owner holds copies of requests the new one answers: it must not answer
    // them from what it held before the takeover (a snapshot from then would win the race
    // with the owner's as often as not).
    let fresh = vec![json!({"viewer": null, "since": null}); 8];
    let mut snap_replies =
        common::send_requests(&w.client, w.subjects.room_snap(&code), fresh).await;
    let mut snapshot_ids = HashSet::new();
    let mut note = |reply: async_nats::Message| {
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        match body["events"][0]["id"].as_u64() {
            Some(id) => snapshot_ids.insert(id),
            None => {
                assert_eq!(body["error"], "unavailable", "{body}");
                false
            }
        };
    };
    for _ in 0..8 {
        let reply = timeout(WAIT, snap_replies.next()).await;
        note(reply.expect("snapshots answered").unwrap());
    }
    // The stale engine finds out, and stops serving the room.
    w.until("the stale owner to notice", || async {
        (stale.metric("phasecast_engine_ownership_lost_total").await >= 1.0).then_some(())
    })
    .await;
    while let Some(Some(reply)) = snap_replies.next().now_or_never() {
        note(reply);
    }
    assert_eq!(
        snapshot_ids.len(),
        1,
        "one snapshot, the owner's: {snapshot_ids:?}"
    );
    for id in &ids[1..] {
        w.ok(&code, json!({"type": "vote", "player": id, "target": null}))
            .await;
    }
    tap.until("phase", |d| d["phase"] == "vote").await;
    assert_eq!(
        tap.count("phase", |d| d["phase"] == "vote"),
        1,
        "no phase twice"
    );
    let log = std::fs::read_to_string(w.log(&owner)).unwrap();
    assert!(
        log.contains("another engine"),
        "the stale owner says why it let go"
    );
}

#[tokio::test]
async fn a_new_lobby_publisher_publishes_what_the_dead_one_could_not() {
    let w = World::start().await;
    // Histories of 4 events: the survivor must read older changes from the bucket.
    let small = [("PHASECAST_ENGINE__HISTORY", "4")];
    let mut publisher = w.engine_with("e1", &small).await;
    let _survivor = w.engine_with("e2", &small).await;
    let mut lobby = w.client.subscribe(w.subjects.lobby_events()).await.unwrap();
    test_support::server_has_read(&w.client).await;
    publisher.signal("KILL");
    publisher.exited().await;
    // Created while e2 still counts e1 alive: nobody publishes them until e2 takes over.
    let mut created = HashSet::new();
    for n in 0..10 {
        let code = w
            .create(json!({"title": format!("gap {n}"), "total": 3, "mafia": 1}))
            .await;
        created.insert(code.to_string());
    }
    let mut announced = HashSet::new();
    let mut last = 0;
    while announced != created {
        let event = timeout(WAIT, lobby.next()).await;
        let event = event
            .expect("every room created in the gap announced")
            .unwrap();
        let (id, _, data) = lobby_event(&event);
        assert!(id > last, "lobby ids rise: {id} after {last}");
        last = id;
        announced.insert(data["code"].as_str().unwrap().to_owned());
    }
}

#[tokio::test]
async fn a_woken_engine_keeps_a_room_whose_newer_record_is_its_own() {
    let w = World::start().await;
    let engine = w.engine("e1").await;
    let code = w
        .create(json!({"title": "landed", "total": 3, "mafia": 1}))
        .await;
    w.ok(&code, json!({"type": "join", "name": "Ann"})).await;
    // A newer revision of the room's own record, as when a commit landed but its ack was
    // lost: same owner, same epoch.
    let kv = w.js.get_key_value("game_rooms").await.unwrap();
    let record = kv.get(code.as_str()).await.unwrap().expect("a stored room");
    kv.put(code.as_str(), record).await.unwrap();
    // Paused beyond its lease (no other engine to take the room): woken, its rooms check
    // their records before they answer.
    let mut beats = w.client.subscribe("$KV.game_engines.e1").await.unwrap();
    test_support::server_has_read(&w.client).await;
    engine.signal("STOP");
    while let Ok(beat) = timeout(LEASE * 2, beats.next()).await {
        beat.expect("the heartbeat subscription");
    }
    engine.signal("CONT");
    // Its own record is no takeover: the room still answers, and goes on.
    let bob = w.ok(&code, json!({"type": "join", "name": "Bob"})).await;
    assert!(bob["player_id"].is_string(), "{bob}");
    assert_eq!(
        engine.metric("phasecast_engine_ownership_lost_total").await,
        0.0,
        "the room was not given up"
    );
}

#[tokio::test]
async fn engines_racing_give_unique_codes_and_one_lobby() {
    let w = World::start().await;
    let _engines = [w.engine("e1").await, w.engine("e2").await];
    let mut lobby_events = w.client.subscribe(w.subjects.lobby_events()).await.unwrap();
    test_support::server_has_read(&w.client).await;
    const ROOMS: usize = 1000;
    let codes: Vec<RoomCode> = futures::stream::iter(0..ROOMS)
        .map(|n| {
            let w = &w;
            async move {
                w.create(json!({"title": format!("room {n}"), "total": 3, "mafia": 1}))
                    .await
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let unique: HashSet<&RoomCode> = codes.iter().collect();
    assert_eq!(unique.len(), ROOMS, "every create got its own code");
    let owners: HashSet<String> = futures::future::join_all(codes.iter().map(|c| w.owner(c)))
        .await
        .into_iter()
        .collect();
    assert_eq!(owners.len(), 2, "both engines created rooms");
    // Whichever engine answers, its lobby lists every room.
    let listed = |reply: &Value| -> HashSet<String> {
        let snapshot = &reply["events"][0]["data"];
        snapshot["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["code"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: HashSet<String> = codes.iter().map(|c| c.to_string()).collect();
    w.until("every engine's lobby to list every room", || async {
        let mut full = 0;
        for _ in 0..10 {
            let reply = w
                .ask(
                    w.subjects.lobby_snap(),
                    json!({"viewer": null, "since": null}),
                )
                .await;
            full += usize::from(listed(&reply) == all);
        }
        (full == 10).then_some(())
    })
    .await;
    // Each change went out once, with ids rising: one engine publishes the lobby.
    let mut ids = Vec::new();
    let mut opened = HashSet::new();
    while opened.len() < ROOMS {
        let event = timeout(WAIT, lobby_events.next()).await;
        let event = event.expect("a room_opened for every room").unwrap();
        let (id, name, data) = lobby_event(&event);
        ids.push(id);
        if name == "room_opened" {
            opened.insert(data["code"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(opened, all, "every room was announced");
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "lobby ids rise on NATS, none twice"
    );
}

#[tokio::test]
async fn a_create_sent_again_with_its_request_id_answers_with_the_room_it_made() {
    let w = World::start().await;
    let mut engines = [w.engine("e1").await, w.engine("e2").await];
    let title = "created once";
    let create = json!({"title": title, "total": 3, "mafia": 1, "name": "Host",
        "request_id": "4f9c2d7e-0b1a-4c3e-9f6d-2a8b7c5e1d03"});
    // Copies at once and after, spread over both engines by their queue group: whichever
    // stores the room first, every copy gets its code, seat and token.
    let replies: Vec<Value> =
        futures::future::join_all((0..8).map(|_| w.ask(w.subjects.lobby_create(), create.clone())))
            .await;
    let later = w.ask(w.subjects.lobby_create(), create.clone()).await;
    let first = &replies[0];
    assert_eq!(first["ok"], true, "{first}");
    assert!(first["token"].is_string(), "{first}");
    for reply in replies.iter().chain([&later]) {
        assert_eq!(reply, first, "the same room, seat and token");
    }
    let code = RoomCode::parse(first["code"].as_str().unwrap()).unwrap();
    assert_eq!(
        w.record(&code).await["game"]["players"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The copies that found the room left its owner's index key alone: killed, the owner's
    // room is found and taken over.
    let owner = w.owner(&code).await;
    let owners = w.js.get_key_value("game_owners").await.unwrap();
    let index = owners.get(format!("{owner}.{code}")).await.unwrap();
    assert!(index.is_some(), "the room is still indexed under {owner}");
    let at = engines.iter().position(|e| e.id == owner).unwrap();
    engines[at].signal("KILL");
    engines[at].exited().await;
    w.ok(&code, json!({"type": "join", "name": "Guest"})).await;
    assert_ne!(w.owner(&code).await, owner, "taken over");
    // Another request id is another room. Once the lobby lists it, it lists every room
    // created before it: one for the first request id, however many copies.
    let other = json!({"title": title, "total": 3, "mafia": 1, "name": "Host",
        "request_id": "another"});
    let other = w.create(other).await;
    assert_ne!(other, code);
    let titled = w
        .until("the lobby to list the other room", || async {
            let reply = w
                .ask(
                    w.subjects.lobby_snap(),
                    json!({"viewer": null, "since": null}),
                )
                .await;
            let rooms = reply["events"][0]["data"]["rooms"].as_array()?.clone();
            let listed = rooms.iter().any(|r| r["code"] == other.as_str());
            listed.then(|| rooms.into_iter().filter(|r| r["title"] == title).count())
        })
        .await;
    assert_eq!(titled, 2, "one room per request id");
}
