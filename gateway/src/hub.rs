//! Shared NATS subscriptions and the fan-out to connections.
//!
//! A gateway subscribes once per watched stream, however many browsers watch it: the lobby's
//! subject, or a room's public subject plus the wildcard over its players' private subjects.
//! The first connection to a stream creates its [`Topic`]; the last one to leave drops it and
//! its subscriptions. Each NATS message becomes one [`Frame`], whose bytes are shared by every
//! connection it goes to.
//!
//! The fan-out is a ring (`tokio::sync::broadcast`) per topic rather than a queue per
//! connection: publishing an event is one write into the ring and one wake per waiting
//! connection, and a connection costs the ring nothing but its read position. A connection
//! that falls a whole ring behind (or misses events while NATS is away) catches up by asking
//! the engine for what it missed, rather than slowing the rest; a topic's members that need
//! the same catch-up share one request ([`Membership::catch_up`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge};
use proto::{PlayerId, RoomCode, Subjects};
use rand::Rng;
use tokio::sync::{broadcast, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::frame::{event_id, Frame};
use crate::metrics as m;

/// The most a room's ring holds. A room's events come a few a second, from at most twenty
/// players, and a member that falls further behind catches up by request; each slot costs
/// 40 bytes for as long as the room is watched, and a gateway watches thousands of rooms.
pub const ROOM_RING: usize = 32;

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

/// What a topic's ring carries to its connections: 16 bytes (a pointer and a tag), and a
/// ring allocates all its slots when its stream opens, so rings are sized by kind
/// ([`Hub::new`]).
#[derive(Clone, Debug)]
pub enum Item {
    /// An event, for everyone on the stream or for one player only.
    Frame(Arc<Addressed>),
    /// Time for the `: ping` comment that keeps idle streams open through proxies.
    Heartbeat,
    /// NATS went away: events may be missed until [`Item::Resync`].
    Pause,
    /// NATS is back (or dropped messages): fetch what was missed, this many milliseconds
    /// from now. The delay is drawn once per topic, so that its members ask together (and
    /// share one request) while topics spread their requests out.
    Resync(u32),
}

/// What a catch-up request brings: the frames to send, or why there are none and when to
/// ask again (drawn once per request, so that the members that shared it ask again together
/// and share the next one too).
pub type CatchUp = Result<Arc<[Frame]>, (ApiError, Duration)>;

/// A catch-up request in flight, which members needing the same one may wait on.
#[derive(Clone)]
struct Flight {
    /// Started after this point of the ring: a member paused before it can share it.
    started: tokio::time::Instant,
    answer: Shared<BoxFuture<'static, CatchUp>>,
}

/// Who asks for a catch-up, and after which id: members with the same key get the same
/// answer (the lobby's members share one viewer; a room's, one per player).
type FlightKey = (Option<PlayerId>, Option<u64>);

/// An event and who may see it.
#[derive(Debug)]
pub struct Addressed {
    pub frame: Frame,
    /// The player it is private to; `None`: everyone on the stream.
    pub to: Option<Box<str>>,
}

struct Topic {
    /// The ring's only strong sender belongs to the topic's task: when the task ends (its
    /// subscription died) the ring closes and every member's stream ends with it.
    ring: broadcast::WeakSender<Item>,
    /// Connections on the stream. Changed only under the hub's lock, so that the last one
    /// to leave knows it is the last (the ring's receiver count cannot tell: a leaving
    /// member's receiver is dropped after its lock is released).
    members: AtomicUsize,
    /// `None` while subscribing, then whether it worked.
    ready: watch::Receiver<Option<bool>>,
    /// Cancelled when the last member leaves, or with the gateway's shutdown (a child of it):
    /// the topic's task then ends and its ring closes, which ends every member's stream. One
    /// watch per topic, so that streams need none of their own.
    stop: CancellationToken,
    /// Catch-up requests in flight, by who asks and from where.
    flights: Mutex<HashMap<FlightKey, Flight>>,
}

struct Inner {
    client: Client,
    subjects: Subjects,
    lobby_ring: usize,
    room_ring: usize,
    heartbeat: Duration,
    shutdown: CancellationToken,
    topics: Mutex<HashMap<StreamKey, Arc<Topic>>>,
}

/// The registry of watched streams.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// `ring` is how many items a connection may fall behind before it must catch up by
    /// request (a room's ring is at most [`ROOM_RING`]); `heartbeat` how often every stream
    /// gets a `: ping`; `shutdown` ends every stream.
    pub fn new(
        client: Client,
        subjects: Subjects,
        ring: usize,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Hub {
            inner: Arc::new(Inner {
                client,
                subjects,
                lobby_ring: ring.max(1),
                room_ring: ring.clamp(1, ROOM_RING),
                heartbeat,
                shutdown,
                topics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Adds a connection to a stream, subscribing the stream if it is new. Items start
    /// arriving for it at once; call [`Membership::ready`] before asking for a snapshot.
    pub fn join(&self, key: StreamKey) -> Membership {
        let mut topics = self.inner.topics.lock().expect("hub lock");
        let live = topics
            .get(&key)
            .and_then(|topic| Some((topic.clone(), topic.ring.upgrade()?.subscribe())));
        let (topic, rx) = live.unwrap_or_else(|| {
            let (topic, rx) = self.open(key.clone());
            topics.insert(key.clone(), topic.clone());
            (topic, rx)
        });
        topic.members.fetch_add(1, Ordering::Relaxed);
        drop(topics);
        Membership {
            hub: self.inner.clone(),
            key,
            topic,
            rx,
        }
    }

    /// Tells every connection that NATS went away.
    pub fn pause(&self) {
        self.broadcast(|| Item::Pause);
    }

    /// Tells every connection to catch up: each topic at its own moment within `spread`,
    /// so that a reconnect asks the engines for one catch-up per topic (and viewer), spread
    /// out, rather than one per stream at once.
    pub fn resync(&self, spread: Duration) {
        let spread = u32::try_from(spread.as_millis()).unwrap_or(u32::MAX).max(1);
        let mut rng = rand::rng();
        self.broadcast(|| Item::Resync(rng.random_range(0..spread)));
    }

    fn broadcast(&self, mut item: impl FnMut() -> Item) {
        let topics = self.inner.topics.lock().expect("hub lock");
        for ring in topics.values().filter_map(|topic| topic.ring.upgrade()) {
            let _ = ring.send(item());
        }
    }

    /// Starts a stream's topic, with its first member's receiver.
    fn open(&self, key: StreamKey) -> (Arc<Topic>, broadcast::Receiver<Item>) {
        let (ready_tx, ready) = watch::channel(None);
        let capacity = match key {
            StreamKey::Lobby => self.inner.lobby_ring,
            StreamKey::Room(_) => self.inner.room_ring,
        };
        let (ring, rx) = broadcast::channel(capacity);
        let topic = Arc::new(Topic {
            ring: ring.downgrade(),
            members: AtomicUsize::new(0),
            ready,
            stop: self.inner.shutdown.child_token(),
            flights: Mutex::new(HashMap::new()),
        });
        let task = run_topic(self.inner.clone(), key, topic.clone(), ring, ready_tx);
        tokio::spawn(task);
        (topic, rx)
    }
}

/// Subscribes a stream and fans its events out until the last member leaves.
async fn run_topic(
    hub: Arc<Inner>,
    key: StreamKey,
    topic: Arc<Topic>,
    ring: broadcast::Sender<Item>,
    ready: watch::Sender<Option<bool>>,
) {
    let subscribed = subscribe(&hub, &key).await;
    // Counted before the topic says it is ready, so that a stream that has its first event
    // is already in the gauge.
    let count = subscribed.as_ref().map_or(0.0, |subs| subs.len() as f64);
    gauge!(m::NATS_SUBSCRIPTIONS).increment(count);
    let _ = ready.send(Some(subscribed.is_some()));
    if let Some(subs) = subscribed {
        let mut events = Ordered::new(subs);
        let mut heartbeats = tokio::time::interval(hub.heartbeat);
        heartbeats.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeats.reset();
        loop {
            tokio::select! {
                () = topic.stop.cancelled() => break,
                _ = heartbeats.tick() => {
                    let _ = ring.send(Item::Heartbeat);
                }
                msg = events.next() => match msg {
                    Some(msg) => publish(&hub.subjects, &ring, &msg),
                    None => break,
                },
            }
        }
        gauge!(m::NATS_SUBSCRIPTIONS).decrement(count);
    }
    // A topic that failed or whose subscription ended must not take new members; dropping
    // `ring` then closes it, which ends the members' streams, and browsers reconnect.
    let mut topics = hub.topics.lock().expect("hub lock");
    if topics.get(&key).is_some_and(|t| Arc::ptr_eq(t, &topic)) {
        topics.remove(&key);
    }
}

/// The stream's subscriptions, flushed: the SUBs must reach the server before the snapshot
/// request does.
async fn subscribe(hub: &Inner, key: &StreamKey) -> Option<Vec<Subscriber>> {
    let subjects = match key {
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
                return None;
            }
        }
    }
    hub.client.flush().await.ok()?;
    Some(subs)
}

/// Puts one NATS message into the topic's ring, addressed to one player if it came on a
/// private subject.
fn publish(subjects: &Subjects, ring: &broadcast::Sender<Item>, msg: &Message) {
    let Some(frame) = Frame::from_message(msg) else {
        counter!(m::EVENTS_MALFORMED).increment(1);
        return;
    };
    let to = subjects.player_of(&msg.subject).map(Box::from);
    let _ = ring.send(Item::Frame(Arc::new(Addressed { frame, to })));
}

/// One connection's place in a stream; leaving the stream is dropping it.
pub struct Membership {
    hub: Arc<Inner>,
    key: StreamKey,
    topic: Arc<Topic>,
    pub rx: broadcast::Receiver<Item>,
}

impl Membership {
    /// The stream this is a place in.
    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    /// Waits until the stream's subscriptions are in place; false if they failed.
    pub async fn ready(&self) -> bool {
        let mut ready = self.topic.ready.clone();
        let state = match ready.wait_for(Option::is_some).await {
            Ok(state) => *state,
            Err(_) => None,
        };
        state == Some(true)
    }

    /// The catch-up for `viewer` after `since`, for a member that stopped taking live events
    /// at `paused` (its held frames start there): shares a request of the topic's already in
    /// flight for the same viewer and id if that one started after `paused` (an earlier one
    /// may miss events this member skipped), else starts `fetch`.
    pub async fn catch_up(
        &self,
        viewer: Option<&PlayerId>,
        since: Option<u64>,
        paused: tokio::time::Instant,
        fetch: impl FnOnce() -> BoxFuture<'static, CatchUp>,
    ) -> CatchUp {
        let key = (viewer.cloned(), since);
        let flight = {
            let mut flights = self.topic.flights.lock().expect("flights lock");
            match flights.get(&key).filter(|f| f.started >= paused) {
                Some(flight) => flight.clone(),
                None => {
                    let flight = Flight {
                        started: tokio::time::Instant::now(),
                        answer: fetch().shared(),
                    };
                    flights.insert(key.clone(), flight.clone());
                    flight
                }
            }
        };
        let answer = flight.answer.clone().await;
        let mut flights = self.topic.flights.lock().expect("flights lock");
        if flights
            .get(&key)
            .is_some_and(|f| f.answer.ptr_eq(&flight.answer))
        {
            flights.remove(&key);
        }
        answer
    }
}

/// Whether an item addressed `to` is for `viewer` (a room's player, or `None` on the lobby).
pub fn is_for(to: Option<&str>, viewer: Option<&PlayerId>) -> bool {
    to.is_none_or(|to| viewer.map(PlayerId::as_str) == Some(to))
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut topics = self.hub.topics.lock().expect("hub lock");
        if self.topic.members.fetch_sub(1, Ordering::Relaxed) == 1 {
            if topics
                .get(&self.key)
                .is_some_and(|current| Arc::ptr_eq(current, &self.topic))
            {
                topics.remove(&self.key);
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
