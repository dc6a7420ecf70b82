//! NATS subject names. No other crate formats a subject string.
//!
//! Every token that comes from a request ([`RoomCode`], [`PlayerId`]) is `[A-Za-z0-9]` by
//! construction, so user input can never add a `.`, `*` or `>` to a subject.

use crate::ids::{PlayerId, RoomCode};

/// The queue group engines share `lobby.create` in, so each create reaches one engine.
pub const ENGINE_QUEUE_GROUP: &str = "game-engine";

/// The queue group a room's owner listens to its `cmd` and `snap` subjects in, one per
/// tenure (`epoch`, raised by every takeover). A takeover from an engine that is paused, not
/// dead, leaves that engine subscribed until its connection dies: in one shared group NATS
/// would hand it a share of the room's requests, to wait unanswered while it sleeps. In
/// groups of their own the new owner receives every request. The stale owner receives them
/// too; it cannot commit, and after its lapse answers nothing before reading its record, so
/// it answers "try again" at most (docs/protocol.md §2).
pub fn owner_queue_group(epoch: u64) -> String {
    format!("room-owner-{epoch}")
}

/// Builds every subject under one configurable prefix (`game` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("game")
    }
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Request: `CreateRoom` → `{"ok": true, "code"}`; queue group [`ENGINE_QUEUE_GROUP`].
    pub fn lobby_create(&self) -> String {
        format!("{}.lobby.create", self.prefix)
    }

    /// Publish: one lobby event.
    pub fn lobby_events(&self) -> String {
        format!("{}.lobby.evt", self.prefix)
    }

    /// Request: `SnapRequest` → `SnapReply` for the lobby.
    pub fn lobby_snap(&self) -> String {
        format!("{}.lobby.snap", self.prefix)
    }

    /// Request: a `Command` for this room → its reply.
    pub fn room_cmd(&self, code: &RoomCode) -> String {
        format!("{}.room.{code}.cmd", self.prefix)
    }

    /// Publish: one public event of this room.
    pub fn room_events(&self, code: &RoomCode) -> String {
        format!("{}.room.{code}.evt", self.prefix)
    }

    /// Publish: one event for this player only.
    pub fn player_events(&self, code: &RoomCode, player: &PlayerId) -> String {
        format!("{}.room.{code}.evt.{player}", self.prefix)
    }

    /// Wildcard over every player's private events in a room (for a gateway that watches the
    /// room for several players and routes them itself).
    pub fn all_player_events(&self, code: &RoomCode) -> String {
        format!("{}.room.{code}.evt.*", self.prefix)
    }

    /// Request: `SnapRequest` → `SnapReply` for this room.
    pub fn room_snap(&self, code: &RoomCode) -> String {
        format!("{}.room.{code}.snap", self.prefix)
    }

    /// Everything under one room: its commands, snapshots and every event, public and private.
    /// For tools and tests that watch a whole room in publication order.
    pub fn room_wildcard(&self, code: &RoomCode) -> String {
        format!("{}.room.{code}.>", self.prefix)
    }

    /// The player a private-event subject is addressed to, or `None` for any other subject.
    pub fn player_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".room.")?;
        let mut tokens = rest.split('.');
        let (_code, evt, player) = (tokens.next()?, tokens.next()?, tokens.next()?);
        (evt == "evt" && tokens.next().is_none()).then_some(player)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_the_protocol_table() {
        let s = Subjects::default();
        let code = RoomCode::parse("Ab12Cd34").unwrap();
        let player = PlayerId::parse("p1x9").unwrap();
        assert_eq!(s.lobby_create(), "game.lobby.create");
        assert_eq!(s.lobby_events(), "game.lobby.evt");
        assert_eq!(s.lobby_snap(), "game.lobby.snap");
        assert_eq!(s.room_cmd(&code), "game.room.Ab12Cd34.cmd");
        assert_eq!(s.room_events(&code), "game.room.Ab12Cd34.evt");
        assert_eq!(
            s.player_events(&code, &player),
            "game.room.Ab12Cd34.evt.p1x9"
        );
        assert_eq!(s.all_player_events(&code), "game.room.Ab12Cd34.evt.*");
        assert_eq!(s.room_snap(&code), "game.room.Ab12Cd34.snap");
    }

    #[test]
    fn prefix_is_configurable_and_player_is_read_back() {
        let s = Subjects::new("staging");
        let code = RoomCode::parse("Ab12Cd34").unwrap();
        let player = PlayerId::parse("p1x9").unwrap();
        let subject = s.player_events(&code, &player);
        assert_eq!(subject, "staging.room.Ab12Cd34.evt.p1x9");
        assert_eq!(s.player_of(&subject), Some("p1x9"));
        assert_eq!(s.player_of(&s.room_events(&code)), None);
        assert_eq!(s.player_of("game.room.Ab12Cd34.evt.p1x9"), None);
    }
}
