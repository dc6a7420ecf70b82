//! The backend as the gateway sees it: whoever answers the room and lobby subjects over NATS
//! (our engine or any service speaking PROTOCOL.md). Requests under a timeout with their
//! outcomes as HTTP errors, and room codes as paths name them.

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use proto::store::RoomStatus;
use proto::{ErrorCode, RoomCode};

use crate::error::ApiError;
use crate::state::AppState;

/// A request to the backend under `gateway.request_timeout`, for `room` or (`None`) the
/// lobby: a timeout is 504, no responders 404 for a room that does not exist, else 503 with
/// `Retry-After` (no engine, or the room is moving to another engine).
pub async fn request(
    state: &AppState,
    subject: String,
    body: Bytes,
    room: Option<&RoomCode>,
) -> Result<Bytes, ApiError> {
    if !state.nats_connected() {
        return Err(ApiError::unavailable(
            "NATS is unreachable",
            state.config.retry,
        ));
    }
    let request = state.client.request(subject, body);
    match tokio::time::timeout(state.config.request_timeout, request).await {
        Ok(Ok(msg)) => Ok(msg.payload),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Err(match room {
            Some(code) if !room_is_stored(state, code).await => {
                ApiError::new(ErrorCode::NoSuchRoom, "no such room")
            }
            Some(_) => {
                ApiError::unavailable("the room is moving to another engine", state.config.retry)
            }
            None => ApiError::unavailable("no engine is answering", state.config.retry),
        }),
        Ok(Err(e)) if e.kind() != RequestErrorKind::TimedOut => {
            // The client is told what it can act on; the details are for the operator.
            tracing::warn!(error = %e, "NATS request failed");
            Err(ApiError::unavailable(
                "NATS did not take the request",
                state.config.retry,
            ))
        }
        _ => Err(ApiError::new(
            ErrorCode::Timeout,
            "the engine did not answer in time",
        )),
    }
}

/// Whether a room nobody answers for is still in the store and open: then an engine is taking
/// it over (or about to be started), and the client should try again. A backend that keeps
/// no store (the bucket does not exist) has no such rooms.
async fn room_is_stored(state: &AppState, code: &RoomCode) -> bool {
    let js = async_nats::jetstream::new(state.client.clone());
    let Ok(rooms) = js.get_key_value(state.store.rooms_bucket()).await else {
        return false;
    };
    match rooms.get(code.as_str()).await {
        Ok(Some(record)) => serde_json::from_slice::<RoomStatus>(&record)
            .map(|status| !status.closed)
            .unwrap_or(false),
        _ => false,
    }
}

/// A room code from a path, as a person may have typed it (`7qk3-m9xr-t2va`): see
/// [`RoomCode::parse_typed`] and, for what finds the room, [`RoomCode::canonical`]. A
/// malformed one names no room.
pub fn room_code(raw: &str) -> Result<RoomCode, ApiError> {
    RoomCode::parse_typed(raw).map_err(|_| ApiError::new(ErrorCode::NoSuchRoom, "no such room"))
}
