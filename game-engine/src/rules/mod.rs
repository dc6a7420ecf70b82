//! The rules of Mafia (`GAME.md`) as a state machine with no I/O.
//!
//! A [`Game`] takes commands and deadlines and answers with [`Effects`]: the events to publish,
//! each with its audience, and whether the room closed. It never touches NATS or a
//! clock of its own (the caller passes [`Now`]), so every rule is testable in microseconds and
//! the room task around it stays a thin loop. It is plain data (`Serialize`/`Deserialize`):
//! the whole game is what the room commits to JetStream after every step, so that any engine
//! can carry it on.
//!
//! Here: the game's state, its settings and the queries the room needs; the players'
//! commands are in `commands`, deadlines and what phase changes do in `phases`, what each
//! viewer and the lobby may see in `view`.

use std::collections::BTreeMap;
use std::time::Duration;

pub use proto::event::Role;
use proto::event::{Death, Investigation, Phase, Team};
use proto::lobby::CreateRoom;
use proto::{Command, ErrorCode, PlayerId, PlayerName, Rejection, RoomCode};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::outgoing::{Ack, Audience, Effects, Now, Outgoing};

mod commands;
mod phases;
mod view;

/// A waiting room with no activity for this long closes.
pub const WAITING_IDLE: Duration = Duration::from_secs(12 * 60 * 60);
/// A room nobody has joined (or everyone left... which closes it at once) is empty: it closes
/// after this long rather than sitting in the lobby for 12 hours.
pub const EMPTY_GRACE: Duration = Duration::from_secs(5 * 60);
/// A game in which nobody has done anything for this many rounds is abandoned: it closes
/// instead of cycling through its phases for ever.
pub const IDLE_ROUNDS: u32 = 3;

/// Phase durations, resolved from the defaults and the room's overrides. Stored as whole
/// milliseconds, as rooms ask for them (see [`millis`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Durations {
    #[serde(with = "millis")]
    pub day_intro: Duration,
    #[serde(with = "millis")]
    pub notice: Duration,
    #[serde(with = "millis")]
    pub day_per_player: Duration,
    #[serde(with = "millis")]
    pub vote: Duration,
    #[serde(with = "millis")]
    pub vote_result: Duration,
    #[serde(with = "millis")]
    pub night_intro: Duration,
    #[serde(with = "millis")]
    pub night: Duration,
    #[serde(with = "millis")]
    pub ended: Duration,
}

/// A duration in a room's record as whole milliseconds: the record is rewritten on every step,
/// and nats-server's work for each write grows with its size (`docs/benchmarks.md`), so the
/// record spells `3000`, not `{"secs":3,"nanos":0}`. Records written before read as well.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Millis(u64),
            Serde(Duration),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Millis(ms) => Duration::from_millis(ms),
            Stored::Serde(d) => d,
        })
    }
}

/// For `skip_serializing_if`: a record leaves out what is false, empty or absent, and reads it
/// back as the default.
pub(crate) fn is_false(b: &bool) -> bool {
    !b
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    alive: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    left: bool,
}

/// What a room was created with that matters after its creation (its durations are resolved
/// into [`Durations`]). Records written before, which held the whole request, read as well.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Settings {
    title: String,
    total: u8,
    mafia: u8,
    doctor: u8,
    police: u8,
    #[serde(default, skip_serializing_if = "is_false")]
    private: bool,
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
    settings: Settings,
    durations: Durations,
    players: Vec<Player>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<PlayerId>,
    phase: Phase,
    round: u32,
    /// When the room next needs [`Game::on_deadline`], in unix ms: wall-clock time, so that
    /// another engine (with another monotonic clock) can re-arm it.
    deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ends_at: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    votes: BTreeMap<PlayerId, Option<PlayerId>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mafia_pick: Option<PlayerId>,
    /// Tonight's protection by each doctor (a room may have several).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    protect: BTreeMap<PlayerId, PlayerId>,
    /// Every result, with the officer it belongs to; each officer sees only their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    investigations: Vec<(PlayerId, Investigation)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deaths: Vec<Death>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        let settings = Settings {
            title: settings.title,
            total,
            mafia,
            doctor,
            police,
            private: settings.private,
        };
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
