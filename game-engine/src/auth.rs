//! Signing player tokens: EdDSA (Ed25519) JWTs with the claims of PROTOCOL.md.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::Claims;
use proto::{ErrorCode, PlayerId, Rejection, RoomCode};

pub struct TokenSigner {
    key: EncodingKey,
    ttl: Duration,
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
        Ok(TokenSigner { key, ttl })
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
