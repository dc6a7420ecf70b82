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
use proto::lobby::Created;
use proto::{CommandOk, ErrorCode, Rejection, Reply, RoomCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::auth::{cookie_for, token_of};
use crate::backend::{self, room_code};
use crate::error::ApiError;
use crate::metrics as m;
use crate::state::AppState;

/// `POST /v1/rooms`: forwards a `CreateRoom` to `game.lobby.create`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    from_this_site(&state, &headers, false)?;
    let body = json_object(body)?;
    let subject = state.subjects.lobby_create();
    let reply = ask(&state, subject, body, None).await?;
    // A create that seated its creator (`name`) answers as a join does, cookie included.
    let seated = serde_json::from_slice::<Reply<Created>>(&reply)
        .ok()
        .and_then(|reply| Result::<Created, Rejection>::from(reply).ok())
        .and_then(|created| Some((created.code, created.token?)));
    let mut response = relay(&state, reply)?;
    if let Some((code, token)) = seated {
        set_token_cookie(&state, &mut response, &code, &token);
    }
    Ok(response)
}

/// `POST /v1/rooms/<code>/join`: `{"name"}` → `{"player_id", "token"}`, and the token cookie.
pub async fn join(
    State(state): State<AppState>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    from_this_site(&state, &headers, false)?;
    let mut code = room_code(&code)?;
    let mut body = json_object(body)?;
    body.insert("type".into(), "join".into());
    let reply = match ask(
        &state,
        state.subjects.room_cmd(&code),
        body.clone(),
        Some(&code),
    )
    .await
    {
        // No room by the code as typed: perhaps by the code that was meant.
        Err(e) if e.code == ErrorCode::NoSuchRoom && code.canonical().is_some() => {
            code = code.canonical().expect("checked");
            ask(&state, state.subjects.room_cmd(&code), body, Some(&code)).await?
        }
        reply => reply?,
    };
    let CommandOk::Joined { token, .. } = decode::<CommandOk>(&state, &reply)? else {
        return Err(ApiError::new(
            ErrorCode::Internal,
            "join reply without a token",
        ));
    };
    let mut response = json_response(reply);
    set_token_cookie(&state, &mut response, &code, &token);
    Ok(response)
}

fn set_token_cookie(state: &AppState, response: &mut Response, code: &RoomCode, token: &str) {
    let cookie = cookie_for(code, token, state.config.cookie_secure);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// `POST /v1/rooms/<code>/commands`: any command but `join`, as the token's player.
pub async fn command(
    State(state): State<AppState>,
    Path(code): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    from_this_site(&state, &headers, true)?;
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
    // The token's room: the path may name it as a person typed it.
    let room = claims.room;
    let reply = ask(&state, state.subjects.room_cmd(&room), body, Some(&room)).await?;
    relay(&state, reply)
}

/// Refuses (403) a request another site's page could have made. Its `Origin`, if any, must
/// be this host or one of `gateway.cors_origins`. A request that comes with a cookie, an
/// `Origin` or `Sec-Fetch-*` headers (as a browser's do) must also declare its body
/// `application/json`: an HTML form cannot, a script on another site cannot without a CORS
/// preflight this gateway refuses, and older browsers send a form without `Origin`. Except a
/// create or a join (not a `command`: they act as nobody) from a script (`Sec-Fetch-Mode`
/// `cors` or `same-origin`, which a form never says), whose `fetch` of a string says text.
/// Other clients (tools and backends, which name their own token) may declare what they
/// like (`curl -d` says form): the body is read as JSON anyway.
fn from_this_site(state: &AppState, headers: &HeaderMap, command: bool) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    let from_a_browser = [header::ORIGIN, header::COOKIE]
        .iter()
        .any(|name| headers.contains_key(name))
        || headers
            .keys()
            .any(|name| name.as_str().starts_with("sec-fetch-"));
    let from_a_script = headers
        .get("sec-fetch-mode")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|mode| mode == "cors" || mode == "same-origin");
    if from_a_browser && !json && (command || !from_a_script) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "commands are JSON: send Content-Type: application/json",
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let allowed = same_host(origin, host) || state.config.cors_origins.iter().any(|o| o == origin);
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "a command from another site's page is refused",
        ))
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host of the `Host` header. Ports are
/// not compared: a proxy may pass the host without the port the browser used (nginx's
/// `$host`), and another port of the same host is the same site to a browser anyway.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let name = |authority: &str| -> String {
        let authority = authority.trim_end_matches('/');
        let name = if authority.starts_with('[') {
            authority.split_inclusive(']').next().unwrap_or(authority)
        } else {
            authority.split(':').next().unwrap_or(authority)
        };
        name.to_ascii_lowercase()
    };
    !host.is_empty() && name(authority) == name(host)
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
    let reply = backend::request(state, subject, body.into(), room).await;
    histogram!(m::COMMAND_SECONDS).record(started.elapsed().as_secs_f64());
    reply
}

/// The engine's reply as the HTTP answer: 200 with its body, or its error's status.
fn relay(state: &AppState, reply: Bytes) -> Result<Response, ApiError> {
    decode::<Value>(state, &reply)?;
    Ok(json_response(reply))
}

/// The backend's reply read as `T`, or its refusal as an HTTP error.
fn decode<T: DeserializeOwned>(state: &AppState, reply: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice::<Reply<T>>(reply) {
        Ok(Reply::Ok(body)) => Ok(body),
        Ok(Reply::Err(refusal)) => Err(ApiError::from_backend(refusal, state.config.retry)),
        Err(e) => Err(
            ApiError::refusal_in(reply, state.config.retry).unwrap_or_else(|| {
                ApiError::new(ErrorCode::Internal, format!("bad engine reply: {e}"))
            }),
        ),
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

#[cfg(test)]
mod tests {
    use super::same_host;

    #[test]
    fn an_origin_is_this_site_when_its_host_is_the_host_header_s() {
        assert!(same_host("http://127.0.0.1:8000", "127.0.0.1:8000"));
        assert!(same_host("https://Game.example", "game.example"));
        assert!(same_host("https://game.example:8443", "game.example"));
        assert!(same_host("http://[::1]:8000", "[::1]"));
        assert!(!same_host("https://evil.example", "game.example"));
        assert!(!same_host(
            "https://game.example.evil.example",
            "game.example"
        ));
        assert!(!same_host("null", "game.example"));
        assert!(!same_host("https://game.example", ""));
    }
}
