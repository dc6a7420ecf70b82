//! The rules of Mafia (`GAME.md`) as a state machine with no I/O.
//!
//! A [`Game`] takes commands and deadlines and answers with [`Effects`]: the events to publish,
//! each with its audience, and whether the room closed. It never touches NATS or a
//! clock of its own (the caller passes [`Now`]), so every rule is testable in microseconds and
//! the room task around it stays a thin loop. It is plain data (`Serialize`/`Deserialize`):
//! the whole game is what the room commits to JetStream after every step, so that any engine
//! can carry it on.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use proto::event::Role;
use proto::event::{
    Channel, Chat, Death, DeathCause, GameOver, Investigation, MafiaPick, Phase, PhaseChanged,
    PlayerJoined, PlayerLeft, PlayerView, Protection, RoleDealt, RolesRevealed, RoomClosed,
    RoomSnapshot, Team, VoteCast,
};
use proto::lobby::{CreateRoom, LobbyPhase, LobbyRoom};
use proto::{ChatText, Command, ErrorCode, PlayerId, PlayerName, Rejection, RoomCode};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::outgoing::{Ack, Audience, Effects, Now, Outgoing};

/// A waiting room with no activity for this long closes.
pub const WAITING_IDLE: Duration = Duration::from_secs(12 * 60 * 60);
/// A room nobody has joined (or everyone left... which closes it at once) is empty: it closes
/// after this long rather than sitting in the lobby for 12 hours.
pub const EMPTY_GRACE: Duration = Duration::from_secs(5 * 60);
/// A game in which nobody has done anything for this many rounds is abandoned: it closes
/// instead of cycling through its phases for ever.
pub const IDLE_ROUNDS: u32 = 3;
/// How many chat lines a snapshot carries.
const SNAPSHOT_CHAT_LINES: usize = 50;
/// Chat lines kept for snapshots (more than a snapshot shows, since each viewer sees a subset;
/// few enough that the room's record, written on every step, stays small).
const CHAT_KEPT: usize = 120;

/// Phase durations, resolved from the defaults and the room's overrides.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Durations {
    pub day_intro: Duration,
    pub notice: Duration,
    pub day_per_player: Duration,
    pub vote: Duration,
    pub vote_result: Duration,
    pub night_intro: Duration,
    pub night: Duration,
    pub ended: Duration,
}

impl Durations {
    /// Longest duration a room may ask for (a day, so no deadline overflows).
    const MAX_MS: u64 = 24 * 60 * 60 * 1000;

