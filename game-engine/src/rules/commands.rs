//! The commands players send, each checked against the phase and the player before it
//! changes anything: on a refusal the game and its effects are untouched.

use proto::event::{
    Channel, Chat, DeathCause, Investigation, MafiaPick, Phase, PlayerJoined, PlayerLeft,
    Protection, RoleDealt, VoteCast,
};
use proto::{ChatText, ErrorCode, PlayerId, PlayerName, Rejection};
use rand::seq::SliceRandom;
use rand::Rng;

use super::{random_token, reject, Ack, Audience, Effects, Game, Now, Player, Role};

impl Game {
    pub(super) fn join(
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

    pub(super) fn leave(
        &mut self,
        id: &PlayerId,
        now: Now,
        fx: &mut Effects,
    ) -> Result<Ack, Rejection> {
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

    pub(super) fn start(
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

    pub(super) fn vote(
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

    pub(super) fn skill(
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

    pub(super) fn say(
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
        // Not kept in the game: the room's history holds the line for snapshots, so the
        // record, rewritten on every step, does not grow with the chat.
        fx.emit(audience, &line);
        Ok(Ack::Done)
    }
}
