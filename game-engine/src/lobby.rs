//! The public lobby: the list of open public rooms, as events and snapshots.
//!
//! Rooms tell the lobby task about themselves over a channel, so a room never waits for the
//! lobby; the lobby turns the changes into `room_opened` / `room_updated` / `room_closed` with
//! its own id counter and answers `game.lobby.snap`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::{Message, Subscriber};
use futures::StreamExt;
use proto::command::decode_request;
use proto::lobby::{
    LobbyPhase, LobbyRoom, LobbyRoomClosed, LobbySnapshot, RoomOpened, RoomUpdated,
};
use proto::{Reply, RoomCode, SnapReply, SnapRequest};
use tokio::sync::mpsc;

use crate::history::History;
use crate::room::game::{Audience, Outgoing};
use crate::room::send_event;
use crate::server::Context;

/// Most rooms a lobby snapshot lists (about 100 KiB of JSON).
pub const MAX_LISTED: usize = 1000;

/// What a room tells the lobby.
#[derive(Debug)]
pub enum LobbyChange {
    /// The room opened or its listing changed.
    Upsert(LobbyRoom),
    Closed(RoomCode),
}

pub struct Lobby {
    ctx: Arc<Context>,
    rooms: BTreeMap<RoomCode, LobbyRoom>,
    history: History,
}

impl Lobby {
    pub fn new(ctx: Arc<Context>) -> Self {
        let history = History::new(ctx.history);
        Lobby {
            ctx,
            rooms: BTreeMap::new(),
            history,
        }
    }

    /// Serves the lobby until the engine shuts down.
    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<LobbyChange>,
        mut snaps: Subscriber,
    ) {
        let shutdown = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                Some(change) = changes.recv() => self.on_change(change).await,
                Some(msg) = snaps.next() => self.on_snap(msg).await,
                () = shutdown.cancelled() => break,
                else => break,
            }
        }
        // The engine is stopping and its rooms with it: the lobby lists none of them any more.
        let codes: Vec<RoomCode> = self.rooms.keys().cloned().collect();
        for code in codes {
            self.on_change(LobbyChange::Closed(code)).await;
        }
    }

    async fn on_change(&mut self, change: LobbyChange) {
        let event = match change {
            LobbyChange::Upsert(room) => match self.rooms.insert(room.code.clone(), room.clone()) {
                None => Outgoing::new(Audience::Public, &RoomOpened(room)),
                Some(old) if old == room => return,
                Some(_) => Outgoing::new(Audience::Public, &RoomUpdated(room)),
            },
            LobbyChange::Closed(code) => match self.rooms.remove(&code) {
                Some(_) => Outgoing::new(Audience::Public, &LobbyRoomClosed { code }),
                None => return,
            },
        };
        let recorded = self.history.record(event);
        send_event(&self.ctx, self.ctx.subjects.lobby_events(), recorded).await;
    }

    async fn on_snap(&self, msg: Message) {
        let Some(reply_to) = msg.reply else { return };
        let reply = decode_request::<SnapRequest>(&msg.payload).map(|req| {
            self.history.reply(None, req.since, || {
                // Open rooms first, and a bounded list: a snapshot must fit in one NATS
                // message (1 MiB by default), and nobody scrolls past the first thousand.
                let waiting = self
                    .rooms
                    .values()
                    .filter(|r| r.phase == LobbyPhase::Waiting);
                let others = self
                    .rooms
                    .values()
                    .filter(|r| r.phase != LobbyPhase::Waiting);
                let snapshot = LobbySnapshot {
                    rooms: waiting.chain(others).take(MAX_LISTED).cloned().collect(),
                };
                serde_json::to_string(&snapshot).expect("snapshots serialise infallibly")
            })
        });
        let body = Reply::<SnapReply>::from(reply).to_bytes();
        self.ctx.reply(reply_to, body, "a lobby snapshot").await;
    }
}
