//! SSE streams over real HTTP, fed through a real nats-server: ordering, resume, privacy,
//! slow consumers, outages, limits and scale.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{token, FakeStream, Publish, Setup, Sse, WAIT};
use proto::{PlayerId, RoomCode};
use rand::Rng;
use tokio::time::timeout;

fn room() -> RoomCode {
    RoomCode::parse("Room1234").unwrap()
}

/// Reads `stream` until id `last`, asserting ids are contiguous from the snapshot on.
async fn assert_contiguous(mut sse: Sse, last: u64) -> u64 {
    let snapshot = sse.next().await.expect("a snapshot first");
    assert_eq!(snapshot.event, "snapshot");
    let mut at = snapshot.id.unwrap();
    let first = at;
    while at < last {
        let ev = sse.next().await.expect("stream open");
        assert_eq!(ev.id, Some(at + 1), "contiguous after {at}");
        at += 1;
    }
    first
}

#[tokio::test]
async fn a_stream_starts_with_retry_and_snapshot_and_has_sse_headers() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    fake.send(Publish::Public { n: 3, size: 1 });
    let mut sse = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let first = sse.next().await.unwrap();
    assert_eq!(sse.retry, Some(2000), "retry: comes first");
    assert_eq!(first.event, "snapshot");
    fake.send(Publish::Public { n: 1, size: 1 });
    let live = sse.next().await.unwrap();
    assert_eq!(live.id, Some(first.id.unwrap() + 1));
    assert_eq!(live.event, "tick");
    sse.until_pings(2).await;
}

#[tokio::test]
async fn clients_joining_during_10000_events_each_see_contiguous_ids() {
    let s = Setup::new(|c| c.gateway.client_queue = 20_000).await;
    let fake = FakeStream::start(&s, None, true).await;
    const TOTAL: u64 = 10_000;
    let url = s.gateway.url("/v1/lobby/events");
    let mut clients = Vec::new();
    let mut published = 0;
    let mut rng = rand::rng();
    for _ in 0..20 {
        // Publish a random stretch, then connect one more client while events keep flowing.
        let n = rng.random_range(0..TOTAL / 20);
        fake.send(Publish::Public { n, size: 16 });
        published += n;
        let sse = Sse::connect(&url, &[]).await;
        clients.push(tokio::spawn(assert_contiguous(sse, TOTAL)));
    }
    fake.send(Publish::Public {
        n: TOTAL - published,
        size: 16,
    });
    let mut firsts = HashSet::new();
    for client in clients {
        firsts.insert(timeout(WAIT * 3, client).await.unwrap().unwrap());
    }
    assert!(
        firsts.len() > 1,
        "clients joined at different points: {firsts:?}"
    );
}

#[tokio::test]
async fn last_event_id_resumes_from_history_or_with_a_snapshot() {
    for history in [true, false] {
        let s = Setup::new(|_| {}).await;
        let fake = FakeStream::start(&s, None, history).await;
        fake.send(Publish::Public { n: 5, size: 1 });
        let url = s.gateway.url("/v1/lobby/events");
        let mut sse = Sse::connect(&url, &[]).await;
        assert_eq!(sse.next().await.unwrap().id, Some(5));
        fake.send(Publish::Public { n: 2, size: 1 });
        assert_eq!(sse.next().await.unwrap().id, Some(6));
        drop(sse);
        fake.send(Publish::Public { n: 3, size: 1 });
        let mut resumed = Sse::connect(&url, &[("Last-Event-ID", "6")]).await;
        let first = resumed.next().await.unwrap();
        if history {
            assert_eq!((first.id, first.event.as_str()), (Some(7), "tick"));
            assert_eq!(resumed.next().await.unwrap().id, Some(8));
        } else {
            assert_eq!((first.id, first.event.as_str()), (Some(10), "snapshot"));
        }
        // A malformed Last-Event-ID is no resume at all: a fresh snapshot.
        let mut fresh = Sse::connect(&url, &[("Last-Event-ID", "banana")]).await;
        assert_eq!(fresh.next().await.unwrap().event, "snapshot");
        if history {
            // A page whose EventSource gave up resumes with the query parameter; the header
            // wins over it.
            let by_query = format!("{url}?last_event_id=8");
            let mut resumed = Sse::connect(&by_query, &[]).await;
            assert_eq!(resumed.next().await.unwrap().id, Some(9));
            let mut header_wins = Sse::connect(&by_query, &[("Last-Event-ID", "9")]).await;
            assert_eq!(header_wins.next().await.unwrap().id, Some(10));
        }
    }
}

