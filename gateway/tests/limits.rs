//! What a client that misbehaves costs: one that stops reading its stream, on either path
//! (served straight off the socket, or by hyper), one that dribbles a request body, one that
//! sends an oversized head. Each is cut off while well-behaved clients are served.

mod common;

use std::time::Duration;

use common::{metric, FakeStream, Publish, Setup, Sse, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const STALL: Duration = Duration::from_secs(1);

/// Opens a lobby stream with a tiny receive buffer, reads its response head, and returns the
/// socket unread from then on.
async fn stalled_client(s: &Setup, extra_headers: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(s.gateway.addr).await.unwrap();
    let request = format!("GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\n{extra_headers}\r\n");
    slow.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = timeout(WAIT, slow.read(&mut head)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    slow
}

/// Reads until the gateway ends the connection (the last chunk, or EOF, or a reset).
async fn until_ended(mut socket: TcpStream) {
    let mut tail = Vec::new();
    let mut sink = vec![0u8; 1 << 16];
    timeout(WAIT, async {
        while !tail.ends_with(b"0\r\n\r\n") {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => tail.extend_from_slice(&sink[..n]),
            }
            let keep = tail.len().saturating_sub(16);
            tail.drain(..keep);
        }
    })
    .await
    .expect("the stalled stream was ended");
}

async fn slow_consumers(s: &Setup) -> f64 {
    metric(
        &s.gateway.metrics().await,
        "phasecast_gateway_slow_consumer_disconnects_total",
    )
}

/// Publishes 16 MiB in steps a reading client keeps up with, checking that it does.
async fn flood_past(fake: &FakeStream, fast: &mut Sse) {
    let mut expected = fast.next().await.unwrap().id.unwrap();
    for _ in 0..256 {
        fake.send(Publish::Public {
            n: 4,
            size: 16 * 1024,
        });
        for _ in 0..4 {
            expected += 1;
            assert_eq!(fast.next().await.unwrap().id, Some(expected));
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_on_either_path_while_others_keep_up() {
    let s = Setup::new(|c| c.gateway.write_stall = STALL).await;
    // Without history: the stalled streams, which fall far behind, catch up with a snapshot
    // (a catch-up of megabytes would not fit a NATS message).
    let fake = FakeStream::start(&s, None, false).await;
    let before = slow_consumers(&s).await;
    // The direct path, and hyper's (a request with an Origin is the router's).
    let direct = stalled_client(&s, "").await;
    let routed = stalled_client(&s, "Origin: http://x\r\n").await;
    let mut fast = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    flood_past(&fake, &mut fast).await;
    // Neither stalled client has read a byte since its head: a write stall later, both
    // streams are dropped and counted (and not before: reading now would unblock them).
    common::poll_until("both stalled streams are dropped", || async {
        slow_consumers(&s).await >= before + 2.0
    })
    .await;
    until_ended(direct).await;
    until_ended(routed).await;
    // The reading client was never in danger.
    fake.send(Publish::Named("still"));
    assert_eq!(fast.until("still").await.event, "still");
}

#[tokio::test]
async fn a_client_reading_slowly_but_steadily_is_not_a_slow_consumer() {
    let s = Setup::new(|c| c.gateway.write_stall = STALL).await;
    let fake = FakeStream::start(&s, None, true).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(s.gateway.addr).await.unwrap();
    slow.write_all(b"GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut bite = [0u8; 4096];
    let mut seen = Vec::new();
    timeout(WAIT, async {
        while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
            let n = slow.read(&mut bite).await.unwrap();
            assert!(n > 0, "the stream was cut");
            seen.extend_from_slice(&bite[..n]);
        }
    })
    .await
    .expect("the snapshot arrives");
    // Four big events (NATS takes up to 1 MiB each) in one chunk, several times what the
    // sockets hold, read in small bites over a few stall periods: each write makes
    // progress, so the stream lives.
    fake.send(Publish::Public {
        n: 4,
        size: 768 << 10,
    });
    let mut seen = 0usize;
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    timeout(WAIT * 3, async {
        while seen < 3 << 20 {
            pace.tick().await;
            let n = slow.read(&mut bite).await.unwrap();
            assert!(n > 0, "the stream was cut while the client was reading");
            seen += n;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the whole event arrives: {seen} bytes seen"));
    // Still open: a later event arrives too.
    fake.send(Publish::Named("after"));
    let mut tail = Vec::new();
    timeout(WAIT, async {
        while !String::from_utf8_lossy(&tail).contains("after") {
            let n = slow.read(&mut bite).await.unwrap();
            assert!(n > 0, "the stream was cut");
            tail.extend_from_slice(&bite[..n]);
        }
    })
    .await
    .expect("the stream lives on");
}

#[tokio::test]
async fn a_dribbled_body_and_an_oversized_head_are_refused_and_others_are_served() {
    let s = Setup::new(|_| {}).await;
    // A command body announced as 100 bytes, of which one comes.
    let mut dribble = TcpStream::connect(s.gateway.addr).await.unwrap();
    dribble
        .write_all(
            b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    // A head of 64 KiB.
    let mut huge = TcpStream::connect(s.gateway.addr).await.unwrap();
    let padding = "x".repeat(64 * 1024);
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {padding}\r\n\r\n");
    let _ = huge.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = timeout(WAIT, huge.read_to_end(&mut answer))
        .await
        .expect("answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a head over the limit is refused: {answer:.80}"
    );

    // Meanwhile everyone else is served.
    let health = timeout(WAIT, reqwest::get(s.gateway.url("/healthz")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.status(), 200);

    // The dribbled body is given up on within the body timeout (10 s), with an answer.
    let mut answer = Vec::new();
    timeout(Duration::from_secs(15), dribble.read_to_end(&mut answer))
        .await
        .expect("the dribbled request was cut off")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:.200}");
}

/// Requests nobody should send: random bytes, valid ones mangled or cut short, oversized
/// heads, bodies that lie about their length, several requests in one write.
fn hostile_request(rng: &mut impl rand::Rng) -> Vec<u8> {
    const VALID: [&str; 3] = [
        "GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"title\":\"t\",\"total\":3,\"mafia\":1}",
        "GET /v1/rooms/Room1234/events?token=x HTTP/1.1\r\nHost: x\r\nOrigin: http://x\r\n\r\n",
    ];
    let valid = VALID[rng.random_range(0..VALID.len())].as_bytes().to_vec();
    match rng.random_range(0..6) {
        0 => (0..rng.random_range(1..4096)).map(|_| rng.random()).collect(),
        1 => {
            let mut mangled = valid;
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..mangled.len());
                mangled[at] = rng.random();
            }
            mangled
        }
        2 => valid[..rng.random_range(0..valid.len())].to_vec(),
        3 => {
            let pad = "x".repeat(rng.random_range(8_000..80_000));
            format!("GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n").into_bytes()
        }
        4 => b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{".to_vec(),
        _ => [valid.clone(), VALID[1].as_bytes().to_vec(), valid].concat(),
    }
}

#[tokio::test]
async fn hostile_requests_leave_the_gateway_serving_everyone_else() {
    use rand::SeedableRng;
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut watcher = Sse::connect(&s.gateway.url("/v1/lobby/events"), &[]).await;
    assert_eq!(watcher.next().await.unwrap().event, "snapshot");
    let seed = rand::random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const TRIES: usize = 1_000;
    for batch in 0..TRIES / 100 {
        let mut sent = Vec::new();
        for _ in 0..100 {
            let request = hostile_request(&mut rng);
            let addr = s.gateway.addr;
            sent.push(tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                let _ = socket.write_all(&request).await;
                let _ = socket.shutdown().await;
                // Read a little of whatever it answers (a stream would go on), then go.
                let mut answer = Vec::new();
                let _ = timeout(Duration::from_millis(300), socket.read_to_end(&mut answer)).await;
            }));
        }
        for client in sent {
            client.await.unwrap();
        }
        // Everyone else is still served: a health check, and the open stream's next event.
        let health = timeout(WAIT, reqwest::get(s.gateway.url("/healthz")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(health.status(), 200, "seed {seed}, after batch {batch}");
        fake.send(Publish::Public { n: 1, size: 8 });
        assert_eq!(watcher.next().await.unwrap().event, "tick", "seed {seed}");
    }
    eprintln!("{TRIES} hostile requests (seed {seed}); the gateway kept serving");
}
