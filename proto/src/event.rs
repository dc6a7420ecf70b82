//! Room event payloads: the `data` of each SSE event, named by [`RoomEvent::NAME`].
//!
//! Public events go to `game.room.<code>.evt`, private ones to
//! `game.room.<code>.evt.<player_id>`; which is which is the engine's business, the shapes are
//! here. Optional fields are omitted when absent, never sent as `null`, so that a viewer's
//! JSON never even hints at what they may not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{PlayerId, RoomCode};

/// A payload with the SSE event name it travels under.
pub trait RoomEvent: Serialize {
    const NAME: &'static str;
}

macro_rules! event_name {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl RoomEvent for $ty { const NAME: &'static str = $name; })*
    };
}

event_name! {
    RoomSnapshot => "snapshot",
    PlayerJoined => "player_joined",
    PlayerLeft => "player_left",
    PhaseChanged => "phase",
    VoteCast => "vote",
    Death => "death",
    Chat => "chat",
    GameOver => "game_over",
    RoomClosed => "room_closed",
    RoleDealt => "role",
    Investigation => "investigation",
    MafiaPick => "mafia_pick",
    Protection => "protect",
    RolesRevealed => "roles",
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Waiting,
    DayIntro,
    Notice,
    Day,
    Vote,
    VoteResult,
    NightIntro,
    Night,
    Ended,
}

impl Phase {
    /// Every phase, for metrics that report rooms by phase.
    pub const ALL: [Phase; 9] = [
        Phase::Waiting,
        Phase::DayIntro,
        Phase::Notice,
        Phase::Day,
        Phase::Vote,
        Phase::VoteResult,
        Phase::NightIntro,
        Phase::Night,
        Phase::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::DayIntro => "day_intro",
            Phase::Notice => "notice",
            Phase::Day => "day",
            Phase::Vote => "vote",
            Phase::VoteResult => "vote_result",
            Phase::NightIntro => "night_intro",
            Phase::Night => "night",
            Phase::Ended => "ended",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Mafia,
    Doctor,
    Police,
    Citizen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Team {
    Citizens,
    Mafia,
}

/// Where a chat line was said, which decides who hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Everyone in the room.
    Public,
    /// Living mafia, at night.
    Mafia,
    /// The dead only.
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeathCause {
    Vote,
    Mafia,
    Left,
}

/// A player as one viewer sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerView {
    pub player_id: PlayerId,
    pub name: String,
    pub alive: bool,
    /// Present only where this viewer may know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// `snapshot`: the whole room as one viewer may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSnapshot {
    pub code: RoomCode,
    pub title: String,
    pub total: u8,
    pub mafia: u8,
    pub doctor: u8,
    pub police: u8,
    pub private: bool,
    pub phase: Phase,
    pub round: u32,
    /// Unix ms of the current phase's deadline; `null` while waiting.
    pub ends_at: Option<u64>,
    pub host: Option<PlayerId>,
    pub players: Vec<PlayerView>,
    /// The viewer, when they are a player of this room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub you: Option<PlayerId>,
    /// The current votes, voter → target (`null` abstains), during `day`, `vote` and
    /// `vote_result`.
    pub votes: BTreeMap<PlayerId, Option<PlayerId>>,
    /// Every death so far, oldest first.
    pub deaths: Vec<Death>,
    /// The last chat lines this viewer may see, oldest first.
    pub chat: Vec<Chat>,
    /// Mafia at night: the shared pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mafia_pick: Option<PlayerId>,
    /// Doctor at night: whom they protect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protect: Option<PlayerId>,
    /// Police: every result so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub investigations: Vec<Investigation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<Team>,
}

/// `player_joined` (public).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerJoined {
    pub player_id: PlayerId,
    pub name: String,
    pub host: PlayerId,
}

/// `player_left` (public). `host` is the host after they left (it moves on when the host leaves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerLeft {
    pub player_id: PlayerId,
    pub host: Option<PlayerId>,
}

/// `phase` (public).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseChanged {
    pub phase: Phase,
    pub round: u32,
    /// Unix ms of the deadline.
    pub ends_at: Option<u64>,
}

/// `vote` (public): one vote cast, with the resulting tally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteCast {
    pub voter: PlayerId,
    pub target: Option<PlayerId>,
    /// Votes per target; abstentions are counted in `abstain`.
    pub tally: BTreeMap<PlayerId, u32>,
    pub abstain: u32,
}

/// `death` (public). The dead player's role is not revealed to the living.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    pub player_id: PlayerId,
    pub cause: DeathCause,
    pub round: u32,
}

/// `chat`: public, or private to the living mafia at night, or to the dead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    pub from: PlayerId,
    pub name: String,
    pub text: String,
    pub channel: Channel,
}

/// `game_over` (public): the winner and everyone's role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameOver {
    pub winner: Team,
    pub roles: BTreeMap<PlayerId, Role>,
}

/// `room_closed` (public): the last event of a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomClosed {
    pub code: RoomCode,
}

/// `role` (private): your role; mafia also learn their fellow mafia.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDealt {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mafia: Vec<PlayerId>,
}

/// `investigation` (private to the police): the night's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Investigation {
    pub target: PlayerId,
    pub mafia: bool,
    pub round: u32,
}

/// `mafia_pick` (private to every living mafia): the shared kill target, last one stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MafiaPick {
    pub by: PlayerId,
    pub target: PlayerId,
}

/// `protect` (private to the doctor): whom they protect tonight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    pub target: PlayerId,
}

/// `roles` (private to a player who just died): the dead see every role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolesRevealed {
    pub roles: BTreeMap<PlayerId, Role>,
}
