//! Which engine runs which room, and taking over the rooms of an engine that died or left.
//!
//! Each engine puts its heartbeat in the engines bucket every quarter of the lease and
//! watches everyone else's. An engine whose heartbeat has not changed for a lease (measured
//! on the watcher's own clock, so no clocks need agree), or whose last heartbeat says
//! `leaving` (SIGTERM), is gone: the others list its rooms in the owners index and claim them,
//! each first the rooms that rendezvous hashing gives it, then after another lease any left
//! over. Silence counts only while this engine's own heartbeats have been coming back through
//! its watch for a lease without a gap: when the heartbeat bucket itself fails (its leader is
//! being elected, which takes longer than a lease on nats-server 2.9, or the watch stalls),
//! every engine falls silent at once and none is judged gone. A claim is a compare-and-set of the room's record to the new owner and the next
//! epoch; whoever loses the race moves on. Correctness never rests on the lease: the commit's
//! compare-and-set fences a stale owner whatever the clocks say. See `docs/durability.md`.
//!
//! The same view of who is alive names the engine that publishes the lobby's events: the
//! first live one by id ([`Context::lobby_publisher`], used by `lobby`).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation};
use futures::{StreamExt, TryStreamExt};
use metrics::counter;
use proto::RoomCode;
use tokio::time::Instant;

use crate::cas::{self, CasError};
use crate::context::Context;
use crate::metrics as m;
use crate::room::Room;

/// A heartbeat's value while the engine runs.
const ALIVE: &str = "alive";
/// The last heartbeat of an engine that stopped on purpose: take its rooms now.
const LEAVING: &str = "leaving";
/// Rooms claimed at once: enough to take 10,000 rooms in seconds, few enough not to flood
/// JetStream. A claim is a few round trips to JetStream, so this, not CPU, bounds the pace:
/// 10,000 rooms of one engine all fired on a survivor within 3.7–4.6 s of a kill -9 at 512
/// on a quiet machine (7.3–8.4 s on a slower day; lease 3 s), 8.6 s at 256, 13.6 s at 64
/// (`bench/src/bin/takeover.rs`, docs/benchmarks.md, "Takeover after kill -9").
const CLAIMS_IN_FLIGHT: usize = 512;

/// What this engine knows of another.
struct Peer {
    /// When its heartbeat last changed, on our clock.
    seen: Instant,
    revision: u64,
    leaving: bool,
}

/// Our own heartbeats as the watch returns them: the proof that the watch shows beats.
struct OwnBeats {
    /// When the last one came back.
    last: Instant,
    /// When the current run without a gap began.
    run_since: Instant,
}

/// What this engine knows of the heartbeats, its own included.
#[derive(Default)]
struct Known {
    peers: HashMap<String, Peer>,
    own: Option<OwnBeats>,
}

impl Known {
    /// A gap in our own beats longer than this (two missed) breaks the run.
    fn gap(lease: Duration) -> Duration {
        lease / 2
    }

    /// Whether another engine's silence means anything: our own beats have come back
    /// without a gap for at least a lease, so the others' would have too.
    fn trusted(&self, lease: Duration) -> bool {
        self.own.as_ref().is_some_and(|own| {
            own.last.elapsed() <= Self::gap(lease) && own.run_since.elapsed() >= lease
        })
    }

    fn own_beat(&mut self, lease: Duration) {
        let now = Instant::now();
        match &mut self.own {
            Some(own) if now - own.last <= Self::gap(lease) => own.last = now,
            _ => {
                self.own = Some(OwnBeats {
                    last: now,
                    run_since: now,
                })
            }
        }
    }
}

type Peers = Arc<Mutex<Known>>;

/// Runs the heartbeat, the watch over other engines and the takeovers, until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let peers: Peers = Arc::default();
    // A previous life of this very engine id (a restart with a fixed `engine.id`) left rooms
    // that nobody else will see as orphaned.
    adopt(&ctx, &peers, ctx.engine_id.clone(), None).await;
    tokio::join!(heartbeat(&ctx), watch(&ctx, &peers));
}

