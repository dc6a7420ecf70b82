//! Stable error codes, shared by the engine's NATS replies and the gateway's HTTP bodies.
//!
//! A code is part of the contract: clients branch on it, humans read the `message`. The HTTP
//! status of each code lives here too, so the gateway has no table of its own to drift.

use serde::{Deserialize, Serialize};

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body is not JSON, or not a JSON object.
    Malformed,
    /// The body is over [`crate::MAX_REQUEST_BYTES`].
    TooLarge,
    /// `type` is missing or not a known command.
    UnknownCommand,
    /// A field is missing or has the wrong type or format.
    InvalidField,
    /// Impossible room settings (player count, role counts, durations).
    InvalidRoom,
    /// No room with that code (it never existed or has closed).
    NoSuchRoom,
    /// No player with that id in this room.
    NoSuchPlayer,
    /// The command is not allowed in the current phase.
    WrongPhase,
    /// The acting player is dead (or has left).
    NotAlive,
    /// The acting player's role cannot do this.
    WrongRole,
    /// The target is dead, absent, or not allowed for this action.
    InvalidTarget,
    /// Only the host may start the game.
    NotHost,
    /// The room already has `total` players.
    RoomFull,
    /// The host tried to start before `total` players joined.
    NotEnoughPlayers,
    /// The game has started; nobody joins any more.
    AlreadyStarted,
    /// The name is empty, too long or has control characters.
    InvalidName,
    /// Someone in the room already has that name.
    NameTaken,
    /// The chat line is empty, too long or has control characters.
    InvalidText,
    /// The player may not chat now (night for non-mafia).
    ChatClosed,
    /// Police investigate once per night.
    AlreadyInvestigated,
    /// No usable token (gateway).
    Unauthorized,
    /// The token is for another room (gateway).
    Forbidden,
    /// No such route (gateway).
    NotFound,
    /// The route exists but not with this method (gateway).
    MethodNotAllowed,
    /// NATS is down or the gateway is at its connection limit (gateway).
    Unavailable,
    /// The engine did not answer in time (gateway).
    Timeout,
    /// A bug; the request may or may not have taken effect.
    Internal,
}

impl ErrorCode {
    /// The HTTP status the gateway answers with for this code.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            Malformed | UnknownCommand | InvalidField | InvalidRoom | InvalidName | InvalidText
            | InvalidTarget => 400,
            Unauthorized => 401,
            Forbidden | NotHost | WrongRole | NotAlive => 403,
            NoSuchRoom | NoSuchPlayer | NotFound => 404,
            WrongPhase | RoomFull | NotEnoughPlayers | AlreadyStarted | NameTaken | ChatClosed
            | AlreadyInvestigated => 409,
            MethodNotAllowed => 405,
            TooLarge => 413,
            Unavailable => 503,
            Timeout => 504,
            Internal => 500,
        }
    }

    /// The code as it appears on the wire (for logs and metric labels).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A refusal: `{"error": "<code>", "message": "..."}` (with `"ok": false` in NATS replies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error:?}: {message}")]
pub struct Rejection {
    pub error: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
        }
    }
}
