//! What every part of the gateway shares: the NATS client, the fan-out, the token verifier,
//! the configuration and the open-stream count. A leaf: it knows no handler.

use std::ops::Deref;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use async_nats::connection::State as NatsState;
use async_nats::Client;
use proto::{StoreNames, Subjects};
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::GatewayConfig;
use crate::hub::Hub;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub struct Inner {
    pub client: Client,
    pub subjects: Subjects,
    /// Where engines keep rooms, to tell a room changing hands from one that is gone.
    pub store: StoreNames,
    pub hub: Hub,
    pub verifier: Verifier,
    pub config: GatewayConfig,
    /// Open SSE streams, against `gateway.max_connections`.
    pub connections: AtomicUsize,
    /// Cancelled on SIGTERM: every stream ends.
    pub shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == NatsState::Connected
    }
}
