//! Publishing committed events to NATS with the contract's headers, for rooms and the lobby.

use async_nats::HeaderMap;
use bytes::Bytes;
use metrics::counter;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::RoomCode;

use crate::context::Context;
use crate::metrics as m;
use crate::outgoing::Audience;
use crate::store::Logged;

/// Publishes one room event to the subjects of its audience.
pub async fn room_event(ctx: &Context, code: &RoomCode, event: &Logged) {
    match &event.audience {
        Audience::Public => send(ctx, ctx.subjects.room_events(code), event).await,
        Audience::Players(ids) => {
            for id in ids {
                send(ctx, ctx.subjects.player_events(code, id), event).await;
            }
        }
    }
}

/// Publishes one event to `subject` with `Sse-Id`/`Sse-Event`.
pub async fn send(ctx: &Context, subject: String, event: &Logged) {
    let mut headers = HeaderMap::new();
    headers.insert(SSE_ID, event.id.to_string().as_str());
    headers.insert(SSE_EVENT, event.event.as_str());
    let data = Bytes::copy_from_slice(event.data.get().as_bytes());
    match ctx
        .client
        .publish_with_headers(subject, headers, data)
        .await
    {
        Ok(()) => counter!(m::EVENTS_PUBLISHED).increment(1),
        Err(e) => tracing::warn!(error = %e, "could not publish an event"),
    }
}
