//! Snapshots and resume: `game.lobby.snap` and `game.room.<code>.snap`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{ErrorCode, Rejection};
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

impl SnapReply {
    /// Reads a snapshot reply as a backend sends it: `{"events": [...]}` exactly as
    /// PROTOCOL.md writes it, or with `"ok": true` beside (as this engine sends it), or a
    /// refusal `{"ok": false, "error", "message"}`. Each event's `data` stays raw JSON.
    pub fn decode(body: &[u8]) -> Result<SnapReply, Rejection> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            ok: Option<bool>,
            #[serde(default)]
            events: Option<Vec<SnapEvent>>,
            #[serde(default)]
            error: Option<ErrorCode>,
            #[serde(default)]
            message: Option<String>,
        }
        let bad =
            |why: String| Rejection::new(ErrorCode::Internal, format!("bad snapshot reply: {why}"));
        let answer: Answer = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        match (answer.ok, answer.events) {
            (Some(false), _) => Err(Rejection::new(
                answer.error.unwrap_or(ErrorCode::Internal),
                answer.message.unwrap_or_default(),
            )),
            (_, Some(events)) => Ok(SnapReply { events }),
            (_, None) => Err(bad("no events".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_as_the_contract_writes_it_is_read_with_or_without_ok() {
        let contract = br#"{"events": [{"id": 3, "event": "snapshot", "data": {"rooms": []}}]}"#;
        let reply = SnapReply::decode(contract).unwrap();
        assert_eq!(reply.events[0].id, 3);
        assert_eq!(reply.events[0].data.get(), r#"{"rooms": []}"#);
        let tagged = br#"{"ok": true, "events": []}"#;
        assert!(SnapReply::decode(tagged).unwrap().events.is_empty());
        let refused = br#"{"ok": false, "error": "no_such_player", "message": "who?"}"#;
        assert_eq!(
            SnapReply::decode(refused).unwrap_err().error,
            ErrorCode::NoSuchPlayer
        );
        for bad in [&b"{}"[..], b"[]", b"{\"ok\": true}"] {
            assert_eq!(
                SnapReply::decode(bad).unwrap_err().error,
                ErrorCode::Internal
            );
        }
    }
}
