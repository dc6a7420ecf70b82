//! A bot playing Mafia from what its room stream shows, shared by the benchmarks that play
//! real games (`rooms`, `chaos-soak`): the phase durations they ask for, what a player knows
//! (its role, the mafia it knows of, who is alive, the phase), what it does in each phase, and
//! the engine's history of what a player was entitled to see, to check a stream against.
//!
//! How bots play (docs/protocol.md, section 9): by day everyone votes for the living player
//! with the lowest id (that player votes for the next one), so each vote kills someone; most
//! vote during `day` (`day_vote_share`), the rest only in `vote`, so some days end early
//! because everyone voted and others at their deadline. At night the mafia pick a random
//! living non-mafia, the doctor protects a random living player, the police investigate one.
//! Each action is planned for a random moment in the first 10–60 % of the time left in its
//! phase. Games end in a win after a few rounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use proto::event::{Death, PhaseChanged, RoleDealt, RoomSnapshot};
use proto::event::{Phase, Role, Team};
use proto::{PlayerId, RoomCode, Subjects};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::unix_ns;

/// Phase durations, ms: a round of about 13 s for 8 players.
pub const DEFAULT_DURATIONS: [(&str, u64); 8] = [
    ("day_intro", 1000),
    ("notice", 1000),
    ("day_per_player", 500),
    ("vote", 2000),
    ("vote_result", 1000),
    ("night_intro", 1000),
    ("night", 3000),
    ("ended", 2000),
];

/// How the games of a benchmark are played: the options of every benchmark whose bots play.
#[derive(Clone, Debug, clap::Args)]
pub struct PlayArgs {
    /// Phase durations in ms as a JSON object over the defaults (`bench::bot::DEFAULT_DURATIONS`),
    /// e.g. '{"night": 5000}'. Keys as in `durations_ms` (docs/protocol.md, section 5.1).
    #[arg(long, default_value = "{}")]
    pub durations: String,
    /// `engine.min_phase`: must not exceed the shortest duration.
    #[arg(long, default_value = "100ms")]
    pub min_phase: String,
    /// Share of living players who vote during `day`; the others vote in `vote`. A day ends
    /// early only if every living player voted in it.
    #[arg(long, default_value_t = 0.9)]
    pub day_vote_share: f64,
}

impl PlayArgs {
    pub fn durations(&self) -> anyhow::Result<Durations> {
        Durations::parse(&self.durations)
    }
}

/// The `durations_ms` of the rooms a benchmark creates.
#[derive(Clone, Debug)]
pub struct Durations(pub BTreeMap<String, u64>);

impl Durations {
    /// [`DEFAULT_DURATIONS`] with `overrides` (a JSON object of ms, e.g. `{"night": 5000}`).
    pub fn parse(overrides: &str) -> anyhow::Result<Durations> {
        let mut all: BTreeMap<String, u64> = DEFAULT_DURATIONS
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let given: BTreeMap<String, u64> =
            serde_json::from_str(overrides).context("--durations: a JSON object of ms")?;
        for (key, ms) in given {
            anyhow::ensure!(all.contains_key(&key), "--durations: unknown phase {key:?}");
            all.insert(key, ms);
        }
        Ok(Durations(all))
    }

    /// How long `phase` lasts when entered with `living` players alive.
    pub fn of(&self, phase: Phase, living: usize) -> u64 {
        let ms = |key: &str| self.0.get(key).copied().unwrap_or(0);
        match phase {
            Phase::Day => ms("day_per_player") * living as u64,
            other => ms(other.as_str()),
        }
    }
}

/// What a bot does when its plan comes due.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Vote,
    Skill,
}

/// One player's view of its game, kept up to date from its stream's events.
pub struct Bot {
    pub me: PlayerId,
    pub role: Option<Role>,
    /// The mafia this player knows of (itself included, when mafia).
    pub mafia: BTreeSet<PlayerId>,
    /// Players in join order, with whether they are alive.
    pub players: Vec<(PlayerId, bool)>,
    pub phase: Phase,
    /// The current phase's deadline, unix ms.
    pub ends_at: Option<u64>,
    day_vote_share: f64,
    vote_later: bool,
}

impl Bot {
    /// The player `me` as `snapshot` shows the room; votes by day with probability
    /// `day_vote_share`, else in the vote phase.
    pub fn new(me: PlayerId, snapshot: &RoomSnapshot, day_vote_share: f64) -> Bot {
        let mut bot = Bot {
            me,
            role: None,
            mafia: BTreeSet::new(),
            players: Vec::new(),
            phase: snapshot.phase,
            ends_at: snapshot.ends_at,
            day_vote_share: day_vote_share.clamp(0.0, 1.0),
            vote_later: false,
        };
        bot.resync(snapshot);
        bot
    }

    /// Takes everything from a snapshot (the first, or one sent instead of missed events).
    pub fn resync(&mut self, snapshot: &RoomSnapshot) {
        let me = snapshot.players.iter().find(|p| p.player_id == self.me);
        self.role = me.and_then(|p| p.role);
        self.mafia = (snapshot.players.iter())
            .filter(|p| p.role == Some(Role::Mafia))
            .map(|p| p.player_id.clone())
            .collect();
        self.players = (snapshot.players.iter())
            .map(|p| (p.player_id.clone(), p.alive))
            .collect();
        self.phase = snapshot.phase;
        self.ends_at = snapshot.ends_at;
    }

