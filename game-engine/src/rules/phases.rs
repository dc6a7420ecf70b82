//! Time in the game: what each deadline moves on to, and the deaths, the vote and the end
//! that phase changes carry out.

use proto::event::{
    Death, DeathCause, GameOver, Phase, PhaseChanged, RolesRevealed, RoomClosed, Team,
};
use proto::PlayerId;

use super::{Audience, Effects, Game, Now, IDLE_ROUNDS, WAITING_IDLE};

impl Game {
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
    pub(super) fn end_or(&mut self, next: Phase, now: Now, fx: &mut Effects) {
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

    pub(super) fn enter(&mut self, phase: Phase, now: Now, fx: &mut Effects) {
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
    pub(super) fn execute_vote(&mut self, fx: &mut Effects) {
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
    pub(super) fn resolve_night(&mut self, fx: &mut Effects) {
        if let Some(target) = self.mafia_pick.take() {
            if !self.protect.values().any(|p| p == &target) {
                self.kill(&target, DeathCause::Mafia, fx);
            }
        }
    }

    pub(super) fn kill(&mut self, id: &PlayerId, cause: DeathCause, fx: &mut Effects) {
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
    pub(super) fn die(&mut self, id: &PlayerId, cause: DeathCause, fx: &mut Effects) -> bool {
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
}
