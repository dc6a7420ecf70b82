//! Verifying player tokens, and finding them in a request.
//!
//! The token is the only thing the gateway trusts from a browser: it names the player and the
//! room. `EventSource` cannot set headers, so besides `Authorization: Bearer` the token may come
//! in the `phasecast_token` cookie (set by `join`) or the `token` query parameter.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use metrics::counter;
use proto::auth::Claims;
use proto::{ErrorCode, RoomCode};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::metrics as m;

/// The cookie `join` sets, scoped to the room's path.
pub const COOKIE: &str = "phasecast_token";

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    verified: Verified,
}

/// Tokens whose signature was verified already, so that a player's next command or stream
/// skips the Ed25519 check (a tenth of the gateway's CPU under the rooms benchmark, where
/// players send a command every few seconds). Their claims are decoded again and their
/// expiry checked on every use. Kept as the first 128 bits of each whole token's SHA-256 (16
/// bytes each): another token matching one would be a second preimage of SHA-256 truncated
/// to 128 bits. Two generations of at most [`Verified::GENERATION`] each: when the newer
/// fills, the older is dropped, so the set stays bounded and a token in use moves into the
/// newer one.
struct Verified {
    /// (newer, older)
    generations: Mutex<(HashSet<u128>, HashSet<u128>)>,
}

impl Verified {
    const GENERATION: usize = 50_000;

    fn new() -> Self {
        Verified {
            generations: Mutex::new(Default::default()),
        }
    }

    fn fingerprint(token: &str) -> u128 {
        let digest = Sha256::digest(token.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        u128::from_be_bytes(first)
    }

    /// Whether the token was verified; if so it counts as used now.
    fn contains(&self, fingerprint: u128) -> bool {
        let mut generations = self.generations.lock().expect("verified tokens lock");
        let (newer, older) = &mut *generations;
        if newer.contains(&fingerprint) {
            return true;
        }
        let known = older.remove(&fingerprint);
        if known {
            Self::add(&mut generations, fingerprint);
        }
        known
    }

    fn insert(&self, fingerprint: u128) {
        Self::add(
            &mut self.generations.lock().expect("verified tokens lock"),
            fingerprint,
        );
    }

    fn add((newer, older): &mut (HashSet<u128>, HashSet<u128>), fingerprint: u128) {
        if newer.len() >= Self::GENERATION {
            *older = std::mem::take(newer);
        }
        newer.insert(fingerprint);
    }
}

impl Verifier {
    /// Reads an SPKI PEM Ed25519 public key (`openssl pkey -pubout`).
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("auth.verify_key_file: cannot read {}", path.display()))?;
        let key = DecodingKey::from_ed_pem(&pem).with_context(|| {
            format!(
                "auth.verify_key_file: {} is not a PEM Ed25519 public key",
                path.display()
            )
        })?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Verifier {
            key,
            validation,
            verified: Verified::new(),
        })
    }

    /// The claims of a valid token for `room`: 401 when there is no valid token, 403 when it
    /// is for another room.
    pub fn authorize(&self, token: Option<&str>, room: &RoomCode) -> Result<Claims, ApiError> {
        let fail = |reason: &'static str, code, message: &str| {
            counter!(m::AUTH_FAILURES, "reason" => reason).increment(1);
            ApiError::new(code, message)
        };
        let Some(token) = token else {
            return Err(fail(
                "missing",
                ErrorCode::Unauthorized,
                "a token is required",
            ));
        };
        let expired = || fail("expired", ErrorCode::Unauthorized, "the token has expired");
        let invalid = || fail("invalid", ErrorCode::Unauthorized, "the token is not valid");
        let fingerprint = Verified::fingerprint(token);
        let claims = if self.verified.contains(fingerprint) {
            // The very token whose signature and claims were checked before: only its
            // expiry can have changed (checked as `decode` does, with no leeway).
            let claims: Claims =
                jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| invalid())?;
            if claims.exp < jsonwebtoken::get_current_timestamp() {
                return Err(expired());
            }
            claims
        } else {
            let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => expired(),
                    _ => invalid(),
                })?
                .claims;
            self.verified.insert(fingerprint);
            claims
        };
        if !claims.room.names(room) {
            return Err(fail(
                "wrong_room",
                ErrorCode::Forbidden,
                "the token is for another room",
            ));
        }
        Ok(claims)
    }
}

