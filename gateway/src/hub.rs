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
//!
//! A topic also watches its backend's ids ([`Sequence`]): ids only rise, so one that comes
//! back is either the same event published again (dropped by each stream) or the backend
//! counting again from an earlier id, for other events (a backend restarted without its
//! history, or a store that lost what it had acknowledged). Then every member starts again
//! from a fresh snapshot ([`Item::Reset`]), rather than dropping every event until the ids
//! pass the old ones.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge};
use proto::{PlayerId, RoomCode, SnapReply, SnapRequest, Subjects};
use rand::Rng;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
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
    /// The backend's ids went back: what a member sent may belong to a history the backend
    /// no longer has. Start again from a fresh snapshot.
    Reset,
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
    /// How long a topic waits for the backend when it asks where its ids are.
    request_timeout: Duration,
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
    /// gets a `: ping`; `request_timeout` how long a backend may take to answer; `shutdown`
    /// ends every stream.
    pub fn new(
        client: Client,
        subjects: Subjects,
        ring: usize,
        heartbeat: Duration,
        request_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Hub {
            inner: Arc::new(Inner {
                client,
                subjects,
                lobby_ring: ring.max(1),
                room_ring: ring.clamp(1, ROOM_RING),
                heartbeat,
                request_timeout,
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
        let mut sequence = Sequence::default();
        // Whether an id came that only the backend can place ([`Seen::Older`]); the check in
        // flight, with the last id when it began; and when the next may begin.
        let mut suspect = false;
        let mut check: Option<(u64, JoinHandle<bool>)> = None;
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = topic.stop.cancelled() => break,
                _ = heartbeats.tick() => {
                    let _ = ring.send(Item::Heartbeat);
                }
                // In an async block: a disabled branch's block is never polled, so the
                // events' path makes no timer.
                () = async move { tokio::time::sleep_until(next_check).await }, if suspect && check.is_none() => {
                    suspect = false;
                    let last = sequence.last().unwrap_or(0);
                    check = Some((last, tokio::spawn(backend_behind(hub.clone(), key.clone(), last))));
                }
                behind = async { (&mut check.as_mut().expect("guarded").1).await }, if check.is_some() => {
                    let (from, _) = check.take().expect("guarded");
                    next_check = tokio::time::Instant::now() + RESET_CONFIRM;
                    // Only if no newer id came meanwhile: those would show the ids going on
                    // from where they were, and the backend that answered merely late.
                    if behind.unwrap_or(false) && sequence.last() == Some(from) {
                        reset(&ring, &mut sequence, "behind");
                    }
                }
                msg = events.next() => {
                    let Some(msg) = msg else { break };
                    let Some(frame) = Frame::from_message(&msg) else {
                        counter!(m::EVENTS_MALFORMED).increment(1);
                        continue;
                    };
                    let to = hub.subjects.player_of(&msg.subject);
                    match sequence.see(&frame, to) {
                        Seen::Next | Seen::Repeat => {}
                        Seen::Reused => reset(&ring, &mut sequence, "reused"),
                        Seen::Older => suspect = true,
                    }
                    let to = to.map(Box::from);
                    let _ = ring.send(Item::Frame(Arc::new(Addressed { frame, to })));
                }
            }
        }
        if let Some((_, task)) = check {
            task.abort();
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

/// How many of its latest ids a topic remembers (with a hash of each event's bytes) to tell an
/// event published again from an id reused for another event. As many as a room's ring: an
/// event is published again only while it is its room's last step.
const REMEMBERED_IDS: usize = ROOM_RING;

/// How long a backend must stay behind a topic's ids, asked twice this far apart, for the
/// topic to start again: a lobby engine that has just started answers from behind for a
/// moment (it catches up with the bucket), while ids that really went back stay back. Also
/// the least time between two such checks.
const RESET_CONFIRM: Duration = Duration::from_secs(1);

/// The latest ids a topic has passed on, oldest first, each with hashes of who it was for and
/// of its frame.
#[derive(Default)]
struct Sequence {
    recent: VecDeque<Remembered>,
    hasher: RandomState,
}

struct Remembered {
    id: u64,
    to: u64,
    frame: u64,
}

/// What an id is to a topic that has seen [`Sequence`].
#[derive(Debug, PartialEq)]
enum Seen {
    /// Above every id so far.
    Next,
    /// A remembered id with the same bytes: the same event, published again. Also the same
    /// id for another audience (an event sent to several players one subject each), which
    /// is not compared: a backend may word each player's copy differently.
    Repeat,
    /// A remembered id for the same audience with other bytes: the backend's ids went back.
    Reused,
    /// Not above the last id and not remembered: an old event published again late (an
    /// engine catching up with the lobby publishes what it missed), or ids that went back
    /// further than the topic remembers; only the backend can tell which.
    Older,
}

impl Sequence {
    fn last(&self) -> Option<u64> {
        self.recent.back().map(|r| r.id)
    }

    fn see(&mut self, frame: &Frame, to: Option<&str>) -> Seen {
        let seen = Remembered {
            id: frame.id,
            to: self.hasher.hash_one(to),
            frame: self.hasher.hash_one(&frame.bytes),
        };
        if self.last().is_none_or(|last| seen.id > last) {
            if self.recent.len() == REMEMBERED_IDS {
                self.recent.pop_front();
            }
            self.recent.push_back(seen);
            return Seen::Next;
        }
        let mut same_id = self.recent.iter().filter(|r| r.id == seen.id).peekable();
        if same_id.peek().is_none() {
            return Seen::Older;
        }
        match same_id.find(|r| r.to == seen.to) {
            Some(r) if r.frame != seen.frame => Seen::Reused,
            _ => Seen::Repeat,
        }
    }
}

/// Sends every member of the topic back to a snapshot, and forgets the ids seen: those that
/// follow are the backend's new count.
fn reset(ring: &broadcast::Sender<Item>, sequence: &mut Sequence, why: &'static str) {
    sequence.recent.clear();
    counter!(m::STREAM_RESETS, "why" => why).increment(1);
    tracing::info!(
        why,
        "a stream's ids went back; its clients start again from a snapshot"
    );
    let _ = ring.send(Item::Reset);
}

/// Whether the backend is behind `last`: its current id (a public snapshot's) below `last`,
/// asked twice [`RESET_CONFIRM`] apart. No answer is not behind: a room between engines, or
/// one that has ended, has not gone back.
async fn backend_behind(hub: Arc<Inner>, key: StreamKey, last: u64) -> bool {
    let subject = match &key {
        StreamKey::Lobby => hub.subjects.lobby_snap(),
        StreamKey::Room(code) => hub.subjects.room_snap(code),
    };
    let request = SnapRequest {
        viewer: None,
        since: None,
    };
    let body = bytes::Bytes::from(serde_json::to_vec(&request).expect("requests serialise"));
    let current = || async {
        let ask = hub.client.request(subject.clone(), body.clone());
        let reply = tokio::time::timeout(hub.request_timeout, ask)
            .await
            .ok()?
            .ok()?;
        SnapReply::decode(&reply.payload)
            .ok()?
            .events
            .last()
            .map(|e| e.id)
    };
    if current().await.is_none_or(|id| id >= last) {
        return false;
    }
    tokio::time::sleep(RESET_CONFIRM).await;
    current().await.is_some_and(|id| id < last)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(id: u64, data: &str) -> Frame {
        Frame::encode(id, "tick", data.as_bytes())
    }

    #[test]
    fn a_sequence_tells_repeats_from_reused_and_older_ids() {
        let mut seq = Sequence::default();
        for id in 1..=40 {
            assert_eq!(seq.see(&tick(id, "{}"), None), Seen::Next);
        }
        assert_eq!(seq.see(&tick(40, "{}"), None), Seen::Repeat);
        assert_eq!(seq.see(&tick(20, "{}"), None), Seen::Repeat);
        assert_eq!(seq.see(&tick(20, r#"{"other":1}"#), None), Seen::Reused);
        // Remembered: the last 32, 9 to 40.
        assert_eq!(seq.see(&tick(8, "{}"), None), Seen::Older);
        assert_eq!(seq.see(&tick(9, "{}"), None), Seen::Repeat);
        // One event to two players, each copy worded for its player.
        assert_eq!(
            seq.see(&tick(41, r#"{"role":"mafia"}"#), Some("ann")),
            Seen::Next
        );
        assert_eq!(
            seq.see(&tick(41, r#"{"role":"doctor"}"#), Some("bob")),
            Seen::Repeat
        );
        assert_eq!(
            seq.see(&tick(41, r#"{"role":"police"}"#), Some("ann")),
            Seen::Reused
        );
    }
}
