//! Acknowledged writes through faults: does a three-node nats-server cluster keep every write
//! it acknowledged to a replicated (R3) KV bucket while the bucket's stream leader is killed
//! (`kill -9`), paused (SIGSTOP) or stopped (SIGTERM) again and again?
//!
//! The chaos soak once saw lobby ids carry two payloads. Lobby ids are the lobby bucket's
//! revisions, so the stream must have handed out again sequence numbers it had acknowledged.
//! This probe takes everything of ours out of that question: writers create and update
//! (compare-and-set, as the engine's lobby listings do) keys of a bucket configured as the
//! engine's buckets are, from connections to every node, and record each acknowledged
//! revision; a watcher on each node, as each engine watches the lobby, records every revision
//! it is delivered; a driver faults the stream's leader (or, one time in four, any node).
//! Then, every node back and caught up, it counts:
//! - revisions acknowledged to two different writes (the stream reused a sequence);
//! - revisions delivered to watchers with two different payloads;
//! - keys whose entry is now older than their last acknowledged write (a write lost), or
//!   holds at that revision something else;
//! - and how each node's copy of the stream ends (last sequence, messages).
//!
//! Exit status 1 when any acknowledged write was lost or reused.
//!
//! `cargo build --release -p bench && target/release/acked-writes --seconds 300 --keep-logs`

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, kv, stream};
use bench::faults::{blocking, fault_node, keep_node_logs, lock, Pace, SharedCluster};
use clap::Parser;
use futures::StreamExt;
use rand::Rng;
use test_support::NatsCluster;

/// Whether a replicated (R3) KV bucket keeps every write it acknowledged while its stream
/// leader is killed, paused or stopped again and again. (On 2.9.10 it does not, when
/// stopped: docs/benchmarks.md §8.)
#[derive(Parser)]
struct Args {
    /// How long writers write while faults are injected.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Writers (each its own connection, spread over the nodes).
    #[arg(long, default_value_t = 12)]
    writers: usize,
    /// Keys per writer.
    #[arg(long, default_value_t = 16)]
    keys: usize,
    #[command(flatten)]
    pace: Pace,
    /// Keep the nodes' logs (printed where).
    #[arg(long)]
    keep_logs: bool,
}

const BUCKET: &str = "probe";
const STREAM: &str = "KV_probe";
/// Each write's wait for its acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// One key as its writer knows it.
#[derive(Default)]
struct Key {
    /// Every acknowledged write: revision and value, in the order acknowledged.
    acked: Vec<(u64, String)>,
    /// Values written without an acknowledgement since the last acknowledged one: each may
    /// or may not be in the bucket.
    unsure: Vec<String>,
    /// The revision to compare-and-set against; `None`: read the key first.
    revision: Option<u64>,
}

/// How a write ended.
enum Outcome {
    Acked(u64),
    /// The compare-and-set failed: the key is not where the writer thought.
    Conflict,
    /// An error or no answer: it may or may not have been written.
    NoAnswer,
}

#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    errors: AtomicU64,
    conflicts: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.pace.check()?;
    let cluster = blocking(NatsCluster::start)
        .await
        .context("starting the cluster")?;
    let cluster: SharedCluster = Arc::new(Mutex::new(cluster));
    let lost = run(&args, &cluster).await;
    let kept = tempfile::tempdir()?;
    if args.keep_logs {
        keep_node_logs(&lock(&cluster), kept.path())?;
        println!("node logs kept in {}", kept.keep().display());
    }
    if lost? > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The whole probe; how many acknowledged writes were lost or reused.
