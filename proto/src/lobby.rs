//! The public lobby: creating rooms and the list of open rooms everyone can watch.

use serde::{Deserialize, Serialize};

use crate::command::RequestId;
use crate::event::RoomEvent;
use crate::ids::{PlayerId, RoomCode};

/// `game.lobby.create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRoom {
    pub title: String,
    pub total: u8,
    pub mafia: u8,
    #[serde(default)]
    pub doctor: u8,
    #[serde(default)]
    pub police: u8,
    /// A private room is never listed in the lobby; only its code leads to it.
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub durations_ms: Durations,
    /// The creator's name, to seat them in the same step (an extension of the contract): the
    /// reply then carries their `player_id` and `token` as a join's would, and a public room
    /// is never listed before its host is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Makes a retry safe (an extension of the contract, as on room commands): a create sent
    /// again with the same `request_id` answers with the room the first one made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl CreateRoom {
    pub const MAX_TITLE_CHARS: usize = 60;
}

/// Phase durations in milliseconds; every one optional, defaults from GAME.md.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    pub day_intro: Option<u64>,
    pub notice: Option<u64>,
    /// `day` lasts this times the number of living players.
    pub day_per_player: Option<u64>,
    pub vote: Option<u64>,
    pub vote_result: Option<u64>,
    pub night_intro: Option<u64>,
    pub night: Option<u64>,
    pub ended: Option<u64>,
}

/// `{"ok": true, "code"}` from `game.lobby.create`; with the creator's `player_id` and
/// `token` when the request named them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub code: RoomCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player_id: Option<PlayerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where a listed room is: the lobby shows this coarse status rather than every phase change,
/// so that watching the lobby costs one event per join, leave, start or end, not per phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LobbyPhase {
    Waiting,
    Playing,
    Ended,
}

/// A public room as the lobby lists it; the data of `room_opened` and `room_updated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyRoom {
    pub code: RoomCode,
    pub title: String,
    pub total: u8,
    pub players: u8,
    pub phase: LobbyPhase,
}

/// The lobby's `snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbySnapshot {
    pub rooms: Vec<LobbyRoom>,
}

/// `room_opened`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomOpened(pub LobbyRoom);

/// `room_updated`: players or phase changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomUpdated(pub LobbyRoom);

/// `room_closed` on the lobby.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyRoomClosed {
    pub code: RoomCode,
}

impl RoomEvent for LobbySnapshot {
    const NAME: &'static str = "snapshot";
}
impl RoomEvent for RoomOpened {
    const NAME: &'static str = "room_opened";
}
impl RoomEvent for RoomUpdated {
    const NAME: &'static str = "room_updated";
}
impl RoomEvent for LobbyRoomClosed {
    const NAME: &'static str = "room_closed";
}
