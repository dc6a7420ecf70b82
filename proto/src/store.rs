//! Where rooms live in NATS JetStream: bucket and stream names, and the part of a room's
//! record that another process may read.
//!
//! The engine keeps every room in JetStream so that any engine can take a room over when its
//! owner dies (`docs/durability.md`). The gateway reads one thing from there: whether a room
//! that no engine answers for still exists (503, try again) or has ended (404). The names are
//! derived from the subject prefix, so two deployments that share a NATS do not share rooms.

use serde::Deserialize;

use crate::ids::RoomCode;

/// The JetStream names of one deployment (one subject prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreNames {
    prefix: String,
    /// The prefix as a bucket or stream name may spell it (`[A-Za-z0-9_-]`).
    bucket_prefix: String,
}

impl StoreNames {
    pub fn new(subject_prefix: &str) -> Self {
        let bucket_prefix = subject_prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        StoreNames {
            prefix: subject_prefix.to_owned(),
            bucket_prefix,
        }
    }

    /// KV: room code → the room's record (state, owner, epoch, id counter, outbox).
    pub fn rooms_bucket(&self) -> String {
        format!("{}_rooms", self.bucket_prefix)
    }

    /// KV: `<engine>.<code>` → nothing; the index of which engine owns which room.
    pub fn owners_bucket(&self) -> String {
        format!("{}_owners", self.bucket_prefix)
    }

    /// KV: engine id → its heartbeat (`alive`, or `leaving` once it hands its rooms over).
    pub fn engines_bucket(&self) -> String {
        format!("{}_engines", self.bucket_prefix)
    }

    /// KV: room code → the room's lobby listing; its revisions are the lobby's event ids.
    pub fn lobby_bucket(&self) -> String {
        format!("{}_lobby", self.bucket_prefix)
    }

    /// Stream: every room's event history, one subject per room ([`Self::room_log`]).
    pub fn log_stream(&self) -> String {
        format!("{}_log", self.bucket_prefix)
    }

    /// The log stream's subjects.
    pub fn log_subjects(&self) -> String {
        format!("{}.log.*", self.prefix)
    }

    /// One room's history in the log stream.
    pub fn room_log(&self, code: &RoomCode) -> String {
        format!("{}.log.{code}", self.prefix)
    }
}

/// What anyone may read of a room's record in [`StoreNames::rooms_bucket`]: whether the room
/// has ended. Other fields are the engine's own.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RoomStatus {
    #[serde(default)]
    pub closed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix_and_stay_valid() {
        let names = StoreNames::new("game");
        assert_eq!(names.rooms_bucket(), "game_rooms");
        assert_eq!(names.log_subjects(), "game.log.*");
        let code = RoomCode::parse("abcdEFGH12").unwrap();
        assert_eq!(names.room_log(&code), "game.log.abcdEFGH12");
        let dotted = StoreNames::new("acme.games");
        assert_eq!(dotted.lobby_bucket(), "acme_games_lobby");
        assert_eq!(dotted.log_subjects(), "acme.games.log.*");
    }
}
