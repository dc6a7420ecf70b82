//! One room: a task that owns its [`Game`], its event history and its deadline.
//!
//! Each room is its own task with its own NATS subscriptions, so one room's command never
//! queues behind another room's work. The room's next deadline is an [`Alarm`] from the
//! engine's [`crate::scheduler`], awaited in the same `select!` as its commands: the room
//! sleeps until a command or its deadline arrives, and costs nothing in between.

pub mod game;

use std::sync::Arc;

use async_nats::{HeaderMap, Message, Subject, Subscriber};
use futures::StreamExt;
use metrics::{counter, gauge, histogram};
use proto::command::decode_request;
use proto::event::Phase;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::lobby::LobbyRoom;
use proto::{Command, CommandOk, ErrorCode, Rejection, Reply, SnapReply, SnapRequest};
use tokio::time::Instant;

use crate::history::{History, Recorded};
use crate::lobby::LobbyChange;
use crate::metrics as m;
use crate::scheduler::Alarm;
use crate::server::Context;
use game::{Ack, Audience, Effects, Game, Now};

/// A live room: its rules, its history and the engine it runs in.
pub struct Room {
    ctx: Arc<Context>,
    game: Game,
    history: History,
    /// The phase and player count last reported to the gauges.
    phase: Phase,
    players: usize,
    /// What the lobby was last told of this room; `None` for a private room.
    listed: Option<LobbyRoom>,
}

impl Room {
    pub fn new(ctx: Arc<Context>, game: Game) -> Self {
        let history = History::new(ctx.history);
        gauge!(m::ROOMS, "phase" => game.phase().as_str()).increment(1.0);
        Room {
            ctx,
            phase: game.phase(),
            game,
            history,
            players: 0,
            listed: None,
        }
    }

    /// Serves the room until it closes or the engine shuts down.
    ///
    /// Handlers only compute; this loop does the I/O in the order the contract needs: stop
    /// listening if the room closed (so no command is accepted after `room_closed`), publish
    /// the events in id order, then reply.
    pub async fn run(mut self, mut commands: Subscriber, mut snaps: Subscriber) {
        self.update_lobby();
        let shutdown = self.ctx.shutdown.clone();
        let mut alarm: Option<Alarm> = None;
        loop {
            let deadline = self.game.deadline();
            let at = deadline.into_std();
            let alarm = match &mut alarm {
                Some(set) => {
                    if !set.is_pending() || set.at() != at {
                        set.reset(at);
                    }
                    set
                }
                None => alarm.insert(self.ctx.scheduler.alarm(at)),
            };
            let (fx, reply) = tokio::select! {
                Some(msg) = commands.next() => self.on_command(msg),
                Some(msg) = snaps.next() => { self.on_snap(msg).await; continue }
                () = alarm.fired() => (self.on_deadline(deadline), None),
                // The engine is stopping and its rooms live only in memory: tell the players.
                () = shutdown.cancelled() => {
                    let mut fx = Effects::default();
                    self.game.close(&mut fx);
                    (fx, None)
                }
                else => break,
            };
            let closed = fx.closed;
            if closed {
                let _ = commands.unsubscribe().await;
                let _ = snaps.unsubscribe().await;
            }
            self.apply(fx).await;
            if let Some((to, body)) = reply {
                self.ctx.reply(to, body, "a room command").await;
            }
            if closed {
                break;
            }
        }
        gauge!(m::ROOMS, "phase" => self.phase.as_str()).decrement(1.0);
        gauge!(m::PLAYERS).decrement(self.players as f64);
    }

    /// Applies a command; returns its effects and the reply to send after them.
    fn on_command(&mut self, msg: Message) -> (Effects, Option<(Subject, Vec<u8>)>) {
        let started = Instant::now();
        let mut fx = Effects::default();
        let mut kind = "unknown";
        let result = decode_request::<Command>(&msg.payload).and_then(|cmd| {
            kind = cmd.kind();
            let ack = self
                .game
                .handle(cmd, Now::system(), &mut rand::rng(), &mut fx)?;
            self.ack(ack)
        });
        let result_label = match &result {
            Ok(_) => "ok",
            Err(e) => e.error.as_str(),
        };
        counter!(m::COMMANDS, "type" => kind, "result" => result_label).increment(1);
        let reply = msg.reply.map(|to| (to, Reply::from(result).to_bytes()));
        histogram!(m::COMMAND_SECONDS, "type" => kind).record(started.elapsed().as_secs_f64());
        (fx, reply)
    }

