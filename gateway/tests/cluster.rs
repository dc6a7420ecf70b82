//! A gateway on a three-node NATS cluster whose node dies: the real gateway and engine
//! binaries on different nodes, three players playing through the gateway's HTTP bridge and
//! watching their room over SSE, and the gateway's node killed (-9) mid-night. The gateway
//! reconnects to another node and resyncs its streams; each player's stream must carry
//! exactly the events a tap on a surviving node saw for that player (the room's public
//! events and their own), in order, none missing and none twice. And a room nobody answers
//! for while the cluster has lost its quorum: 503 (try again), not 404.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{EngineProcess, GatewayProcess, Keys, Sse, SseEvent, TestGateway, WAIT};
use futures::StreamExt;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{RoomCode, Subjects};
use serde_json::{json, Value};
use test_support::NatsCluster;
use tokio::task::block_in_place;
use tokio::time::{timeout, Instant};

/// How long a command is retried while the gateway has no NATS (503) or the room's engine
/// is busy reconnecting: a leader election and a reconnect, with room to spare.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// A JSON POST as the page makes it, retried on 503 (as the page does, after `Retry-After`)
/// and on a connection error; the status and body of the first other answer.
async fn post(url: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let deadline = Instant::now() + RETRY_FOR;
    // A client's retry cadence; each try is itself under a timeout.
    let mut retries = tokio::time::interval(Duration::from_millis(100));
    loop {
        retries.tick().await;
        let mut req = reqwest::Client::new()
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if let Ok(Ok(resp)) = timeout(WAIT, req.send()).await {
            let status = resp.status().as_u16();
            let body: Value = timeout(WAIT, resp.json())
                .await
                .expect("body in time")
                .unwrap_or(Value::Null);
            // 503 (failing over) and 504 (the engine's commit waited out a JetStream leader
            // election, 2-5 s on 2.9) are retried with the same request_id, as a client
            // should: the engine applies it once.
            if status != 503 && status != 504 {
                return (status, body);
            }
        }
        assert!(Instant::now() < deadline, "{url}: still unavailable");
    }
}

/// A player: their id, token and SSE stream, reopened with `Last-Event-ID` if it ends (as
/// `EventSource` does).
struct Player {
    id: String,
    token: String,
    url: String,
    sse: Sse,
    /// Ids delivered after the first snapshot, in order.
    ids: Vec<u64>,
    /// The id of the stream's first snapshot.
    start: u64,
    /// Snapshots delivered after the first (a resync that could not send the events).
    later_snapshots: usize,
    reopened: usize,
}