async fn run(args: &Args, cluster: &SharedCluster) -> anyhow::Result<usize> {
    let urls: Vec<String> = {
        let cluster = lock(cluster);
        (0..cluster.len()).map(|i| cluster.url(i)).collect()
    };
    let admin = connect(&urls, 0).await?;
    let js = jetstream::new(admin.clone());
    // As the engine's buckets on a cluster (game-engine/src/store.rs, `open_bucket`).
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_message_size: 1024 * 1024,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: false,
        num_replicas: 3,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .context("creating the bucket's stream")?;
    println!(
        "3-node cluster, bucket {BUCKET} (R3, history 1), {} writers × {} keys, {} s, faults {}",
        args.writers, args.keys, args.seconds, args.pace
    );

    let end = Instant::now() + Duration::from_secs(args.seconds);
    let counts = Arc::new(Counts::default());
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let client = connect(&urls, w % urls.len()).await?;
        let kv = jetstream::new(client).get_key_value(BUCKET).await?;
        let counts = counts.clone();
        let keys = args.keys;
        writers.push(tokio::spawn(async move {
            write(kv, w, keys, end, &counts).await
        }));
    }
    let delivered = Arc::new(Mutex::new(Delivered::default()));
    let mut watchers = Vec::new();
    for node in 0..urls.len() {
        let client = connect(&urls, node).await?;
        let kv = jetstream::new(client).get_key_value(BUCKET).await?;
        watchers.push(tokio::spawn(watch(kv, node, delivered.clone())));
    }

    let faults = drive_faults(args, cluster, end).await;
    let mut keys: HashMap<String, Key> = HashMap::new();
    for writer in writers {
        keys.extend(writer.await?);
    }
    // A cluster that did not come back whole within the wait is itself a finding: the
    // faults stop there, and the writes made until the end are still checked.
    let faults = faults.unwrap_or_else(|e| format!("stopped early: {e:#}"));

    // Every node back and holding what the leader holds before anything is read. A node
    // that never catches up is reported, and the keys are read from the leader anyway (reads
    // go to the stream's leader: no direct get).
    let settle = cluster.clone();
    let settled = blocking(move || {
        let cluster = lock(&settle);
        cluster.wait_formed();
        for i in 0..cluster.len() {
            cluster.wait(&format!("{} to catch up", cluster.name(i)), || {
                cluster.caught_up(i, STREAM).then_some(())
            });
        }
    })
    .await;
    if let Err(e) = &settled {
        println!("cluster not settled: {e:#}");
    }
    let kv = js.get_key_value(BUCKET).await?;
    let mut finals = HashMap::new();
    for key in keys.keys() {
        let entry = tokio::time::timeout(ACK_WAIT, kv.entry(key))
            .await
            .context("reading the keys back")??;
        let entry = entry.map(|e| (e.revision, String::from_utf8_lossy(&e.value).into_owned()));
        finals.insert(key.clone(), entry);
    }
    for watcher in &watchers {
        watcher.abort();
    }

    let report = Report::compare(&keys, &finals, &lock(&delivered));
    println!();
    println!(
        "writes: {} acknowledged, {} without an answer (errors, timeouts), {} compare-and-set conflicts",
        counts.acked.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
        counts.conflicts.load(Ordering::Relaxed)
    );
    println!("faults: {faults}");
    {
        let cluster = lock(cluster);
        for i in 0..cluster.len() {
            let state = cluster
                .stream_detail(i, STREAM)
                .map(|s| s["state"].clone())
                .unwrap_or_default();
            println!(
                "{}: last_seq {}, messages {}",
                cluster.name(i),
                state["last_seq"],
                state["messages"]
            );
        }
    }
    report.print();
    Ok(report.lost())
}

/// A client that knows every node, first connected to node `first`.
async fn connect(urls: &[String], first: usize) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = (0..urls.len())
        .map(|i| urls[(first + i) % urls.len()].parse())
        .collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .retain_servers_order()
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .context("connecting to the cluster")
}

