//! The public lobby, one for every engine: open public rooms kept in a JetStream KV bucket,
//! whose revisions are the lobby's event ids.
//!
//! The room that owns a listing writes it ([`Listing`]); every engine watches the bucket in
//! revision order, keeps the list and answers `game.lobby.snap` (in a queue group, so each
//! request costs one engine). One engine publishes each change as `room_opened` /
//! `room_updated` / `room_closed` with `Sse-Id` = its revision: the first live engine by id
//! (`ownership` says which, [`Context::lobby_publisher`]), so that an id goes out once. Every
//! engine follows what is published; one that becomes the publisher (the previous one died or
//! left) first publishes what it has not seen go out, from the bucket and its history. An
//! engine takes what the bucket held when it started as published. So ids rise across engines
//! and restarts, and a lobby stream outlives any engine. While engines disagree on who is
//! alive (for about a lease after one dies or a paused one wakes) two may publish: the same id
//! with the same bytes, both from the same bucket entry, which gateways deliver once.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Entry, Operation};
use async_nats::{Message, Subscriber};
use futures::StreamExt;
use proto::command::decode_request;
use proto::event::RoomEvent;
use proto::lobby::{
    LobbyPhase, LobbyRoom, LobbyRoomClosed, LobbySnapshot, RoomOpened, RoomUpdated,
};
use proto::{Reply, RoomCode, SnapReply, SnapRequest};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cas;
use crate::context::Context;
use crate::history::History;
use crate::outgoing::Audience;
use crate::publish;
use crate::store::Logged;

/// Most rooms a lobby snapshot lists (about 100 KiB of JSON).
pub const MAX_LISTED: usize = 1000;

/// The most a new lobby publisher spends re-reading the bucket for what its history lacks.
const TAKEOVER_READ_LIMIT: Duration = Duration::from_secs(10);

/// How often the lobby asks the bucket's stream where it ends, in case it went back while
/// this engine wrote nothing to it.
const END_CHECK: Duration = Duration::from_secs(5);

/// How far the lobby has read the bucket: what its rooms' lobby writes are checked against.
/// A write is stored above everything already in the bucket, so a write acknowledged at a
/// revision the lobby read as another entry shows that the bucket lost that entry. The
/// revision alone proves nothing: the watch often delivers a write before the writer has
/// its acknowledgement (two subscriptions, two tasks), and a check of the revision alone took
/// the engine's own writes for losses, reading the whole lobby again dozens of times a minute.
#[derive(Debug, Default)]
pub struct LobbyMark {
    /// Counts the lobby's fresh starts: a write checked against an earlier one's reading is
    /// not evidence against the current one.
    generation: u64,
    /// The last [`RECENT_READS`] revisions read in this generation, oldest first, with what
    /// each held.
    recent: VecDeque<(u64, u64)>,
    /// The generation a write found behind the bucket.
    went_back: Option<u64>,
}

/// Revisions a [`LobbyMark`] remembers: far more than can come between a write's storing and
/// its acknowledgement reaching the writer.
const RECENT_READS: usize = 1024;

impl LobbyMark {
    /// Notes that the lobby read `revision`, holding the entry of `fingerprint`.
    fn read(&mut self, revision: u64, fingerprint: u64) {
        if self.recent.len() == RECENT_READS {
            self.recent.pop_front();
        }
        self.recent.push_back((revision, fingerprint));
    }

    /// Notes a lobby write of `fingerprint` acknowledged at `revision`; true if it shows the
    /// bucket went back: the lobby read something else at that revision. (A revision read
    /// too long ago to remember proves nothing either way; the lobby's periodic look at where
    /// the bucket ends covers that case.)
    fn written(&mut self, revision: u64, fingerprint: u64) -> bool {
        let behind = (self.recent.binary_search_by_key(&revision, |&(r, _)| r))
            .is_ok_and(|i| self.recent[i].1 != fingerprint);
        if behind {
            self.went_back = Some(self.generation);
        }
        behind
    }

    /// Whether a write found this generation behind (and forgets it).
    fn went_back(&mut self) -> bool {
        self.went_back.take() == Some(self.generation)
    }

    fn start_again(&mut self) {
        self.generation += 1;
        self.recent.clear();
        self.went_back = None;
    }
}

/// What identifies a lobby entry's content: its key and value (empty for a removal).
fn fingerprint(key: &str, value: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (key, value).hash(&mut hasher);
    hasher.finish()
}

fn lock(mark: &Mutex<LobbyMark>) -> MutexGuard<'_, LobbyMark> {
    // Each change is a few assignments: a panic elsewhere while holding it leaves nothing
    // half-written.
    mark.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A room's entry in the lobby bucket: the listing and the event that announces it.
