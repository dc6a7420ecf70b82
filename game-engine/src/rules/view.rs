//! What others may see of a game: each viewer's snapshot (exactly what the events have shown
//! them) and the lobby's listing.

use std::collections::BTreeMap;

use proto::event::{Chat, Phase, PlayerView, RoomSnapshot};
use proto::lobby::{LobbyPhase, LobbyRoom};
use proto::PlayerId;

use super::{Game, Role};

impl Game {
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

    /// The room as `viewer` may see it: exactly what the events have shown them. The game
    /// keeps no chat (see `say`): `chat` is the viewer's latest lines, from the room's history.
    pub fn snapshot(&self, viewer: Option<&PlayerId>, chat: Vec<Chat>) -> RoomSnapshot {
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
            chat,
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
}
