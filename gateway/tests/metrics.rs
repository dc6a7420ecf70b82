//! What `/metrics` reports, checked in a test binary of its own: the recorder is global to a
//! process, so no other test may move these numbers while this one reads them.

mod common;

use common::{metric, token, FakeStream, Publish, Setup, Sse};
use proto::{PlayerId, RoomCode};

/// Scrapes until `series` has `value`.
async fn eventually(setup: &Setup, series: &str, value: f64) {
    common::poll_until(&format!("{series} reaching {value}"), || async {
        metric(&setup.gateway.metrics().await, series) == value
    })
    .await;
}

// Two workers, so that streams ending together leave their topic from several threads at
// once: the last of them must still unsubscribe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_connections_subscriptions_and_failures() {
    let s = Setup::new(|c| c.gateway.max_connections = 5000).await;
    let scrape = s.gateway.metrics().await;
    assert_eq!(metric(&scrape, "phasecast_gateway_nats_connected"), 1.0);
    assert_eq!(
        metric(&scrape, "phasecast_gateway_connection_limit"),
        5000.0
    );

    // Many connections, one subscription; gone with the last connection.
    let fake = FakeStream::start(&s, None, true).await;
    let url = s.gateway.url("/v1/lobby/events");
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut sse = Sse::connect(&url, &[]).await;
        sse.next().await.unwrap();
        streams.push(sse);
    }
    let scrape = s.gateway.metrics().await;
    assert_eq!(
        metric(&scrape, "phasecast_gateway_connections{stream=\"lobby\"}"),
        50.0
    );
    assert_eq!(
        metric(
            &scrape,
            "phasecast_gateway_connections_opened_total{stream=\"lobby\"}"
        ),
        50.0
    );
    assert_eq!(metric(&scrape, "phasecast_gateway_nats_subscriptions"), 1.0);
    fake.send(Publish::Public { n: 2, size: 8 });
    fake.send(Publish::Malformed);
    fake.send(Publish::Public { n: 1, size: 8 });
    for sse in &mut streams {
        for id in 1..=3 {
            assert_eq!(sse.next().await.unwrap().id, Some(id));
        }
    }
    let scrape = s.gateway.metrics().await;
    // Three live events and one snapshot each.
    assert_eq!(
        metric(&scrape, "phasecast_gateway_events_delivered_total"),
        200.0
    );
    assert_eq!(
        metric(&scrape, "phasecast_gateway_events_malformed_total"),
        1.0
    );
    assert!(scrape.contains("phasecast_gateway_snapshot_seconds_count 50"));
    drop(streams);
    eventually(&s, "phasecast_gateway_nats_subscriptions", 0.0).await;
    eventually(&s, "phasecast_gateway_connections{stream=\"lobby\"}", 0.0).await;
    for _ in 0..5 {
        let mut streams = Vec::new();
        for _ in 0..50 {
            let mut sse = Sse::connect(&url, &[]).await;
            sse.next().await.unwrap();
            streams.push(sse);
        }
        drop(streams);
        eventually(&s, "phasecast_gateway_nats_subscriptions", 0.0).await;
    }

    // A room stream holds two subscriptions: public events, and its players' private ones.
    let code = RoomCode::parse("Room1234").unwrap();
    let _room = FakeStream::start(&s, Some(code.clone()), true).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let room_url = s.gateway.url(&format!("/v1/rooms/{code}/events"));
    let mut sse = Sse::connect(&format!("{room_url}?token={}", token(&code, &ann, 60)), &[]).await;
    sse.next().await.unwrap();
    let scrape = s.gateway.metrics().await;
    assert_eq!(metric(&scrape, "phasecast_gateway_nats_subscriptions"), 2.0);
    assert_eq!(
        metric(&scrape, "phasecast_gateway_connections{stream=\"room\"}"),
        1.0
    );

    // Auth failures by reason.
    let other = RoomCode::parse("Other123").unwrap();
    for (query, _) in [
        (String::new(), "missing"),
        ("?token=garbage".to_owned(), "invalid"),
        (format!("?token={}", token(&code, &ann, -5)), "expired"),
        (format!("?token={}", token(&other, &ann, 60)), "wrong_room"),
    ] {
        let refused = Sse::connect(&format!("{room_url}{query}"), &[]).await;
        assert!(refused.status == 401 || refused.status == 403);
    }
    let scrape = s.gateway.metrics().await;
    for reason in ["missing", "invalid", "expired", "wrong_room"] {
        let series = format!("phasecast_gateway_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&scrape, &series), 1.0, "{reason}");
    }
    assert!(!scrape.contains("Room1234"), "no room code in a label");
}