/// Puts this engine's heartbeat every quarter lease. A beat that comes after more than a
/// lease (the process was paused, or NATS unreachable) means others may have taken rooms:
/// every room re-checks its record.
async fn heartbeat(ctx: &Context) {
    let mut ticks = tokio::time::interval(ctx.lease / 4);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = ctx.shutdown.cancelled() => return,
        }
        // The lease runs from when the beat was sent: the others may have seen it since.
        let sent = Instant::now();
        match ctx.store.engines.put(&ctx.engine_id, ALIVE.into()).await {
            Ok(_) => {
                if ctx.lease_lapsed() {
                    tracing::warn!("heartbeat lapsed beyond the lease; rooms re-check ownership");
                    ctx.recheck.send_modify(|n| *n += 1);
                }
                *ctx.last_beat.lock().expect("heartbeat lock") = Some(sent);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
        }
    }
}

/// Marks this engine as leaving, once its rooms have stopped: the others take them at once.
pub async fn hand_over(ctx: &Context) {
    if let Err(e) = ctx.store.engines.put(&ctx.engine_id, LEAVING.into()).await {
        tracing::warn!(error = %e, "could not announce the handover; rooms move after the lease");
    }
}

/// Follows every engine's heartbeat and starts a takeover for each engine that is gone.
async fn watch(ctx: &Arc<Context>, peers: &Peers) {
    let mut adopting: HashSet<String> = HashSet::new();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut ticks = tokio::time::interval(ctx.lease / 4);
    let mut beats = None;
    let mut caught_up = false;
    loop {
        let Some(watch) = &mut beats else {
            // The last heartbeat of every engine first (a dead one's too), then each new one.
            match ctx.store.engines.watch_with_history(">").await {
                Ok(watch) => beats = Some(watch),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch heartbeats");
                    tokio::select! {
                        () = tokio::time::sleep(ctx.lease / 4) => {}
                        () = ctx.shutdown.cancelled() => return,
                    }
                }
            }
            continue;
        };
        tokio::select! {
            beat = watch.next() => match beat {
                Some(Ok(entry)) => {
                    // Only once every heartbeat there was has been read does this engine
                    // know who else is alive.
                    caught_up |= entry.seen_current;
                    note(ctx, peers, entry);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "heartbeat watch"),
                None => beats = None,
            },
            _ = ticks.tick() => {}
            Some(engine) = done.recv() => { adopting.remove(&engine); }
            () = ctx.shutdown.cancelled() => return,
        }
        if caught_up {
            let first = alive(ctx, peers).into_iter().min() == Some(ctx.engine_id.clone());
            ctx.lobby_publisher
                .send_if_modified(|publishes| std::mem::replace(publishes, first) != first);
        }
        for (engine, revision) in gone(ctx, peers) {
            if adopting.insert(engine.clone()) {
                tracing::info!(engine = %engine, "engine gone; taking its rooms over");
                let (ctx, peers, done_tx) = (ctx.clone(), peers.clone(), done_tx.clone());
                tokio::spawn(async move {
                    adopt(&ctx, &peers, engine.clone(), Some(revision)).await;
                    let _ = done_tx.send(engine);
                });
            }
        }
    }
}

fn note(ctx: &Context, peers: &Peers, entry: Entry) {
    let mut known = peers.lock().expect("peers lock");
    if entry.key == ctx.engine_id {
        if entry.operation == Operation::Put {
            known.own_beat(ctx.lease);
        }
        return;
    }
    let peers = &mut known.peers;
    match entry.operation {
        Operation::Put => {
            peers.insert(
                entry.key,
                Peer {
                    seen: Instant::now(),
                    revision: entry.revision,
                    leaving: entry.value.as_ref() == LEAVING.as_bytes(),
                },
            );
        }
        Operation::Delete | Operation::Purge => {
            peers.remove(&entry.key);
        }
    }
}