#[tokio::test]
async fn a_player_never_receives_another_players_private_events() {
    let s = Setup::new(|_| {}).await;
    let code = room();
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let bob = PlayerId::parse("bob12345").unwrap();
    let url = s.gateway.url(&format!("/v1/rooms/{code}/events"));
    let ann_token = token(&code, &ann, 60);
    let bob_token = token(&code, &bob, 60);
    let mut a = Sse::connect(&url, &[("Authorization", &format!("Bearer {ann_token}"))]).await;
    let mut b = Sse::connect(&format!("{url}?token={bob_token}"), &[]).await;
    assert_eq!(a.next().await.unwrap().event, "snapshot");
    assert_eq!(b.next().await.unwrap().event, "snapshot");
    fake.send(Publish::Private(ann.clone()));
    fake.send(Publish::Public { n: 1, size: 1 });
    fake.send(Publish::Private(bob.clone()));
    fake.send(Publish::Public { n: 1, size: 1 });
    let mut got_a = Vec::new();
    for _ in 0..3 {
        let ev = a.next().await.unwrap();
        got_a.push((ev.id.unwrap(), ev.data));
    }
    let mut got_b = Vec::new();
    for _ in 0..3 {
        let ev = b.next().await.unwrap();
        got_b.push((ev.id.unwrap(), ev.data));
    }
    assert_eq!(got_a.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(got_b.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(got_a[0].1.contains("ann12345") && !got_a.iter().any(|e| e.1.contains("bob")));
    assert!(got_b[1].1.contains("bob12345") && !got_b.iter().any(|e| e.1.contains("ann")));
    // Resuming replays only the resumer's own private events.
    drop(a);
    let mut again = Sse::connect(
        &url,
        &[
            ("Authorization", &format!("Bearer {ann_token}")),
            ("Last-Event-ID", "0"),
        ],
    )
    .await;
    let ids: Vec<u64> = [again.next().await, again.next().await, again.next().await]
        .into_iter()
        .map(|e| e.unwrap().id.unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 4]);
}

#[tokio::test]
async fn every_auth_failure_has_its_status_and_a_json_body() {
    let s = Setup::new(|c| c.gateway.request_timeout = Duration::from_millis(300)).await;
    let code = room();
    let ann = PlayerId::parse("ann12345").unwrap();
    let url = s.gateway.url(&format!("/v1/rooms/{code}/events"));
    let other = RoomCode::parse("Other123").unwrap();
    let cases = [
        (None, 401, "unauthorized"),
        (Some("not.a.jwt".to_owned()), 401, "unauthorized"),
        (Some(token(&code, &ann, -10)), 401, "unauthorized"),
        (Some(token(&other, &ann, 60)), 403, "forbidden"),
    ];
    for (tok, status, code_) in cases {
        let headers: Vec<(&str, String)> = tok
            .iter()
            .map(|t| ("Authorization", format!("Bearer {t}")))
            .collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sse = Sse::connect(&url, &headers).await;
        assert_eq!(sse.status, status, "{tok:?}");
        let body = sse.error_body().await;
        assert_eq!(body["error"], code_);
        assert!(body["message"].is_string());
    }

    // A valid token for a room no engine holds: 404.
    let bearer = format!("Bearer {}", token(&code, &ann, 60));
    let sse = Sse::connect(&url, &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 404);
    assert_eq!(sse.error_body().await["error"], "no_such_room");
    // A room whose engine does not answer in time: 504.
    let _silent = s
        .client
        .subscribe(s.subjects.room_snap(&code))
        .await
        .unwrap();
    test_support::server_has_read(&s.client).await;
    let sse = Sse::connect(&url, &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 504);
    assert_eq!(sse.error_body().await["error"], "timeout");
}

#[tokio::test]
async fn nats_down_is_503_with_retry_after_and_readyz_follows() {
    let mut s = Setup::new(|_| {}).await;
    let http = reqwest::Client::new();
    s.nats.stop();
    let readyz = s.gateway.url("/readyz");
    common::poll_until("readyz says 503", || common::refused(&readyz)).await;
    let down = timeout(WAIT, http.get(&readyz).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    let sse = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    assert_eq!(sse.status, 503);
    assert!(sse.headers.contains_key("retry-after"));
    assert_eq!(sse.error_body().await["error"], "unavailable");
    let r = timeout(WAIT, http.get(s.gateway.url("/healthz")).send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200, "still alive, just not ready");
    s.nats.restart();
    s.gateway.wait_ready().await;
}

#[tokio::test]
async fn a_slow_first_snapshot_is_followed_by_everything_published_meanwhile() {
    // A ring of 8 and 200 events while the engine takes its time over the snapshot: the
    // stream falls far behind before it has sent a byte, and catches up rather than ending.
    let s = Setup::new(|c| c.gateway.client_queue = 8).await;
    let fake = FakeStream::start(&s, None, true).await;
    fake.send(Publish::Public { n: 3, size: 1 });
    fake.send(Publish::HoldSnaps);
    let url = s.gateway.url("/v1/lobby/events");
    let connecting = tokio::spawn(async move { Sse::connect(&url, &[]).await });
    common::poll_until("the snapshot request reaches the engine", || async {
        // The stand-in's own probes send `{}`; a stream's request names `since`.
        (fake.snap_requests.lock().unwrap().iter()).any(|r| r.get("since").is_some())
    })
    .await;
    fake.send(Publish::Public { n: 200, size: 64 });
    fake.send(Publish::ReleaseSnaps);
    let sse = timeout(WAIT, connecting).await.unwrap().unwrap();
    let first = assert_contiguous(sse, 203).await;
    assert_eq!(
        first, 3,
        "the snapshot as of the request, then ids 4 to 203"
    );
    assert!(
        fake.catch_up_requests().iter().any(|r| r["since"] == 3),
        "what the ring could not hold was fetched"
    );
}

#[tokio::test]
async fn after_a_nats_restart_each_topic_catches_up_once_for_all_its_streams() {
    let mut s = Setup::new(|_| {}).await;
    let lobby = FakeStream::start(&s, None, true).await;
    let code = room();
    let game = FakeStream::start(&s, Some(code.clone()), true).await;
    let (ann, bob) = (
        PlayerId::parse("ann12345").unwrap(),
        PlayerId::parse("bob12345").unwrap(),
    );
    lobby.send(Publish::Public { n: 2, size: 1 });
    game.send(Publish::Public { n: 2, size: 1 });
    // 20 lobby streams, and two tabs each for two players of a room.
    let url = s.gateway.url("/v1/lobby/events");
    let mut lobby_streams = Vec::new();
    for _ in 0..20 {
        let mut sse = Sse::connect(&url, &[]).await;
        assert_eq!(sse.next().await.unwrap().id, Some(2));
        lobby_streams.push(sse);
    }
    let room_url = s.gateway.url(&format!("/v1/rooms/{code}/events"));
    let mut room_streams = Vec::new();
    for player in [&ann, &bob, &ann, &bob] {
        let bearer = format!("Bearer {}", token(&code, player, 60));
        let mut sse = Sse::connect(&room_url, &[("Authorization", &bearer)]).await;
        assert_eq!(sse.next().await.unwrap().id, Some(2));
        room_streams.push(sse);
    }

    s.nats.stop();
    let client = s.client.clone();
    common::poll_until("the stand-ins see the outage", || {
        let state = client.connection_state();
        async move { state != async_nats::connection::State::Connected }
    })
    .await;
    lobby.send(Publish::Public { n: 3, size: 1 });
    game.send(Publish::Public { n: 3, size: 1 });
    game.send(Publish::Private(ann.clone()));
    s.nats.restart();
    s.gateway.wait_ready().await;
    for sse in &mut lobby_streams {
        for id in 3..=5 {
            assert_eq!(sse.next().await.unwrap().id, Some(id), "nothing lost");
        }
    }
    for (i, sse) in room_streams.iter_mut().enumerate() {
        let ids: Vec<_> = [
            sse.next().await.unwrap(),
            sse.next().await.unwrap(),
            sse.next().await.unwrap(),
        ]
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
        assert_eq!(ids, [3, 4, 5]);
        if i % 2 == 0 {
            assert_eq!(sse.next().await.unwrap().id, Some(6), "Ann's private event");
        }
    }
    assert_eq!(
        lobby.catch_up_requests().len(),
        1,
        "one catch-up for the 20 lobby streams: {:?}",
        lobby.catch_up_requests()
    );
    let mut viewers: Vec<String> = (game.catch_up_requests().iter())
        .map(|r| r["viewer"].as_str().unwrap().to_owned())
        .collect();
    viewers.sort();
    assert_eq!(
        viewers,
        ["ann12345", "bob12345"],
        "one per player, not one per tab"
    );
}

#[tokio::test]
async fn no_client_loses_an_event_when_nats_restarts_mid_stream() {
    let mut s = Setup::new(|_| {}).await;
    let code = room();
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let url = s.gateway.url(&format!("/v1/rooms/{code}/events"));
    let bearer = format!("Bearer {}", token(&code, &ann, 60));
    let mut room_client = Sse::connect(&url, &[("Authorization", &bearer)]).await;
    assert_eq!(room_client.next().await.unwrap().id, Some(0));
    fake.send(Publish::Public { n: 10, size: 8 });
    for id in 1..=10 {
        assert_eq!(room_client.next().await.unwrap().id, Some(id));
    }

    s.nats.stop();
    // Once the stand-in engine knows NATS is gone, what it publishes reaches nobody live.
    let client = s.client.clone();
    common::poll_until("the stand-in sees the outage", || {
        let state = client.connection_state();
        async move { state != async_nats::connection::State::Connected }
    })
    .await;
    fake.send(Publish::Public { n: 5, size: 8 });
    fake.send(Publish::Private(ann.clone()));
    s.nats.restart();
    s.gateway.wait_ready().await;
    fake.send(Publish::Public { n: 5, size: 8 });
    for id in 11..=21 {
        let ev = room_client.next().await.expect("the stream stayed open");
        assert_eq!(ev.id, Some(id), "nothing lost, nothing repeated");
    }
}

#[tokio::test]
async fn malformed_events_are_dropped_and_counted() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut sse = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    sse.next().await.unwrap();
    fake.send(Publish::Malformed);
    fake.send(Publish::Public { n: 1, size: 1 });
    let next = sse.next().await.unwrap();
    assert_eq!((next.id, next.event.as_str()), (Some(1), "tick"));
}

#[tokio::test]
async fn the_connection_limit_answers_503_with_retry_after() {
    let s = Setup::new(|c| c.gateway.max_connections = 2).await;
    let _fake = FakeStream::start(&s, None, true).await;
    let url = s.gateway.url("/v1/lobby/events");
    let mut a = Sse::connect(&url, &[]).await;
    let mut b = Sse::connect(&url, &[]).await;
    a.next().await.unwrap();
    b.next().await.unwrap();
    let c = Sse::connect(&url, &[]).await;
    assert_eq!(c.status, 503);
    assert!(c.headers.contains_key("retry-after"));
    assert_eq!(c.error_body().await["error"], "unavailable");
    drop(a);
    // The freed slot is usable again once the gateway has seen the disconnect.
    common::poll_until("a slot frees up", || async {
        Sse::connect(&url, &[]).await.status == 200
    })
    .await;
}

#[tokio::test]
async fn one_gateway_serves_1000_streams_from_one_subscription() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let url = s.gateway.url("/v1/lobby/events");
    let mut streams = Vec::new();
    for _ in 0..1000 {
        let mut sse = Sse::connect(&url, &[]).await;
        assert_eq!(sse.next().await.unwrap().event, "snapshot");
        streams.push(sse);
    }
    fake.send(Publish::Public { n: 3, size: 64 });
    for sse in &mut streams {
        for id in 1..=3 {
            assert_eq!(sse.next().await.unwrap().id, Some(id));
        }
    }
}