    /// GAME.md's defaults, overridden by the room's own; each within `min..=MAX_MS`.
    fn resolve(d: &proto::lobby::Durations, min: Duration) -> Result<Self, Rejection> {
        let min_ms = min.as_millis() as u64;
        let pick = |v: Option<u64>, default_ms: u64, name: &str| match v {
            Some(ms) if ms > Self::MAX_MS || ms < min_ms => Err(Rejection::new(
                ErrorCode::InvalidRoom,
                format!(
                    "durations_ms.{name} is between {min_ms} and {} ms",
                    Self::MAX_MS
                ),
            )),
            v => Ok(Duration::from_millis(v.unwrap_or(default_ms))),
        };
        Ok(Durations {
            day_intro: pick(d.day_intro, 3_000, "day_intro")?,
            notice: pick(d.notice, 3_000, "notice")?,
            day_per_player: pick(d.day_per_player, 20_000, "day_per_player")?,
            vote: pick(d.vote, 10_000, "vote")?,
            vote_result: pick(d.vote_result, 3_000, "vote_result")?,
            night_intro: pick(d.night_intro, 3_000, "night_intro")?,
            night: pick(d.night, 40_000, "night")?,
            ended: pick(d.ended, 30_000, "ended")?,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Player {
    id: PlayerId,
    name: PlayerName,
    role: Option<Role>,
    alive: bool,
    left: bool,
}

impl Player {
    fn is_mafia(&self) -> bool {
        self.role == Some(Role::Mafia)
    }
}

/// One room's whole state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Game {
    code: RoomCode,
    settings: CreateRoom,
    durations: Durations,
    players: Vec<Player>,
    host: Option<PlayerId>,
    phase: Phase,
    round: u32,
    /// When the room next needs [`Game::on_deadline`], in unix ms: wall-clock time, so that
    /// another engine (with another monotonic clock) can re-arm it.
    deadline_ms: u64,
    ends_at: Option<u64>,
    votes: BTreeMap<PlayerId, Option<PlayerId>>,
    mafia_pick: Option<PlayerId>,
    /// Tonight's protection by each doctor (a room may have several).
    protect: BTreeMap<PlayerId, PlayerId>,
    /// Every result, with the officer it belongs to; each officer sees only their own.
    investigations: Vec<(PlayerId, Investigation)>,
    deaths: Vec<Death>,
    chat: VecDeque<(Audience, Chat)>,
    winner: Option<Team>,
    /// The round of the last accepted command.
    active_round: u32,
}

impl Game {
    /// Validates the settings of a new room: `3 <= total <= 20`, `mafia >= 1`,
    /// `total > 2 * mafia`, `mafia + doctor + police <= total`, and no phase shorter than
    /// `min_phase` (so nobody can make a room spin through phases as fast as it can).
    pub fn new(
        code: RoomCode,
        mut settings: CreateRoom,
        min_phase: Duration,
        now: Now,
    ) -> Result<Self, Rejection> {
        let invalid = |m: &str| Err(Rejection::new(ErrorCode::InvalidRoom, m));
        settings.title = settings.title.trim().to_owned();
        let title_chars = settings.title.chars().count();
        if title_chars == 0 || title_chars > CreateRoom::MAX_TITLE_CHARS {
            return invalid("a title has 1 to 60 characters");
        }
        if settings.title.chars().any(char::is_control) {
            return invalid("a title cannot contain control characters");
        }
        let CreateRoom {
            total,
            mafia,
            doctor,
            police,
            ..
        } = settings;
        if !(3..=20).contains(&total) {
            return invalid("total is between 3 and 20");
        }
        if mafia < 1 {
            return invalid("a game needs at least one mafia");
        }
        if u16::from(total) <= 2 * u16::from(mafia) {
            return invalid("total must be more than twice the mafia");
        }
        if u16::from(mafia) + u16::from(doctor) + u16::from(police) > u16::from(total) {
            return invalid("there are more roles than players");
        }
        let durations = Durations::resolve(&settings.durations_ms, min_phase)?;
        Ok(Game {
            code,
            settings,
            durations,
            players: Vec::new(),
            host: None,
            phase: Phase::Waiting,
            round: 0,
            deadline_ms: now.after(EMPTY_GRACE),
            ends_at: None,
            votes: BTreeMap::new(),
            mafia_pick: None,
            protect: BTreeMap::new(),
            investigations: Vec::new(),
            deaths: Vec::new(),
            chat: VecDeque::new(),
            winner: None,
            active_round: 0,
        })
    }

    pub fn code(&self) -> &RoomCode {
        &self.code
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the room next needs [`Game::on_deadline`], in unix ms.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Players who have not left.
    pub fn player_count(&self) -> usize {
        self.players.iter().filter(|p| !p.left).count()
    }

    pub fn is_player(&self, id: &PlayerId) -> bool {
        self.players.iter().any(|p| &p.id == id)
    }

    pub fn name_of(&self, id: &PlayerId) -> Option<&PlayerName> {
        self.players.iter().find(|p| &p.id == id).map(|p| &p.name)
    }

    /// The room as the lobby lists it, or `None` for a private room.
    pub fn lobby_entry(&self) -> Option<LobbyRoom> {
        (!self.settings.private).then(|| LobbyRoom {
            code: self.code.clone(),
            title: self.settings.title.clone(),
            total: self.settings.total,
            players: self.player_count() as u8,
            phase: match self.phase {
                Phase::Waiting => LobbyPhase::Waiting,
                Phase::Ended => LobbyPhase::Ended,
                _ => LobbyPhase::Playing,
            },
        })
    }

    /// Applies one command. On error nothing has changed and `fx` is untouched.
    pub fn handle(
        &mut self,
        cmd: Command,
        now: Now,
        rng: &mut impl Rng,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
        let ack = match cmd {
            Command::Join { name } => self.join(&name, now, rng, fx),
            Command::Leave { player } => self.leave(&player, now, fx),
            Command::Start { player } => self.start(&player, now, rng, fx),
            Command::Vote { player, target } => self.vote(&player, target, now, fx),
            Command::Skill { player, target } => self.skill(&player, &target, fx),
            Command::Chat { player, text } => self.say(&player, &text, now, fx),
        }?;
        self.active_round = self.round;
        Ok(ack)
    }

    fn join(
        &mut self,
        raw_name: &str,
        now: Now,
        rng: &mut impl Rng,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
        let name = PlayerName::parse(raw_name)?;
        if self.phase != Phase::Waiting {
            return Err(reject(ErrorCode::AlreadyStarted, "the game has started"));
        }
        if self.players.len() >= usize::from(self.settings.total) {
            return Err(reject(ErrorCode::RoomFull, "the room is full"));
        }
        if self.players.iter().any(|p| p.name.same_as(&name)) {
            return Err(reject(
                ErrorCode::NameTaken,
                format!("someone here is already called {name}"),
            ));
        }
        let id = loop {
            let id = random_token(rng, 12);
            if !self.is_player(&id) {
                break id;
            }
        };
        self.players.push(Player {
            id: id.clone(),
            name: name.clone(),
            role: None,
            alive: true,
            left: false,
        });
        let host = self.host.get_or_insert_with(|| id.clone()).clone();
        self.touch_waiting(now);
        fx.emit(
            Audience::Public,
            &PlayerJoined {
                player_id: id.clone(),
                name: name.to_string(),
                host,
            },
        );
        Ok(Ack::Joined(id))
    }

    fn leave(&mut self, id: &PlayerId, now: Now, fx: &mut Effects) -> Result<Ack, Rejection> {
        let index = self.index_of(id)?;
        if self.players[index].left {
            return Err(reject(ErrorCode::NoSuchPlayer, "you have left this room"));
        }
        if self.phase == Phase::Waiting {
            // Before the game a seat is just freed; the next player in line becomes host.
            self.players.remove(index);
            if self.host.as_ref() == Some(id) {
                self.host = self.players.first().map(|p| p.id.clone());
            }
            self.touch_waiting(now);
        } else {
            self.players[index].left = true;
            // A leaver is not shown the roles, as the killed are: they could pass them on.
            if self.phase != Phase::Ended && self.die(id, DeathCause::Left, fx) {
                // Votes by or for someone who is gone no longer count (clients apply the same
                // rule on the `death` event, so snapshots and events agree).
                self.votes.remove(id);
                self.votes.retain(|_, target| target.as_ref() != Some(id));
            }
        }
        fx.emit(
            Audience::Public,
            &PlayerLeft {
                player_id: id.clone(),
                host: self.host.clone(),
            },
        );
        if self.phase == Phase::Waiting && self.players.is_empty() {
            self.close(fx);
        } else if self.phase == Phase::Day && self.everyone_voted() {
            self.enter(Phase::Vote, now, fx);
        }
        Ok(Ack::Done)
    }

    fn start(
        &mut self,
        id: &PlayerId,
        now: Now,
        rng: &mut impl Rng,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
        self.index_of(id)?;
        if self.phase != Phase::Waiting {
            return Err(reject(ErrorCode::AlreadyStarted, "the game has started"));
        }
        if self.host.as_ref() != Some(id) {
            return Err(reject(ErrorCode::NotHost, "only the host can start"));
        }
        if self.players.len() < usize::from(self.settings.total) {
            return Err(reject(
                ErrorCode::NotEnoughPlayers,
                format!(
                    "{} of {} players are here",
                    self.players.len(),
                    self.settings.total
                ),
            ));
        }
        let s = &self.settings;
        let mut roles: Vec<Role> = std::iter::repeat_n(Role::Mafia, s.mafia.into())
            .chain(std::iter::repeat_n(Role::Doctor, s.doctor.into()))
            .chain(std::iter::repeat_n(Role::Police, s.police.into()))
            .collect();
        roles.resize(self.players.len(), Role::Citizen);
        roles.shuffle(rng);
        for (player, role) in self.players.iter_mut().zip(roles) {
            player.role = Some(role);
        }
        let mafia: Vec<PlayerId> = self.living(|p| p.is_mafia());
        for p in &self.players {
            let role = p.role.expect("just dealt");
            let fellows = if role == Role::Mafia {
                mafia.iter().filter(|m| *m != &p.id).cloned().collect()
            } else {
                Vec::new()
            };
            fx.emit(
                Audience::Players(vec![p.id.clone()]),
                &RoleDealt {
                    role,
                    mafia: fellows,
                },
            );
        }
        self.round = 1;
        self.enter(Phase::DayIntro, now, fx);
        Ok(Ack::Done)
    }

    fn vote(
        &mut self,
        id: &PlayerId,
        target: Option<PlayerId>,
        now: Now,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
        self.living_actor(id)?;
        if !matches!(self.phase, Phase::Day | Phase::Vote) {
            return Err(reject(ErrorCode::WrongPhase, "votes are cast by day"));
        }
        if let Some(t) = &target {
            self.living_target(t)?;
        }
        self.votes.insert(id.clone(), target.clone());
        let (tally, abstain) = self.tally();
        fx.emit(
            Audience::Public,
            &VoteCast {
                voter: id.clone(),
                target,
                tally,
                abstain,
            },
        );
        if self.phase == Phase::Day && self.everyone_voted() {
            self.enter(Phase::Vote, now, fx);
        }
        Ok(Ack::Done)
    }

    fn skill(
        &mut self,
        id: &PlayerId,
        target: &PlayerId,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
        let role = self.living_actor(id)?.role;
        if self.phase != Phase::Night {
            return Err(reject(ErrorCode::WrongPhase, "skills are used at night"));
        }
        let target_is_mafia = self.living_target(target)?.is_mafia();
        match role {
            Some(Role::Mafia) => {
                if target_is_mafia {
                    return Err(reject(
                        ErrorCode::InvalidTarget,
                        "the mafia cannot pick one of their own",
                    ));
                }
                self.mafia_pick = Some(target.clone());
                fx.emit(
                    Audience::Players(self.living(|p| p.is_mafia())),
                    &MafiaPick {
                        by: id.clone(),
                        target: target.clone(),
                    },
                );
                Ok(Ack::Done)
            }
            Some(Role::Doctor) => {
                self.protect.insert(id.clone(), target.clone());
                fx.emit(
                    Audience::Players(vec![id.clone()]),
                    &Protection {
                        target: target.clone(),
                    },
                );
                Ok(Ack::Done)
            }
            Some(Role::Police) => {
                let tonight = self.round;
                if self
                    .investigations
                    .iter()
                    .any(|(by, i)| by == id && i.round == tonight)
                {
                    return Err(reject(
                        ErrorCode::AlreadyInvestigated,
                        "the police investigate once per night",
                    ));
                }
                if target == id {
                    return Err(reject(ErrorCode::InvalidTarget, "investigate someone else"));
                }
                let result = Investigation {
                    target: target.clone(),
                    mafia: target_is_mafia,
                    round: self.round,
                };
                fx.emit(Audience::Players(vec![id.clone()]), &result);
                self.investigations.push((id.clone(), result));
                Ok(Ack::Investigated {
                    mafia: target_is_mafia,
                })
            }
            Some(Role::Citizen) | None => {
                Err(reject(ErrorCode::WrongRole, "citizens have no night skill"))
            }
        }
    }

    fn say(
        &mut self,
        id: &PlayerId,
        raw_text: &str,
        now: Now,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
        let index = self.index_of(id)?;
        let speaker = &self.players[index];
        if speaker.left {
            return Err(reject(ErrorCode::NotAlive, "you have left this room"));
        }
        let text = ChatText::parse(raw_text)?;
        let (channel, audience) = if matches!(self.phase, Phase::Waiting | Phase::Ended) {
            (Channel::Public, Audience::Public)
        } else if !speaker.alive {
            (Channel::Dead, Audience::Players(self.dead()))
        } else if self.phase == Phase::Night {
            if !speaker.is_mafia() {
                return Err(reject(
                    ErrorCode::ChatClosed,
                    "at night only the mafia talk",
                ));
            }
            (
                Channel::Mafia,
                Audience::Players(self.living(|p| p.is_mafia())),
            )
        } else {
            (Channel::Public, Audience::Public)
        };
        let line = Chat {
            from: id.clone(),
            name: speaker.name.to_string(),
            text: text.as_str().to_owned(),
            channel,
        };
        if self.phase == Phase::Waiting {
            self.touch_waiting(now);
        }
        fx.emit(audience.clone(), &line);
        if self.chat.len() == CHAT_KEPT {
            self.chat.pop_front();
        }
        self.chat.push_back((audience, line));
        Ok(Ack::Done)
    }

    /// The current phase's deadline has passed: move on.
    pub fn on_deadline(&mut self, now: Now, fx: &mut Effects) {
        match self.phase {
            // Only an idle waiting room has a deadline.
            Phase::Waiting | Phase::Ended => self.close(fx),
            Phase::DayIntro => self.enter(Phase::Notice, now, fx),
            Phase::Notice => self.end_or(Phase::Day, now, fx),
            Phase::Day => self.enter(Phase::Vote, now, fx),
            Phase::Vote => {
                self.execute_vote(fx);
                self.enter(Phase::VoteResult, now, fx);
            }
            Phase::VoteResult => self.end_or(Phase::NightIntro, now, fx),
            Phase::NightIntro => self.enter(Phase::Night, now, fx),
            Phase::Night => {
                self.resolve_night(fx);
                self.round += 1;
                if self.round - self.active_round > IDLE_ROUNDS {
                    self.close(fx);
                } else {
                    self.enter(Phase::DayIntro, now, fx);
                }
            }
        }
    }

    /// Ends the game if a side has won, else enters `next`.
    fn end_or(&mut self, next: Phase, now: Now, fx: &mut Effects) {
        let mafia = self.living(|p| p.is_mafia()).len();
        let others = self.living(|p| !p.is_mafia()).len();
        let winner = if mafia == 0 {
            Some(Team::Citizens)
        } else if mafia >= others {
            Some(Team::Mafia)
        } else {
            None
        };
        match winner {
            Some(winner) => {
                self.winner = Some(winner);
                self.enter(Phase::Ended, now, fx);
                fx.emit(
                    Audience::Public,
                    &GameOver {
                        winner,
                        roles: self.roles(),
                    },
                );
            }
            None => self.enter(next, now, fx),
        }
    }

    fn enter(&mut self, phase: Phase, now: Now, fx: &mut Effects) {
        let d = &self.durations;
        let duration = match phase {
            Phase::Waiting => WAITING_IDLE,
            Phase::DayIntro => d.day_intro,
            Phase::Notice => d.notice,
            Phase::Day => d.day_per_player * self.living(|_| true).len() as u32,
            Phase::Vote => d.vote,
            Phase::VoteResult => d.vote_result,
            Phase::NightIntro => d.night_intro,
            Phase::Night => d.night,
            Phase::Ended => d.ended,
        };
        match phase {
            Phase::Day => self.votes.clear(),
            Phase::Night => {
                self.mafia_pick = None;
                self.protect.clear();
            }
            _ => {}
        }
        self.phase = phase;
        let ends_at = now.after(duration);
        self.deadline_ms = ends_at;
        self.ends_at = Some(ends_at);
        fx.emit(
            Audience::Public,
            &PhaseChanged {
                phase,
                round: self.round,
                ends_at: Some(ends_at),
            },
        );
    }

    /// Entering `vote_result`: the single most-voted player dies; a tie, or abstention on
    /// top, kills nobody.
    fn execute_vote(&mut self, fx: &mut Effects) {
        let (tally, abstain) = self.tally();
        let top = tally.values().copied().max().unwrap_or(0);
        let mut leaders = tally.iter().filter(|(_, n)| **n == top);
        if let (Some((victim, _)), None) = (leaders.next(), leaders.next()) {
            if top > abstain {
                let victim = victim.clone();
                self.kill(&victim, DeathCause::Vote, fx);
            }
        }
    }

    /// Leaving `night`: the mafia's pick dies unless a doctor protected them.
    fn resolve_night(&mut self, fx: &mut Effects) {
        if let Some(target) = self.mafia_pick.take() {
            if !self.protect.values().any(|p| p == &target) {
                self.kill(&target, DeathCause::Mafia, fx);
            }
        }
    }

    fn kill(&mut self, id: &PlayerId, cause: DeathCause, fx: &mut Effects) {
        if !self.die(id, cause, fx) {
            return;
        }
        // The dead see every role from now on.
        fx.emit(
            Audience::Players(vec![id.clone()]),
            &RolesRevealed {
                roles: self.roles(),
            },
        );
    }

    /// Records the death of living player `id` and tells everyone; false if `id` is no
    /// living player.
    fn die(&mut self, id: &PlayerId, cause: DeathCause, fx: &mut Effects) -> bool {
        let Some(player) = self.players.iter_mut().find(|p| &p.id == id && p.alive) else {
            return false;
        };
        player.alive = false;
        let death = Death {
            player_id: id.clone(),
            cause,
            round: self.round,
        };
        self.deaths.push(death.clone());
        fx.emit(Audience::Public, &death);
        true
    }

    /// Closes the room now: its last event is `room_closed`.
    pub fn close(&mut self, fx: &mut Effects) {
        fx.emit(
            Audience::Public,
            &RoomClosed {
                code: self.code.clone(),
            },
        );
        fx.closed = true;
    }

    /// The room as `viewer` may see it: exactly what the events have shown them.
    pub fn snapshot(&self, viewer: Option<&PlayerId>) -> RoomSnapshot {
        let me = viewer.and_then(|v| self.players.iter().find(|p| &p.id == v));
        let started = self.phase != Phase::Waiting;
        let sees_all =
            self.phase == Phase::Ended || me.is_some_and(|m| started && !m.alive && !m.left);
        let i_am = |role| me.is_some_and(|m| m.role == Some(role) && m.alive);
        let at_night = self.phase == Phase::Night;
        RoomSnapshot {
            code: self.code.clone(),
            title: self.settings.title.clone(),
            total: self.settings.total,
            mafia: self.settings.mafia,
            doctor: self.settings.doctor,
            police: self.settings.police,
            private: self.settings.private,
            phase: self.phase,
            round: self.round,
            ends_at: self.ends_at.filter(|_| started),
            host: self.host.clone(),
            players: self
                .players
                .iter()
                .map(|p| {
                    let visible = sees_all
                        || me.is_some_and(|m| m.id == p.id || (m.is_mafia() && p.is_mafia()));
                    PlayerView {
                        player_id: p.id.clone(),
                        name: p.name.to_string(),
                        alive: p.alive,
                        role: p.role.filter(|_| visible),
                    }
                })
                .collect(),
            you: me.map(|m| m.id.clone()),
            votes: if matches!(self.phase, Phase::Day | Phase::Vote | Phase::VoteResult) {
                self.votes.clone()
            } else {
                BTreeMap::new()
            },
            deaths: self.deaths.clone(),
            chat: {
                let mut lines: Vec<Chat> = self
                    .chat
                    .iter()
                    .rev()
                    .filter(|(audience, _)| audience.includes(viewer))
                    .take(SNAPSHOT_CHAT_LINES)
                    .map(|(_, line)| line.clone())
                    .collect();
                lines.reverse();
                lines
            },
            mafia_pick: self
                .mafia_pick
                .clone()
                .filter(|_| at_night && i_am(Role::Mafia)),
            protect: me
                .filter(|_| at_night && i_am(Role::Doctor))
                .and_then(|m| self.protect.get(&m.id).cloned()),
            investigations: self
                .investigations
                .iter()
                .filter(|(by, _)| me.is_some_and(|m| &m.id == by))
                .map(|(_, result)| result.clone())
                .collect(),
            winner: self.winner,
        }
    }

    /// Restarts the idle clock of a waiting room.
    fn touch_waiting(&mut self, now: Now) {
        let idle = if self.players.is_empty() {
            EMPTY_GRACE
        } else {
            WAITING_IDLE
        };
        self.deadline_ms = now.after(idle);
    }

    fn index_of(&self, id: &PlayerId) -> Result<usize, Rejection> {
        self.players
            .iter()
            .position(|p| &p.id == id)
            .ok_or_else(|| reject(ErrorCode::NoSuchPlayer, "no such player in this room"))
    }

    fn living_actor(&self, id: &PlayerId) -> Result<&Player, Rejection> {
        let player = &self.players[self.index_of(id)?];
        if !player.alive || player.left || self.phase == Phase::Waiting {
            return Err(if self.phase == Phase::Waiting {
                reject(ErrorCode::WrongPhase, "the game has not started")
            } else {
                reject(ErrorCode::NotAlive, "the dead cannot do that")
            });
        }
        Ok(player)
    }

    fn living_target(&self, id: &PlayerId) -> Result<&Player, Rejection> {
        self.players
            .iter()
            .find(|p| &p.id == id && p.alive)
            .ok_or_else(|| {
                reject(
                    ErrorCode::InvalidTarget,
                    "the target is not a living player",
                )
            })
    }

    fn living(&self, pred: impl Fn(&Player) -> bool) -> Vec<PlayerId> {
        self.players
            .iter()
            .filter(|p| p.alive && pred(p))
            .map(|p| p.id.clone())
            .collect()
    }

    fn dead(&self) -> Vec<PlayerId> {
        self.players
            .iter()
            .filter(|p| !p.alive && !p.left)
            .map(|p| p.id.clone())
            .collect()
    }

    fn everyone_voted(&self) -> bool {
        self.players
            .iter()
            .filter(|p| p.alive)
            .all(|p| self.votes.contains_key(&p.id))
    }

    fn tally(&self) -> (BTreeMap<PlayerId, u32>, u32) {
        let mut tally = BTreeMap::new();
        let mut abstain = 0;
        for target in self.votes.values() {
            match target {
                Some(t) => *tally.entry(t.clone()).or_insert(0) += 1,
                None => abstain += 1,
            }
        }
        (tally, abstain)
    }

    fn roles(&self) -> BTreeMap<PlayerId, Role> {
        self.players
            .iter()
            .filter_map(|p| Some((p.id.clone(), p.role?)))
            .collect()
    }
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Rejection {
    Rejection::new(code, message)
}

/// A fresh room code: [`RoomCode::DRAWN_LEN`] characters of [`RoomCode::ALPHABET`].
pub fn draw_room_code(rng: &mut impl Rng) -> RoomCode {
    let code: String = (0..RoomCode::DRAWN_LEN)
        .map(|_| char::from(RoomCode::ALPHABET[rng.random_range(0..RoomCode::ALPHABET.len())]))
        .collect();
    RoomCode::parse(&code).expect("drawn codes are valid codes")
}

/// A random `[A-Za-z0-9]` token of `len` characters (player ids, engine ids).
pub fn random_token<T: TryFrom<String, Error = Rejection>>(rng: &mut impl Rng, len: usize) -> T {
    let s: String = (0..len)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect();
    T::try_from(s).expect("alphanumeric tokens of a valid length parse")
}