#[derive(Serialize, Deserialize)]
struct Listed {
    event: String,
    room: LobbyRoom,
}

/// What the lobby bucket holds for one room, as its owner last wrote or read it.
#[derive(Debug, Default)]
pub struct Listing {
    room: Option<LobbyRoom>,
    revision: Option<u64>,
}

impl Listing {
    /// Reads the room's current entry (after a takeover, another engine may have written it).
    pub async fn read(ctx: &Context, code: &RoomCode) -> Listing {
        match ctx.store.lobby.entry(code.as_str()).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => Listing {
                room: serde_json::from_slice::<Listed>(&entry.value)
                    .ok()
                    .map(|l| l.room),
                revision: Some(entry.revision),
            },
            Ok(_) => Listing::default(),
            Err(e) => {
                tracing::warn!(room = %code, error = %e, "cannot read the room's lobby entry");
                Listing::default()
            }
        }
    }

    /// Writes `room` (or removes the entry, for `None`) if it differs from what is there.
    /// Compare-and-set on the entry's revision, so a stale owner cannot undo a newer listing;
    /// a write that fails is retried at the room's next step, from a fresh read.
    pub async fn update(&mut self, ctx: &Context, code: &RoomCode, room: Option<LobbyRoom>) {
        if room == self.room {
            return;
        }
        let (js, lobby) = (&ctx.store.js, &ctx.store.lobby);
        let key = code.as_str();
        let mut value = bytes::Bytes::new();
        let written = match (&room, self.revision) {
            (Some(room), None) => {
                value = listed(RoomOpened::NAME, room);
                cas::create(js, lobby, key, value.clone()).await.map(Some)
            }
            (Some(room), Some(revision)) => {
                value = listed(RoomUpdated::NAME, room);
                (cas::update(js, lobby, key, value.clone(), revision).await).map(Some)
            }
            (None, Some(revision)) => cas::delete(js, lobby, key, revision).await.map(|_| None),
            (None, None) => Ok(None),
        };
        match written {
            Ok(revision) => {
                if let Some(revision) = revision {
                    if lock(&ctx.lobby_mark).written(revision, fingerprint(key, &value)) {
                        ctx.lobby_went_back.notify_one();
                    }
                }
                self.room = room;
                self.revision = revision;
            }
            Err(e) => {
                tracing::warn!(room = %code, error = %e, "lobby entry not written");
                *self = Listing::read(ctx, code).await;
            }
        }
    }
}

/// A change of the lobby bucket as its lobby event (the revision is the id), with the room's
/// listing after it (`None`: no longer listed); `None` for an entry that is no room's.
fn lobby_event(entry: &Entry) -> Option<(RoomCode, Logged, Option<LobbyRoom>)> {
    let code = RoomCode::parse(&entry.key).ok()?;
    let (event, data, listed) = match entry.operation {
        Operation::Put => {
            let Ok(listed) = serde_json::from_slice::<Listed>(&entry.value) else {
                tracing::warn!(room = %code, "unreadable lobby entry");
                return None;
            };
            let data = serde_json::to_string(&listed.room).expect("rooms serialise");
            (listed.event, data, Some(listed.room))
        }
        Operation::Delete | Operation::Purge => {
            let closed = LobbyRoomClosed { code: code.clone() };
            let data = serde_json::to_string(&closed).expect("events serialise");
            (LobbyRoomClosed::NAME.to_owned(), data, None)
        }
    };
    let event = Logged {
        id: entry.revision,
        event,
        audience: Audience::Public,
        data: RawValue::from_string(data).expect("JSON"),
    };
    Some((code, event, listed))
}

/// Where the lobby bucket's stream ends now (its last sequence: the last revision given);
/// `None` if JetStream does not say.
async fn bucket_last(ctx: &Context) -> Option<u64> {
    let info = ctx.store.lobby.stream.get_info().await.ok()?;
    Some(info.state.last_sequence)
}

fn listed(event: &str, room: &LobbyRoom) -> bytes::Bytes {
    serde_json::to_vec(&Listed {
        event: event.to_owned(),
        room: room.clone(),
    })
    .expect("listings serialise")
    .into()
}

/// One engine's view of the lobby bucket.
pub struct Lobby {
    ctx: Arc<Context>,
    rooms: BTreeMap<RoomCode, LobbyRoom>,
    history: History,
    /// The last snapshot served and the id it was built at: a storm of new lobby streams
    /// between two changes costs one serialisation.
    snapshot: Option<(u64, String)>,
    /// The highest id seen published, by whichever engine: where this one takes over when
    /// it becomes the publisher.
    published: u64,
    /// Whether this engine publishes the lobby's events now; changes only once a takeover
    /// has published what was missed (see [`Lobby::take_over_publishing`]).
    publishing: bool,
}

