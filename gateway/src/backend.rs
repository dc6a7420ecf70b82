//! The backend as the gateway sees it: whoever answers the room and lobby subjects over NATS
//! (our engine or any service speaking PROTOCOL.md). Requests under a timeout with their
//! outcomes as HTTP errors, and room codes as paths name them.

use async_nats::client::RequestErrorKind;
use async_nats::jetstream::context::{
    GetStreamError, GetStreamErrorKind, KeyValueError, RequestError as JsRequestError,
    RequestErrorKind as JsRequestErrorKind,
};
use async_nats::jetstream::ErrorCode as JsErrorCode;
use bytes::Bytes;
use proto::store::RoomStatus;
use proto::{ErrorCode, RoomCode};

use crate::error::ApiError;
use crate::state::AppState;

/// A request to the backend under `gateway.request_timeout`, for `room` or (`None`) the
/// lobby: a timeout is 504, no responders 404 for a room the store says does not exist, else
/// 503 with `Retry-After` (no engine, the room is moving to another engine, or the store
/// cannot say).
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
            Some(code) => match stored(state, code).await {
                Stored::Gone => ApiError::new(ErrorCode::NoSuchRoom, "no such room"),
                Stored::Open => ApiError::unavailable(
                    "the room is moving to another engine",
                    state.config.retry,
                ),
                Stored::Unknown => {
                    ApiError::unavailable("the room store did not answer", state.config.retry)
                }
            },
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

/// What the store says of a room nobody answers for.
enum Stored {
    /// Stored and open: an engine is taking it over (or about to start it); try again.
    Open,
    /// Closed, never stored, or no store at all (a backend that keeps none: no bucket, or a
    /// NATS without JetStream): no such room.
    Gone,
    /// The store did not answer (a JetStream leader election, a cluster without quorum): the
    /// room may well exist, so not 404, which EventSource and pages take as final.
    Unknown,
}

/// Reads the room's record, within `gateway.request_timeout`.
async fn stored(state: &AppState, code: &RoomCode) -> Stored {
    let read = async {
        let js = async_nats::jetstream::new(state.client.clone());
        let rooms = match js.get_key_value(state.store.rooms_bucket()).await {
            Ok(rooms) => rooms,
            Err(e) if no_store(&e) => return Stored::Gone,
            Err(_) => return Stored::Unknown,
        };
        match rooms.get(code.as_str()).await {
            Ok(Some(record)) => match serde_json::from_slice::<RoomStatus>(&record) {
                Ok(status) if !status.closed => Stored::Open,
                _ => Stored::Gone,
            },
            Ok(None) => Stored::Gone,
            Err(_) => Stored::Unknown,
        }
    };
    (tokio::time::timeout(state.config.request_timeout, read).await).unwrap_or(Stored::Unknown)
}

/// Whether opening the rooms bucket failed because there is none: JetStream says the stream
/// does not exist or JetStream is off (for the account), or nothing answers its API (NATS
/// without JetStream).
fn no_store(e: &KeyValueError) -> bool {
    let Some(e) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<GetStreamError>())
    else {
        return false;
    };
    match e.kind() {
        GetStreamErrorKind::JetStream(e) => [
            JsErrorCode::STREAM_NOT_FOUND,
            JsErrorCode::JETSTREAM_NOT_ENABLED,
            JsErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        ]
        .contains(&e.error_code()),
        GetStreamErrorKind::Request => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<JsRequestError>())
            .is_some_and(|e| e.kind() == JsRequestErrorKind::NoResponders),
        _ => false,
    }
}

/// A room code from a path, as a person may have typed it (`7qk3-m9xr-t2va`): see
/// [`RoomCode::parse_typed`] and, for what finds the room, [`RoomCode::canonical`]. A
/// malformed one names no room.
pub fn room_code(raw: &str) -> Result<RoomCode, ApiError> {
    RoomCode::parse_typed(raw).map_err(|_| ApiError::new(ErrorCode::NoSuchRoom, "no such room"))
}
