//! The engines' shared secret: signing player tokens (EdDSA (Ed25519) JWTs with the claims
//! of PROTOCOL.md), and the room code a create's `request_id` stands for.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::Claims;
use proto::{ErrorCode, PlayerId, Rejection, RequestId, RoomCode};
use sha2::{Digest, Sha256};

pub struct TokenSigner {
    key: EncodingKey,
    ttl: Duration,
    /// A key for room codes derived from requests, from the signing key: every engine of a
    /// deployment holds the same, and nobody without it can tell a request's code.
    codes: [u8; 32],
}

impl TokenSigner {
    /// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem_file(path: &Path, ttl: Duration) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("auth.signing_key_file: cannot read {}", path.display()))?;
        let key = EncodingKey::from_ed_pem(&pem).with_context(|| {
            format!(
                "auth.signing_key_file: {} is not a PKCS#8 PEM Ed25519 key",
                path.display()
            )
        })?;
        let codes = codes_key(key.as_bytes());
        Ok(TokenSigner { key, ttl, codes })
    }

    /// The code a create tries first when it carries a `request_id`: the same on every
    /// engine for the same request (its id and everything else it asks for), so that a
    /// retried create finds the room the first attempt made, whichever engine takes either.
    /// Its characters are the MAC's first 60 bits, 5 to a character of the 32-symbol
    /// alphabet, and not a random generator's draw, whose output may change between
    /// versions of the crate.
    pub fn room_code_for(&self, request_id: &RequestId, request: &[u8]) -> RoomCode {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.codes).expect("any key length");
        mac.update(request_id.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(request);
        let digest = mac.finalize().into_bytes();
        let bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        let code: String = (0..RoomCode::DRAWN_LEN)
            .map(|i| char::from(RoomCode::ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize]))
            .collect();
        RoomCode::parse(&code).expect("alphabet codes are valid codes")
    }

    /// The claims of a token for `player`, issued now.
    pub fn claims(&self, room: &RoomCode, player: &PlayerId, name: &str) -> Claims {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Claims {
            sub: player.clone(),
            room: room.clone(),
            name: name.to_owned(),
            iat,
            exp: iat + self.ttl.as_secs(),
        }
    }

    /// The player and token of a seat whose token has `claims`: a reply's, the first time and
    /// on every retry alike.
    pub fn seat(&self, claims: &Claims) -> Result<(PlayerId, String), Rejection> {
        Ok((claims.sub.clone(), self.sign(claims)?))
    }

    /// The token of `claims`. Ed25519 signatures are deterministic, so the same claims give
    /// the same token, byte for byte: a room keeps a join's claims, not its token, to answer
    /// a retried join.
    pub fn sign(&self, claims: &Claims) -> Result<String, Rejection> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key).map_err(|e| {
            tracing::error!(error = %e, "token signing failed");
            Rejection::new(ErrorCode::Internal, "could not sign a token")
        })
    }
}

/// The key for request-derived room codes: a hash of the signing key itself (its PKCS#8
/// bytes, so that two files of one key, however wrapped, agree).
fn codes_key(signing_key: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"phasecast room codes\0")
        .chain_update(signing_key)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer_from(pem: &str) -> TokenSigner {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        std::fs::write(&path, pem).unwrap();
        TokenSigner::from_pem_file(&path, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn a_request_stands_for_one_code_on_every_engine() {
        let pem = test_support::TEST_SIGNING_KEY_PEM;
        // The same key in files written otherwise: CRLF line ends, the body wrapped shorter.
        let crlf = pem.replace('\n', "\r\n");
        let body = pem.lines().find(|l| !l.starts_with("-----")).unwrap();
        let rewrapped = pem.replace(body, &format!("{}\n{}", &body[..20], &body[20..]));
        let id = RequestId::parse("4f9c2d7e-0b1a-4c3e-9f6d-2a8b7c5e1d03").unwrap();
        let asked = br#"[{"title":"t","total":3,"mafia":1},"Host"]"#;
        let codes: Vec<RoomCode> = [pem, &crlf, &rewrapped]
            .map(|file| signer_from(file).room_code_for(&id, asked))
            .into();
        assert_eq!(codes[0], codes[1]);
        assert_eq!(codes[0], codes[2]);
        // Pinned: engines of another build must derive the same code from the same request.
        assert_eq!(codes[0].as_str(), "NF8HPMX9KW62");
        let signer = signer_from(pem);
        let other_id = RequestId::parse("4f9c2d7e-0b1a-4c3e-9f6d-2a8b7c5e1d04").unwrap();
        assert_ne!(signer.room_code_for(&other_id, asked), codes[0]);
        let other_room = br#"[{"title":"u","total":3,"mafia":1},"Host"]"#;
        assert_ne!(signer.room_code_for(&id, other_room), codes[0]);
    }
}
