//! Rooms in NATS JetStream: the record every step commits, and each room's event log.
//!
//! A room's record (its whole [`Game`], owner, epoch, id counter, the last step's events and
//! the answers to recent commands) is one KV entry, written with compare-and-set on its
//! revision. That write is the commit of a step and the fence against a stale owner: an
//! engine whose revision is no longer the latest can commit nothing, and an event is
//! published only once committed. Each step's events are then appended to the room's own
//! subject of the log stream, which answers `since` after a takeover. See
//! `docs/durability.md` for the invariants.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use proto::auth::Claims;
use proto::{RoomCode, StoreNames};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cas::{self, CasError};
use crate::outgoing::{Audience, Effects};
use crate::rules::{is_false, Game};

/// How JetStream keeps what the engine stores.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Copies of every bucket and stream (1 on one server, 3 on a cluster).
    pub replicas: usize,
    /// How long a room's record, log and lobby entry outlive their last write; at least the
    /// token lifetime, so that a closed room's code is never drawn again while a token for it
    /// is valid.
    pub retention: Duration,
    /// Steps kept per room in the log (each step holds one or more events).
    pub history: usize,
    /// Upper bound of the rooms bucket and of the log stream, in bytes; `None` leaves them
    /// bounded by the server's `max_file_store` alone.
    pub max_bytes: Option<u64>,
}

impl StoreLimits {
    /// `max_bytes` as JetStream writes it (-1: no bound of the stream's own).
    fn stream_max_bytes(&self) -> i64 {
        self.max_bytes
            .map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX))
    }
}

/// One committed event: its id, SSE name, audience and JSON data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Logged {
    pub id: u64,
    pub event: String,
    pub audience: Audience,
    pub data: Box<RawValue>,
}

/// One step's events as the log stores them.
#[derive(Serialize, Deserialize)]
struct LogEntry {
    events: Vec<Logged>,
}

/// The answer to a command that carried a `request_id`, kept so that a retry gets the same
/// reply. Kept in the fewest bytes the reply can be rebuilt from, byte for byte (every step
/// rewrites the record, and its size is what a commit costs): nothing for a plain
/// `{"ok":true}`, a police skill's answer, the claims of a seat's token (a join's, or a
/// create's that seated its creator; signed again on a retry). At most one of the two is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seat: Option<Claims>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mafia: Option<bool>,
}

/// An [`Answer`] under the request that got it: a request id is only ever looked up with its
/// actor, so it never finds another player's reply.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answered {
    /// The acting player's id; for a join `join:<the name asked for, trimmed and
    /// lowercased>`; for the create that made the room `create:room`.
    pub actor: String,
    pub request_id: String,
    #[serde(flatten)]
    pub answer: Answer,
}

/// A room as committed: everything another engine needs to carry it on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The engine that may commit the next step.
    pub owner: String,
    /// Raised by every takeover, so that a record names its owner's tenure exactly.
    pub epoch: u64,
    /// The room has ended (`room_closed` was its last event); kept as a tombstone so that its
    /// code is not drawn again. (The gateway reads this field: `proto::store::RoomStatus`.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub closed: bool,
    /// The last event id given.
    pub last_id: u64,
    /// The last step's events: committed, and re-published by whoever takes the room over,
    /// since the owner may have died before it published them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Logged>,
    /// Set when the outbox is a deadline's step committed ahead of it: that deadline (unix
    /// ms), before which nobody publishes the outbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_at: Option<u64>,
    /// The latest answers to commands that carried a `request_id`, oldest first. (Older
    /// records kept whole replies under `replies`, no longer read: a command retried across
    /// that upgrade is applied afresh.)
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub answered: VecDeque<Answered>,
    pub game: Game,
}

impl RoomRecord {
    /// Answers kept per actor: enough for a client with that many commands in flight to
    /// retry each. Every one costs a commit some 77 bytes with a UUID for request id (a
    /// join's about 170), so it is the count that keeps the record small.
    pub const ANSWERS_PER_ACTOR: usize = 4;
    /// Answers kept per room.
    pub const ANSWERS_KEPT: usize = 64;
    /// How long a join's answer is kept: long enough for a client to retry a join whose
    /// reply it lost, and no longer, since whoever sends the same name and request id gets
    /// the seat's token.
    pub const SEAT_KEPT_SECS: u64 = 120;

