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

/// Publishes one room event to the subjects of its audience (headers and body built once).
pub async fn room_event(ctx: &Context, code: &RoomCode, event: &Logged) {
    let message = Message::of(event);
    match &event.audience {
        Audience::Public => message.send(ctx, ctx.subjects.room_events(code)).await,
        Audience::Players(ids) => {
            for id in ids {
                message
                    .send(ctx, ctx.subjects.player_events(code, id))
                    .await;
            }
        }
    }
}

/// Publishes one event to `subject`.
pub async fn send(ctx: &Context, subject: String, event: &Logged) {
    Message::of(event).send(ctx, subject).await;
}

/// An event as NATS carries it: `Sse-Id`/`Sse-Event` headers and the data.
struct Message {
    headers: HeaderMap,
    data: Bytes,
}

impl Message {
    fn of(event: &Logged) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(SSE_ID, event.id.to_string().as_str());
        headers.insert(SSE_EVENT, event.event.as_str());
        Message {
            headers,
            data: Bytes::copy_from_slice(event.data.get().as_bytes()),
        }
    }

    async fn send(&self, ctx: &Context, subject: String) {
        let (headers, data) = (self.headers.clone(), self.data.clone());
        match ctx
            .client
            .publish_with_headers(subject, headers, data)
            .await
        {
            Ok(()) => counter!(m::EVENTS_PUBLISHED).increment(1),
            Err(e) => tracing::warn!(error = %e, "could not publish an event"),
        }
    }
}

/// The `Sse-Id` of a published event, if it has a valid one.
pub fn event_id(msg: &async_nats::Message) -> Option<u64> {
    msg.headers.as_ref()?.get(SSE_ID)?.as_str().parse().ok()
}
