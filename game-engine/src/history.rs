//! A stream's recent events, to answer `since` without a snapshot; shared by rooms and the
//! lobby. A room's snapshot takes its chat lines from here too.
//!
//! The ids are given elsewhere (a room's committed counter, the lobby bucket's revisions), so
//! a history only keeps what it is told, and knows from which id on it holds every event. A
//! room taken over from another engine starts knowing only its last step; the rest is read
//! from the room's log when a request first needs it (a `since` older than that step, or a
//! snapshot).

use std::collections::VecDeque;

use proto::event::{Chat, RoomEvent};
use proto::{PlayerId, SnapEvent, SnapReply};
use serde_json::value::RawValue;

use crate::store::Logged;

#[derive(Debug)]
pub struct History {
    /// The last id recorded (or known to exist).
    last: u64,
    /// Every event with an id above this, up to `last`, is in `events`.
    complete_after: u64,
    events: VecDeque<Logged>,
    capacity: usize,
}

impl History {
    /// The history of a stream that starts now, after `last`: nothing before it is known.
    pub fn after(capacity: usize, last: u64) -> Self {
        History {
            last,
            complete_after: last,
            events: VecDeque::with_capacity(capacity.min(16)),
            capacity: capacity.max(1),
        }
    }

    pub fn last_id(&self) -> u64 {
        self.last
    }

    /// Keeps an event (ids rise), forgetting the oldest beyond capacity.
    pub fn record(&mut self, event: Logged) {
        debug_assert!(event.id > self.last, "ids rise");
        self.last = event.id;
        if self.events.len() == self.capacity {
            if let Some(oldest) = self.events.pop_front() {
                self.complete_after = oldest.id;
            }
        }
        self.events.push_back(event);
    }

    /// Every event with an id above this is held (up to [`History::last_id`]).
    pub fn held_after(&self) -> u64 {
        self.complete_after
    }

    /// The events held with an id above `id`, oldest first.
    pub fn after_id(&self, id: u64) -> impl Iterator<Item = &Logged> {
        self.events.iter().filter(move |e| e.id > id)
    }

    /// Whether every event after `since` is held, so that a reply needs no snapshot.
    pub fn covers(&self, since: Option<u64>) -> bool {
        since.is_some_and(|since| since >= self.complete_after && since <= self.last)
    }

    /// The latest `lines` chat lines `viewer` may see among the events held, oldest first. A
    /// room's snapshot takes its chat from here: the game keeps none, so that the record it
    /// commits on every step does not grow with the chat.
    pub fn chat(&self, viewer: Option<&PlayerId>, lines: usize) -> Vec<Chat> {
        let mut chat: Vec<Chat> = self
            .events
            .iter()
            .rev()
            .filter(|e| e.event == Chat::NAME && e.audience.includes(viewer))
            .filter_map(|e| serde_json::from_str(e.data.get()).ok())
            .take(lines)
            .collect();
        chat.reverse();
        chat
    }

    /// Puts back older events read from the room's log (which holds a contiguous run of the
    /// latest steps), oldest first. From then on the history is complete from the oldest
    /// event it keeps.
    pub fn backfill(&mut self, older: Vec<Logged>) {
        let held = self.events.front().map_or(self.last + 1, |e| e.id);
        let mut older: Vec<Logged> = older.into_iter().filter(|e| e.id < held).collect();
        let room = self.capacity.saturating_sub(self.events.len());
        let kept = older.split_off(older.len().saturating_sub(room));
        if let Some(first) = kept.first() {
            self.complete_after = self.complete_after.min(first.id - 1);
        }
        for event in kept.into_iter().rev() {
            self.events.push_front(event);
        }
    }

    /// Answers a `SnapRequest`: the events after `since` that `viewer` may see when they are
    /// all still here, else one `snapshot` event (built by `snapshot`) at the last id.
    pub fn reply(
        &self,
        viewer: Option<&PlayerId>,
        since: Option<u64>,
        snapshot: impl FnOnce() -> String,
    ) -> SnapReply {
        let events = match since {
            Some(since) if self.covers(Some(since)) => self
                .events
                .iter()
                .filter(|e| e.id > since && e.audience.includes(viewer))
                .map(|e| SnapEvent {
                    id: e.id,
                    event: e.event.clone(),
                    data: e.data.clone(),
                })
                .collect(),
            _ => vec![SnapEvent {
                id: self.last,
                event: SNAPSHOT.to_owned(),
                data: RawValue::from_string(snapshot()).expect("snapshots are serialised JSON"),
            }],
        };
        SnapReply { events }
    }
}

