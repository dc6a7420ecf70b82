//! One room: a task that owns its [`crate::rules::Game`] while this engine owns the room's record.
//!
//! Each room is its own task with its own NATS subscriptions (in a queue group of its owner's
//! tenure: see [`proto::subject::owner_queue_group`]), so one room's command never queues
//! behind another room's work. Its next deadline is an [`Alarm`] from the
//! engine's [`crate::scheduler`], awaited in the same `select!` as its commands.
//!
//! Every step (a command or a deadline) runs in the order that makes a room survive its
//! engine: compute with the rules, commit the record to JetStream (the fence: a stale owner
//! fails here and stops), publish the events, send them to the room's log, reply, and wait
//! for the log's ack before the next step. Nothing is published before it is committed, so
//! an id never carries two payloads. A deadline's step is committed a little ahead of the
//! deadline (`engine.commit_ahead`) and held until it, so that players get the phase change
//! at the deadline rather than a commit's round trip after it.

use std::sync::Arc;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::{Message, Subject, Subscriber};
use futures::StreamExt;
use metrics::{counter, gauge, histogram};
use proto::auth::Claims;
use proto::command::decode_command;
use proto::event::Phase;
use proto::subject::owner_queue_group;
use proto::{
    Command, CommandOk, ErrorCode, PlayerId, Rejection, Reply, RoomCode, SnapReply, SnapRequest,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::config::MAX_COMMIT_AHEAD;
use crate::context::Context;
use crate::history::History;
use crate::lobby::Listing;
use crate::metrics as m;
use crate::outgoing::{unix_ms_now, Ack, Effects, Now};
use crate::publish;
use crate::rules::Game;
use crate::scheduler::Alarm;
use crate::store::{Answer, CommitError, Logged, RoomRecord};

/// A deadline fired later than this (an outage, a takeover, a stalled machine) times the
/// next phase from now rather than from the deadline: otherwise every phase shorter than the
/// delay would follow at once, and players would get zero-length phases.
const LATE_LIMIT_MS: u64 = 500;

/// How long a room waits after a commit or a log append JetStream did not take, doubling up
/// to the maximum.
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(2);
/// The most a request waits for a resumed room's log to be read (well within a gateway's
/// request timeout), and how long after a read that failed the next may be tried.
const LOG_READ_LIMIT: Duration = Duration::from_secs(2);
const LOG_READ_RETRY: Duration = Duration::from_secs(30);
/// How many chat lines a snapshot carries: the viewer's latest among the room's history
/// (`engine.history` events).
const SNAPSHOT_CHAT_LINES: usize = 50;
/// How long a closed room answers snapshot requests: longer than a gateway's catch-up
/// retries last (about 40 s), so one that reconnects to NATS after the end still gets it.
const CLOSED_LINGER: Duration = Duration::from_secs(60);
/// The most a room that stops spends answering the commands it had received when it
/// stopped listening.
const TURN_AWAY_LIMIT: Duration = Duration::from_secs(2);

/// How a room's loop goes on after a step.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The room ended: `room_closed` is committed and published.
    Closed,
    /// Another engine owns the room now (or the engine is stopping mid-commit).
    Gone,
}