#[tokio::test]
async fn a_room_stream_ends_after_room_closed_and_a_lower_snapshot_still_resets() {
    let s = Setup::new(|_| {}).await;
    let code = room();
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let url = format!(
        "{}?token={}",
        s.gateway.url(&format!("/v1/rooms/{code}/events")),
        token(&code, &ann, 60)
    );
    // A client that saw id 500 of an engine that has restarted (now at 3) gets its snapshot.
    fake.send(Publish::Public { n: 3, size: 1 });
    let mut sse = Sse::connect(&url, &[("Last-Event-ID", "500")]).await;
    let snapshot = sse.next().await.unwrap();
    assert_eq!(
        (snapshot.event.as_str(), snapshot.id),
        ("snapshot", Some(3))
    );
    fake.send(Publish::Public { n: 1, size: 1 });
    assert_eq!(
        sse.next().await.unwrap().id,
        Some(4),
        "live events follow the snapshot"
    );
    fake.send(Publish::Named("room_closed"));
    assert_eq!(sse.next().await.unwrap().event, "room_closed");
    assert!(sse.next().await.is_none(), "nothing follows room_closed");
}

/// Reads events until the first `snapshot`, which it returns; fails on one that is not
/// numbered above the previous one (no event may be lost or repeated on the way).
async fn until_snapshot(sse: &mut Sse, mut last: u64) -> common::SseEvent {
    loop {
        let event = sse.next().await.expect("the stream stays open");
        if event.event == "snapshot" {
            return event;
        }
        let id = event.id.expect("an id");
        assert!(id > last, "{id} after {last}, before any snapshot");
        last = id;
    }
}