impl Lobby {
    /// `published`: where the lobby bucket ended before this engine could be seen alive. What
    /// it held then went out before (or was lost with an engine that died first), and is not
    /// published again with ids far below those already out.
    pub fn new(ctx: Arc<Context>, published: u64) -> Self {
        let history = History::after(ctx.history, 0);
        Lobby {
            ctx,
            rooms: BTreeMap::new(),
            history,
            snapshot: None,
            published,
            publishing: false,
        }
    }

    /// Where the lobby bucket ends now, asked until JetStream answers (or the engine stops).
    pub async fn bucket_end(ctx: &Context) -> u64 {
        loop {
            if let Some(last) = bucket_last(ctx).await {
                return last;
            }
            tracing::warn!("cannot read where the lobby bucket ends");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = ctx.shutdown.cancelled() => return 0,
            }
        }
    }

    /// Follows the bucket and answers snapshots until the engine shuts down; `published` is
    /// a subscription to the lobby's events.
    pub async fn run(mut self, mut snaps: Subscriber, mut published: Subscriber) {
        let shutdown = self.ctx.shutdown.clone();
        let ctx = self.ctx.clone();
        let mut publisher = ctx.lobby_publisher.subscribe();
        // Ownership may have made this engine the publisher already.
        publisher.mark_changed();
        let mut changes = None;
        let mut end_checks = tokio::time::interval(END_CHECK);
        end_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let Some(watch) = &mut changes else {
                // (Re)start the watch after the last revision seen: at once when the bucket is
                // reachable, else after a pause.
                match self.watch().await {
                    Ok(watch) => changes = Some(watch),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the lobby bucket");
                        tokio::select! {
                            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            () = shutdown.cancelled() => break,
                        }
                    }
                }
                continue;
            };
            tokio::select! {
                change = watch.next() => match change {
                    Some(Ok(entry)) => self.on_change(entry).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "lobby watch"),
                    None => changes = None,
                },
                Some(msg) = snaps.next() => self.on_snap(msg).await,
                Some(msg) = published.next() => if let Some(id) = publish::event_id(&msg) {
                    self.published = self.published.max(id);
                },
                Ok(()) = publisher.changed() => {
                    let first = *publisher.borrow_and_update();
                    if first && !self.publishing {
                        self.take_over_publishing().await;
                    }
                    self.publishing = first;
                },
                () = ctx.lobby_went_back.notified() => if lock(&ctx.lobby_mark).went_back() {
                    self.start_again("a lobby write was acknowledged at a revision read as another entry");
                    changes = None;
                },
                _ = end_checks.tick() => if self.bucket_ends_below().await {
                    self.start_again("the lobby bucket ends below a revision already seen");
                    changes = None;
                },
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Whether the bucket's stream now ends below the last revision seen: it lost writes it
    /// had acknowledged (nats-server 2.9.10 has done so on a cluster whose stream leaders
    /// were stopped again and again: docs/durability.md), and now gives their revisions to
    /// other writes.
    async fn bucket_ends_below(&self) -> bool {
        let last = self.history.last_id();
        if last == 0 {
            return false;
        }
        bucket_last(&self.ctx).await.is_some_and(|end| end < last)
    }

    /// Forgets the lobby and reads it again from the bucket, publishing every listing with
    /// its revision as it comes: revisions this engine had seen may now hold other listings,
    /// and a lobby that skipped them would stay wrong. Gateways see the ids go back and send
    /// their lobby streams to a fresh snapshot.
    fn start_again(&mut self, why: &str) {
        tracing::warn!(
            last = self.history.last_id(),
            "{why}: reading the lobby again"
        );
        metrics::counter!(crate::metrics::LOBBY_RESTARTS).increment(1);
        self.rooms.clear();
        self.history = History::after(self.ctx.history, 0);
        self.snapshot = None;
        self.published = 0;
        lock(&self.ctx.lobby_mark).start_again();
    }

    async fn watch(&self) -> Result<kv::Watch, kv::WatchError> {
        match self.history.last_id() {
            // Every listing there is first, then each change.
            0 => self.ctx.store.lobby.watch_with_history(">").await,
            last => self.ctx.store.lobby.watch_all_from_revision(last + 1).await,
        }
    }

    /// One change of the bucket becomes one lobby event, published with the revision as id.
    async fn on_change(&mut self, entry: Entry) {
        if entry.revision <= self.history.last_id() {
            return;
        }
        let Some((code, event, listed)) = lobby_event(&entry) else {
            return;
        };
        match listed {
            Some(room) => self.rooms.insert(code, room),
            None => self.rooms.remove(&code),
        };
        if self.publishing && event.id > self.published {
            publish::send(&self.ctx, self.ctx.subjects.lobby_events(), &event).await;
            self.published = event.id;
        }
        self.history.record(event);
        let read = fingerprint(&entry.key, &entry.value);
        lock(&self.ctx.lobby_mark).read(entry.revision, read);
    }

    /// This engine has become the lobby's publisher: it first publishes what it has not seen
    /// go out (the previous publisher may have died first), in id order: from the bucket what
    /// is older than its history holds (the latest listing of each room: enough for a lobby
    /// to converge), then from its history.
    async fn take_over_publishing(&mut self) {
        let subject = self.ctx.subjects.lobby_events();
        let held_after = self.history.held_after();
        if self.published < held_after {
            let from_bucket = async {
                let mut entries = (self.ctx.store.lobby)
                    .watch_all_from_revision(self.published + 1)
                    .await?;
                while let Some(entry) = entries.next().await.transpose()? {
                    if entry.revision > held_after {
                        break;
                    }
                    if let Some((_, event, _)) = lobby_event(&entry) {
                        publish::send(&self.ctx, subject.clone(), &event).await;
                    }
                    if entry.delta == 0 {
                        break;
                    }
                }
                anyhow::Ok(())
            };
            match tokio::time::timeout(TAKEOVER_READ_LIMIT, from_bucket).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "lobby takeover: reading the bucket"),
                Err(_) => tracing::warn!("lobby takeover: reading the bucket took too long"),
            }
        }
        let missed: Vec<Logged> = self.history.after_id(self.published).cloned().collect();
        for event in &missed {
            publish::send(&self.ctx, subject.clone(), event).await;
        }
        self.published = self.published.max(self.history.last_id());
    }

    async fn on_snap(&mut self, msg: Message) {
        let Some(reply_to) = msg.reply else { return };
        let last = self.history.last_id();
        let (rooms, cache) = (&self.rooms, &mut self.snapshot);
        let reply = decode_request::<SnapRequest>(&msg.payload).map(|req| {
            self.history.reply(None, req.since, || {
                if let Some((_, json)) = cache.as_ref().filter(|(at, _)| *at == last) {
                    return json.clone();
                }
                // Open rooms first, and a bounded list: a snapshot must fit in one NATS
                // message (1 MiB by default), and nobody scrolls past the first thousand.
                let waiting = rooms.values().filter(|r| r.phase == LobbyPhase::Waiting);
                let others = rooms.values().filter(|r| r.phase != LobbyPhase::Waiting);
                let snapshot = LobbySnapshot {
                    rooms: waiting.chain(others).take(MAX_LISTED).cloned().collect(),
                };
                let json = serde_json::to_string(&snapshot).expect("snapshots serialise");
                *cache = Some((last, json.clone()));
                json
            })
        });
        let body = Reply::<SnapReply>::from(reply).to_bytes();
        self.ctx.reply(reply_to, body, "a lobby snapshot").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_own_write_read_before_its_ack_is_not_a_loss() {
        let mut mark = LobbyMark::default();
        let ours = fingerprint("7QK3M9XRT2VA", b"listing");
        mark.read(41, fingerprint("AAAABBBBCCCC", b"other"));
        mark.read(42, ours);
        mark.read(43, fingerprint("AAAABBBBCCCC", b"later"));
        assert!(!mark.written(42, ours), "the watch saw our write first");
        assert!(!mark.written(44, ours), "above everything read");
        assert!(!mark.went_back());
    }

    #[test]
    fn a_write_acked_at_a_revision_read_as_another_entry_is_a_loss() {
        let mut mark = LobbyMark::default();
        mark.read(42, fingerprint("AAAABBBBCCCC", b"listing"));
        assert!(mark.written(42, fingerprint("7QK3M9XRT2VA", b"listing")));
        assert!(mark.went_back());
        // Once read again from scratch, the old readings are no evidence.
        mark.start_again();
        assert!(!mark.written(42, fingerprint("7QK3M9XRT2VA", b"listing")));
    }

    #[test]
    fn a_revision_too_old_to_remember_proves_nothing() {
        let mut mark = LobbyMark::default();
        for revision in 1..=(RECENT_READS as u64 + 10) {
            mark.read(
                revision,
                fingerprint("AAAABBBBCCCC", &revision.to_be_bytes()),
            );
        }
        assert!(!mark.written(5, fingerprint("7QK3M9XRT2VA", b"listing")));
        assert!(mark.written(500, fingerprint("7QK3M9XRT2VA", b"listing")));
    }
}