/// Writer `w` until `end`: a random one of its keys at a time, created when it has no
/// entry, else updated with compare-and-set on its revision. Returns what it knows of its
/// keys.
async fn write(
    kv: kv::Store,
    w: usize,
    keys: usize,
    end: Instant,
    counts: &Counts,
) -> Vec<(String, Key)> {
    let mut known: Vec<(String, Key)> = (0..keys)
        .map(|k| {
            let key = Key {
                revision: Some(0),
                ..Key::default()
            };
            (format!("w{w}k{k}"), key)
        })
        .collect();
    let mut n = 0u64;
    while Instant::now() < end {
        let k = rand::rng().random_range(0..keys);
        let (name, key) = &mut known[k];
        let Some(revision) = key.revision else {
            // After a write with no answer: where the key is now.
            if let Ok(Ok(entry)) = tokio::time::timeout(ACK_WAIT, kv.entry(name.as_str())).await {
                key.revision = Some(entry.map_or(0, |e| e.revision));
            }
            continue;
        };
        n += 1;
        let value = format!("{name}#{n}");
        let write = async {
            if revision == 0 {
                match kv.create(name.as_str(), value.clone().into()).await {
                    Ok(revision) => Outcome::Acked(revision),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Outcome::Conflict,
                    Err(_) => Outcome::NoAnswer,
                }
            } else {
                match kv
                    .update(name.as_str(), value.clone().into(), revision)
                    .await
                {
                    Ok(revision) => Outcome::Acked(revision),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        Outcome::Conflict
                    }
                    Err(_) => Outcome::NoAnswer,
                }
            }
        };
        match tokio::time::timeout(ACK_WAIT, write).await {
            Ok(Outcome::Acked(revision)) => {
                counts.acked.fetch_add(1, Ordering::Relaxed);
                key.acked.push((revision, value));
                key.unsure.clear();
                key.revision = Some(revision);
            }
            Ok(Outcome::Conflict) => {
                // An earlier write with no answer landed after all; this one did not.
                counts.conflicts.fetch_add(1, Ordering::Relaxed);
                key.revision = None;
            }
            Ok(Outcome::NoAnswer) | Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                key.unsure.push(value);
                key.revision = None;
            }
        }
    }
    known
}

/// What the watchers were delivered: a hash of key and value per revision, and revisions
/// that came with two different ones.
#[derive(Default)]
struct Delivered {
    hasher: RandomState,
    by_revision: HashMap<u64, u64>,
    two_payloads: Vec<(u64, usize)>,
    count: u64,
}

/// Watches every change of the bucket from node `node`, as an engine watches the lobby.
async fn watch(kv: kv::Store, node: usize, delivered: Arc<Mutex<Delivered>>) {
    loop {
        let Ok(mut changes) = kv.watch_all().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(change) = changes.next().await {
            let Ok(entry) = change else { continue };
            let mut seen = lock(&delivered);
            let hash = seen.hasher.hash_one((&entry.key, &entry.value));
            seen.count += 1;
            match seen.by_revision.insert(entry.revision, hash) {
                Some(before) if before != hash => seen.two_payloads.push((entry.revision, node)),
                _ => {}
            }
        }
    }
}

/// Faults until `end`: the bucket stream's leader, or (one time in four) any node.
async fn drive_faults(
    args: &Args,
    cluster: &SharedCluster,
    end: Instant,
) -> anyhow::Result<String> {
    let every = args.pace.every();
    let mut tally: HashMap<&'static str, u32> = HashMap::new();
    let started = Instant::now();
    let mut next = started + every;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let leader = {
            let probe = cluster.clone();
            blocking(move || lock(&probe).stream_leader(STREAM)).await?
        };
        let (target, fault, hold) = {
            let mut rng = rand::rng();
            let target = match leader {
                Some(leader) if rng.random_range(0..4) > 0 => leader,
                _ => rng.random_range(0..lock(cluster).len()),
            };
            let (fault, hold) = args.pace.draw(&mut rng);
            (target, fault, hold)
        };
        let name = lock(cluster).name(target).to_owned();
        let role = if Some(target) == leader {
            "leader"
        } else {
            "follower"
        };
        println!(
            "[{:6.1} s] {} {name} ({role}) for {:.1} s",
            started.elapsed().as_secs_f64(),
            fault.name(),
            hold.as_secs_f64()
        );
        *tally.entry(fault.name()).or_default() += 1;
        fault_node(cluster, target, fault, hold)
            .await
            .with_context(|| {
                format!(
                    "{} {name}, fault {} (so far: {})",
                    fault.name(),
                    tally.values().sum::<u32>(),
                    summary(&tally)
                )
            })?;
        next = (next + every).max(Instant::now());
    }
    Ok(summary(&tally))
}