#[tokio::test]
async fn a_backend_counting_again_from_an_earlier_id_sends_its_streams_to_a_snapshot() {
    let s = Setup::new(|_| {}).await;
    let code = room();
    let ann = PlayerId::parse("ann12345").unwrap();
    let url = format!(
        "{}?token={}",
        s.gateway.url(&format!("/v1/rooms/{code}/events")),
        token(&code, &ann, 60)
    );
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let mut sse = Sse::connect(&url, &[]).await;
    assert_eq!(sse.next().await.unwrap().id, Some(0));
    fake.send(Publish::Public { n: 10, size: 1 });
    for id in 1..=10 {
        assert_eq!(sse.next().await.unwrap().id, Some(id));
    }
    // The backend restarts without its history and numbers other events from 1 again: id 1
    // is one the gateway still remembers, with other bytes.
    drop(fake);
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    fake.send(Publish::Public { n: 3, size: 2 });
    let snapshot = until_snapshot(&mut sse, 10).await;
    let at = snapshot.id.unwrap();
    assert!(at <= 3, "the new backend's snapshot (id {at})");
    fake.send(Publish::Public { n: 1, size: 2 });
    for id in at + 1..=4 {
        assert_eq!(
            sse.next().await.unwrap().id,
            Some(id),
            "live after the reset"
        );
    }
}

