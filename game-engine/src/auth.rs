//! The engines' shared secret: signing player tokens (EdDSA (Ed25519) JWTs with the claims
//! of PROTOCOL.md), and the room code a create's `request_id` stands for.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::Claims;
use proto::{ErrorCode, PlayerId, Rejection, RequestId, RoomCode};
use rand::SeedableRng;
use sha2::{Digest, Sha256};

use crate::rules::draw_room_code;

pub struct TokenSigner {
    key: EncodingKey,
    ttl: Duration,
    /// A key for room codes derived from request ids, from the signing key: every engine of
    /// a deployment holds the same, and nobody without it can tell a request's code.
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
        Ok(TokenSigner {
            key,
            ttl,
            codes: codes_key(&pem),
        })
    }

    /// The code a create with `request_id` tries first, the same on every engine: so a
    /// retried create finds the room the first attempt made (whose record remembers the
    /// request), whichever engine takes either.
    pub fn room_code_for(&self, request_id: &RequestId) -> RoomCode {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.codes).expect("any key length");
        mac.update(request_id.as_str().as_bytes());
        let seed: [u8; 32] = mac.finalize().into_bytes().into();
        draw_room_code(&mut rand::rngs::StdRng::from_seed(seed))
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

/// The key for request-derived room codes: a hash of the signing key's PEM body (its base64
/// lines alone, so that two files of one key wrapped differently agree).
fn codes_key(pem: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"phasecast room codes\0");
    for line in pem.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if !line.starts_with(b"-----") {
            hash.update(line);
        }
    }
    hash.finalize().into()
}
