//! Room commands (`game.room.<code>.cmd`) and the replies every request gets.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{ErrorCode, Rejection};
use crate::ids::PlayerId;
use crate::MAX_REQUEST_BYTES;

/// A request to a room. Names and chat text stay plain strings here: the engine validates them
/// into [`crate::PlayerName`] / [`crate::ChatText`] so that each gets its own error code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    Join {
        name: String,
    },
    Leave {
        player: PlayerId,
    },
    Start {
        player: PlayerId,
    },
    Vote {
        player: PlayerId,
        /// `null` abstains.
        #[serde(default)]
        target: Option<PlayerId>,
    },
    Skill {
        player: PlayerId,
        target: PlayerId,
    },
    Chat {
        player: PlayerId,
        text: String,
    },
}

impl Command {
    /// The `type` tag, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Start { .. } => "start",
            Command::Vote { .. } => "vote",
            Command::Skill { .. } => "skill",
            Command::Chat { .. } => "chat",
        }
    }
}

/// Decodes a request body, telling apart the ways it can be wrong: too large, not a JSON
/// object, an unknown `type`, a bad field.
pub fn decode_request<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Rejection::new(
            ErrorCode::TooLarge,
            format!("requests are at most {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::new(ErrorCode::Malformed, format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Rejection::new(
            ErrorCode::Malformed,
            "the request must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let code = if message.starts_with("unknown variant") || message.contains("field `type`") {
            ErrorCode::UnknownCommand
        } else {
            ErrorCode::InvalidField
        };
        Rejection::new(code, message)
    })
}

/// What a successful command returns besides `"ok": true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandOk {
    /// `join`: the new player's id and their token for the gateway.
    Joined { player_id: PlayerId, token: String },
    /// A police `skill`: whether the target is mafia.
    Investigated { mafia: bool },
    /// Everything else.
    Done {},
}

/// Every reply on NATS: `{"ok": true, ...T}` or `{"ok": false, "error", "message"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<T> {
    Ok(T),
    Err(Rejection),
}

impl<T> From<Result<T, Rejection>> for Reply<T> {
    fn from(r: Result<T, Rejection>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Err(e),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, Rejection> {
    fn from(r: Reply<T>) -> Self {
        match r {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Tagged<B> {
    ok: bool,
    #[serde(flatten)]
    body: B,
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Ok(body) => Tagged { ok: true, body }.serialize(s),
            Reply::Err(body) => Tagged { ok: false, body }.serialize(s),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Reply<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let tagged = Tagged::<serde_json::Value>::deserialize(d)?;
        if tagged.ok {
            serde_json::from_value(tagged.body)
                .map(Reply::Ok)
                .map_err(D::Error::custom)
        } else {
            serde_json::from_value(tagged.body)
                .map(Reply::Err)
                .map_err(D::Error::custom)
        }
    }
}

impl<T: Serialize> Reply<T> {
    /// The reply as the bytes to send.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("replies serialise infallibly")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_tells_the_failures_apart() {
        let err = |b: &[u8]| decode_request::<Command>(b).unwrap_err().error;
        assert_eq!(err(b"{"), ErrorCode::Malformed);
        assert_eq!(err(b"[1]"), ErrorCode::Malformed);
        assert_eq!(err(br#"{"type":"dance"}"#), ErrorCode::UnknownCommand);
        assert_eq!(err(br#"{"name":"x"}"#), ErrorCode::UnknownCommand);
        assert_eq!(err(br#"{"type":"start"}"#), ErrorCode::InvalidField);
        assert_eq!(
            err(br#"{"type":"start","player":"a.b.c"}"#),
            ErrorCode::InvalidField
        );
        let big = format!(r#"{{"type":"join","name":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(err(big.as_bytes()), ErrorCode::TooLarge);
    }
}