/// What a step left to do once committed: its events to publish and the reply to send after
/// them.
struct Outcome {
    flow: Flow,
    events: Vec<Logged>,
    reply: Option<(Subject, Vec<u8>)>,
    /// For a command: when it arrived and its type, for the latency histogram.
    command: Option<(Instant, &'static str)>,
    /// For a deadline's step: the deadline (unix ms), for the lateness histogram.
    deadline: Option<u64>,
    /// The record before the step, to return to if the step cannot be committed.
    undo: Option<Box<RoomRecord>>,
    /// Committed already: a deadline's step committed ahead, now due ([`Room::prepared`]).
    committed: bool,
}

impl Outcome {
    fn nothing(flow: Flow) -> Self {
        Outcome {
            flow,
            events: Vec::new(),
            reply: None,
            command: None,
            deadline: None,
            undo: None,
            committed: false,
        }
    }
}

/// A step on its way to NATS: its events published and its log append sent.
struct Sent {
    /// [`Room::connects`] before the events were published.
    connects: u64,
    /// The append's ack to come, if it could be sent.
    ack: Option<PublishAckFuture>,
}

/// A room this engine owns.
pub struct Room {
    ctx: Arc<Context>,
    code: RoomCode,
    record: RoomRecord,
    revision: u64,
    history: History,
    /// When the room's log is to be read into `history`, if it is to be (a resumed room's,
    /// on the first request that needs it: [`Room::read_log_if_due`]).
    log_due: Option<Instant>,
    listing: Listing,
    /// A deadline's step committed ahead of the deadline: the record committed, whose outbox
    /// goes out at its `outbox_at`. Until then the room is `record`, the state before the
    /// step, which answers snapshots, and which a command that comes first changes (its
    /// commit replaces this one, whose events then never go out).
    prepared: Option<Box<RoomRecord>>,
    /// A deadline not to be committed ahead (its step ends the room): its alarm goes off at
    /// the deadline itself.
    on_time: Option<u64>,
    /// The phase and player count last reported to the gauges.
    phase: Phase,
    players: usize,
    /// Set while JetStream refuses commits: how long the room waits before its next step.
    pause: Option<Duration>,
    /// The engine's lease lapses counted ([`Context::recheck`]) when the room last found its
    /// record still its own, and when it last knew (a read of its record, or a commit).
    checked: u64,
    checked_at: Instant,
}

impl Room {
    /// Subscribes the room's subjects and runs it on the engine's task tracker. `resumed`
    /// says the room was committed by an engine before this one (a takeover or a restart).
    pub async fn start(
        ctx: &Arc<Context>,
        record: RoomRecord,
        revision: u64,
        resumed: bool,
    ) -> Result<(), async_nats::SubscribeError> {
        let code = record.game.code().clone();
        let commands = ctx
            .client
            .queue_subscribe(
                ctx.subjects.room_cmd(&code),
                owner_queue_group(record.epoch),
            )
            .await?;
        let snaps = ctx
            .client
            .queue_subscribe(
                ctx.subjects.room_snap(&code),
                owner_queue_group(record.epoch),
            )
            .await?;
        // A new room's history is complete from its first event; a resumed one knows its
        // last step, and reads the rest from the log when a request needs it
        // ([`Room::read_log_if_due`]).
        let first_known = record.last_id - record.outbox.len() as u64;
        let mut history = History::after(ctx.history, first_known);
        for event in &record.outbox {
            history.record(event.clone());
        }
        let phase = record.game.phase();
        gauge!(m::ROOMS, "phase" => phase.as_str()).increment(1.0);
        let mut room = Room {
            ctx: ctx.clone(),
            code,
            revision,
            history,
            log_due: resumed.then(Instant::now),
            listing: Listing::default(),
            prepared: None,
            on_time: None,
            phase,
            players: 0,
            pause: None,
            checked: *ctx.recheck.borrow(),
            checked_at: Instant::now(),
            record,
        };
        if !resumed {
            // Listed before the create is answered, so that its creator finds it in the next
            // lobby snapshot. (A resumed room reads its listing first, in its own task, so
            // that a takeover of many rooms does not wait for each.)
            room.sync_lobby().await;
        }
        ctx.tasks.spawn(room.run(commands, snaps, resumed));
        Ok(())
    }

    /// Serves the room until it closes, another engine takes it, or this engine stops.
    async fn run(mut self, mut commands: Subscriber, mut snaps: Subscriber, resumed: bool) {
        if !self.resume().await {
            // The engine is stopping before a step committed ahead could go out: the room's
            // next owner publishes it. Taking another step here would bury it.
            self.stop(commands, &Flow::Gone).await;
            return;
        }
        self.count_players();
        if resumed {
            self.listing = Listing::read(&self.ctx, &self.code).await;
            self.sync_lobby().await;
        }
        let shutdown = self.ctx.shutdown.clone();
        let mut recheck = self.ctx.recheck.subscribe();
        let mut alarm: Option<(AlarmFor, Alarm)> = None;
        let flow = loop {
            let (due, at) = self.next_alarm();
            let alarm = match &mut alarm {
                Some((set_for, set)) => {
                    if *set_for != due || !set.is_pending() {
                        set.reset(at);
                        *set_for = due;
                    }
                    set
                }
                None => {
                    let set = self.ctx.scheduler.alarm(at);
                    &mut alarm.insert((due, set)).1
                }
            };
            let outcome = tokio::select! {
                Some(msg) = commands.next() => match self.still_ours().await {
                    Flow::Continue => self.on_command(msg),
                    flow => self.turned_away(msg, flow),
                },
                Some(msg) = snaps.next() => match self.still_ours().await {
                    Flow::Continue => {
                        self.on_snap(msg).await;
                        Outcome::nothing(Flow::Continue)
                    }
                    flow => self.turned_away(msg, flow),
                },
                () = alarm.fired() => match self.prepared.take() {
                    Some(committed) => if self.may_release().await {
                        self.release(*committed)
                    } else {
                        self.on_deadline()
                    },
                    None => self.on_deadline(),
                },
                Ok(()) = recheck.changed() => Outcome::nothing(self.still_ours().await),
                // The engine is stopping: the room stays in JetStream for another engine.
                () = shutdown.cancelled() => Outcome::nothing(Flow::Gone),
                else => Outcome::nothing(Flow::Gone),
            };
            let outcome = self.commit(outcome).await;
            let outcome = self.hold_if_early(outcome);
            let stepped = !outcome.events.is_empty();
            if let (Some(deadline), true) = (outcome.deadline, stepped) {
                let late = wall_clock_past(deadline, SystemTime::now()).unwrap_or_default();
                histogram!(m::SCHEDULER_LATENESS).record(late.as_secs_f64());
            }
            if outcome.flow != Flow::Continue {
                // Stop listening before `room_closed` goes out, so that no request reaches
                // a room that no longer answers (those already received are answered below).
                // A closed room still answers snapshots for a while (see `linger`).
                let _ = commands.drain().await;
                if outcome.flow != Flow::Closed {
                    let _ = snaps.unsubscribe().await;
                }
            }
            // The reply goes out once the events are published, without waiting for the log
            // to ack them: the committed record holds them already (a successor repeats its
            // last step), and the room takes no next step before the log has them.
            let sent = self.send(&outcome.events).await;
            if let Some((to, body)) = outcome.reply {
                self.ctx.reply(to, body, "a room command").await;
            }
            if let Some((started, kind)) = outcome.command {
                let seconds = started.elapsed().as_secs_f64();
                histogram!(m::COMMAND_SECONDS, "type" => kind).record(seconds);
            }
            if stepped {
                self.logged(&outcome.events, sent).await;
                for event in outcome.events {
                    self.history.record(event);
                }
                self.count_players();
            }
            if stepped || outcome.flow == Flow::Closed {
                self.sync_lobby().await;
            }
            if outcome.flow != Flow::Continue {
                break outcome.flow;
            }
            if let Some(wait) = self.pause {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break Flow::Gone,
                }
            }
        };
        self.stop(commands, &flow).await;
        if flow == Flow::Closed {
            let index = format!("{}.{}", self.ctx.engine_id, self.code);
            if let Err(e) = self.ctx.store.owners.delete(&index).await {
                tracing::warn!(room = %self.code, error = %e, "could not drop a closed room's index key");
            }
            self.linger(snaps).await;
        }
    }