/// The name of the one event a fresh snapshot reply holds, for rooms and the lobby alike.
const SNAPSHOT: &str = <proto::event::RoomSnapshot as RoomEvent>::NAME;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outgoing::Audience;

    fn event(audience: Audience, id: u64) -> Logged {
        Logged {
            id,
            event: "chat".into(),
            audience,
            data: RawValue::from_string(format!("{{\"n\":{id}}}")).unwrap(),
        }
    }

    fn ids(reply: &SnapReply) -> Vec<(u64, &str)> {
        reply
            .events
            .iter()
            .map(|e| (e.id, e.event.as_str()))
            .collect()
    }

    #[test]
    fn since_returns_what_the_viewer_may_see_after_it() {
        let ann = PlayerId::parse("ann1").unwrap();
        let bob = PlayerId::parse("bob1").unwrap();
        let mut h = History::after(10, 0);
        h.record(event(Audience::Public, 1));
        h.record(event(Audience::Players(vec![bob.clone()]), 2));
        h.record(event(Audience::Public, 3));
        let snap = || "{}".to_owned();
        assert_eq!(
            ids(&h.reply(Some(&ann), Some(0), snap)),
            [(1, "chat"), (3, "chat")]
        );
        assert_eq!(
            ids(&h.reply(Some(&bob), Some(1), snap)),
            [(2, "chat"), (3, "chat")]
        );
        assert_eq!(ids(&h.reply(Some(&bob), Some(3), snap)), []);
        assert_eq!(ids(&h.reply(None, None, snap)), [(3, "snapshot")]);
        assert_eq!(
            ids(&h.reply(None, Some(9), snap)),
            [(3, "snapshot")],
            "an id from the future cannot be resumed"
        );
    }

    #[test]
    fn a_forgotten_gap_falls_back_to_a_snapshot() {
        let mut h = History::after(3, 0);
        for id in 1..=5 {
            h.record(event(Audience::Public, id));
        }
        let snap = || "{}".to_owned();
        assert_eq!(ids(&h.reply(None, Some(1), snap)), [(5, "snapshot")]);
        assert_eq!(
            ids(&h.reply(None, Some(2), snap)),
            [(3, "chat"), (4, "chat"), (5, "chat")]
        );
    }

    #[test]
    fn a_snapshot_s_chat_is_the_latest_lines_the_viewer_may_see() {
        let ann = PlayerId::parse("ann1").unwrap();
        let bob = PlayerId::parse("bob1").unwrap();
        let line = |id: u64, audience: Audience| Logged {
            id,
            event: "chat".into(),
            audience,
            data: RawValue::from_string(format!(
                r#"{{"from":"ann1","name":"Ann","text":"line {id}","channel":"public"}}"#
            ))
            .unwrap(),
        };
        let mut h = History::after(10, 0);
        h.record(line(1, Audience::Public));
        h.record(line(2, Audience::Players(vec![bob.clone()])));
        // Not a chat line, though its data would read as one.
        h.record(Logged {
            event: "vote".into(),
            ..line(3, Audience::Public)
        });
        h.record(line(4, Audience::Public));
        h.record(line(5, Audience::Public));
        let texts = |viewer, lines| {
            h.chat(viewer, lines)
                .into_iter()
                .map(|c| c.text)
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(Some(&ann), 10), ["line 1", "line 4", "line 5"]);
        assert_eq!(
            texts(Some(&bob), 10),
            ["line 1", "line 2", "line 4", "line 5"]
        );
        assert_eq!(
            texts(Some(&bob), 2),
            ["line 4", "line 5"],
            "the latest, oldest first"
        );
        assert_eq!(texts(None, 10), ["line 1", "line 4", "line 5"]);
    }

    #[test]
    fn a_taken_over_history_is_completed_from_the_log() {
        // The new owner knows the last step (ids 7, 8); the log holds 4..=8.
        let mut h = History::after(4, 6);
        h.record(event(Audience::Public, 7));
        h.record(event(Audience::Public, 8));
        let snap = || "{}".to_owned();
        assert!(!h.covers(Some(5)));
        assert!(h.covers(Some(6)), "the last step alone answers since=6");
        assert_eq!(
            ids(&h.reply(None, Some(6), snap)),
            [(7, "chat"), (8, "chat")]
        );
        h.backfill((4..=8).map(|id| event(Audience::Public, id)).collect());
        assert!(h.covers(Some(5)));
        assert_eq!(
            ids(&h.reply(None, Some(5), snap)),
            [(6, "chat"), (7, "chat"), (8, "chat")]
        );
        assert_eq!(ids(&h.reply(None, Some(4), snap)).len(), 4);
        assert_eq!(
            ids(&h.reply(None, Some(3), snap)),
            [(8, "snapshot")],
            "beyond capacity the oldest (4) is not kept"
        );
    }
}