    pub fn new(owner: String, game: Game) -> Self {
        RoomRecord {
            owner,
            epoch: 1,
            closed: false,
            last_id: 0,
            outbox: Vec::new(),
            outbox_at: None,
            answered: VecDeque::new(),
            game,
        }
    }

    /// Whether `other` was written in this record's tenure (same owner, same epoch): only
    /// that owner writes with its epoch, so a newer such record is a write of its own.
    pub fn same_tenure(&self, other: &RoomRecord) -> bool {
        self.owner == other.owner && self.epoch == other.epoch
    }

    /// Numbers a step's events from the room's counter, marks the room closed if the step
    /// closed it, and makes the events the outbox the next commit carries.
    pub fn step(&mut self, fx: Effects) -> Vec<Logged> {
        let events: Vec<Logged> = (fx.events.into_iter())
            .map(|out| {
                self.last_id += 1;
                Logged {
                    id: self.last_id,
                    event: out.name.to_owned(),
                    audience: out.audience,
                    data: RawValue::from_string(out.data).expect("events are JSON"),
                }
            })
            .collect();
        self.closed |= fx.closed;
        if !events.is_empty() {
            self.outbox = events.clone();
            self.outbox_at = None;
        }
        events
    }

    pub fn remembered(&self, actor: &str, request_id: &str) -> Option<&Answer> {
        self.answered
            .iter()
            .find(|a| a.actor == actor && a.request_id == request_id)
            .map(|a| &a.answer)
    }

    /// Keeps an answer, dropping the actor's oldest beyond [`Self::ANSWERS_PER_ACTOR`] and
    /// the room's oldest beyond [`Self::ANSWERS_KEPT`].
    pub fn remember(&mut self, actor: String, request_id: String, answer: Answer) {
        let own = |a: &Answered| a.actor == actor;
        while self.answered.iter().filter(|a| own(a)).count() >= Self::ANSWERS_PER_ACTOR {
            let oldest = self.answered.iter().position(own).expect("counted");
            self.answered.remove(oldest);
        }
        while self.answered.len() >= Self::ANSWERS_KEPT {
            self.answered.pop_front();
        }
        self.answered.push_back(Answered {
            actor,
            request_id,
            answer,
        });
    }

    /// Drops the answers holding a seat's token (a join's, a create's) signed
    /// [`Self::SEAT_KEPT_SECS`] or more before `now_secs`.
    pub fn forget_old_seats(&mut self, now_secs: u64) {
        let fresh = |seat: &Claims| now_secs < seat.iat.saturating_add(Self::SEAT_KEPT_SECS);
        self.answered
            .retain(|a| a.answer.seat.as_ref().is_none_or(fresh));
    }
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// Another engine has written the room since we last did: we no longer own it.
    Fenced,
    /// JetStream did not take the write (an outage, a timeout): nothing was committed, as
    /// far as we know.
    Unavailable,
    /// An earlier write of ours whose ack was lost did land: the record as it stands.
    Landed(Box<RoomRecord>, u64),
}

/// The engine's handles on JetStream.
#[derive(Clone)]
pub struct Store {
    pub js: jetstream::Context,
    pub names: StoreNames,
    pub rooms: kv::Store,
    pub owners: kv::Store,
    pub engines: kv::Store,
    pub lobby: kv::Store,
    log: stream::Stream,
    /// Copies of the rooms bucket as JetStream has it (which may differ from what this
    /// engine asked for, if the bucket was there before).
    pub replicas: usize,
}