    /// The room's tenure here ends: the requests it holds are answered, and it leaves the
    /// gauges.
    async fn stop(&self, commands: Subscriber, flow: &Flow) {
        self.turn_away(commands, flow).await;
        gauge!(m::ROOMS, "phase" => self.phase.as_str()).decrement(1.0);
        gauge!(m::PLAYERS).decrement(self.players as f64);
    }

    /// Stops listening (again: a room that stops between steps has not yet) and answers the
    /// commands already received, so that their requesters are not left to time out: "no
    /// such room" once it closed, else "try again", which the room's next owner answers. A
    /// stale owner that wakes from a pause (SIGSTOP) finds here its copies of the requests
    /// the new owner answered meanwhile. (In async-nats 0.51 a drained subscription yields
    /// what the client holds for it and ends; requests the server sends it after that are
    /// dropped, and time out.)
    async fn turn_away(&self, mut commands: Subscriber, flow: &Flow) {
        let _ = commands.drain().await;
        let body = refusal_as(flow).to_bytes();
        let answer_all = async {
            while let Some(msg) = commands.next().await {
                if let Some(to) = msg.reply {
                    self.ctx.reply(to, body.clone(), "a room command").await;
                }
            }
        };
        let _ = tokio::time::timeout(TURN_AWAY_LIMIT, answer_all).await;
    }

    /// After `room_closed`: answers snapshot and catch-up requests for [`CLOSED_LINGER`]
    /// more. A gateway that was cut off from NATS while the game ended asks for what it
    /// missed when it is back (seconds later, on a cluster whose node restarts); answered,
    /// its players see `game_over` and `room_closed`, where "no such room" would have left
    /// them never knowing how the game ended.
    async fn linger(&mut self, mut snaps: Subscriber) {
        let until = tokio::time::sleep(CLOSED_LINGER);
        tokio::pin!(until);
        loop {
            tokio::select! {
                Some(msg) = snaps.next() => self.on_snap(msg).await,
                () = &mut until => break,
                () = self.ctx.shutdown.cancelled() => break,
                else => break,
            }
        }
        let _ = snaps.unsubscribe().await;
    }

