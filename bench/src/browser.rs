//! What a browser does against the gateway, over HTTP exactly as the page does: create a
//! room, join it, send commands with the token, and open the room's event stream
//! (docs/protocol.md, section 11).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context};
use proto::event::RoomSnapshot;
use proto::{PlayerId, RoomCode};
use serde_json::{json, Value};

use crate::http::{HttpPool, Response, SseItem, SseStream};

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
    ensure!(
        response.status == 200,
        "{what} refused: HTTP {} {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

/// A room stream that has delivered its snapshot.
pub struct RoomStream {
    pub sse: SseStream,
    /// The snapshot's id: every later event has a greater one.
    pub snapshot_id: u64,
    pub snapshot: RoomSnapshot,
}

/// `GET /v1/rooms/<code>/events` with the token, from `source`; returns once the snapshot
/// arrived, all within `limit`.
pub async fn room_events(
    gateway: SocketAddr,
    source: Ipv4Addr,
    code: &RoomCode,
    token: &str,
    limit: Duration,
) -> anyhow::Result<RoomStream> {
    let bearer = format!("Bearer {token}");
    let path = format!("/v1/rooms/{code}/events");
    let mut sse =
        SseStream::open(gateway, source, &path, &[("Authorization", &bearer)], limit).await?;
    let items = sse.until_event("snapshot", limit).await?;
    let Some(SseItem::Event { id, data, .. }) = items.into_iter().last() else {
        anyhow::bail!("GET {path}: no snapshot event");
    };
    let snapshot: RoomSnapshot =
        serde_json::from_str(&data).with_context(|| format!("room snapshot: {data}"))?;
    Ok(RoomStream {
        sse,
        snapshot_id: id.context("a snapshot without an id")?,
        snapshot,
    })
}
