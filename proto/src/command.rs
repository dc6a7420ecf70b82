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
    from_object(parse_object(body)?)
}

/// Decodes a room command and its optional `request_id`: a retry carrying the `request_id` of
/// a command already applied gets that command's reply again and changes nothing.
pub fn decode_command(body: &[u8]) -> Result<(Command, Option<RequestId>), Rejection> {
    let value = parse_object(body)?;
    let request_id = match value.get("request_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(id)) => Some(RequestId::parse(id)?),
        Some(_) => {
            return Err(Rejection::new(
                ErrorCode::InvalidField,
                "request_id is a string",
            ))
        }
    };
    Ok((from_object(value)?, request_id))
}

fn parse_object(body: &[u8]) -> Result<serde_json::Value, Rejection> {
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
    Ok(value)
}

fn from_object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Rejection> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        // A `type` that is missing, unknown or not a string (serde wanted a variant's name).
        let code = if message.starts_with("unknown variant")
            || message.contains("field `type`")
            || message.contains("variant identifier")
        {
            ErrorCode::UnknownCommand
        } else {
            ErrorCode::InvalidField
        };
        Rejection::new(code, message)
    })
}

/// A client's name for one attempt at a command, so that retrying it is safe: 1 to 64
/// visible ASCII characters, no spaces (a UUID fits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        if raw.is_empty()
            || raw.len() > Self::MAX_CHARS
            || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Rejection::new(
                ErrorCode::InvalidField,
                format!(
                    "request_id has 1 to {} visible ASCII characters (no spaces)",
                    Self::MAX_CHARS
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = Rejection;
    fn try_from(raw: String) -> Result<Self, Rejection> {
        Self::parse(&raw)
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> String {
        id.0
    }
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
        assert_eq!(err(br#"{"type":null}"#), ErrorCode::UnknownCommand);
        assert_eq!(err(br#"{"type":5}"#), ErrorCode::UnknownCommand);
        assert_eq!(err(br#"{"type":"start"}"#), ErrorCode::InvalidField);
        assert_eq!(
            err(br#"{"type":"start","player":"a.b.c"}"#),
            ErrorCode::InvalidField
        );
        let big = format!(r#"{{"type":"join","name":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(err(big.as_bytes()), ErrorCode::TooLarge);
    }

    #[test]
    fn a_request_id_rides_beside_any_command() {
        let (cmd, id) =
            decode_command(br#"{"type":"join","name":"Ann","request_id":"r-1"}"#).unwrap();
        assert_eq!(cmd, Command::Join { name: "Ann".into() });
        assert_eq!(id.unwrap().as_str(), "r-1");
        let (_, none) = decode_command(br#"{"type":"join","name":"Ann"}"#).unwrap();
        assert!(none.is_none());
        for bad in [
            r#""""#,
            "7",
            r#""a b""#,
            &format!(r#""{}""#, "x".repeat(65)),
        ] {
            let body = format!(r#"{{"type":"join","name":"Ann","request_id":{bad}}}"#);
            let err = decode_command(body.as_bytes()).unwrap_err();
            assert_eq!(err.error, ErrorCode::InvalidField, "{bad}");
        }
    }
}