impl Store {
    /// Creates the buckets and the log stream if they are missing, so that the first engine
    /// of a deployment needs no set-up step. (Existing ones are used as they are: changing
    /// their limits is an operator's `nats stream edit`.)
    pub async fn open(
        client: async_nats::Client,
        names: StoreNames,
        limits: &StoreLimits,
    ) -> anyhow::Result<Store> {
        let js = jetstream::new(client);
        let replicas = limits.replicas;
        let max_bytes = limits.stream_max_bytes();
        // Only the rooms bucket and the log grow with the number of rooms; the other buckets
        // hold a key per engine or per listed room and need no bound of their own.
        let rooms = open_bucket(
            &js,
            names.rooms_bucket(),
            replicas,
            limits.retention,
            max_bytes,
        )
        .await?;
        let owners = open_bucket(&js, names.owners_bucket(), replicas, Duration::ZERO, -1).await?;
        // Heartbeats never expire on their own: a dead engine's key is how the others find
        // its rooms, even after a full restart; whoever takes its rooms deletes it.
        let engines =
            open_bucket(&js, names.engines_bucket(), replicas, Duration::ZERO, -1).await?;
        let lobby = open_bucket(&js, names.lobby_bucket(), replicas, limits.retention, -1).await?;
        let log = js
            .get_or_create_stream(stream::Config {
                name: names.log_stream(),
                subjects: vec![names.log_subjects()],
                max_messages_per_subject: limits.history as i64,
                max_age: limits.retention,
                max_bytes,
                max_message_size: 1024 * 1024,
                discard: stream::DiscardPolicy::Old,
                num_replicas: limits.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("JetStream: cannot open the stream {}", names.log_stream()))?;
        let replicas = rooms.stream.cached_info().config.num_replicas.max(1);
        if replicas != limits.replicas {
            tracing::warn!(
                bucket = %names.rooms_bucket(),
                has = replicas,
                asked = limits.replicas,
                "the rooms bucket exists with another number of copies; it keeps them \
                 (change them with `nats stream edit KV_{}` --replicas)",
                names.rooms_bucket()
            );
        }
        Ok(Store {
            js,
            names,
            rooms,
            owners,
            engines,
            lobby,
            log,
            replicas,
        })
    }

    /// The room's record and its revision; `None` if no such room was ever stored (or it has
    /// aged out).
    pub async fn load(&self, code: &RoomCode) -> anyhow::Result<Option<(RoomRecord, u64)>> {
        let Some(entry) = self.rooms.entry(code.as_str()).await? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value)
            .with_context(|| format!("room {code}: unreadable record"))?;
        Ok(Some((record, entry.revision)))
    }