/// Engines that left, or whose heartbeat is older than the lease while ours are seen (see
/// [`Known::trusted`]), with their last revision.
fn gone(ctx: &Context, peers: &Peers) -> Vec<(String, u64)> {
    let known = peers.lock().expect("peers lock");
    let trusted = known.trusted(ctx.lease);
    known
        .peers
        .iter()
        .filter(|(_, p)| p.leaving || (trusted && p.seen.elapsed() > ctx.lease))
        .map(|(id, p)| (id.clone(), p.revision))
        .collect()
}

/// Whether engine `id`, gone at heartbeat `revision`, has beaten since (and is not leaving):
/// it is alive after all, and keeps the rooms not yet claimed. Only that stops a takeover
/// once begun. Not our own heartbeats lapsing: a takeover of thousands of rooms loads this
/// engine and JetStream enough to delay them, and the claims' compare-and-set, not the
/// lease, is what keeps a room to one owner.
fn beat_again(peers: &Peers, id: &str, revision: u64) -> bool {
    let known = peers.lock().expect("peers lock");
    known
        .peers
        .get(id)
        .is_some_and(|peer| peer.revision != revision && !peer.leaving)
}

/// The engines alive now, this one included.
fn alive(ctx: &Context, peers: &Peers) -> Vec<String> {
    let known = peers.lock().expect("peers lock");
    let mut ids: Vec<String> = known
        .peers
        .iter()
        .filter(|(_, p)| !p.leaving && p.seen.elapsed() <= ctx.lease)
        .map(|(id, _)| id.clone())
        .collect();
    ids.push(ctx.engine_id.clone());
    ids
}

/// Takes over the rooms of engine `from`: first those rendezvous hashing gives this engine,
/// then, a lease later, any that no one else took. Ends when `from` owns no room, deleting
/// its heartbeat (unless it beat again meanwhile: then it is alive, and keeps the rest).
async fn adopt(ctx: &Arc<Context>, peers: &Peers, from: String, revision: Option<u64>) {
    let prefix = format!("{from}.");
    let mut round = 0;
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        let codes: Vec<RoomCode> = match ctx.store.owners.keys().await {
            Ok(keys) => match keys.try_collect::<Vec<String>>().await {
                Ok(keys) => keys
                    .iter()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .filter_map(|code| RoomCode::parse(code).ok())
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list rooms to take over");
                    Vec::new()
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot list rooms to take over");
                Vec::new()
            }
        };
        if codes.is_empty() && round > 0 {
            if let Some(revision) = revision {
                let _ = cas::delete(&ctx.store.js, &ctx.store.engines, &from, revision).await;
            }
            return;
        }
        if let Some(revision) = revision.filter(|_| from != ctx.engine_id) {
            if beat_again(peers, &from, revision) {
                return;
            }
        }
        let live = alive(ctx, peers);
        let mine: Vec<RoomCode> = codes
            .into_iter()
            .filter(|code| {
                round > 0 || from == ctx.engine_id || winner(code, &live) == ctx.engine_id
            })
            .collect();
        if !mine.is_empty() {
            tracing::info!(engine = %from, rooms = mine.len(), "taking rooms over");
        }
        futures::stream::iter(mine)
            .for_each_concurrent(CLAIMS_IN_FLIGHT, |code| claim(ctx, &from, code))
            .await;
        if from == ctx.engine_id {
            return;
        }
        round += 1;
        tokio::select! {
            () = tokio::time::sleep(if round == 1 { ctx.lease } else { ctx.lease / 4 }) => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// Claims one room of engine `from`: the index first (so the room is never unlisted), then
/// the record by compare-and-set, then it runs here.
async fn claim(ctx: &Arc<Context>, from: &str, code: RoomCode) {
    let store = &ctx.store;
    let old_index = format!("{from}.{code}");
    let record = match store.load(&code).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(room = %code, error = %e, "cannot read a room to take over");
            return;
        }
    };
    let Some((mut record, revision)) = record.filter(|(r, _)| !r.closed && r.owner == from) else {
        // Closed, gone, or someone else's already: the index entry is stale.
        if from != ctx.engine_id {
            let _ = store.owners.delete(&old_index).await;
        }
        return;
    };
    let new_index = format!("{}.{code}", ctx.engine_id);
    if let Err(e) = store.owners.put(&new_index, bytes::Bytes::new()).await {
        tracing::warn!(room = %code, error = %e, "cannot index a room to take over");
        return;
    }
    record.owner = ctx.engine_id.clone();
    record.epoch += 1;
    let value = serde_json::to_vec(&record).expect("records serialise");
    let claimed = match cas::update(
        &store.js,
        &store.rooms,
        code.as_str(),
        value.into(),
        revision,
    )
    .await
    {
        // No answer (a timeout under load, a leader election): the write may have landed
        // all the same, and then nobody else will ever claim the room, because it names us.
        // The record says which.
        Err(CasError::Failed(e)) => match landed(ctx, &code, &record).await {
            Some(Some(revision)) => Ok(revision),
            Some(None) => Err(CasError::Failed(e)),
            None => {
                // Keeps both index entries: see `landed`.
                tracing::error!(room = %code, error = %e, "claim unanswered and unreadable");
                return;
            }
        },
        written => written,
    };
    match claimed {
        Ok(revision) => {
            if from != ctx.engine_id {
                let _ = store.owners.delete(&old_index).await;
            }
            counter!(m::ROOMS_TAKEN_OVER).increment(1);
            if let Err(e) = Room::start(ctx, record, revision, true).await {
                tracing::error!(room = %code, error = %e, "cannot subscribe a room taken over");
            }
        }
        Err(e) => {
            tracing::info!(room = %code, error = %e, "another engine took the room first");
            let _ = store.owners.delete(&new_index).await;
        }
    }
}

