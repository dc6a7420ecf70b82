//! What the rules hand back to the room task: the events to publish (each with its audience),
//! whether the room closed, and a command's acknowledgement; plus the clock they are given.
//!
//! Apart from the rules so that the room, the history and the lobby can speak of events
//! without depending on the rules themselves.

use proto::event::RoomEvent;
use proto::PlayerId;
use serde::{Deserialize, Serialize};

/// The current time as the rules see it: unix milliseconds, the clock `ends_at` is on and the
/// one every engine shares, so that a deadline set by one engine means the same to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub unix_ms: u64,
}

impl Now {
    pub fn system() -> Self {
        Now {
            unix_ms: unix_ms_now(),
        }
    }

    /// `duration` from now, in unix ms.
    pub fn after(self, duration: std::time::Duration) -> u64 {
        self.unix_ms.saturating_add(duration.as_millis() as u64)
    }
}

/// The wall clock in unix milliseconds.
pub fn unix_ms_now() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

/// A wall-clock reading in unix milliseconds.
pub fn unix_ms(wall: std::time::SystemTime) -> u64 {
    wall.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Who receives an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Public,
    Players(Vec<PlayerId>),
}

impl Audience {
    pub fn includes(&self, viewer: Option<&PlayerId>) -> bool {
        match (self, viewer) {
            (Audience::Public, _) => true,
            (Audience::Players(ids), Some(v)) => ids.contains(v),
            (Audience::Players(_), None) => false,
        }
    }
}

/// One event to publish: its SSE name, audience and JSON data.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub audience: Audience,
    pub name: &'static str,
    pub data: String,
}

impl Outgoing {
    pub fn new<E: RoomEvent>(audience: Audience, event: &E) -> Self {
        Outgoing {
            audience,
            name: E::NAME,
            data: serde_json::to_string(event).expect("events serialise infallibly"),
        }
    }
}

/// What handling a command or a deadline produced.
#[derive(Debug, Default)]
pub struct Effects {
    pub events: Vec<Outgoing>,
    /// The room is over and must be dropped.
    pub closed: bool,
}

impl Effects {
    pub fn emit<E: RoomEvent>(&mut self, audience: Audience, event: &E) {
        self.events.push(Outgoing::new(audience, event));
    }
}

/// A successful command's result, before the room task adds anything (a token) to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ack {
    Joined(PlayerId),
    Investigated { mafia: bool },
    Done,
}