    /// At the start of a room's tenure: if the log lacks the last step, its owner may have
    /// died before publishing it, so it is published (again: gateways deliver an id once)
    /// and logged. If the log has it, NATS had its events before the log did (one
    /// connection, in order). A room created with its creator seated starts this way too:
    /// its first step is committed with the room, and goes out here. False if the engine
    /// stopped first, while a step committed ahead waited for its deadline: it is not out.
    async fn resume(&mut self) -> bool {
        let Some(last) = self.record.outbox.last() else {
            return true;
        };
        let logged = match self.ctx.store.last_logged_id(&self.code).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(room = %self.code, error = %e, "cannot read the room's log");
                0
            }
        };
        if logged >= last.id {
            return true;
        }
        // A deadline's step committed ahead by an engine that stopped before the deadline.
        if let Some(at) = self.record.outbox_at {
            let early = wall_clock_past(at, SystemTime::now()).err();
            let wait = early.unwrap_or_default().min(MAX_COMMIT_AHEAD);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.ctx.shutdown.cancelled() => return false,
            }
        }
        let outbox = self.record.outbox.clone();
        let sent = self.send(&outbox).await;
        self.logged(&outbox, sent).await;
        true
    }

    /// A command: replayed from memory if its `request_id` was seen, else applied; its
    /// reply goes out after its events.
    fn on_command(&mut self, msg: Message) -> Outcome {
        let started = Instant::now();
        let Some(reply_to) = msg.reply.clone() else {
            // Nobody waits for an answer, and nothing unanswerable may change a room.
            return Outcome::nothing(Flow::Continue);
        };
        let respond = |body: Vec<u8>| Outcome {
            reply: Some((reply_to.clone(), body)),
            ..Outcome::nothing(Flow::Continue)
        };
        if self.record.closed {
            return respond(Reply::<()>::Err(no_such_room()).to_bytes());
        }
        let (cmd, request_id) = match decode_command(&msg.payload) {
            Ok(decoded) => decoded,
            Err(rejection) => {
                counter!(m::COMMANDS, "type" => "unknown", "result" => rejection.error.as_str())
                    .increment(1);
                return respond(Reply::<()>::Err(rejection).to_bytes());
            }
        };
        let kind = cmd.kind();
        let now = Now::system();
        self.record.forget_old_seats(now.unix_ms / 1000);
        let retry = request_id.map(|id| (actor(&cmd), id.as_str().to_owned()));
        if let Some(answer) = (retry.as_ref()).and_then(|(by, id)| self.record.remembered(by, id)) {
            counter!(m::COMMANDS, "type" => kind, "result" => "replayed").increment(1);
            return respond(Reply::from(self.reply_of(answer)).to_bytes());
        }
        let undo = Box::new(self.record.clone());
        let mut fx = Effects::default();
        let applied = (self.record.game)
            .handle(cmd, now, &mut rand::rng(), &mut fx)
            .map(|ack| self.answer_of(ack));
        let reply = match &applied {
            Ok(answer) => self.reply_of(answer),
            Err(refused) => Err(refused.clone()),
        };
        let label = reply.as_ref().map_or_else(|e| e.error.as_str(), |_| "ok");
        counter!(m::COMMANDS, "type" => kind, "result" => label).increment(1);
        // The rules change nothing when they refuse, so only a command that changed the room
        // is kept (and committed with it).
        if let (Some((by, id)), Ok(answer)) = (retry, applied) {
            if !fx.events.is_empty() {
                self.record.remember(by, id, answer);
            }
        }
        Outcome {
            reply: Some((reply_to, Reply::from(reply).to_bytes())),
            command: Some((started, kind)),
            undo: Some(undo),
            ..self.events_of(fx)
        }
    }

    /// What the record keeps of an applied command's reply.
    fn answer_of(&self, ack: Ack) -> Answer {
        match ack {
            Ack::Joined(player_id) => Answer {
                seat: Some(seat_claims(&self.ctx, &self.record.game, &player_id)),
                ..Answer::default()
            },
            Ack::Investigated { mafia } => Answer {
                mafia: Some(mafia),
                ..Answer::default()
            },
            Ack::Done => Answer::default(),
        }
    }

    /// The reply to an applied command, the first time and on every retry alike.
    fn reply_of(&self, answer: &Answer) -> Result<CommandOk, Rejection> {
        Ok(match (&answer.seat, answer.mafia) {
            (Some(claims), _) => {
                let (player_id, token) = self.ctx.signer.seat(claims)?;
                CommandOk::Joined { player_id, token }
            }
            (None, Some(mafia)) => CommandOk::Investigated { mafia },
            (None, None) => CommandOk::Done {},
        })
    }

    async fn on_snap(&mut self, msg: Message) {
        let Some(reply_to) = msg.reply else { return };
        let request = proto::command::decode_request::<SnapRequest>(&msg.payload)
            .and_then(|req| self.admit_snap(req));
        if let Ok(req) = &request {
            if !self.history.covers(req.since) {
                self.read_log_if_due().await;
            }
        }
        let reply = request.map(|req| {
            let viewer = req.viewer.as_ref();
            self.history.reply(viewer, req.since, || {
                let chat = self.history.chat(viewer, SNAPSHOT_CHAT_LINES);
                serde_json::to_string(&self.record.game.snapshot(viewer, chat))
                    .expect("snapshots serialise infallibly")
            })
        });
        let body = Reply::<SnapReply>::from(reply).to_bytes();
        self.ctx.reply(reply_to, body, "a room snapshot").await;
    }

    /// A snapshot request the room answers, or why not. Closed: only a catch-up with
    /// something in it (what a stream missed, up to `room_closed`); never a new stream's
    /// snapshot, nor an empty catch-up for a stream that had `room_closed` (a browser's
    /// EventSource reconnects after it: "no such room" ends it, where an empty answer would
    /// hold it open for ever).
    fn admit_snap(&self, req: SnapRequest) -> Result<SnapRequest, Rejection> {
        if self.record.closed && req.since.is_none_or(|since| since >= self.record.last_id) {
            return Err(no_such_room());
        }
        if let Some(viewer) = &req.viewer {
            if !self.record.game.is_player(viewer) {
                return Err(Rejection::new(
                    ErrorCode::NoSuchPlayer,
                    "no such player in this room",
                ));
            }
        }
        Ok(req)
    }

    /// A resumed room holds its last step only: what a catch-up needs, and the chat a
    /// snapshot shows, are in its log, read when a request first needs them. The request
    /// (and the room) wait for the read, so it is bounded; one that fails leaves the request
    /// answered from what the room holds, and is tried again a while later, not on every
    /// request, so that a log JetStream cannot read does not stall the room again and again.
    async fn read_log_if_due(&mut self) {
        if self.log_due.is_none_or(|due| Instant::now() < due) {
            return;
        }
        let read = self.ctx.store.read_log(&self.code);
        match tokio::time::timeout(LOG_READ_LIMIT, read).await {
            Ok(Ok(events)) => {
                self.history.backfill(events);
                self.log_due = None;
                return;
            }
            Ok(Err(e)) => tracing::warn!(room = %self.code, error = %e, "cannot read the log"),
            Err(_) => tracing::warn!(room = %self.code, "the log was not read in time"),
        }
        self.log_due = Some(Instant::now() + LOG_READ_RETRY);
    }

    /// The deadline passed: move the game on. The next phase is timed from the deadline
    /// itself, so lateness never accumulates, unless the deadline is long past
    /// ([`LATE_LIMIT_MS`]).
    ///
    /// Before the deadline (the alarm goes off `engine.commit_ahead` early), the step is
    /// computed as if at the deadline, and its commit carries the deadline as its outbox's
    /// time ([`Room::hold_if_early`]), except a step that ends the room: an engine that takes
    /// a closed room over does not run it, so nobody would publish that step if this engine
    /// died before the deadline. (Early with `commit_ahead` zero means the wall clock was
    /// stepped back since the alarm was set: that counts as on time.)
    fn on_deadline(&mut self) -> Outcome {
        let deadline = self.record.game.deadline_ms();
        let now = unix_ms_now();
        let ahead = !self.ctx.commit_ahead.is_zero() && now < deadline;
        let undo = Box::new(self.record.clone());
        let mut fx = Effects::default();
        (self.record.game).on_deadline(next_phase_from(deadline, now), &mut fx);
        if ahead && fx.closed {
            self.record = *undo;
            self.on_time = Some(deadline);
            return Outcome::nothing(Flow::Continue);
        }
        let step = self.events_of(fx);
        if ahead {
            self.record.outbox_at = Some(deadline);
        }
        Outcome {
            undo: Some(undo),
            deadline: Some(deadline),
            ..step
        }
    }

    /// When the room's alarm is to go off next, and what for: at the deadline of a step
    /// committed ahead (or of one not to be), else `engine.commit_ahead` before the next
    /// deadline.
    fn next_alarm(&self) -> (AlarmFor, std::time::Instant) {
        if let Some(committed) = &self.prepared {
            let at = committed.outbox_at.unwrap_or_default();
            return (AlarmFor::Publish(at), instant_of(at));
        }
        let deadline = self.record.game.deadline_ms();
        let at = instant_of(deadline);
        if self.on_time == Some(deadline) {
            return (AlarmFor::Publish(deadline), at);
        }
        let early = at.checked_sub(self.ctx.commit_ahead).unwrap_or(at);
        (AlarmFor::Commit(deadline), early)
    }

    /// A deadline's step just committed ahead of its deadline waits for it in
    /// [`Room::prepared`], the room going back to the state before it meanwhile; one whose
    /// commit took until the deadline or past it goes out now.
    fn hold_if_early(&mut self, mut step: Outcome) -> Outcome {
        let early = self.record.outbox_at.is_some_and(|at| unix_ms_now() < at);
        if step.events.is_empty() || step.committed || !early {
            return step;
        }
        let Some(before) = step.undo.take() else {
            return step;
        };
        let committed = std::mem::replace(&mut self.record, *before);
        self.prepared = Some(Box::new(committed));
        Outcome::nothing(Flow::Continue)
    }

    /// Whether a step committed ahead may go out at its deadline as it is, without another
    /// commit: only while NATS is connected (events written to a broken connection would go
    /// out whenever it comes back, perhaps after a successor's later ones) and the room is
    /// surely still this engine's: its lease holds, or, if it lapsed (a pause past the lease),
    /// a read of the record finds the revision committed. Otherwise the deadline's step is
    /// computed again and committed like any other, and that commit is the fence: a successor
    /// may have published this step and others after it, which would go out again with ids
    /// going back.
    async fn may_release(&mut self) -> bool {
        let connected =
            self.ctx.client.connection_state() == async_nats::connection::State::Connected;
        if !connected {
            return false;
        }
        let lapsed = *self.ctx.recheck.borrow() != self.checked || self.ctx.lease_lapsed();
        if !lapsed {
            return true;
        }
        let read = self.ctx.store.load(&self.code);
        let read = tokio::time::timeout(self.ctx.lease / 4, read).await;
        matches!(read, Ok(Ok(Some((_, revision)))) if revision == self.revision)
    }

    /// The deadline of a step committed ahead has come: it is the room now, and its events
    /// go out.
    fn release(&mut self, committed: RoomRecord) -> Outcome {
        self.record = committed;
        Outcome {
            events: self.record.outbox.clone(),
            deadline: self.record.outbox_at,
            committed: true,
            ..Outcome::nothing(Flow::Continue)
        }
    }

    /// Numbers a step's events from the room's counter.
    fn events_of(&mut self, fx: Effects) -> Outcome {
        let closed = fx.closed;
        Outcome {
            flow: if closed { Flow::Closed } else { Flow::Continue },
            events: self.record.step(fx),
            ..Outcome::nothing(Flow::Continue)
        }
    }

    /// Commits a step that has events. If the room is no longer ours, nothing of it goes
    /// out; if JetStream did not take it, the room returns to its state before the step and
    /// pauses (the step is computed again later: a deadline then times its phase from then).
    /// Either way a requester is told to try again.
    async fn commit(&mut self, step: Outcome) -> Outcome {
        if step.events.is_empty() || step.committed {
            return step;
        }
        // A step committed ahead of its deadline is replaced by this commit (computed from
        // the state before it: a command that came before the deadline counts before it),
        // and its events never go out; the deadline's step is computed again after. If this
        // commit fails it may have landed all the same, so the held step is dropped either way.
        self.prepared = None;
        let store = &self.ctx.store;
        // Not even tried while NATS is down: the client would hold the write and send it on
        // reconnecting, committing a step timed for a moment long gone.
        let connected =
            self.ctx.client.connection_state() == async_nats::connection::State::Connected;
        // Read before the write: a commit that lands proves the room was ours after it.
        let lapses = *self.ctx.recheck.borrow();
        let committed = if connected {
            let started = Instant::now();
            let committed = store.commit(&self.code, &self.record, self.revision).await;
            histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            committed
        } else {
            Err(CommitError::Unavailable)
        };
        let lost = match committed {
            Ok(revision) => {
                self.revision = revision;
                self.pause = None;
                self.checked = lapses;
                self.checked_at = Instant::now();
                return step;
            }
            Err(lost) => lost,
        };
        let flow = match lost {
            CommitError::Fenced => {
                counter!(m::OWNERSHIP_LOST).increment(1);
                tracing::warn!(room = %self.code, "another engine owns this room now");
                Flow::Gone
            }
            CommitError::Unavailable => {
                // Which of the two: a soak's long stall is explained by one or the other.
                let why = if connected { "store" } else { "disconnected" };
                counter!(m::STEPS_DEFERRED, "why" => why).increment(1);
                if let Some(undo) = step.undo {
                    self.record = *undo;
                }
                let wait = self.pause.map_or(PAUSE_MIN, |p| (p * 2).min(PAUSE_MAX));
                self.pause = Some(wait);
                Flow::Continue
            }
            CommitError::Landed(stored, revision) => {
                if let Some(undo) = step.undo {
                    self.record = *undo;
                }
                self.take_landed(*stored, revision).await
            }
        };
        let retry = Reply::<()>::Err(changing_hands()).to_bytes();
        Outcome {
            reply: step.reply.map(|(to, _)| (to, retry)),
            command: step.command,
            ..Outcome::nothing(flow)
        }
    }

    /// Publishes a committed step's events, then sends their log append on the same
    /// connection: once the log has a step, NATS has had its events, so a successor need
    /// only repeat the last step. What it returns is for [`Room::logged`].
    async fn send(&self, events: &[Logged]) -> Sent {
        let connects = self.connects();
        if events.is_empty() {
            return Sent {
                connects,
                ack: None,
            };
        }
        for event in events {
            publish::room_event(&self.ctx, &self.code, event).await;
        }
        let ack = match self.ctx.store.send_append(&self.code, events).await {
            Ok(ack) => Some(ack),
            Err(e) => {
                tracing::warn!(room = %self.code, error = %e, "log append failed");
                None
            }
        };
        Sent { connects, ack }
    }

    /// Waits until the log has a step [`Room::send`] sent, on the connection its events went
    /// out on, sending both again until it does (or the engine stops). A connection that
    /// dies takes what was written to it last, so an append with no ack may have lost the
    /// events with it, and an append acked on the next connection proves nothing of them.
    /// Either way the events are published again (gateways deliver an id once) with the
    /// append (a second copy in the log if it had it, which its readers skip): otherwise a
    /// gateway whose own connection lived would never get them, since nothing else tells it.
    async fn logged(&self, events: &[Logged], mut sent: Sent) {
        let mut wait = PAUSE_MIN;
        while !events.is_empty() {
            let acked = match sent.ack.take() {
                Some(pending) => match pending.await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(room = %self.code, error = %e, "log append not acked");
                        false
                    }
                },
                None => false,
            };
            if acked && self.connects() == sent.connects {
                return;
            }
            if !acked {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.ctx.shutdown.cancelled() => return,
                }
                wait = (wait * 2).min(PAUSE_MAX);
            }
            sent = self.send(events).await;
        }
    }

    /// How many times the engine's NATS client has connected: counted by the client as it
    /// connects, before anything is read on the new connection.
    fn connects(&self) -> u64 {
        (self.ctx.client.statistics().connects).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the room may answer: at once while the engine's lease holds and has not
    /// lapsed since the room last checked, else once its record shows it still owns the room
    /// (read at most every quarter lease while the lease stays lapsed). An engine that wakes
    /// from a pause (SIGSTOP) holds requests that the room's new owner answers too; answering
    /// them from the state it had would race the owner's answer with a stale one (a snapshot
    /// from before the takeover, or a refusal by old rules). (The heartbeat counts a lapse
    /// before it renews the lease, so one of the two shows.)
    async fn still_ours(&mut self) -> Flow {
        let lapsed = *self.ctx.recheck.borrow() != self.checked || self.ctx.lease_lapsed();
        if lapsed && self.checked_at.elapsed() > self.ctx.lease / 4 {
            self.recheck().await
        } else {
            Flow::Continue
        }
    }

    /// A request the room will not answer as its owner, as it stops ([`refusal_as`]).
    fn turned_away(&self, msg: Message, flow: Flow) -> Outcome {
        Outcome {
            reply: msg.reply.map(|to| (to, refusal_as(&flow).to_bytes())),
            ..Outcome::nothing(flow)
        }
    }

    /// Reads the room's record: still ours unless another engine has claimed it (another
    /// owner, or another epoch). A newer record of our own tenure is a write of ours whose
    /// ack was lost (or a store that went back): it becomes the room, as in [`Room::commit`].
    /// A read that fails or takes over a quarter lease tells nothing: the room carries on,
    /// and its next commit will tell.
    async fn recheck(&mut self) -> Flow {
        let lapses = *self.ctx.recheck.borrow();
        let read = self.ctx.store.load(&self.code);
        let read = tokio::time::timeout(self.ctx.lease / 4, read).await;
        // Tried: not again for a quarter lease, whatever came of it, so that requests
        // queued behind a JetStream that does not answer wait for one read, not one each.
        self.checked_at = Instant::now();
        let Ok(Ok(stored)) = read else {
            return Flow::Continue;
        };
        let flow = match stored {
            Some((_, revision)) if revision == self.revision => Flow::Continue,
            Some((stored, revision)) if stored.same_tenure(&self.record) => {
                self.take_landed(stored, revision).await
            }
            _ => Flow::Gone,
        };
        if flow == Flow::Gone {
            counter!(m::OWNERSHIP_LOST).increment(1);
            tracing::warn!(room = %self.code, "another engine took this room over");
        } else {
            self.checked = lapses;
        }
        flow
    }

    /// A record of this room's own tenure newer than the room's (a commit whose ack was
    /// lost): it is the room now, its last step published like a takeover's.
    /// If it is a deadline's step committed ahead and not yet due, it is held like one whose
    /// ack came ([`Room::prepared`]): it was computed from the record the room has (every
    /// commit of the room's since then failed over it).
    async fn take_landed(&mut self, stored: RoomRecord, revision: u64) -> Flow {
        self.revision = revision;
        // The store answers: no reason left to wait before the next step.
        self.pause = None;
        if stored.outbox_at.is_some_and(|at| unix_ms_now() < at) {
            self.prepared = Some(Box::new(stored));
            return Flow::Continue;
        }
        self.record = stored;
        if !self.resume().await {
            return Flow::Gone;
        }
        let last = self.history.last_id();
        for event in self.record.outbox.iter().filter(|e| e.id > last) {
            self.history.record(event.clone());
        }
        self.count_players();
        if self.record.closed {
            Flow::Closed
        } else {
            Flow::Continue
        }
    }

    /// Keeps the phase and player gauges in step with the game.
    fn count_players(&mut self) {
        let phase = self.record.game.phase();
        if phase != self.phase {
            gauge!(m::ROOMS, "phase" => self.phase.as_str()).decrement(1.0);
            gauge!(m::ROOMS, "phase" => phase.as_str()).increment(1.0);
            self.phase = phase;
        }
        let players = self.record.game.player_count();
        if players != self.players {
            gauge!(m::PLAYERS).increment(players as f64 - self.players as f64);
            self.players = players;
        }
    }

    /// Brings the room's entry in the lobby bucket up to date. Compared rather than flagged
    /// by each rule, so that no change the lobby shows can go unannounced.
    async fn sync_lobby(&mut self) {
        let entry = (!self.record.closed)
            .then(|| self.record.game.lobby_entry())
            .flatten();
        self.listing.update(&self.ctx, &self.code, entry).await;
    }
}

