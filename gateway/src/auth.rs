//! Verifying player tokens, and finding them in a request.
//!
//! The token is the only thing the gateway trusts from a browser: it names the player and the
//! room. `EventSource` cannot set headers, so besides `Authorization: Bearer` the token may come
//! in the `phasecast_token` cookie (set by `join`) or the `token` query parameter.

use std::path::Path;

use anyhow::Context as _;
use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use metrics::counter;
use proto::auth::Claims;
use proto::{ErrorCode, RoomCode};

use crate::error::ApiError;
use crate::metrics as m;

/// The cookie `join` sets, scoped to the room's path.
pub const COOKIE: &str = "phasecast_token";

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
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
        Ok(Verifier { key, validation })
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
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    fail("expired", ErrorCode::Unauthorized, "the token has expired")
                }
                _ => fail("invalid", ErrorCode::Unauthorized, "the token is not valid"),
            })?
            .claims;
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
