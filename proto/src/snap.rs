//! Snapshots and resume: `game.lobby.snap` and `game.room.<code>.snap`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::PlayerId;

/// `{"viewer": "<player_id>" | null, "since": <u64> | null}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRequest {
    #[serde(default)]
    pub viewer: Option<PlayerId>,
    /// The last id the viewer has; `null` asks for a fresh snapshot.
    #[serde(default)]
    pub since: Option<u64>,
}

/// `{"events": [...]}`, oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapReply {
    pub events: Vec<SnapEvent>,
}

/// One event of a snapshot reply. `data` is kept as raw JSON so that relaying it costs no
/// re-parse.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapEvent {
    pub id: u64,
    pub event: String,
    pub data: Box<RawValue>,
}