    /// Stores a new room under a code nobody has used; `None` if the code is taken.
    pub async fn create(
        &self,
        code: &RoomCode,
        record: &RoomRecord,
    ) -> anyhow::Result<Option<u64>> {
        let value = Bytes::from(serde_json::to_vec(record)?);
        match cas::create(&self.js, &self.rooms, code.as_str(), value.clone()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(CasError::Conflict) => Ok(None),
            // No answer: the write may have landed. If the entry holds exactly what was
            // written, it did (another create's record differs: its creation time, its
            // players' random ids), and the room is ours to run.
            Err(CasError::Failed(e)) => match self.rooms.entry(code.as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    Ok((entry.value == value).then_some(entry.revision))
                }
                _ => Err(e),
            },
        }
    }

    /// Commits `record` over revision `revision` and returns the new revision. One attempt:
    /// a room whose commit fails pauses and computes its step again later (so a deadline
    /// step is timed from when it finally happens). Only this owner writes with its epoch, so
    /// a newer record with our epoch is an earlier write of ours whose ack was lost.
    pub async fn commit(
        &self,
        code: &RoomCode,
        record: &RoomRecord,
        revision: u64,
    ) -> Result<u64, CommitError> {
        let value = Bytes::from(serde_json::to_vec(record).expect("records serialise"));
        match cas::update(&self.js, &self.rooms, code.as_str(), value, revision).await {
            Ok(revision) => Ok(revision),
            Err(CasError::Conflict) => match self.load(code).await {
                Ok(Some((stored, at))) if stored.same_tenure(record) => {
                    Err(CommitError::Landed(Box::new(stored), at))
                }
                Ok(_) => Err(CommitError::Fenced),
                Err(e) => {
                    tracing::warn!(room = %code, error = %e, "reading a record back");
                    Err(CommitError::Unavailable)
                }
            },
            Err(CasError::Failed(e)) => {
                tracing::warn!(room = %code, error = %e, "commit failed");
                Err(CommitError::Unavailable)
            }
        }
    }

    /// Sends one step's events to the room's log and returns the pending ack. A repeated
    /// append (by a successor, or after a lost ack) stores the step again, and readers skip
    /// the ids they have read ([`Self::read_log`]): a message id would make it a no-op, but
    /// nats-server keeps every id of the duplicate window in memory, some 270 bytes each
    /// (docs/benchmarks.md, *Commands over NATS*), to spare a rare copy.
    pub async fn send_append(
        &self,
        code: &RoomCode,
        events: &[Logged],
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let body = Bytes::from(
            serde_json::to_vec(&LogEntry {
                events: events.to_vec(),
            })
            .expect("log entries serialise"),
        );
        let publish = PublishMessage::build().payload(body);
        self.js
            .send_publish(self.names.room_log(code), publish)
            .await
    }

    /// The last id of the room's last log message, 0 if it has none. (A stale copy of an
    /// earlier step appended last makes it lower than the log's newest id, never higher: at
    /// worst a successor publishes and appends its outbox again.)
    pub async fn last_logged_id(&self, code: &RoomCode) -> anyhow::Result<u64> {
        match self
            .log
            .get_last_raw_message_by_subject(&self.names.room_log(code))
            .await
        {
            Ok(msg) => Ok(serde_json::from_slice::<LogEntry>(&msg.payload)?
                .events
                .last()
                .map_or(0, |e| e.id)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest run of consecutive events the log holds for the room, oldest first, each id
    /// once (a step appended twice, after a lost ack or by a stale owner after its
    /// successor, is read once).
    pub async fn read_log(&self, code: &RoomCode) -> anyhow::Result<Vec<Logged>> {
        let subject = self.names.room_log(code);
        let last = match self.log.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => msg.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let reader = self
            .log
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut messages = reader.messages().await?;
        let mut events: Vec<Logged> = Vec::new();
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            let sequence = msg.info().map_err(anyhow::Error::msg)?.stream_sequence;
            let entry: LogEntry = serde_json::from_slice(&msg.payload)?;
            let after = events.last().map_or(0, |e| e.id);
            let first = entry.events.iter().map(|e| e.id).find(|&id| id > after);
            if first.is_some_and(|first| after > 0 && first > after + 1) {
                // A gap: what was read so far is a stale copy of an earlier step (appended
                // again after newer ones, which the log has since trimmed). Ids are
                // consecutive, so only the run from here on is whole.
                events.clear();
            }
            events.extend(entry.events.into_iter().filter(|e| e.id > after));
            if sequence >= last {
                break;
            }
        }
        Ok(events)
    }
}

/// Why the engine stores this many copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicasFrom {
    /// `store.replicas` is set.
    Config,
    /// The rooms bucket exists already, with this many copies: a deployment keeps one
    /// choice, whichever engine started first.
    Existing,
    /// The server the engine reached is in a cluster of this many servers (3 or more).
    Cluster(usize),
    /// A single server.
    Single,
    /// A cluster that advertises fewer than three servers (two, or none with
    /// `no_advertise`): copies would survive nothing more, so one.
    SmallCluster(usize),
}

impl std::fmt::Display for ReplicasFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicasFrom::Config => f.write_str("store.replicas"),
            ReplicasFrom::Existing => f.write_str("the existing rooms bucket"),
            ReplicasFrom::Cluster(n) => write!(f, "a NATS cluster of {n} servers"),
            ReplicasFrom::Single => f.write_str("a single NATS server"),
            ReplicasFrom::SmallCluster(n) => write!(
                f,
                "a NATS cluster that advertises {n} server(s); set store.replicas if it has more"
            ),
        }
    }
}

