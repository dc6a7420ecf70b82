//! Resume with `since`, the lobby's events and snapshots, and the engine's own endpoints.

mod common;

use common::{fast_room, Harness};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn since_replays_what_the_viewer_missed_while_history_holds_it() {
    let h = Harness::start().await;
    let code = h.room(fast_room(5, 1, 1, 1)).await;
    let ann = h.join(&code, "Ann").await;
    let fresh = h.snap(&code, Some(&ann), None).await;
    let at = fresh["events"][0]["id"].as_u64().unwrap();
    assert_eq!(fresh["events"][0]["event"], "snapshot");

    let bob = h.join(&code, "Bob").await;
    h.ok(
        &code,
        json!({"type": "chat", "player": bob, "text": "hello"}),
    )
    .await;
    let resumed = h.snap(&code, Some(&ann), Some(at)).await;
    let events: Vec<(u64, &str)> = resumed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(events, [(at + 1, "player_joined"), (at + 2, "chat")]);
    assert_eq!(resumed["events"][1]["data"]["text"], "hello");
    let up_to_date = h.snap(&code, Some(&ann), Some(at + 2)).await;
    assert_eq!(up_to_date["events"], json!([]));
}

#[tokio::test]
async fn since_beyond_history_falls_back_to_a_snapshot() {
    let h = Harness::start_with(|c| c.engine.history = 3).await;
    let code = h.room(fast_room(5, 1, 1, 1)).await;
    let ann = h.join(&code, "Ann").await;
    for n in 0..5 {
        h.ok(
            &code,
            json!({"type": "chat", "player": ann, "text": format!("line {n}")}),
        )
        .await;
    }
    let reply = h.snap(&code, Some(&ann), Some(1)).await;
    let events = reply["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "snapshot");
    assert_eq!(events[0]["id"], 6);
    let chat: Vec<&str> = events[0]["data"]["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    // A snapshot's chat comes from the history: the lines among its last three events.
    assert_eq!(chat, ["line 2", "line 3", "line 4"]);
    // The last three events are still there.
    let recent = h.snap(&code, Some(&ann), Some(3)).await;
    assert_eq!(recent["events"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_lobby_follows_rooms_as_they_open_fill_start_and_close() {
    let h = Harness::start().await;
    let mut lobby = h.watch_lobby().await;
    let hidden = h
        .room(json!({"title": "secret", "total": 3, "mafia": 1, "private": true}))
        .await;
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    let opened = lobby.next().await;
    assert_eq!(opened.name, "room_opened", "a private room is never listed");
    assert_eq!(
        opened.data,
        json!({"code": code, "title": "test room", "total": 3, "players": 0, "phase": "waiting"})
    );

    let mut ids = Vec::new();
    for (n, name) in ["Ann", "Bob", "Cat"].into_iter().enumerate() {
        ids.push(h.join(&code, name).await);
        let updated = lobby.until("room_updated", |_| true).await;
        assert_eq!(updated.data["players"], n + 1);
    }
    h.join(&hidden, "Zed").await;
    let listed = h.lobby_snap(None).await;
    let snapshot = &listed["events"][0];
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["data"]["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot["data"]["rooms"][0]["players"], 3);

    h.ok(&code, json!({"type": "start", "player": ids[0]}))
        .await;
    let started = lobby.until("room_updated", |_| true).await;
    assert_eq!(started.data["phase"], "playing");
    // Everyone leaves mid-game: the game runs to its end (no mafia left alive) and closes.
    for id in &ids {
        h.ok(&code, json!({"type": "leave", "player": id})).await;
    }
    let ended = lobby.until("room_updated", |d| d["phase"] == "ended").await;
    assert_eq!(ended.data["players"], 0);
    let closed = lobby.until("room_closed", |_| true).await;
    assert_eq!(closed.data, json!({"code": code}));

    // Resuming the lobby replays exactly what followed.
    let since = opened.id;
    let replay = h.lobby_snap(Some(since)).await;
    let replayed: Vec<u64> = replay["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    let watched: Vec<u64> = lobby.seen.iter().skip(1).map(|e| e.id).collect();
    assert_eq!(replayed, watched);
}

/// A store that lost acknowledged lobby writes hands their revisions to other listings
/// (nats-server 2.9.10 has done so on a cluster: docs/durability.md). Emulated here by
/// deleting the lobby bucket's stream and creating it again empty.
#[tokio::test]
async fn a_lobby_bucket_that_went_back_is_read_again() {
    let h = Harness::start().await;
    let mut events = h.client.subscribe(h.subjects.lobby_events()).await.unwrap();
    test_support::server_has_read(&h.client).await;
    let mut before = 0;
    for _ in 0..8 {
        let code = h.room(fast_room(4, 1, 0, 0)).await;
        before = announced(&mut events, &code).await;
        h.join(&code, "Ann").await;
        h.join(&code, "Bob").await;
        // Answered once the room has written (and checked) the listings of both joins.
        h.snap(&code, None, None).await;
    }
    // A room's own listings are no loss, whichever comes first, the watch's copy or the ack
    // (the unit tests in lobby.rs force the order; under load the watch is often first).
    assert_eq!(lobby_restarts(&h).await, Some(0));

    let js = async_nats::jetstream::new(h.client.clone());
    let name = format!("KV_{}", proto::StoreNames::new("game").lobby_bucket());
    let config = js
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    js.delete_stream(&name).await.unwrap();
    js.create_stream(config).await.unwrap();

    // Its listing is written at revision 1, which the engine has seen already: it reads the
    // lobby again, from the bucket as it is now.
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    assert_eq!(announced(&mut events, &code).await, 1);
    let snap = h.lobby_snap(None).await;
    let rooms = snap["events"][0]["data"]["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "only what the bucket holds now: {rooms:?}");
    assert_eq!(rooms[0]["code"], json!(code));
    let id = snap["events"][0]["id"].as_u64().unwrap();
    assert!(
        id < before,
        "the snapshot's id ({id}) is the bucket's, below {before}"
    );
    assert_eq!(lobby_restarts(&h).await, Some(1));
}

/// `phasecast_engine_lobby_restarts_total`, as the engine serves it (no other test in this
/// binary makes its lobby start again).
async fn lobby_restarts(h: &Harness) -> Option<u64> {
    let metrics = h.admin_get("/metrics").await;
    common::metric_value(&metrics, "phasecast_engine_lobby_restarts_total").map(|n| n as u64)
}

/// The id of the lobby event that announces room `code`, from a raw subscription (lobby ids
/// here go back, which a [`common::Watcher`] refuses).
async fn announced(events: &mut async_nats::Subscriber, code: &proto::RoomCode) -> u64 {
    use futures::StreamExt;
    let msg = tokio::time::timeout(common::WAIT, async {
        loop {
            let msg = events.next().await.expect("subscription open");
            let data: Value = serde_json::from_slice(&msg.payload).unwrap();
            if data["code"] == json!(code) {
                return msg;
            }
        }
    })
    .await
    .expect("the room announced in time");
    let headers = msg.headers.expect("events carry headers");
    headers
        .get(proto::headers::SSE_ID)
        .unwrap()
        .as_str()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_empty_waiting_room_closes_and_the_host_moves_on() {
    let h = Harness::start().await;
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    let mut public = h.watch(&code, None).await;
    let ann = h.join(&code, "Ann").await;
    let bob = h.join(&code, "Bob").await;
    h.ok(&code, json!({"type": "leave", "player": ann})).await;
    let left = public.until("player_left", |_| true).await;
    assert_eq!(
        left.data["host"],
        json!(bob),
        "the next player becomes host"
    );
    // The last player leaves, and more commands are already on their way: the room closes
    // with them queued, and answers them (no such room) rather than leaving them unanswered.
    let leave = json!({"type": "leave", "player": bob});
    let late = json!({"type": "chat", "player": bob, "text": "still here?"});
    let bodies = std::iter::once(leave).chain(vec![late; 5]);
    let mut replies = common::send_requests(&h.client, h.subjects.room_cmd(&code), bodies).await;
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 6 {
        let reply = tokio::time::timeout(common::WAIT, replies.next()).await;
        let reply = reply.expect("every command is answered").unwrap();
        let body: Value = serde_json::from_slice(&reply.payload).unwrap();
        answers.insert(reply.subject.to_string(), body);
    }
    let answers: Vec<&Value> = answers.values().collect();
    assert_eq!(answers[0]["ok"], true, "the leave: {}", answers[0]);
    for late in &answers[1..] {
        assert_eq!(late["error"], "no_such_room", "{late}");
    }
    public.until("room_closed", |_| true).await;
    // The watcher's wildcard covers the command subject too; stop it before asking.
    drop(public);
    h.client.flush().await.unwrap();
    // The room is gone: nobody answers its subject any more.
    let gone = h
        .client
        .request(h.subjects.room_cmd(&code), "{}".into())
        .await;
    assert!(matches!(
        gone.unwrap_err().kind(),
        async_nats::RequestErrorKind::NoResponders
    ));
    // A gateway that missed the end (cut off from NATS meanwhile) still gets it when it asks.
    let missed = h
        .client
        .request(
            h.subjects.room_snap(&code),
            json!({"viewer": null, "since": 0}).to_string().into(),
        )
        .await
        .expect("a closed room answers catch-ups for a while");
    let missed: Value = serde_json::from_slice(&missed.payload).unwrap();
    let names: Vec<&str> = missed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"room_closed"), "{missed}");
    // A stream that had `room_closed` and reconnects from its id (a browser's EventSource
    // does) is told the room is gone, rather than answered with nothing to send.
    let closed_id = missed["events"].as_array().unwrap().last().unwrap()["id"].clone();
    let after_end = h
        .client
        .request(
            h.subjects.room_snap(&code),
            json!({"viewer": null, "since": closed_id})
                .to_string()
                .into(),
        )
        .await
        .expect("answered");
    let after_end: Value = serde_json::from_slice(&after_end.payload).unwrap();
    assert_eq!(after_end["error"], "no_such_room", "{after_end}");
}

#[tokio::test]
async fn metrics_and_health_are_served_and_shutdown_is_clean() {
    let mut h = Harness::start().await;
    let code = h.room(fast_room(3, 1, 0, 0)).await;
    h.join(&code, "Ann").await;
    let health = h.admin_get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let text = h.admin_get("/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"));
    for name in [
        "phasecast_engine_rooms{phase=\"waiting\"}",
        "phasecast_engine_players",
        "phasecast_engine_commands_total{type=\"join\",result=\"ok\"}",
        "phasecast_engine_command_seconds_bucket",
        "phasecast_engine_scheduler_lateness_seconds_bucket",
        "phasecast_engine_commit_seconds_bucket",
        "phasecast_engine_events_published_total",
        "phasecast_engine_nats_connected 1",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    h.shutdown().await;
}
