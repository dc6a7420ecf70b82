//! What survives without another engine: a retried command, and a nats-server restarted
//! with its store under a running engine. (Engines dying are in `takeover.rs`.)

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{fast_room, Harness};
use serde_json::json;
use test_support::CutProxy;

#[tokio::test]
async fn a_retried_command_gets_its_first_reply_and_changes_nothing() {
    let h = Harness::start().await;
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    let join = json!({"type": "join", "name": "Ann", "request_id": "join-1"});
    let first = h.ok(&code, join.clone()).await;
    let again = h.ok(&code, join.clone()).await;
    assert_eq!(
        first, again,
        "the same player, the same token: no ghost seat"
    );
    let ann = first["player_id"].as_str().unwrap();
    // Another attempt (a new request id) at the same name is a new join, and refused.
    h.refuses(
        &code,
        json!({"type": "join", "name": "Ann", "request_id": "join-2"}),
        "name_taken",
    )
    .await;
    // The same request id from someone else finds nothing of Ann's.
    let bob = h
        .ok(
            &code,
            json!({"type": "join", "name": "Bob", "request_id": "join-1"}),
        )
        .await;
    assert_ne!(bob["player_id"], first["player_id"]);
    let chat = json!({"type": "chat", "player": ann, "text": "hello", "request_id": "c1"});
    let mut public = h.watch(&code, None).await;
    h.ok(&code, chat.clone()).await;
    h.ok(&code, chat).await;
    h.ok(&code, json!({"type": "chat", "player": ann, "text": "bye"}))
        .await;
    public.until("chat", |d| d["text"] == "bye").await;
    assert_eq!(
        public.names(),
        ["chat", "chat"],
        "hello once, then bye: the retry said nothing"
    );
    let snap = h.snap(&code, None, None).await;
    assert_eq!(
        snap["events"][0]["data"]["players"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_nats_restart_keeps_rooms_and_history_and_bunches_no_phases() {
    let mut h = Harness::start().await;
    let settings = json!({"title": "outage", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": 300, "notice": 300, "day_per_player": 60000,
            "vote": 300, "vote_result": 300, "night_intro": 300, "night": 60000}});
    let code = h.room(settings).await;
    let mut ids = Vec::new();
    for name in ["Ann", "Bob", "Cat"] {
        ids.push(h.join(&code, name).await);
    }
    let mut public = h.watch(&code, None).await;
    h.ok(&code, json!({"type": "start", "player": ids[0]}))
        .await;
    public.phase("day").await;
    // Everyone abstains: the day ends into `vote`, 300 ms, and the server goes down for
    // longer than `vote`, `vote_result` and `night_intro` together.
    for id in &ids {
        h.ok(&code, json!({"type": "vote", "player": id, "target": null}))
            .await;
    }
    let vote = public.phase("vote").await;
    // The outage starts once the room's log has the vote's step: the room then waits for the
    // deadline. Before that it waits for the log's ack, through the outage, and would take
    // the deadline's step only after it, trying no commit during it (checked at the end).
    h.wait_logged(&code, vote.id).await;
    h.nats.stop();
    // The outage itself, not a wait for anything (nothing is observable while NATS is
    // down): until 1 s after the vote's deadline, more than the 500 ms after which a late
    // deadline restarts the clock.
    let ends_at = UNIX_EPOCH + Duration::from_millis(vote.data["ends_at"].as_u64().unwrap());
    let outage = ends_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(outage + Duration::from_secs(1)).await;
    h.nats.restart();

    // The game goes on from its store, and each phase after the outage gets its length from
    // when it began: timed from the deadlines missed during the outage, they would already
    // be over when announced.
    let mut public = h.watch(&code, None).await;
    loop {
        let phase = public.until("phase", |_| true).await;
        if phase.id <= vote.id {
            // The vote's own step, published again: its log append was in flight when NATS
            // went down, so the engine cannot know the event got out. At least once, by id;
            // a gateway delivers an id once.
            continue;
        }
        let phase = phase.data;
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let left = phase["ends_at"].as_u64().unwrap() as i64 - received as i64;
        assert!(
            left > 200,
            "{} announced with {left} ms left of 300: bunched after the outage",
            phase["phase"]
        );
        if phase["phase"] == "night" {
            break;
        }
    }
    // The vote's deadline did fire while NATS was down (else this test proves nothing),
    // and its step waited for the store rather than committing late.
    let metrics = h.admin_get("/metrics").await;
    // Counted as `why="disconnected"` once the engine knows NATS is gone, as "store" if
    // the write was tried before it did.
    let deferred = common::metric_value(&metrics, "phasecast_engine_steps_deferred_total");
    assert!(
        deferred >= Some(1.0),
        "no step was deferred: {deferred:?}\n{metrics}"
    );
    // History from before the outage still answers `since`.
    let replay = h.snap(&code, None, Some(vote.id - 1)).await;
    let first = &replay["events"][0];
    assert_eq!(
        (first["id"].as_u64(), first["event"].as_str()),
        (Some(vote.id), Some("phase"))
    );
}

/// The engine's connection dies just as it publishes a step's event (a NATS node killed with
/// the engine's last writes in flight): the event, and what followed it on that connection,
/// is lost. A client whose own connection lived still receives the event, once: the engine
/// publishes a step again until the log has it on the connection its events went out on.
#[tokio::test]
async fn an_event_lost_with_the_engines_connection_is_published_again() {
    let proxy = std::sync::OnceLock::new();
    let h = Harness::start_with(|config| {
        let cut = CutProxy::start(&config.nats.url);
        config.nats.url = cut.url();
        let _ = proxy.set(cut);
    })
    .await;
    let proxy = proxy.get().unwrap();
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    let mut public = h.watch(&code, None).await;
    proxy.cut_at_publish(&h.subjects.room_events(&code));
    // Sent without waiting for the reply: it goes out after the event, so it is lost too.
    let join = json!({"type": "join", "name": "Ann"});
    h.client
        .publish_with_reply(
            h.subjects.room_cmd(&code),
            h.client.new_inbox(),
            join.to_string().into(),
        )
        .await
        .unwrap();
    // Up to the JetStream ack timeout (5 s) passes before the engine knows its append is
    // lost, within the watcher's wait.
    let joined = public.next().await;
    assert_eq!(proxy.cuts(), 1, "the connection was cut at the event");
    assert_eq!(joined.name, "player_joined");
    assert_eq!(joined.data["name"], "Ann", "{:?}", joined.data);
    // Ann is seated once: a second join under her name is refused.
    h.refuses(&code, join, "name_taken").await;
}

/// Without message ids a step appended twice is stored twice (docs/durability.md, step 6),
/// and a stale copy can land after newer steps. Once the log has trimmed what came between,
/// that copy is its oldest message: read as history, it would join the steps after it as if
/// none had come between. Only the run of consecutive ids after the gap is read.
#[tokio::test]
async fn a_stale_copy_at_the_start_of_the_log_is_not_read_as_history() {
    use game_engine::outgoing::Audience;
    use game_engine::store::{Logged, Store, StoreLimits};
    let nats = test_support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let limits = StoreLimits {
        replicas: 1,
        retention: Duration::from_secs(3600),
        history: 3,
        max_bytes: None,
    };
    let store = Store::open(client, proto::StoreNames::new("game"), &limits)
        .await
        .unwrap();
    let code = proto::RoomCode::parse("STALE1234567").unwrap();
    let step = |ids: &[u64]| -> Vec<Logged> {
        ids.iter()
            .map(|&id| Logged {
                id,
                event: "chat".into(),
                audience: Audience::Public,
                data: serde_json::value::to_raw_value(&json!({"text": id})).unwrap(),
            })
            .collect()
    };
    // Steps 1-2, 3, 4, then a stale copy of 1-2, then 5 and 6: three messages kept.
    for ids in [&[1, 2][..], &[3], &[4], &[1, 2], &[5], &[6]] {
        let ack = store.send_append(&code, &step(ids)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .unwrap()
            .unwrap();
    }
    let read: Vec<u64> = store
        .read_log(&code)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(read, [5, 6], "not 1, 2, 5, 6: 3 and 4 are gone");
    assert_eq!(store.last_logged_id(&code).await.unwrap(), 6);
}
