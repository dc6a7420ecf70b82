//! The command bridge: browsers create rooms, join and act over HTTP; the gateway forwards to
//! the engine over NATS and relays its answer.
//!
//! The acting player is always the token's `sub`; a `player` field in the body is overwritten.

use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use metrics::histogram;
use proto::{CommandOk, ErrorCode, Rejection, Reply, RoomCode};
use serde_json::{Map, Value};

use crate::auth::{cookie_for, token_of};
use crate::error::ApiError;
use crate::metrics as m;
use crate::server::{nats_request, room_code, AppState};

/// `POST /v1/rooms`: forwards a `CreateRoom` to `game.lobby.create`.
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_object(body)?;
    let subject = state.subjects.lobby_create();
    relay(ask(&state, subject, body, None).await?)
}

/// `POST /v1/rooms/<code>/join`: `{"name"}` → `{"player_id", "token"}`, and the token cookie.
pub async fn join(
    State(state): State<AppState>,
    Path(code): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let code = room_code(&code)?;
    let mut body = json_object(body)?;
    body.insert("type".into(), "join".into());
    let reply = ask(&state, state.subjects.room_cmd(&code), body, Some(&code)).await?;
    let parsed: Result<CommandOk, Rejection> = serde_json::from_slice::<Reply<CommandOk>>(&reply)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("bad join reply: {e}")))?
        .into();
    let CommandOk::Joined { token, .. } = parsed? else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "join reply without a token",
        ));
    };
    let mut response = json_response(reply);
    let cookie = cookie_for(&code, &token, state.config.cookie_secure);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /v1/rooms/<code>/commands`: any command but `join`, as the token's player.
pub async fn command(
    State(state): State<AppState>,
    Path(code): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let code = room_code(&code)?;
    let claims = state
        .verifier
        .authorize(token_of(&headers, query.as_deref()).as_deref(), &code)?;
    let mut body = json_object(body)?;
    if body.get("type").and_then(Value::as_str) == Some("join") {
        return Err(ApiError::new(
            ErrorCode::UnknownCommand,
            "join with POST /v1/rooms/<code>/join",
        ));
    }
    body.insert("player".into(), claims.sub.as_str().into());
    relay(ask(&state, state.subjects.room_cmd(&code), body, Some(&code)).await?)
}

/// Sends a request to the engine, timing it for the command latency histogram.
async fn ask(
    state: &AppState,
    subject: String,
    body: Map<String, Value>,
    room: Option<&RoomCode>,
) -> Result<Bytes, ApiError> {
    let started = Instant::now();
    let body = serde_json::to_vec(&body).expect("a JSON map serialises");
    let reply = nats_request(state, subject, body.into(), room).await;
    histogram!(m::COMMAND_SECONDS).record(started.elapsed().as_secs_f64());
    reply
}

/// The engine's reply as the HTTP answer: 200 with its body, or its error's status.
fn relay(reply: Bytes) -> Result<Response, ApiError> {
    let tagged: Reply<Value> = serde_json::from_slice(&reply)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("bad engine reply: {e}")))?;
    match tagged {
        Reply::Ok(_) => Ok(json_response(reply)),
        Reply::Err(rejection) => Err(rejection.into()),
    }
}

fn json_response(body: Bytes) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The request body as a JSON object, or a 4xx saying what is wrong with it.
fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::TooLarge
        } else {
            ErrorCode::Malformed
        };
        ApiError::new(code, e.body_text())
    })?;
    match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            ErrorCode::Malformed,
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::Malformed,
            format!("not JSON: {e}"),
        )),
    }
}