#[tokio::test]
async fn ids_back_further_than_remembered_reset_and_a_late_old_event_does_not() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut sse = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    assert_eq!(sse.next().await.unwrap().id, Some(0));
    fake.send(Publish::Public { n: 100, size: 1 });
    for id in 1..=100 {
        assert_eq!(sse.next().await.unwrap().id, Some(id));
    }
    // An old event published late (as an engine catching up with the lobby does): the
    // backend, asked, is at 100, so nothing is reset and the stream goes on at 101.
    let asked = fake.snap_requests.lock().unwrap().len();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(proto::headers::SSE_ID, "50");
    headers.insert(proto::headers::SSE_EVENT, "tick");
    let lobby = s.subjects.lobby_events();
    s.client
        .publish_with_headers(lobby, headers, "{\"late\":1}".into())
        .await
        .unwrap();
    common::poll_until("the gateway asks the backend where it is", || async {
        fake.snap_requests.lock().unwrap().len() > asked
    })
    .await;
    fake.send(Publish::Public { n: 1, size: 1 });
    assert_eq!(sse.next().await.unwrap().id, Some(101));
    // The backend restarts from nothing: ids 1.. are far below what the gateway remembers,
    // and the backend says it is at 3, twice.
    drop(fake);
    let fake = FakeStream::start(&s, None, true).await;
    fake.send(Publish::Public { n: 3, size: 2 });
    let snapshot = until_snapshot(&mut sse, 101).await;
    assert_eq!(snapshot.id, Some(3), "the new backend's snapshot");
    fake.send(Publish::Public { n: 1, size: 2 });
    assert_eq!(
        sse.next().await.unwrap().id,
        Some(4),
        "live after the reset"
    );
}

