//! A stand-in for the engine's lobby, so that gateway benchmarks measure the gateway and not
//! the game: it publishes numbered events stamped with their send time (`{"t":<ns>}`) to
//! `game.lobby.evt` at a chosen rate, with the `Sse-Id`/`Sse-Event` headers of PROTOCOL.md,
//! and answers `game.lobby.snap` as the engine would: `since` null gets one `snapshot` event
//! with the current id, `since` = N gets every event after N from a history of recent events
//! (or a snapshot when N is older than the history).
//!
//! One task publishes and answers, as the engine's lobby does, so a snapshot's id is always
//! the last id published before it and the history holds every event up to it.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, HeaderMap, Subscriber};
use futures::StreamExt;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::{SnapEvent, SnapRequest, Subjects};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::unix_ns;

/// The running publisher; it stops when dropped.
pub struct Lobby {
    orders: mpsc::UnboundedSender<Order>,
    task: tokio::task::JoinHandle<()>,
}

enum Order {
    /// Publish this many events per second from now on (0 stops).
    Rate(f64),
    LastId(oneshot::Sender<u64>),
}

impl Lobby {
    /// Subscribes to the snapshot subject (read by the server before this returns) and
    /// keeps the last `history` events for `since` requests.
    pub async fn start(client: Client, history: usize) -> anyhow::Result<Lobby> {
        let subjects = Subjects::default();
        let snaps = client.subscribe(subjects.lobby_snap()).await?;
        test_support::server_has_read(&client).await;
        let (orders, received) = mpsc::unbounded_channel();
        let publisher = Publisher {
            client,
            subject: subjects.lobby_events(),
            last: 0,
            history: VecDeque::new(),
            capacity: history.max(1),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = publisher.run(received, snaps).await {
                eprintln!("lobby publisher stopped: {e:#}");
            }
        });
        Ok(Lobby { orders, task })
    }

    /// Publishes `per_second` events a second from now on; 0 stops publishing.
    pub fn set_rate(&self, per_second: f64) {
        let _ = self.orders.send(Order::Rate(per_second));
    }

    /// The id of the last event published.
    pub async fn last_id(&self) -> anyhow::Result<u64> {
        let (tx, rx) = oneshot::channel();
        let _ = self.orders.send(Order::LastId(tx));
        rx.await
            .context("the lobby publisher has stopped (see its error above)")
    }

    /// Publishes at `per_second` for `duration`, stops, and returns the last id published.
    pub async fn publish_for(&self, per_second: f64, duration: Duration) -> anyhow::Result<u64> {
        self.set_rate(per_second);
        tokio::time::sleep(duration).await;
        self.set_rate(0.0);
        self.last_id().await
    }
}

impl Drop for Lobby {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Publisher {
    client: Client,
    subject: String,
    last: u64,
    /// (id, send time in ns) of the latest events, oldest first; ids are consecutive.
    history: VecDeque<(u64, u64)>,
    capacity: usize,
}

impl Publisher {
    async fn run(
        mut self,
        mut orders: mpsc::UnboundedReceiver<Order>,
        mut snaps: Subscriber,
    ) -> anyhow::Result<()> {
        // Event k of the current rate is due at `started + k / rate`.
        let (mut rate, mut started, mut sent) = (0.0, Instant::now(), 0u64);
        loop {
            let next_due = match rate > 0.0 {
                true => started + Duration::from_secs_f64((sent + 1) as f64 / rate),
                false => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                order = orders.recv() => match order {
                    None => return Ok(()),
                    Some(Order::Rate(per_second)) => (rate, started, sent) = (per_second, Instant::now(), 0),
                    Some(Order::LastId(reply)) => { let _ = reply.send(self.last); }
                },
                Some(request) = snaps.next() => {
                    let body = self.answer(&request.payload)?;
                    if let Some(reply) = request.reply {
                        self.client.publish(reply, body.into()).await?;
                    }
                }
                _ = tokio::time::sleep_until(next_due), if rate > 0.0 => {
                    // Everything due by now: at high rates that is several per timer tick.
                    let due = (started.elapsed().as_secs_f64() * rate) as u64;
                    while sent < due {
                        self.publish().await?;
                        sent += 1;
                    }
                }
            }
        }
    }

    async fn publish(&mut self) -> anyhow::Result<()> {
        self.last += 1;
        let sent_at = unix_ns();
        let mut headers = HeaderMap::new();
        headers.insert(SSE_ID, self.last.to_string().as_str());
        headers.insert(SSE_EVENT, "tick");
        self.client
            .publish_with_headers(self.subject.clone(), headers, stamped(sent_at).into())
            .await?;
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back((self.last, sent_at));
        Ok(())
    }

    /// The reply to a `SnapRequest`, as the engine gives it.
    fn answer(&self, request: &[u8]) -> anyhow::Result<String> {
        let since = serde_json::from_slice::<SnapRequest>(request)
            .context("a SnapRequest on the snapshot subject")?
            .since;
        let oldest = self.history.front().map_or(self.last + 1, |&(id, _)| id);
        let events = match since {
            Some(since) if since <= self.last && since + 1 >= oldest => self
                .history
                .range((since + 1 - oldest) as usize..)
                .map(|&(id, sent_at)| event(id, "tick", stamped(sent_at)))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![event(self.last, "snapshot", r#"{"rooms":[]}"#.to_owned())?],
        };
        Ok(serde_json::json!({"ok": true, "events": events}).to_string())
    }
}

/// An event's data: its send time.
fn stamped(sent_at: u64) -> String {
    format!("{{\"t\":{sent_at}}}")
}

fn event(id: u64, name: &str, data: String) -> serde_json::Result<SnapEvent> {
    Ok(SnapEvent {
        id,
        event: name.to_owned(),
        data: RawValue::from_string(data)?,
    })
}
