//! Validated identifiers and user text.
//!
//! Room codes and player ids become NATS subject tokens, so they are `[A-Za-z0-9]` only and the
//! engine generates them; a value of these types has been checked once and is trusted after.
//! Names and chat lines are data, never subject tokens, but they are still bounded here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Rejection};

fn is_token(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

macro_rules! token_newtype {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Shortest accepted length.
            pub const MIN_LEN: usize = $min;
            /// Longest accepted length.
            pub const MAX_LEN: usize = $max;

            /// Accepts `[A-Za-z0-9]{MIN_LEN,MAX_LEN}`.
            pub fn parse(s: &str) -> Result<Self, Rejection> {
                if is_token(s, $min, $max) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(Rejection::new(
                        ErrorCode::InvalidField,
                        format!(concat!("not a valid ", $what, ": {:?}"), s),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Rejection;
            fn try_from(s: String) -> Result<Self, Rejection> {
                if is_token(&s, $min, $max) {
                    Ok(Self(s))
                } else {
                    Self::parse(&s)
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

token_newtype!(
    /// A room's code: the only way into a private room, so long enough not to be guessed.
    RoomCode, 8, 32, "room code"
);
token_newtype!(
    /// A player's id within a room; the `sub` of their token and their private subject token.
    PlayerId, 4, 32, "player id"
);

/// A display name: 1 to 20 characters after trimming, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PlayerName(String);

impl TryFrom<String> for PlayerName {
    type Error = Rejection;
    fn try_from(raw: String) -> Result<Self, Rejection> {
        Self::parse(&raw)
    }
}

impl From<PlayerName> for String {
    fn from(name: PlayerName) -> String {
        name.0
    }
}

impl PlayerName {
    pub const MAX_CHARS: usize = 20;

    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        let name = raw.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(Rejection::new(
                ErrorCode::InvalidName,
                format!("a name has 1 to {} characters", Self::MAX_CHARS),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Rejection::new(
                ErrorCode::InvalidName,
                "a name cannot contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Names are unique in a room regardless of case, so "Ann" and "ann" cannot both join.
    pub fn same_as(&self, other: &PlayerName) -> bool {
        self.0.to_lowercase() == other.0.to_lowercase()
    }
}

impl fmt::Display for PlayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PlayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlayerName({:?})", self.0)
    }
}

/// One chat line: 1 to 500 characters after trimming. Newlines are allowed (they are escaped in
/// JSON); other control characters are not.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[serde(transparent)]
pub struct ChatText(String);

impl ChatText {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: &str) -> Result<Self, Rejection> {
        let text = raw.trim();
        let chars = text.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(Rejection::new(
                ErrorCode::InvalidText,
                format!("a chat line has 1 to {} characters", Self::MAX_CHARS),
            ));
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(Rejection::new(
                ErrorCode::InvalidText,
                "a chat line cannot contain control characters",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_codes_are_alphanumeric_and_long_enough() {
        assert!(RoomCode::parse("abcD1234").is_ok());
        assert!(
            RoomCode::parse("abc1234").is_err(),
            "7 characters is guessable"
        );
        assert!(
            RoomCode::parse("abcd.1234").is_err(),
            "a dot would split a subject"
        );
        assert!(RoomCode::parse("abcd*1234").is_err());
        assert!(RoomCode::parse("abcd 1234").is_err());
        assert!(RoomCode::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn codes_round_trip_through_json_and_reject_bad_tokens() {
        let code: RoomCode = serde_json::from_str("\"Ab12Cd34\"").unwrap();
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"Ab12Cd34\"");
        assert!(serde_json::from_str::<RoomCode>("\"game.>\"").is_err());
        assert!(serde_json::from_str::<PlayerId>("\"p>\"").is_err());
    }

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert_eq!(PlayerName::parse("  Ann ").unwrap().as_str(), "Ann");
        assert_eq!(
            PlayerName::parse("Éloïse 李").unwrap().as_str(),
            "Éloïse 李"
        );
        assert_eq!(
            PlayerName::parse(&"é".repeat(20))
                .unwrap()
                .as_str()
                .chars()
                .count(),
            20
        );
        for bad in ["", "   ", "a\u{0}b", "tab\there", &"x".repeat(21)] {
            let err = PlayerName::parse(bad).unwrap_err();
            assert_eq!(err.error, ErrorCode::InvalidName, "{bad:?}");
        }
        let ann = PlayerName::parse("Ann").unwrap();
        assert!(ann.same_as(&PlayerName::parse("aNN").unwrap()));
    }

    #[test]
    fn chat_text_is_bounded() {
        assert!(ChatText::parse("hi\nthere").is_ok());
        assert!(ChatText::parse(&"x".repeat(500)).is_ok());
        for bad in ["", " ", "\u{7}", &"x".repeat(501)] {
            assert_eq!(
                ChatText::parse(bad).unwrap_err().error,
                ErrorCode::InvalidText
            );
        }
    }
}