impl Player {
    async fn open(url: String, id: String, token: String) -> Player {
        let mut sse = Sse::connect(&format!("{url}?token={token}"), &[]).await;
        let first = sse.next().await.expect("a snapshot");
        assert_eq!(first.event, "snapshot");
        Player {
            id,
            token,
            url,
            sse,
            ids: Vec::new(),
            start: first.id.unwrap(),
            later_snapshots: 0,
            reopened: 0,
        }
    }

    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(ev) = self.sse.next().await {
                let id = ev.id.expect("events carry ids");
                let last = self.ids.last().copied().unwrap_or(self.start);
                assert!(id > last, "{}: id {id} after {last}", self.id);
                if ev.event == "snapshot" {
                    self.later_snapshots += 1;
                } else {
                    self.ids.push(id);
                }
                return ev;
            }
            // The stream ended (its resync gave up): reopen where it stopped.
            self.reopened += 1;
            assert!(self.reopened < 10, "{}: stream keeps ending", self.id);
            let last = self.ids.last().copied().unwrap_or(self.start).to_string();
            let url = format!("{}?token={}", self.url, self.token);
            self.sse = Sse::connect(&url, &[("Last-Event-ID", &last)]).await;
        }
    }

    async fn until(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let ev = self.next().await;
            if ev.event == name && pred(&ev.json()) {
                return ev.json();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_s_node_dies_mid_night_and_every_stream_goes_on_without_a_gap() {
    let mut cluster = block_in_place(NatsCluster::start);
    let keys = Keys::new();
    let subjects = Subjects::default();
    // The engine on n0, the gateway on n1, the tap on n2.
    let tap_client = async_nats::connect(cluster.url(2)).await.unwrap();
    let engine = EngineProcess::start(&cluster.url(0), &keys, &[]);
    engine.ready(&tap_client).await;
    let gw = GatewayProcess::start(
        &cluster.url(1),
        &keys,
        &[("PHASECAST_GATEWAY__HEARTBEAT", "1s")],
    )
    .await;

    let settings = test_support::three_to_night("cluster", 3000);
    let (status, created) = post(&gw.url("/v1/rooms"), &settings, None).await;
    assert_eq!(status, 200, "{created}");
    let code = created["code"].as_str().unwrap().to_owned();
    let mut tap = tap_client
        .subscribe(subjects.room_wildcard(&RoomCode::parse(&code).unwrap()))
        .await
        .unwrap();
    test_support::server_has_read(&tap_client).await;

    let mut players = Vec::new();
    for name in ["Ann", "Bob", "Cat"] {
        let (status, joined) = post(
            &gw.url(&format!("/v1/rooms/{code}/join")),
            &json!({"name": name, "request_id": format!("join-{name}")}),
            None,
        )
        .await;
        assert_eq!(status, 200, "{joined}");
        players.push(
            Player::open(
                gw.url(&format!("/v1/rooms/{code}/events")),
                joined["player_id"].as_str().unwrap().to_owned(),
                joined["token"].as_str().unwrap().to_owned(),
            )
            .await,
        );
    }
    let commands = gw.url(&format!("/v1/rooms/{code}/commands"));
    let mut requests = 0;
    let mut command = |players: &[Player], who: usize, body: Value| {
        requests += 1;
        let mut body = body;
        body["request_id"] = json!(format!("r{requests}"));
        let token = players[who].token.clone();
        let commands = commands.clone();
        async move {
            let (status, reply) = post(&commands, &body, Some(&token)).await;
            assert_eq!(status, 200, "{body}: {reply}");
        }
    };
    command(&players, 0, json!({"type": "start"})).await;
    let mut mafia = None;
    for (i, p) in players.iter_mut().enumerate() {
        let role = p.until("role", |_| true).await;
        if role["role"] == "mafia" {
            mafia = Some(i);
        }
    }
    let mafia = mafia.expect("a mafia");
    players[0].until("phase", |d| d["phase"] == "day").await;
    for i in 0..3 {
        command(&players, i, json!({"type": "vote", "target": null})).await;
    }
    players[0].until("phase", |d| d["phase"] == "night").await;
    let victim = (0..3).find(|&i| i != mafia).unwrap();
    let target = players[victim].id.clone();
    command(&players, mafia, json!({"type": "skill", "target": target})).await;

    // A backend on n2 has the mafia talk every 10 ms, so that events are published while
    // the gateway is between nodes: its streams must fetch those with `since`.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let chatter = {
        let client = tap_client.clone();
        let subject = subjects.room_cmd(&RoomCode::parse(&code).unwrap());
        let mafia_id = players[mafia].id.clone();
        tokio::spawn(async move {
            let mut acked = 0;
            // The chatter's pace (a line every 10 ms), not a wait for anything.
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0.. {
                let body = json!({"type": "chat", "player": mafia_id, "text": format!("line {n}")});
                let asked = timeout(
                    Duration::from_secs(2),
                    client.request(subject.clone(), body.to_string().into()),
                );
                tokio::select! {
                    reply = asked => {
                        if let Ok(Ok(reply)) = reply {
                            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
                            acked += usize::from(reply["ok"] == true);
                        }
                    }
                    _ = &mut stopped => break,
                }
                tokio::select! {
                    _ = pace.tick() => {}
                    _ = &mut stopped => break,
                }
            }
            acked
        })
    };

    // The gateway's node dies while the night runs; the deadline fires meanwhile or after.
    block_in_place(|| cluster.kill(1));
    command(
        &players,
        mafia,
        json!({"type": "chat", "text": "still here"}),
    )
    .await;
    for p in &mut players {
        let over = p.until("game_over", |_| true).await;
        assert_eq!(over["winner"], "mafia");
    }
    let _ = stop.send(());
    let acked = timeout(WAIT, chatter).await.unwrap().unwrap();
    eprintln!("chat lines acknowledged: {acked}");
    assert!(acked > 0, "the backend's chat went through");

    // What the tap saw, per subject, up to game_over.
    let mut public = BTreeSet::new();
    let mut private: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); 3];
    let deadline = Instant::now() + WAIT;
    let mut over = None;
    while over.is_none() || public.last() < over.as_ref() {
        let msg = tokio::time::timeout_at(deadline, tap.next())
            .await
            .expect("the tap saw the game end")
            .unwrap();
        let Some(headers) = msg.headers else { continue };
        let Some(id) = headers.get(SSE_ID) else {
            continue;
        };
        let id: u64 = id.as_str().parse().unwrap();
        let subject = msg.subject.as_str();
        match players
            .iter()
            .position(|p| subject.ends_with(&format!(".evt.{}", p.id)))
        {
            Some(i) => {
                private[i].insert(id);
            }
            None => {
                public.insert(id);
                if headers.get(SSE_EVENT).map(|e| e.as_str()) == Some("game_over") {
                    over = Some(id);
                }
            }
        }
    }
    let over = over.unwrap();
    for (i, p) in players.iter().enumerate() {
        let expected: Vec<u64> = (public.iter().chain(private[i].iter()))
            .copied()
            .filter(|&id| id > p.start && id <= over)
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        let got: Vec<u64> = p.ids.iter().copied().filter(|&id| id <= over).collect();
        assert_eq!(
            got, expected,
            "player {i}'s stream: every event of theirs, once, in order"
        );
        eprintln!(
            "player {i}: {} events, {} later snapshots, reopened {} times",
            got.len(),
            p.later_snapshots,
            p.reopened
        );
    }
    drop(engine);
}

