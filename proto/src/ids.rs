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
    /// A room's code. Our engine draws long ones ([`RoomCode::DRAWN_LEN`]), since a code is
    /// the only way into a private room; other backends may use any length, as
    /// PROTOCOL.md sets none, so the bounds only keep a subject token sane.
    RoomCode, 1, 64, "room code"
);
impl RoomCode {
    /// The characters of the codes our engine draws: Crockford's base 32, digits and capitals
    /// without `I`, `L`, `O` and `U`, so that a code read aloud or copied from a phone has no
    /// look-alikes. (Other backends may draw any `[A-Za-z0-9]`; codes stay case-sensitive.)
    pub const ALPHABET: &'static [u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    /// Length of a drawn code: 12 × 5 = 60 bits, no fewer than the ten alphanumerics (59.5
    /// bits) drawn before, so a private room stays as hard to guess.
    pub const DRAWN_LEN: usize = 12;

    /// A code as a person typed or pasted it: spaces and dashes (as in `7QK3-M9XR-T2VA`) are
    /// dropped, case and letters are kept.
    pub fn parse_typed(typed: &str) -> Result<Self, Rejection> {
        let code: String = typed.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        Self::try_from(code)
    }

    /// The drawn code this one was meant to be: upper case, `O` read as `0`, `I` and `L` as
    /// `1`, if that is a code of [`RoomCode::ALPHABET`] and [`RoomCode::DRAWN_LEN`] and not
    /// this one already. Used only when this code finds no room, so that codes of other
    /// backends, whatever their case, are taken as they are.
    pub fn canonical(&self) -> Option<Self> {
        let code: String = (self.0.chars())
            .map(|c| match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                upper => upper,
            })
            .collect();
        let drawn =
            code.len() == Self::DRAWN_LEN && code.bytes().all(|b| Self::ALPHABET.contains(&b));
        (drawn && code != self.0).then_some(Self(code))
    }

    /// Whether `other` is this code or a way of typing it (see [`RoomCode::canonical`]).
    pub fn names(&self, other: &RoomCode) -> bool {
        self == other || other.canonical().as_ref() == Some(self)
    }
}

token_newtype!(
    /// A player's id within a room; the `sub` of their token and their private subject token.
    /// Any length another backend may give (PROTOCOL.md sets none), within sane bounds.
    PlayerId, 1, 64, "player id"
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
    fn room_codes_are_alphanumeric_of_any_sane_length() {
        assert!(RoomCode::parse("abcD1234").is_ok());
        assert!(
            RoomCode::parse("r1").is_ok(),
            "another backend's short code"
        );
        assert!(RoomCode::parse("").is_err());
        assert!(
            RoomCode::parse("abcd.1234").is_err(),
            "a dot would split a subject"
        );
        assert!(RoomCode::parse("abcd*1234").is_err());
        assert!(RoomCode::parse("abcd 1234").is_err());
        assert!(RoomCode::parse(&"a".repeat(64)).is_ok());
        assert!(RoomCode::parse(&"a".repeat(65)).is_err());
        assert!(PlayerId::parse("p1").is_ok());
        assert!(PlayerId::parse("").is_err());
    }

    #[test]
    fn typed_codes_find_the_drawn_one_and_others_stay_as_they_are() {
        let drawn = RoomCode::parse("7QK3M9XRT2VA").unwrap();
        let typed = RoomCode::parse_typed(" 7qk3-m9xr-t2va ").unwrap();
        assert_eq!(typed.as_str(), "7qk3m9xrt2va", "separators go, case stays");
        assert_eq!(typed.canonical(), Some(drawn.clone()));
        assert!(drawn.names(&typed));
        assert_eq!(drawn.canonical(), None, "already canonical");
        let look_alikes = RoomCode::parse_typed("7QK3-M9XR-T2VO").unwrap();
        assert_eq!(look_alikes.canonical().unwrap().as_str(), "7QK3M9XRT2V0");
        let lower_l = RoomCode::parse("abcdefghjklm").unwrap();
        assert_eq!(lower_l.canonical().unwrap().as_str(), "ABCDEFGHJK1M");
        assert_eq!(
            RoomCode::parse("aDH1hcp65z").unwrap().canonical(),
            None,
            "another length is another backend's code, taken as it is"
        );
        assert_eq!(
            RoomCode::parse("ABCDEFGHJKMU").unwrap().canonical(),
            None,
            "U is not drawn"
        );
        assert!(!drawn.names(&RoomCode::parse("7QK3M9XRT2VB").unwrap()));
        assert!(RoomCode::parse_typed("7QK3.M9XR").is_err());
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