#[tokio::test]
async fn public_and_private_events_reach_a_player_in_publication_order() {
    let s = Setup::new(|c| c.gateway.client_queue = 20_000).await;
    let code = room();
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let url = format!(
        "{}?token={}",
        s.gateway.url(&format!("/v1/rooms/{code}/events")),
        token(&code, &ann, 60)
    );
    let mut sse = Sse::connect(&url, &[]).await;
    assert_eq!(sse.next().await.unwrap().id, Some(0));
    // Two subscriptions (public and private) feed this stream; their merge must keep order.
    const N: u64 = 10_000;
    fake.send(Publish::Interleaved { n: N, player: ann });
    for id in 1..=N {
        assert_eq!(
            sse.next().await.unwrap().id,
            Some(id),
            "in order, nothing dropped"
        );
    }
}

/// A backend written from PROTOCOL.md alone: it answers snapshot requests with
/// `{"events": [...]}` and no `"ok"`, and puts the viewer it was asked for in the data.
async fn contract_backend(s: &Setup, subject: String) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let mut requests = s.client.subscribe(subject.clone()).await.unwrap();
    test_support::server_has_read(&s.client).await;
    let client = s.client.clone();
    let backend = tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            let request: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            let reply = serde_json::json!({"events": [{"id": 7, "event": "snapshot",
                "data": {"viewer": request["viewer"], "rooms": []}}]});
            let to = msg.reply.unwrap();
            client.publish(to, reply.to_string().into()).await.unwrap();
        }
    });
    // It answers before any test relies on it.
    let probe = s.client.request(subject, "{}".into());
    timeout(WAIT, probe).await.unwrap().unwrap();
    backend
}

#[tokio::test]
async fn a_snapshot_reply_exactly_as_the_contract_writes_it_is_served() {
    let s = Setup::new(|_| {}).await;
    let _backend = contract_backend(&s, s.subjects.lobby_snap()).await;
    let mut sse = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    let snapshot = sse.next().await.expect("a snapshot");
    assert_eq!(
        (snapshot.id, snapshot.event.as_str()),
        (Some(7), "snapshot")
    );
    assert_eq!(snapshot.json()["rooms"], serde_json::json!([]));
}

/// Two players of one room in one browser: one cookie jar, holding the token of whoever
/// joined last. A tab that names its own token is served as its own player.
#[tokio::test]
async fn the_token_a_tab_names_beats_the_shared_cookie() {
    let s = Setup::new(|_| {}).await;
    let _backend = contract_backend(&s, s.subjects.room_snap(&room())).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let bob = PlayerId::parse("bob12345").unwrap();
    let cookie = format!("phasecast_token={}", token(&room(), &bob, 60));
    let url = s.gateway.url(&format!("/v1/rooms/{}/events", room()));
    let viewer = |mut sse: Sse| async move { sse.next().await.unwrap().json()["viewer"].clone() };

    let named = Sse::connect(
        &format!("{url}?token={}", token(&room(), &ann, 60)),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(viewer(named).await, serde_json::json!(ann), "?token= wins");
    let header = Sse::connect(
        &url,
        &[
            ("cookie", &cookie),
            (
                "authorization",
                &format!("Bearer {}", token(&room(), &ann, 60)),
            ),
        ],
    )
    .await;
    assert_eq!(
        viewer(header).await,
        serde_json::json!(ann),
        "Authorization wins"
    );
    let ambient = Sse::connect(&url, &[("cookie", &cookie)]).await;
    assert_eq!(
        viewer(ambient).await,
        serde_json::json!(bob),
        "else the cookie"
    );
}