    fn ack(&self, ack: Ack) -> Result<CommandOk, Rejection> {
        Ok(match ack {
            Ack::Joined(player_id) => {
                let name = self.game.name_of(&player_id).expect("just joined");
                let token = self
                    .ctx
                    .signer
                    .sign(self.game.code(), &player_id, name.as_str())?;
                CommandOk::Joined { player_id, token }
            }
            Ack::Investigated { mafia } => CommandOk::Investigated { mafia },
            Ack::Done => CommandOk::Done {},
        })
    }

    async fn on_snap(&mut self, msg: Message) {
        let Some(reply_to) = msg.reply else { return };
        let reply = decode_request::<SnapRequest>(&msg.payload).and_then(|req| {
            if let Some(viewer) = &req.viewer {
                if !self.game.is_player(viewer) {
                    return Err(Rejection::new(
                        ErrorCode::NoSuchPlayer,
                        "no such player in this room",
                    ));
                }
            }
            let game = &self.game;
            Ok(self.history.reply(req.viewer.as_ref(), req.since, || {
                serde_json::to_string(&game.snapshot(req.viewer.as_ref()))
                    .expect("snapshots serialise infallibly")
            }))
        });
        let body = Reply::<SnapReply>::from(reply).to_bytes();
        self.ctx.reply(reply_to, body, "a room snapshot").await;
    }

    /// The deadline passed: record how late we are and move the game on. The next phase is
    /// timed from the deadline itself, not from when we woke, so lateness never accumulates.
    fn on_deadline(&mut self, deadline: Instant) -> Effects {
        let late = Instant::now().saturating_duration_since(deadline);
        histogram!(m::SCHEDULER_LATENESS).record(late.as_secs_f64());
        let mut now = Now::system();
        now.instant = deadline;
        now.unix_ms = now.unix_ms.saturating_sub(late.as_millis() as u64);
        let mut fx = Effects::default();
        self.game.on_deadline(now, &mut fx);
        fx
    }

    /// Records and publishes the events in id order, then tells the lobby.
    async fn apply(&mut self, fx: Effects) {
        for event in fx.events {
            let recorded = self.history.record(event);
            publish(&self.ctx, self.game.code(), recorded).await;
        }
        let phase = self.game.phase();
        if phase != self.phase {
            gauge!(m::ROOMS, "phase" => self.phase.as_str()).decrement(1.0);
            gauge!(m::ROOMS, "phase" => phase.as_str()).increment(1.0);
            self.phase = phase;
        }
        let players = self.game.player_count();
        if players != self.players {
            gauge!(m::PLAYERS).increment(players as f64 - self.players as f64);
            self.players = players;
        }
        if fx.closed {
            if self.listed.is_some() {
                let _ = self
                    .ctx
                    .lobby
                    .send(LobbyChange::Closed(self.game.code().clone()));
            }
        } else {
            self.update_lobby();
        }
    }

    /// Tells the lobby when its view of this room has changed. Compared rather than flagged
    /// by each rule, so that no change the lobby shows can go unannounced.
    fn update_lobby(&mut self) {
        let entry = self.game.lobby_entry();
        if entry != self.listed {
            if let Some(entry) = &entry {
                let _ = self.ctx.lobby.send(LobbyChange::Upsert(entry.clone()));
            }
            self.listed = entry;
        }
    }
}

/// Publishes one recorded event to the subjects of its audience, with `Sse-Id`/`Sse-Event`.
async fn publish(ctx: &Context, code: &proto::RoomCode, event: &Recorded) {
    let subjects = match &event.audience {
        Audience::Public => vec![ctx.subjects.room_events(code)],
        Audience::Players(ids) => ids
            .iter()
            .map(|id| ctx.subjects.player_events(code, id))
            .collect(),
    };
    for subject in subjects {
        send_event(ctx, subject, event).await;
    }
}

/// Publishes one event with its headers; shared by rooms and the lobby.
pub async fn send_event(ctx: &Context, subject: String, event: &Recorded) {
    let mut headers = HeaderMap::new();
    headers.insert(SSE_ID, event.id.to_string().as_str());
    headers.insert(SSE_EVENT, event.name);
    match ctx
        .client
        .publish_with_headers(subject, headers, event.data.clone())
        .await
    {
        Ok(()) => counter!(m::EVENTS_PUBLISHED).increment(1),
        Err(e) => tracing::warn!(error = %e, "could not publish an event"),
    }
}