/// Who a `request_id` belongs to: the acting player, or for a join the name asked for.
fn actor(cmd: &Command) -> String {
    match cmd {
        Command::Join { name } => format!("join:{}", name.trim().to_lowercase()),
        Command::Leave { player }
        | Command::Start { player }
        | Command::Vote { player, .. }
        | Command::Skill { player, .. }
        | Command::Chat { player, .. } => player.to_string(),
    }
}

/// What a room's alarm is set for: to commit the step of the deadline (unix ms) ahead of it,
/// or to publish it at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AlarmFor {
    Commit(u64),
    Publish(u64),
}

/// When the phase after `deadline` starts if it fires at `now`: at the deadline itself, so
/// that small lateness never accumulates, unless it is more than [`LATE_LIMIT_MS`] late.
fn next_phase_from(deadline: u64, now: u64) -> Now {
    let late = now.saturating_sub(deadline);
    Now {
        unix_ms: if late <= LATE_LIMIT_MS { deadline } else { now },
    }
}

/// The monotonic instant of a unix-ms deadline, by this machine's wall clock.
fn instant_of(deadline_ms: u64) -> std::time::Instant {
    monotonic_at(deadline_ms, SystemTime::now(), std::time::Instant::now())
}

/// When `deadline_ms` falls on the monotonic clock, given the two clocks read together.
/// Exact to the wall clock's resolution: the wall clock read in whole milliseconds would set
/// every alarm up to a millisecond after its deadline (half a millisecond on average).
fn monotonic_at(
    deadline_ms: u64,
    wall: SystemTime,
    monotonic: std::time::Instant,
) -> std::time::Instant {
    match wall_clock_past(deadline_ms, wall) {
        Ok(_) => monotonic,
        Err(ahead) => monotonic + ahead,
    }
}

