//! What a browser does against the gateway, over HTTP exactly as the page does: create a
//! room, join it, send commands with the token, and open the room's event stream
//! (docs/protocol.md, section 11).

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{ensure, Context};
use proto::event::RoomSnapshot;
use proto::{PlayerId, RoomCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::timeout;

use crate::http::{HttpPool, Response};
use crate::sse::{self, Request, Sequence};

/// A player who joined: their id and the token the gateway wants with every request.
#[derive(Clone, Debug)]
pub struct Seat {
    pub player_id: PlayerId,
    pub token: String,
}

/// `POST /v1/rooms` with `settings` (a `CreateRoom`); the new room's code.
pub async fn create_room(pool: &HttpPool, settings: &Value) -> anyhow::Result<RoomCode> {
    let response = pool
        .post_json("/v1/rooms", None, &settings.to_string())
        .await?;
    let body = ok_json(&response, "create")?;
    Ok(RoomCode::parse(body["code"].as_str().unwrap_or_default())?)
}

/// `POST /v1/rooms/<code>/join` as `name`.
pub async fn join(pool: &HttpPool, code: &RoomCode, name: &str) -> anyhow::Result<Seat> {
    let response = pool
        .post_json(
            &format!("/v1/rooms/{code}/join"),
            None,
            &json!({ "name": name }).to_string(),
        )
        .await?;
    let body = ok_json(&response, "join")?;
    Ok(Seat {
        player_id: PlayerId::parse(body["player_id"].as_str().unwrap_or_default())?,
        token: body["token"].as_str().unwrap_or_default().to_owned(),
    })
}

/// The settings (a `CreateRoom`) of a room of `players`: a quarter of them mafia, one doctor
/// and one police when there are enough players, the rest citizens; `durations` as
/// `durations_ms`.
pub fn room_settings(players: u8, durations: &impl Serialize) -> Value {
    json!({
        "title": "bench", "total": players, "mafia": (players / 4).max(1),
        "doctor": u8::from(players >= 4), "police": u8::from(players >= 5),
        "durations_ms": durations,
    })
}

/// Creates a room with `settings` and joins `settings.total` players named `p0`, `p1`, …
/// (`p0` is the host).
pub async fn seat_room(pool: &HttpPool, settings: &Value) -> anyhow::Result<(RoomCode, Vec<Seat>)> {
    let code = create_room(pool, settings).await?;
    let mut seats = Vec::new();
    for n in 0..settings["total"].as_u64().unwrap_or(0) {
        seats.push(join(pool, &code, &format!("p{n}")).await?);
    }
    Ok((code, seats))
}

/// `POST /v1/rooms/<code>/commands` as the token's player. Any status is returned; only a
/// transport failure is an error.
pub async fn command(
    pool: &HttpPool,
    code: &RoomCode,
    token: &str,
    body: &Value,
) -> anyhow::Result<Response> {
    pool.post_json(
        &format!("/v1/rooms/{code}/commands"),
        Some(token),
        &body.to_string(),
    )
    .await
}

/// The body of a 200 reply, else an error quoting the refusal.
fn ok_json(response: &Response, what: &str) -> anyhow::Result<Value> {
    ensure_ok(response, what)?;
    response.json()
}

/// Fails, quoting the refusal, unless the reply is a 200.
pub fn ensure_ok(response: &Response, what: &str) -> anyhow::Result<()> {
    ensure!(
        response.status == 200,
        "{what} refused: HTTP {} {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    Ok(())
}

/// A room stream that has delivered its snapshot.
pub struct RoomStream {
    pub stream: sse::Stream,
    /// Has seen the snapshot: every later event must have a greater id.
    pub sequence: Sequence,
    /// The snapshot's id.
    pub snapshot_id: u64,
    pub snapshot: RoomSnapshot,
}

/// `GET /v1/rooms/<code>/events` with the token, from `source`; returns once the snapshot
/// arrived, the opening and the wait for the snapshot each within `limit`. Events after the
/// snapshot stay unread in the stream.
pub async fn room_events(
    gateway: SocketAddr,
    source: Ipv4Addr,
    code: &RoomCode,
    token: &str,
    limit: Duration,
) -> anyhow::Result<RoomStream> {
    let path = format!("/v1/rooms/{code}/events");
    let request = Request {
        target: gateway,
        source,
        path: &path,
        token: Some(token),
        last_event_id: None,
    };
    let mut stream = timeout(limit, sse::Stream::open(&request))
        .await
        .with_context(|| format!("GET {path}: no response head within {limit:?}"))?
        .with_context(|| format!("GET {path}"))?;
    let mut sequence = Sequence::default();
    let snapshot = timeout(limit, async {
        loop {
            let mut snapshot = None;
            let received = stream.read_frames(|frame| {
                if frame.event != "snapshot" {
                    return ControlFlow::Continue(());
                }
                sequence.observe(&frame);
                let parsed = serde_json::from_str::<RoomSnapshot>(frame.data)
                    .with_context(|| format!("room snapshot: {}", frame.data));
                snapshot = Some(parsed.map(|s| (frame.id, s)));
                ControlFlow::Break(())
            })?;
            if let Some(snapshot) = snapshot {
                return snapshot;
            }
            ensure!(received.open, "stream ended before its snapshot event");
            stream.readable().await?;
        }
    })
    .await
    .with_context(|| format!("GET {path}: no snapshot event within {limit:?}"))?
    .with_context(|| format!("GET {path}"))?;
    let (id, snapshot) = snapshot;
    Ok(RoomStream {
        stream,
        sequence,
        snapshot_id: id.context("a snapshot without an id")?,
        snapshot,
    })
}
