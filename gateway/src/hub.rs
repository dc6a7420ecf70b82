//! Shared NATS subscriptions and the fan-out to connections.
//!
//! A gateway subscribes once per watched stream, however many browsers watch it: the lobby's
//! subject, or a room's public subject plus the wildcard over its players' private subjects.
//! The first connection to a stream creates its [`Topic`]; the last one to leave drops it and
//! its subscriptions. Each NATS message becomes one [`Frame`], whose bytes are shared by every
//! connection it goes to; a connection whose queue is full is dropped as a slow consumer
//! rather than slowing the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::{Client, Message, Subscriber};
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge};
use proto::{PlayerId, RoomCode, Subjects};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::frame::{event_id, Frame};
use crate::metrics as m;

/// A stream browsers can watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamKey {
    Lobby,
    Room(RoomCode),
}

impl StreamKey {
    /// The `stream` label of the connection metrics (never the room code).
    pub fn kind(&self) -> &'static str {
        match self {
            StreamKey::Lobby => "lobby",
            StreamKey::Room(_) => "room",
        }
    }
}

/// What a connection's queue carries.
#[derive(Debug)]
pub enum Item {
    Frame(Frame),
    /// NATS went away: events may be missed until [`Item::Resync`].
    Pause,
    /// NATS is back (or dropped messages): fetch what was missed.
    Resync,
}

struct Member {
    id: u64,
    player: Option<PlayerId>,
    tx: mpsc::Sender<Item>,
}

/// What offering an item to a member came to.
enum Offer {
    Queued,
    /// Its queue is full: it is dropped as a slow consumer.
    Slow,
    /// Its connection is gone.
    Gone,
}

impl Member {
    /// Queues `item` without waiting: a connection that cannot keep up never slows the rest.
    fn offer(&self, item: Item) -> Offer {
        match self.tx.try_send(item) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Slow,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
    }
}

struct Topic {
    members: Mutex<Vec<Member>>,
    /// `None` while subscribing, then whether it worked.
    ready: watch::Receiver<Option<bool>>,
    stop: CancellationToken,
}

struct Inner {
    client: Client,
    subjects: Subjects,
    queue: usize,
    topics: Mutex<HashMap<StreamKey, Arc<Topic>>>,
    next_member: AtomicU64,
}

/// The registry of watched streams.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// `queue` is how many events a connection may have waiting before it is dropped.
    pub fn new(client: Client, subjects: Subjects, queue: usize) -> Self {
        Hub {
            inner: Arc::new(Inner {
                client,
                subjects,
                queue: queue.max(1),
                topics: Mutex::new(HashMap::new()),
                next_member: AtomicU64::new(0),
            }),
        }
    }

    /// Adds a connection to a stream, subscribing the stream if it is new. Events start
    /// queueing for it at once; call [`Membership::ready`] before asking for a snapshot.
    pub fn join(&self, key: StreamKey, player: Option<PlayerId>) -> Membership {
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        let mut topics = self.inner.topics.lock().expect("hub lock");
        let topic = topics
            .entry(key.clone())
            .or_insert_with(|| self.open(key.clone()))
            .clone();
        topic
            .members
            .lock()
            .expect("topic lock")
            .push(Member { id, player, tx });
        drop(topics);
        Membership {
            hub: self.inner.clone(),
            key,
            topic,
            id,
            rx,
        }
    }

    /// Queues `item()` for every connection (NATS outage and recovery).
    pub fn broadcast(&self, item: impl Fn() -> Item) {
        let topics: Vec<Arc<Topic>> = self
            .inner
            .topics
            .lock()
            .expect("hub lock")
            .values()
            .cloned()
            .collect();
        for topic in topics {
            let mut members = topic.members.lock().expect("topic lock");
            members.retain(|member| match member.offer(item()) {
                Offer::Queued => true,
                Offer::Slow => {
                    counter!(m::SLOW_CONSUMERS).increment(1);
                    false
                }
                Offer::Gone => false,
            });
        }
    }

    fn open(&self, key: StreamKey) -> Arc<Topic> {
        let (ready_tx, ready) = watch::channel(None);
        let topic = Arc::new(Topic {
            members: Mutex::new(Vec::new()),
            ready,
            stop: CancellationToken::new(),
        });
        tokio::spawn(run_topic(self.inner.clone(), key, topic.clone(), ready_tx));
        topic
    }
}