/// How far `wall` is past a unix-ms deadline (`Ok`), or short of it (`Err`).
fn wall_clock_past(deadline_ms: u64, wall: SystemTime) -> Result<Duration, Duration> {
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    wall.duration_since(deadline)
        .map_err(|early| early.duration())
}

/// The claims of the token of a player who just took a seat in `game`.
pub fn seat_claims(ctx: &Context, game: &Game, player_id: &PlayerId) -> Claims {
    let name = game.name_of(player_id).expect("just joined");
    ctx.signer.claims(game.code(), player_id, name.as_str())
}

fn no_such_room() -> Rejection {
    Rejection::new(ErrorCode::NoSuchRoom, "this room has closed")
}

/// What a room that stops answers the requests it will not serve: "no such room" once it
/// closed, else "try again" (another engine owns it, or will).
fn refusal_as(flow: &Flow) -> Reply<()> {
    Reply::Err(match flow {
        Flow::Closed => no_such_room(),
        _ => changing_hands(),
    })
}

fn changing_hands() -> Rejection {
    Rejection::new(
        ErrorCode::Unavailable,
        "the room is moving to another engine; try again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_deadline_restarts_the_clock_instead_of_bunching_phases() {
        assert_eq!(
            next_phase_from(10_000, 10_003).unix_ms,
            10_000,
            "3 ms late: on schedule"
        );
        assert_eq!(
            next_phase_from(10_000, 9_999).unix_ms,
            10_000,
            "early clocks too"
        );
        let after_outage = next_phase_from(10_000, 10_000 + LATE_LIMIT_MS + 1);
        assert_eq!(
            after_outage.unix_ms,
            10_000 + LATE_LIMIT_MS + 1,
            "timed from now"
        );
    }

    #[test]
    fn an_alarm_is_set_to_the_deadline_not_to_the_next_millisecond_after_it() {
        let monotonic = std::time::Instant::now();
        // 0.9 ms into millisecond 1,000: a deadline at 2,000 is 999.1 ms away.
        let wall = UNIX_EPOCH + Duration::from_micros(1_000_900);
        assert_eq!(
            monotonic_at(2_000, wall, monotonic) - monotonic,
            Duration::from_micros(999_100)
        );
        assert_eq!(
            monotonic_at(1_000, wall, monotonic),
            monotonic,
            "a deadline already past is due now"
        );
        assert_eq!(
            wall_clock_past(1_000, wall),
            Ok(Duration::from_micros(900)),
            "lateness to the microsecond"
        );
    }
}