/// "12 × SIGSTOP, 9 × kill -9": faults injected, by kind.
fn summary(tally: &HashMap<&'static str, u32>) -> String {
    let mut tally: Vec<_> = tally.iter().collect();
    tally.sort();
    tally
        .iter()
        .map(|(name, n)| format!("{n} × {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the end state says of the acknowledged writes.
#[derive(Default)]
struct Report {
    /// A revision acknowledged to two different writes: (revision, first, second).
    reused: Vec<(u64, String, String)>,
    /// Keys whose entry is older than their last acknowledged write: (key, acked, now).
    behind: Vec<(String, u64, Option<u64>)>,
    /// Keys whose entry at their last acknowledged revision holds another value, or a newer
    /// revision holding a value never written after it.
    changed: Vec<(String, u64, String)>,
    two_payloads: Vec<(u64, usize)>,
    delivered: u64,
    keys: usize,
}

impl Report {
    fn compare(
        keys: &HashMap<String, Key>,
        finals: &HashMap<String, Option<(u64, String)>>,
        delivered: &Delivered,
    ) -> Report {
        let mut report = Report {
            two_payloads: delivered.two_payloads.clone(),
            delivered: delivered.count,
            keys: keys.len(),
            ..Report::default()
        };
        let mut by_revision: HashMap<u64, &str> = HashMap::new();
        for (name, key) in keys {
            for (revision, value) in &key.acked {
                if let Some(first) = by_revision.insert(*revision, value) {
                    report
                        .reused
                        .push((*revision, first.to_owned(), value.clone()));
                }
            }
            let Some((acked, value)) = key.acked.last() else {
                continue;
            };
            let now = finals.get(name).cloned().flatten();
            match now {
                Some((revision, _)) if revision < *acked => {
                    report.behind.push((name.clone(), *acked, Some(revision)));
                }
                None => report.behind.push((name.clone(), *acked, None)),
                Some((revision, held)) => {
                    let explained = if revision == *acked {
                        held == *value
                    } else {
                        key.unsure.contains(&held)
                    };
                    if !explained {
                        report.changed.push((name.clone(), revision, held));
                    }
                }
            }
        }
        report
    }

    fn lost(&self) -> usize {
        self.reused.len() + self.behind.len() + self.changed.len() + self.two_payloads.len()
    }

    fn print(&self) {
        println!(
            "keys: {}, revisions delivered to the watchers: {}",
            self.keys, self.delivered
        );
        println!(
            "revisions acknowledged to two writes: {}",
            self.reused.len()
        );
        for (revision, first, second) in self.reused.iter().take(10) {
            println!("  revision {revision}: {first} and {second}");
        }
        println!(
            "keys older than their last acknowledged write: {}",
            self.behind.len()
        );
        for (key, acked, now) in self.behind.iter().take(10) {
            println!("  {key}: acknowledged at {acked}, now {now:?}");
        }
        println!("keys holding what was not written: {}", self.changed.len());
        for (key, revision, held) in self.changed.iter().take(10) {
            println!("  {key}: {held} at {revision}");
        }
        println!(
            "revisions delivered with two payloads: {}",
            self.two_payloads.len()
        );
        for (revision, node) in self.two_payloads.iter().take(10) {
            println!("  revision {revision} (the second from the watcher on n{node})");
        }
        println!(
            "{}",
            if self.lost() == 0 {
                "every acknowledged write is there"
            } else {
                "ACKNOWLEDGED WRITES LOST OR REUSED"
            }
        );
    }
}