/// A join through the gateway, once: its status, `Retry-After`, error code and message.
async fn join_once(gateway: &TestGateway, code: &str) -> (u16, bool, Value, Value) {
    let resp = timeout(
        WAIT,
        reqwest::Client::new()
            .post(gateway.url(&format!("/v1/rooms/{code}/join")))
            .header("Content-Type", "application/json")
            .body(r#"{"name":"Ann"}"#)
            .send(),
    )
    .await
    .expect("an answer in time")
    .expect("an HTTP answer");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body: Value = timeout(WAIT, resp.json())
        .await
        .expect("a body in time")
        .unwrap_or(Value::Null);
    (
        status,
        retry_after,
        body["error"].clone(),
        body["message"].clone(),
    )
}

/// No engine answers for a stored, open room, and the store cannot be read either: two of
/// the three nodes are down, so JetStream has neither a meta leader nor the bucket's leader.
/// The gateway cannot tell whether the room exists, so it must say "try again" (503 with
/// `Retry-After`), never "no such room" (404), which a page and EventSource take as final.
/// Once a node is back, a room that never existed is 404 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_store_does_not_answer_is_503_not_404() {
    use async_nats::jetstream;
    let mut cluster = block_in_place(NatsCluster::start);
    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let js = jetstream::new(client.clone());
    let bucket = proto::StoreNames::new("game").rooms_bucket();
    // As the engine makes it on a cluster: three copies, reads from the leader.
    let created = js.create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        num_replicas: 3,
        allow_direct: false,
        ..Default::default()
    });
    timeout(WAIT, created).await.unwrap().unwrap();
    let rooms = js.get_key_value(&bucket).await.unwrap();
    let put = rooms.put("Moving12", r#"{"owner":"e1","closed":false}"#.into());
    timeout(WAIT, put).await.unwrap().unwrap();
    let keys = Keys::new();
    let gateway = TestGateway::start(&cluster.url(0), &keys, |c| {
        c.gateway.request_timeout = Duration::from_secs(1);
    })
    .await;

    let moving = (
        503,
        true,
        json!("unavailable"),
        json!("the room is moving to another engine"),
    );
    let gone = (404, false, json!("no_such_room"), json!("no such room"));
    assert_eq!(join_once(&gateway, "Moving12").await, moving);
    assert_eq!(join_once(&gateway, "Never123").await, gone);

    cluster.kill(1);
    cluster.kill(2);
    // Until node 0 sees neither a meta leader nor a leader for the bucket (were it the
    // bucket's leader, it would answer reads from its copy until it notices the lost quorum).
    let stream = format!("KV_{bucket}");
    block_in_place(|| {
        cluster.wait("node 0 to see no JetStream leader", || {
            let jsz = cluster.monitoring(0, "jsz")?;
            let meta = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            let detail = cluster.stream_detail(0, &stream)?;
            let leader = detail["cluster"]["leader"].as_str().unwrap_or_default();
            (meta.is_empty() && leader.is_empty()).then_some(())
        })
    });
    let unknown = (
        503,
        true,
        json!("unavailable"),
        json!("the room store did not answer"),
    );
    assert_eq!(join_once(&gateway, "Moving12").await, unknown);
    assert_eq!(join_once(&gateway, "Never123").await, unknown);

    cluster.restart(1);
    block_in_place(|| cluster.wait_stream_leader(&format!("KV_{bucket}")));
    let deadline = Instant::now() + WAIT;
    // Asked again until the bucket answers on node 0 (its leader elected, the API current
    // there), each try a request of its own.
    let mut tries = tokio::time::interval(Duration::from_millis(100));
    loop {
        tries.tick().await;
        if join_once(&gateway, "Never123").await == gone {
            break;
        }
        assert!(Instant::now() < deadline, "Never123 never 404 again");
    }
    assert_eq!(join_once(&gateway, "Moving12").await, moving);
}