/// Subscribes a stream and fans its events out until the last member leaves.
async fn run_topic(
    hub: Arc<Inner>,
    key: StreamKey,
    topic: Arc<Topic>,
    ready: watch::Sender<Option<bool>>,
) {
    let subjects = match &key {
        StreamKey::Lobby => vec![hub.subjects.lobby_events()],
        StreamKey::Room(code) => vec![
            hub.subjects.room_events(code),
            hub.subjects.all_player_events(code),
        ],
    };
    let mut subs = Vec::with_capacity(subjects.len());
    for subject in subjects {
        match hub.client.subscribe(subject).await {
            Ok(sub) => subs.push(sub),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe a stream");
                let _ = ready.send(Some(false));
                return;
            }
        }
    }
    // The SUBs must reach the server before the snapshot request does.
    let flushed = hub.client.flush().await.is_ok();
    let count = subs.len() as f64;
    gauge!(m::NATS_SUBSCRIPTIONS).increment(count);
    let _ = ready.send(Some(flushed));
    let mut events = Ordered::new(subs);
    loop {
        tokio::select! {
            () = topic.stop.cancelled() => break,
            msg = events.next() => match msg {
                Some(msg) => fan_out(&hub.subjects, &topic, &msg),
                None => break,
            },
        }
    }
    gauge!(m::NATS_SUBSCRIPTIONS).decrement(count);
    // If the subscription ended by itself, new connections must not join this dead topic.
    let mut topics = hub.topics.lock().expect("hub lock");
    if topics.get(&key).is_some_and(|t| Arc::ptr_eq(t, &topic)) {
        topics.remove(&key);
    }
    // Ending the members' queues ends their streams; browsers reconnect.
    topic.members.lock().expect("topic lock").clear();
}

fn fan_out(subjects: &Subjects, topic: &Topic, msg: &Message) {
    let Some(frame) = Frame::from_message(msg) else {
        counter!(m::EVENTS_MALFORMED).increment(1);
        return;
    };
    let private_to = subjects.player_of(&msg.subject);
    let (mut delivered, mut slow) = (0u64, 0u64);
    let mut members = topic.members.lock().expect("topic lock");
    members.retain(|member| {
        if let Some(player) = private_to {
            if member.player.as_ref().map(PlayerId::as_str) != Some(player) {
                return true;
            }
        }
        match member.offer(Item::Frame(frame.clone())) {
            Offer::Queued => {
                delivered += 1;
                true
            }
            Offer::Slow => {
                slow += 1;
                false
            }
            Offer::Gone => false,
        }
    });
    drop(members);
    counter!(m::EVENTS_DELIVERED).increment(delivered);
    if slow > 0 {
        counter!(m::SLOW_CONSUMERS).increment(slow);
    }
}

/// One connection's place in a stream; leaving the stream is dropping it.
pub struct Membership {
    hub: Arc<Inner>,
    key: StreamKey,
    topic: Arc<Topic>,
    id: u64,
    pub rx: mpsc::Receiver<Item>,
}

impl Membership {
    /// Waits until the stream's subscriptions are in place; false if they failed.
    pub async fn ready(&self) -> bool {
        let mut ready = self.topic.ready.clone();
        let state = match ready.wait_for(Option::is_some).await {
            Ok(state) => *state,
            Err(_) => None,
        };
        state == Some(true)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut topics = self.hub.topics.lock().expect("hub lock");
        let mut members = self.topic.members.lock().expect("topic lock");
        members.retain(|m| m.id != self.id);
        let empty = members.is_empty();
        drop(members);
        if empty {
            if let Some(current) = topics.get(&self.key) {
                if Arc::ptr_eq(current, &self.topic) {
                    topics.remove(&self.key);
                }
            }
            self.topic.stop.cancel();
        }
    }
}

/// Merges a stream's subscriptions back into publication order.
///
/// async-nats hands each subscription its own channel, all filled by one reader in the order
/// the server sent the messages. So once a message has been seen on one channel, every message
/// sent before it is already waiting on the others. The merge therefore looks at every channel
/// (without waiting), and if it found anything looks once more at those that were empty,
/// which then hold whatever preceded what it saw; the smallest id among them is next.
/// Peeking is `unconstrained`: tokio's cooperative budget would otherwise make a full channel
/// look empty.
struct Ordered {
    subs: Vec<Subscriber>,
    peeked: Vec<Option<Message>>,
}

impl Ordered {
    fn new(subs: Vec<Subscriber>) -> Self {
        let peeked = subs.iter().map(|_| None).collect();
        Ordered { subs, peeked }
    }

    /// Fills the empty slots with whatever is ready; true if any slot holds a message.
    fn peek(&mut self) -> bool {
        for (sub, peeked) in self.subs.iter_mut().zip(&mut self.peeked) {
            if peeked.is_none() {
                *peeked = tokio::task::unconstrained(sub.next())
                    .now_or_never()
                    .flatten();
            }
        }
        self.peeked.iter().any(Option::is_some)
    }

    async fn next(&mut self) -> Option<Message> {
        loop {
            if self.peek() {
                self.peek();
                let (_, i) = self
                    .peeked
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| m.as_ref().map(|m| (event_id(m).unwrap_or(0), i)))
                    .min()?;
                return self.peeked[i].take();
            }
            let waits = self.subs.iter_mut().map(|s| s.next());
            let (msg, i, _) = futures::future::select_all(waits).await;
            self.peeked[i] = Some(msg?);
        }
    }
}