/// How many copies of each bucket and stream to create: `store.replicas` if set; else as
/// many as the existing rooms bucket has; else 3 if the server the client reached says it
/// is one of a cluster of three or more (its `INFO` names the cluster and lists every
/// member's client URL), else 1.
///
/// The cluster's size is read when the client connected, so an engine that reaches a
/// cluster still forming may see fewer servers than it will have: a deployment that must
/// have three copies sets `store.replicas = 3`.
pub async fn choose_replicas(
    client: &async_nats::Client,
    names: &StoreNames,
    configured: Option<usize>,
) -> anyhow::Result<(usize, ReplicasFrom)> {
    if let Some(replicas) = configured {
        return Ok((replicas, ReplicasFrom::Config));
    }
    let js = jetstream::new(client.clone());
    match js.get_stream(format!("KV_{}", names.rooms_bucket())).await {
        Ok(stream) => {
            let replicas = stream.cached_info().config.num_replicas.max(1);
            return Ok((replicas, ReplicasFrom::Existing));
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
        Err(e) => return Err(e).context("JetStream: looking for the rooms bucket"),
    }
    let info = client.server_info();
    if info.cluster.is_none() {
        return Ok((1, ReplicasFrom::Single));
    }
    // Every member's client URL, the connected one's included.
    let mut urls: Vec<&str> = info.connect_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.dedup();
    Ok(if urls.len() >= 3 {
        (3, ReplicasFrom::Cluster(urls.len()))
    } else {
        (1, ReplicasFrom::SmallCluster(urls.len()))
    })
}

/// Opens a KV bucket, creating its stream first if need be. The stream is made here, as
/// `kv::Config` would make it (but for direct get, kept to one copy: see below), because async-nats 0.51's `create_key_value` first reads the
/// account's JetStream info and cannot parse nats-server 2.9's (it lacks `reserved_memory`).
async fn open_bucket(
    js: &jetstream::Context,
    bucket: String,
    replicas: usize,
    max_age: Duration,
    max_bytes: i64,
) -> anyhow::Result<kv::Store> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes,
        max_age,
        max_message_size: 1024 * 1024,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        // Direct get lets any copy answer a read. With one copy that is the leader; with
        // several, a follower that has not yet applied the latest write answers with the
        // one before: on a three-node 2.9.10 cluster, 12 to 32 % of direct gets sent right
        // after a put's ack returned the previous value; reads from the leader
        // (`STREAM.MSG.GET`), none of 900. The engine's reads decide ownership (a takeover's
        // claim, a fenced commit, a lapsed lease's re-check), so with several copies they go
        // to the stream's leader.
        allow_direct: replicas == 1,
        // How long the ids of writes over a revision are kept (`cas`): nats-server's default,
        // written out because the fence depends on it.
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .with_context(|| format!("JetStream: cannot create the KV bucket {bucket}"))?;
    js.get_key_value(&bucket)
        .await
        .with_context(|| format!("JetStream: cannot open the KV bucket {bucket}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the engine wrote it before records left out their defaults and spelled
    /// durations in milliseconds (a room of the commands benchmark in its day).
    const RECORD_BEFORE: &str = r#"{"owner":"1nbDyXvje5tP","epoch":1,"closed":false,"last_id":24,"outbox":[{"id":24,"event":"vote","audience":"public","data":{"voter":"LYn6d4cqEHnH","target":"CNT4AUCoWkD5","tally":{"CNT4AUCoWkD5":1,"LYn6d4cqEHnH":1},"abstain":0}}],"replies":[],"game":{"code":"3KGPEB8NF3QK","settings":{"title":"bench","total":3,"mafia":1,"doctor":0,"police":0,"private":false,"durations_ms":{"day_intro":1,"notice":1,"day_per_player":3600000,"vote":null,"vote_result":null,"night_intro":null,"night":null,"ended":null}},"durations":{"day_intro":{"secs":0,"nanos":1000000},"notice":{"secs":0,"nanos":1000000},"day_per_player":{"secs":3600,"nanos":0},"vote":{"secs":10,"nanos":0},"vote_result":{"secs":3,"nanos":0},"night_intro":{"secs":3,"nanos":0},"night":{"secs":40,"nanos":0},"ended":{"secs":30,"nanos":0}},"players":[{"id":"CNT4AUCoWkD5","name":"p0","role":"citizen","alive":true,"left":false},{"id":"LYn6d4cqEHnH","name":"p1","role":"citizen","alive":true,"left":false},{"id":"ocSoV3fFPi9Y","name":"p2","role":"mafia","alive":true,"left":false}],"host":"CNT4AUCoWkD5","phase":"day","round":1,"deadline_ms":1796053999325,"ends_at":1796053999325,"votes":{"CNT4AUCoWkD5":"LYn6d4cqEHnH","LYn6d4cqEHnH":"CNT4AUCoWkD5"},"mafia_pick":null,"protect":{},"investigations":[],"deaths":[],"chat":[],"winner":null,"active_round":1}}"#;

    #[test]
    fn records_written_before_read_and_are_rewritten_smaller() {
        let record: RoomRecord =
            serde_json::from_str(RECORD_BEFORE).expect("an older record reads");
        let compact = serde_json::to_string(&record).unwrap();
        // Durations in milliseconds, and nothing that is false, empty or absent.
        assert!(
            compact.contains(
                r#""durations":{"day_intro":1,"notice":1,"day_per_player":3600000,"vote":10000,"#
            ),
            "{compact}"
        );
        for gone in ["null", "[]", "{}", "false", "durations_ms", "secs"] {
            assert!(!compact.contains(gone), "{gone} in {compact}");
        }
        assert!(
            compact.len() * 3 < RECORD_BEFORE.len() * 2,
            "{} bytes: {compact}",
            compact.len()
        );
        // The compact record reads back to itself, and keeps the game's state.
        let again: RoomRecord = serde_json::from_str(&compact).unwrap();
        assert_eq!(serde_json::to_string(&again).unwrap(), compact);
        assert_eq!(again.last_id, 24);
        assert_eq!(again.game.deadline_ms(), 1_796_053_999_325);
        assert_eq!(again.outbox.len(), 1);
        // The gateway's reading of a room's status.
        let status: proto::store::RoomStatus = serde_json::from_str(&compact).unwrap();
        assert!(!status.closed);
    }

    /// The answer to Ann's join, her token issued at `iat`.
    fn ann_joined(iat: u64) -> Answer {
        let seat = Claims {
            sub: proto::PlayerId::parse("CNT4AUCoWkD5").unwrap(),
            room: RoomCode::parse("3KGPEB8NF3QK").unwrap(),
            name: "Ann".to_owned(),
            iat,
            exp: iat + 86_400,
        };
        Answer {
            seat: Some(seat),
            mafia: None,
        }
    }

    #[test]
    fn answers_are_kept_per_actor_and_per_room() {
        let record: RoomRecord = serde_json::from_str(RECORD_BEFORE).unwrap();
        let mut record = RoomRecord::new(record.owner, record.game);
        let joined = ann_joined(1_796_000_000);
        record.remember("join:ann".into(), "j1".into(), joined.clone());
        for n in 0..=RoomRecord::ANSWERS_PER_ACTOR {
            record.remember("CNT4AUCoWkD5".into(), format!("c{n}"), Answer::default());
        }
        assert_eq!(record.remembered("join:ann", "j1"), Some(&joined));
        assert_eq!(
            record.remembered("CNT4AUCoWkD5", "c0"),
            None,
            "the actor's oldest made room for its newest"
        );
        for n in 1..=RoomRecord::ANSWERS_PER_ACTOR {
            let kept = record.remembered("CNT4AUCoWkD5", &format!("c{n}"));
            assert_eq!(kept, Some(&Answer::default()), "c{n}");
        }
        assert_eq!(
            record.remembered("LYn6d4cqEHnH", "c1"),
            None,
            "a request id is found only with its actor"
        );
        // A plain answer is its actor and request id alone; the record reads back the same.
        let stored = serde_json::to_string(&record).unwrap();
        assert!(
            stored.contains(r#"{"actor":"CNT4AUCoWkD5","request_id":"c1"},"#),
            "{stored}"
        );
        let again: RoomRecord = serde_json::from_str(&stored).unwrap();
        assert_eq!(again.remembered("join:ann", "j1"), Some(&joined));
        // Many actors: the room keeps its latest answers only.
        for n in 0..RoomRecord::ANSWERS_KEPT {
            record.remember(format!("player{n}"), "r".into(), Answer::default());
        }
        assert_eq!(record.answered.len(), RoomRecord::ANSWERS_KEPT);
        assert_eq!(record.remembered("join:ann", "j1"), None);
        assert!(record.remembered("player0", "r").is_some());
    }

    #[test]
    fn a_join_s_answer_is_kept_for_a_while_only() {
        let record: RoomRecord = serde_json::from_str(RECORD_BEFORE).unwrap();
        let mut record = RoomRecord::new(record.owner, record.game);
        let iat = 1_796_000_000;
        let joined = ann_joined(iat);
        let police = Answer {
            seat: None,
            mafia: Some(true),
        };
        record.remember("join:ann".into(), "j1".into(), joined.clone());
        record.remember("CNT4AUCoWkD5".into(), "s1".into(), police.clone());
        record.forget_old_seats(iat + RoomRecord::SEAT_KEPT_SECS - 1);
        assert_eq!(record.remembered("join:ann", "j1"), Some(&joined));
        record.forget_old_seats(iat + RoomRecord::SEAT_KEPT_SECS);
        assert_eq!(record.remembered("join:ann", "j1"), None, "the token goes");
        assert_eq!(
            record.remembered("CNT4AUCoWkD5", "s1"),
            Some(&police),
            "other answers stay"
        );
    }
}