/// After a claim that got no answer: `Some(Some(revision))` if the record names this engine
/// with the claim's epoch (the claim landed), `Some(None)` if it does not, `None` if it cannot
/// be read (asked a few times, as the store may be between leaders). In that last case the
/// room keeps both index entries; if the claim did land, a later round finds a record naming
/// this engine and, not knowing whether this engine runs it, leaves it, until this engine
/// restarts and adopts its own. Closing that needs a list of the rooms an engine runs.
async fn landed(
    ctx: &Context,
    code: &RoomCode,
    claim: &crate::store::RoomRecord,
) -> Option<Option<u64>> {
    let mut wait = Duration::from_millis(100);
    for _ in 0..6 {
        match ctx.store.load(code).await {
            Ok(Some((stored, revision)))
                if stored.owner == claim.owner && stored.epoch == claim.epoch =>
            {
                return Some(Some(revision));
            }
            Ok(_) => return Some(None),
            Err(e) => tracing::warn!(room = %code, error = %e, "reading a claim back"),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    None
}

/// The engine that rendezvous hashing picks for a room among `engines`: each room goes to
/// one engine, and losing an engine moves only that engine's rooms. (`DefaultHasher::new()`
/// hashes alike in every process of one build; engines of different builds would only pick
/// differently, and the record's compare-and-set still gives each room one owner.)
fn winner<'a>(code: &RoomCode, engines: &'a [String]) -> &'a str {
    engines
        .iter()
        .max_by_key(|engine| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (code.as_str(), engine.as_str()).hash(&mut hasher);
            hasher.finish()
        })
        .map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_rooms_and_moves_only_the_lost_engines_share() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let codes: Vec<RoomCode> = (0..300)
            .map(|n| RoomCode::parse(&format!("room{n:06}")).unwrap())
            .collect();
        let mut counts = HashMap::new();
        for code in &codes {
            let before = winner(code, &three);
            *counts.entry(before).or_insert(0) += 1;
            if before != "b" {
                assert_eq!(winner(code, &two), before, "{code} moved needlessly");
            }
        }
        assert!(counts.values().all(|&n| n > 60), "{counts:?}");
    }
}