/// The request's token: `Authorization: Bearer`, else `?token=`, else the cookie; an empty
/// value counts as absent.
pub fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110, 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty());
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == COOKIE && !value.is_empty())
            .map(|(_, value)| value)
    };
    let query = || {
        form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    };
    // A credential the client names (the header, then the query) wins over the ambient
    // cookie: two players of one room in one browser share the cookie jar, and the cookie
    // holds whoever joined last.
    bearer
        .map(str::to_owned)
        .or_else(query)
        .filter(|t| !t.is_empty())
        .or_else(|| cookie().map(str::to_owned))
}

/// The `Set-Cookie` value that lets a room's `EventSource` and commands carry the token.
pub fn cookie_for(room: &RoomCode, token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/v1/rooms/{room}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(room: &RoomCode, exp: u64) -> String {
        let claims = Claims {
            sub: proto::PlayerId::parse("ann1").unwrap(),
            room: room.clone(),
            name: "Ann".into(),
            iat: 0,
            exp,
        };
        let key = EncodingKey::from_ed_pem(test_support::TEST_SIGNING_KEY_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
    }

    fn verifier() -> (Verifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (_, verify) = test_support::write_test_keys(dir.path());
        (Verifier::from_pem_file(&verify).unwrap(), dir)
    }

    #[test]
    fn a_verified_token_is_trusted_again_and_nothing_else_is() {
        let (v, _dir) = verifier();
        let room = RoomCode::parse("ROOM1234").unwrap();
        let other = RoomCode::parse("ROOM5678").unwrap();
        let later = jsonwebtoken::get_current_timestamp() + 3600;
        let good = token(&room, later);
        for _ in 0..2 {
            assert_eq!(v.authorize(Some(&good), &room).unwrap().room, room);
        }
        assert!(v.verified.contains(Verified::fingerprint(&good)));
        assert_eq!(
            v.authorize(Some(&good), &other).unwrap_err().code,
            ErrorCode::Forbidden
        );
        // The remembered token's signature on other claims, and its claims with another
        // signature, are verified afresh and refused.
        let part = |t: &str, i: usize| t.split('.').nth(i).unwrap().to_owned();
        let other_token = token(&other, later);
        let (header, payload, signature) = (part(&good, 0), part(&other_token, 1), part(&good, 2));
        let forged = format!("{header}.{payload}.{signature}");
        // One character in the middle of the signature changed.
        let mut resigned = good.clone().into_bytes();
        let at = resigned.len() - 20;
        resigned[at] = if resigned[at] == b'A' { b'B' } else { b'A' };
        let resigned = String::from_utf8(resigned).unwrap();
        for bad in [forged, resigned] {
            assert_eq!(
                v.authorize(Some(&bad), &room).unwrap_err().code,
                ErrorCode::Unauthorized,
                "{bad}"
            );
        }
        // A token verified while valid is refused once it has expired.
        let expired = token(&room, jsonwebtoken::get_current_timestamp() - 1);
        v.verified.insert(Verified::fingerprint(&expired));
        let refused = v.authorize(Some(&expired), &room).unwrap_err();
        assert_eq!(refused.message, "the token has expired");
    }

    #[test]
    fn verified_tokens_stay_bounded_and_those_in_use_stay() {
        let (v, _dir) = verifier();
        let n = Verified::GENERATION as u128;
        for f in 0..n {
            v.verified.insert(f);
        }
        // The newer generation is full: the next one moves it to the older.
        v.verified.insert(n);
        assert!(v.verified.contains(0), "moved back to the newer generation");
        for f in n + 1..2 * n {
            v.verified.insert(f);
        }
        v.verified.insert(2 * n);
        let (newer, older) = &*v.verified.generations.lock().unwrap();
        assert!(newer.len() + older.len() <= 2 * Verified::GENERATION);
        assert!(
            !newer.contains(&1) && !older.contains(&1),
            "unused for two generations"
        );
        assert!(older.contains(&0), "used since");
    }

    #[test]
    fn bearer_wins_then_query_then_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h, Some("a=1&token=q%2Bq")), Some("q+q".into()));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; phasecast_token=c"),
        );
        assert_eq!(
            token_of(&h, Some("token=q")),
            Some("q".into()),
            "the token a tab names beats the cookie of whoever joined last"
        );
        assert_eq!(token_of(&h, None), Some("c".into()));
        assert_eq!(token_of(&h, Some("token=")), Some("c".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(token_of(&h, Some("token=q")), Some("b".into()));
        assert_eq!(token_of(&HeaderMap::new(), Some("token=")), None);
        let mut empty = HeaderMap::new();
        empty.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(token_of(&empty, Some("token=q")), Some("q".into()));
    }
}
