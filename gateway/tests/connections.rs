//! How a connection reaches its stream. A stream that is a connection's first request is
//! served straight off the socket; every other way in (after another request on a kept-alive
//! connection, with an `Origin` to answer, with a head too long to parse by hand) goes through
//! hyper and the router. Each must give the same stream.

mod common;

use common::{token, FakeStream, Publish, Setup, WAIT};
use proto::{PlayerId, RoomCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const STREAM: &str = "GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\n";

/// Reads from `socket` until `received` holds `needle`; returns everything read up to it.
async fn read_until(socket: &mut TcpStream, received: &mut Vec<u8>, needle: &str) -> String {
    timeout(WAIT, async {
        while !String::from_utf8_lossy(received).contains(needle) {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(received)
            );
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in time"));
    let text = String::from_utf8_lossy(received).into_owned();
    let end = text.find(needle).unwrap() + needle.len();
    received.drain(..end);
    text[..end].to_owned()
}

/// Sends `head` and checks that a stream comes back: SSE headers, the snapshot, then a live
/// event. Returns the response head.
async fn assert_streams(fake: &FakeStream, socket: &mut TcpStream, head: &str) -> String {
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let response = read_until(socket, &mut received, "\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response
        .to_lowercase()
        .contains("content-type: text/event-stream"));
    read_until(socket, &mut received, "event: snapshot").await;
    let next = fake.published() + 1;
    fake.send(Publish::Public { n: 1, size: 8 });
    read_until(socket, &mut received, &format!("id: {next}\n")).await;
    response
}

#[tokio::test]
async fn a_stream_as_the_first_request_is_served_and_closes_its_connection_after() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    let head = assert_streams(&fake, &mut socket, &format!("{STREAM}\r\n")).await;
    assert!(head.to_lowercase().contains("transfer-encoding: chunked"));
    assert!(head.to_lowercase().contains("connection: close"));
}

#[tokio::test]
async fn a_stream_after_another_request_on_the_same_connection_is_served_too() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let health = read_until(&mut socket, &mut received, "ok\n").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert_streams(&fake, &mut socket, &format!("{STREAM}\r\n")).await;
}

#[tokio::test]
async fn a_stream_request_arriving_in_pieces_is_served() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let head = format!("{STREAM}Last-Event-ID: nonsense\r\n\r\n");
    let (first, rest) = head.split_at(7);
    socket.write_all(first.as_bytes()).await.unwrap();
    socket.flush().await.unwrap();
    assert_streams(&fake, &mut socket, rest).await;
}

#[tokio::test]
async fn a_stream_with_a_head_too_long_to_parse_by_hand_is_served_by_the_router() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    let cookie = "a".repeat(20 * 1024);
    let head = format!("{STREAM}Cookie: big={cookie}\r\n\r\n");
    assert_streams(&fake, &mut socket, &head).await;
}

#[tokio::test]
async fn a_cross_origin_stream_gets_its_cors_answer_from_the_router() {
    let s = Setup::new(|c| c.gateway.cors_origins = vec!["https://play.example".into()]).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    let head = format!("{STREAM}Origin: https://play.example\r\n\r\n");
    let response = assert_streams(&fake, &mut socket, &head).await;
    assert!(response
        .to_lowercase()
        .contains("access-control-allow-origin: https://play.example"));
}

#[tokio::test]
async fn a_refused_stream_is_a_json_error_with_its_status() {
    let s = Setup::new(|_| {}).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    socket
        .write_all(b"GET /v1/rooms/Room1234/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    timeout(WAIT, socket.read_to_end(&mut received))
        .await
        .expect("closed in time")
        .unwrap();
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text
        .to_lowercase()
        .contains("content-type: application/json"));
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn a_percent_encoded_room_code_is_decoded_by_the_router() {
    let s = Setup::new(|_| {}).await;
    let code = RoomCode::parse("Room1234").unwrap();
    let fake = FakeStream::start(&s, Some(code.clone()), true).await;
    let ann = PlayerId::parse("ann12345").unwrap();
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    let head = format!(
        "GET /v1/rooms/Room%31234/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token(&code, &ann, 60)
    );
    assert_streams(&fake, &mut socket, &head).await;
}

#[tokio::test]
async fn a_stream_client_that_sends_more_is_closed() {
    let s = Setup::new(|_| {}).await;
    let fake = FakeStream::start(&s, None, true).await;
    let mut socket = TcpStream::connect(s.gateway.addr).await.unwrap();
    assert_streams(&fake, &mut socket, &format!("{STREAM}\r\n")).await;
    socket.write_all(&[b'x'; 4096]).await.unwrap();
    let mut rest = Vec::new();
    // Ends rather than reads on forever; the close may come as a reset.
    let ended = timeout(WAIT, socket.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream was not closed");
}
