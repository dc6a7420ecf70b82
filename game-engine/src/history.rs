//! A stream's sequence counter and its bounded history of published events, shared by rooms
//! and the lobby.
//!
//! Every event gets the next id when it is recorded, and is published in that order. The
//! history answers `since` requests: if it still holds every event after `since`, the viewer
//! gets those it may see; otherwise it gets a fresh snapshot.

use std::collections::VecDeque;

use bytes::Bytes;
use proto::{PlayerId, SnapEvent, SnapReply};
use serde_json::value::RawValue;

use crate::room::game::{Audience, Outgoing};

/// One recorded event.
#[derive(Debug)]
pub struct Recorded {
    pub id: u64,
    pub name: &'static str,
    pub audience: Audience,
    pub data: Bytes,
}

#[derive(Debug)]
pub struct History {
    seq: u64,
    events: VecDeque<Recorded>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        History {
            seq: 0,
            events: VecDeque::with_capacity(capacity.min(64)),
            capacity: capacity.max(1),
        }
    }

    /// Gives the event the next id and keeps it, forgetting the oldest beyond capacity.
    pub fn record(&mut self, event: Outgoing) -> &Recorded {
        self.seq += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(Recorded {
            id: self.seq,
            name: event.name,
            audience: event.audience,
            data: Bytes::from(event.data),
        });
        self.events.back().expect("just pushed")
    }

    /// Answers a `SnapRequest`: the events after `since` that `viewer` may see when they are
    /// all still here, else one `snapshot` event (built by `snapshot`) at the current id.
    pub fn reply(
        &self,
        viewer: Option<&PlayerId>,
        since: Option<u64>,
        snapshot: impl FnOnce() -> String,
    ) -> SnapReply {
        let oldest = self.events.front().map_or(self.seq + 1, |e| e.id);
        let events = match since {
            Some(since) if since <= self.seq && since + 1 >= oldest => self
                .events
                .iter()
                .filter(|e| e.id > since && e.audience.includes(viewer))
                .map(|e| SnapEvent {
                    id: e.id,
                    event: e.name.to_owned(),
                    data: raw(std::str::from_utf8(&e.data).expect("recorded from a String")),
                })
                .collect(),
            _ => vec![SnapEvent {
                id: self.seq,
                event: <proto::event::RoomSnapshot as proto::event::RoomEvent>::NAME.to_owned(),
                data: raw(&snapshot()),
            }],
        };
        SnapReply { events }
    }
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("events are serialised JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(audience: Audience, n: u32) -> Outgoing {
        Outgoing {
            audience,
            name: "chat",
            data: format!("{{\"n\":{n}}}"),
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
        let mut h = History::new(10);
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
        let mut h = History::new(3);
        for n in 1..=5 {
            h.record(event(Audience::Public, n));
        }
        let snap = || "{}".to_owned();
        assert_eq!(ids(&h.reply(None, Some(1), snap)), [(5, "snapshot")]);
        assert_eq!(
            ids(&h.reply(None, Some(2), snap)),
            [(3, "chat"), (4, "chat"), (5, "chat")]
        );
    }
}
