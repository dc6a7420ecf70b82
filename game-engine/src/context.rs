//! What every part of a running engine shares: its NATS connection and JetStream store, its
//! identity, the scheduler, and the signals to stop or to re-check ownership.
//!
//! A leaf module: rooms, the lobby and ownership all depend on it, and it on none of them.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::Client;
use proto::Subjects;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenSigner;
use crate::lobby::LobbyMark;
use crate::scheduler::Scheduler;
use crate::store::Store;

pub struct Context {
    pub client: Client,
    pub subjects: Subjects,
    pub store: Store,
    pub signer: TokenSigner,
    /// This engine's name in the heartbeat bucket and in every room record it owns.
    pub engine_id: String,
    /// How long an engine may go without a heartbeat before others take its rooms.
    pub lease: Duration,
    pub history: usize,
    pub min_phase: Duration,
    /// How long before a deadline a room commits its step (`engine.commit_ahead`).
    pub commit_ahead: Duration,
    pub scheduler: Scheduler,
    /// Cancelled when the engine stops: rooms stop serving and are handed over.
    pub shutdown: CancellationToken,
    /// Every room task and the engine's own tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    /// Bumped when this engine's lease may have lapsed (it could not renew its heartbeat in
    /// time, say after SIGSTOP): every room then checks that it still owns its record.
    pub recheck: watch::Sender<u64>,
    /// When this engine's last heartbeat was sent (of those written; `None` before the
    /// first): after a lapse, a room checks it still owns its record before it answers
    /// anything ([`Context::lease_lapsed`]).
    pub last_beat: Mutex<Option<tokio::time::Instant>>,
    /// How far this engine's lobby has read the lobby bucket, for its rooms' lobby writes to
    /// tell when the bucket went back.
    pub lobby_mark: Mutex<LobbyMark>,
    /// Told when a lobby write shows the bucket went back: the lobby starts again from it.
    pub lobby_went_back: Notify,
    /// Whether this engine publishes the lobby's events (the first live engine by id, as
    /// `ownership` sees them): each change goes out once, not once per engine.
    pub lobby_publisher: watch::Sender<bool>,
}

impl Context {
    /// Whether this engine's last heartbeat is older than the lease: other engines may have
    /// taken its rooms (it was paused, or cut off from NATS), and what it holds may be stale.
    /// (Not before the first heartbeat: every room this engine holds then, it has just
    /// created or claimed.)
    pub fn lease_lapsed(&self) -> bool {
        let last_beat = *self.last_beat.lock().expect("heartbeat lock");
        last_beat.is_some_and(|sent| sent.elapsed() > self.lease)
    }

    /// Publishes a reply to a request; one that cannot be sent is logged (`what` says which),
    /// and its requester times out.
    pub async fn reply(&self, to: async_nats::Subject, body: Vec<u8>, what: &str) {
        if let Err(e) = self.client.publish(to, body.into()).await {
            tracing::warn!(error = %e, "could not reply to {what}");
        }
    }
}
