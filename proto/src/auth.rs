//! The player token: a JWT the engine signs at `join` and the gateway verifies, with EdDSA
//! over Ed25519 (PEM keys: PKCS#8 for the engine's private key, SPKI for the gateway's).

use serde::{Deserialize, Serialize};

use crate::ids::{PlayerId, RoomCode};

/// The token's claims, as PROTOCOL.md names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player id.
    pub sub: PlayerId,
    pub room: RoomCode,
    pub name: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
}
