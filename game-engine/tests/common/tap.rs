//! A tap on every subject of a room, for tests that kill engines or NATS nodes: it checks
//! the invariants of `docs/durability.md` on every event as it arrives, whoever publishes it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use proto::headers::{SSE_EVENT, SSE_ID};
use serde_json::Value;
use tokio::time::timeout;

/// How long the next event may take across a fault: a lease and a leader election.
const ACROSS_FAULTS: Duration = Duration::from_secs(30);

/// Every event of one room, as published, with the invariants checked as they arrive: an id
/// seen again must carry the same bytes (a repeat), and a new id is above every id before
/// it on its subject.
pub struct Tap {
    _client: async_nats::Client,
    sub: async_nats::Subscriber,
    /// id → (event name, data): one payload per id, whoever published it.
    payloads: BTreeMap<u64, (String, String)>,
    /// subject → the last id published on it.
    last_on: BTreeMap<String, u64>,
    /// (subject, id, name, data) in arrival order, first copies only (an event for several
    /// players is one id on several subjects: its first copy).
    pub seen: Vec<(String, u64, String, Value)>,
}

impl Tap {
    /// Subscribes `subject` (a room's wildcard) on `client`, which it keeps, and returns once
    /// its server has the subscription: the events come through other connections.
    pub async fn on(client: async_nats::Client, subject: String) -> Tap {
        let sub = client.subscribe(subject).await.unwrap();
        test_support::server_has_read(&client).await;
        Tap {
            _client: client,
            sub,
            payloads: BTreeMap::new(),
            last_on: BTreeMap::new(),
            seen: Vec::new(),
        }
    }

    /// The next event not seen before (re-published copies are checked, then skipped).
    pub async fn next(&mut self) -> (String, u64, String, Value) {
        loop {
            let msg = timeout(ACROSS_FAULTS, self.sub.next())
                .await
                .expect("an event in time")
                .unwrap();
            let Some(headers) = msg.headers else { continue };
            let Some(id) = headers.get(SSE_ID) else {
                continue;
            };
            let id: u64 = id.as_str().parse().unwrap();
            let name = headers.get(SSE_EVENT).unwrap().as_str().to_owned();
            let data = String::from_utf8(msg.payload.to_vec()).unwrap();
            let subject = msg.subject.to_string();
            if let Some(before) = self.payloads.get(&id) {
                // A repeat (a step published again): the same bytes, or a bug.
                assert_eq!(before, &(name, data), "id {id} carried two payloads");
                continue;
            }
            let last = self.last_on.insert(subject.clone(), id).unwrap_or(0);
            assert!(id > last, "{subject}: new id {id} after {last}");
            self.payloads.insert(id, (name.clone(), data.clone()));
            let event = (subject, id, name, serde_json::from_str(&data).unwrap());
            self.seen.push(event.clone());
            return event;
        }
    }

    /// Reads on to the mafia's `role` event: the mafia's player id, from its subject.
    pub async fn mafia(&mut self) -> String {
        loop {
            let (subject, _, name, data) = self.next().await;
            if name == "role" && data["role"] == "mafia" {
                return subject.rsplit('.').next().unwrap().to_owned();
            }
        }
    }

    pub async fn until(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (_, _, n, data) = self.next().await;
            if n == name && pred(&data) {
                return data;
            }
        }
    }

    pub fn count(&self, name: &str, pred: impl Fn(&Value) -> bool) -> usize {
        self.seen
            .iter()
            .filter(|e| e.2 == name && pred(&e.3))
            .count()
    }

    /// Every id from 1 to the last one arrived: none lost on the way, whatever died.
    pub fn assert_no_gap(&self) {
        let last = *self.payloads.keys().last().expect("events");
        let missing: Vec<u64> = (1..=last)
            .filter(|id| !self.payloads.contains_key(id))
            .collect();
        assert!(missing.is_empty(), "ids never seen: {missing:?}");
    }

    /// The phases the room went through, as (phase, round).
    pub fn phases(&self) -> Vec<(String, u64)> {
        self.seen
            .iter()
            .filter(|e| e.2 == "phase")
            .map(|e| {
                (
                    e.3["phase"].as_str().unwrap().to_owned(),
                    e.3["round"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}