    /// Learns from an event; for a `phase` event, the action planned in it (after the
    /// returned delay), if any. Callers that measure a phase change look at `phase` and
    /// `ends_at` before calling this.
    pub fn on_event(
        &mut self,
        event: &str,
        data: &str,
    ) -> anyhow::Result<Option<(Duration, Action)>> {
        match event {
            "role" => {
                let dealt: RoleDealt = serde_json::from_str(data)?;
                self.role = Some(dealt.role);
                self.mafia = dealt.mafia.into_iter().collect();
                if dealt.role == Role::Mafia {
                    self.mafia.insert(self.me.clone());
                }
            }
            "death" => {
                let death: Death = serde_json::from_str(data)?;
                for (player, alive) in &mut self.players {
                    if *player == death.player_id {
                        *alive = false;
                    }
                }
            }
            "phase" => return Ok(self.on_phase(serde_json::from_str(data)?)),
            _ => {}
        }
        Ok(None)
    }

    /// Enters the new phase; the action planned in it, if any, and after how long.
    pub fn on_phase(&mut self, change: PhaseChanged) -> Option<(Duration, Action)> {
        self.phase = change.phase;
        self.ends_at = change.ends_at;
        if change.phase == Phase::Day {
            self.vote_later = false;
        }
        if !self.alive() {
            return None;
        }
        let mut rng = rand::rng();
        let action = match change.phase {
            Phase::Day if rng.random_bool(self.day_vote_share) => Some(Action::Vote),
            Phase::Day => {
                self.vote_later = true;
                None
            }
            Phase::Vote if self.vote_later => {
                self.vote_later = false;
                Some(Action::Vote)
            }
            Phase::Night if self.role.is_some_and(|r| r != Role::Citizen) => Some(Action::Skill),
            _ => None,
        };
        let (action, ends_at) = (action?, change.ends_at?);
        let left_ms = (ends_at as f64 - unix_ns() as f64 / 1e6).max(0.0);
        let delay = Duration::from_secs_f64(left_ms * rng.random_range(0.1..0.6) / 1e3);
        Some((delay, action))
    }

    pub fn living(&self) -> impl Iterator<Item = &PlayerId> {
        self.players
            .iter()
            .filter(|(_, alive)| *alive)
            .map(|(p, _)| p)
    }

    pub fn alive(&self) -> bool {
        self.living().any(|p| *p == self.me)
    }

    /// The command body for `action` now (`{"type": "vote", "target"}` or `skill`), or
    /// `None` when there is nobody to aim it at.
    pub fn command(&self, action: Action) -> Option<Value> {
        let mut rng = rand::rng();
        let living: Vec<&PlayerId> = self.living().collect();
        let target = match (action, self.role) {
            (Action::Vote, _) => {
                // Everyone agrees on the living player with the lowest id; they pick the next.
                let mut sorted = living.clone();
                sorted.sort();
                sorted.into_iter().find(|p| **p != self.me)
            }
            (Action::Skill, Some(Role::Mafia)) => {
                let others: Vec<&PlayerId> = living
                    .into_iter()
                    .filter(|p| !self.mafia.contains(*p))
                    .collect();
                others.choose(&mut rng).copied()
            }
            (Action::Skill, Some(Role::Doctor)) => living.choose(&mut rng).copied(),
            (Action::Skill, Some(Role::Police)) => {
                let others: Vec<&PlayerId> =
                    living.into_iter().filter(|p| **p != self.me).collect();
                others.choose(&mut rng).copied()
            }
            (Action::Skill, _) => None,
        }?;
        Some(match action {
            Action::Vote => json!({"type": "vote", "target": target}),
            Action::Skill => json!({"type": "skill", "target": target}),
        })
    }
}

/// The ids after `since` that `viewer` is in the audience of, from the engine's history
/// (`game.room.<code>.snap` with `since`, within `limit`); `None` when the engine no longer
/// holds them all and answers with a snapshot instead.
pub async fn audience_ids(
    nats: &async_nats::Client,
    subjects: &Subjects,
    code: &RoomCode,
    viewer: &PlayerId,
    since: u64,
    limit: Duration,
) -> anyhow::Result<Option<BTreeSet<u64>>> {
    let request = json!({"viewer": viewer, "since": since}).to_string();
    let reply = tokio::time::timeout(
        limit,
        nats.request(subjects.room_snap(code), request.into()),
    )
    .await
    .with_context(|| format!("room {code}: history request timed out"))?
    .with_context(|| format!("room {code}: history request"))?;
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    let events = (reply["events"].as_array())
        .with_context(|| format!("room {code}: history reply {reply}"))?;
    if events.iter().any(|e| e["event"] == "snapshot") {
        return Ok(None);
    }
    Ok(Some(
        events.iter().filter_map(|e| e["id"].as_u64()).collect(),
    ))
}

/// Games won, by side, as the bots saw `game_over`.
#[derive(Default)]
pub struct Wins(Mutex<BTreeMap<&'static str, u64>>);

impl Wins {
    pub fn count(&self, winner: Team) {
        let side = match winner {
            Team::Citizens => "citizens",
            Team::Mafia => "mafia",
        };
        *self.0.lock().expect("wins lock").entry(side).or_default() += 1;
    }

    /// `citizens 3, mafia 5`, with `won` between side and count (`citizens won 3`) if given.
    pub fn summary(&self, won: &str) -> String {
        let wins = self.0.lock().expect("wins lock");
        wins.iter()
            .map(|(side, n)| format!("{side} {won}{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
