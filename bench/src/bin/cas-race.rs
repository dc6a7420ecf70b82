//! Writes over one revision, at the same moment, on a three-node cluster: how many land?
//!
//! A compare-and-set should let one. On a replicated stream nats-server 2.9 checks the
//! expected revision on the leader before it proposes a write, not as the write is applied
//! (nats-server#4320), so writes in flight together can all land. This probe counts it for
//! async-nats's `kv::Store::update` and for the engine's `cas::update` (the same write plus
//! the message id `<key>:<revision>`), with one writer per node racing over each revision
//! of one key of an R3 bucket configured as the engine's rooms bucket.
//!
//! Exit status 1 if `cas::update` ever let two writes land.
//!
//! `cargo build --release -p bench && target/release/cas-race --rounds 300`

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::kv;
use clap::Parser;
use game_engine::cas::{self, CasError};
use game_engine::store::{Store, StoreLimits};
use test_support::NatsCluster;

#[derive(Parser)]
struct Args {
    /// Revisions raced over, per way of writing.
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Writers per revision, spread over the three nodes.
    #[arg(long, default_value_t = 3)]
    writers: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    KvUpdate,
    Cas,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = tokio::task::spawn_blocking(NatsCluster::start).await?;
    let limits = StoreLimits {
        replicas: 3,
        retention: Duration::from_secs(3600),
        history: 10,
        max_bytes: None,
    };
    let mut stores = Vec::new();
    for i in 0..args.writers {
        let client = async_nats::connect(cluster.url(i % cluster.len())).await?;
        let store = Store::open(client, proto::StoreNames::new("game"), &limits).await?;
        stores.push(store);
    }
    println!(
        "nats-server 3-node cluster, R3 bucket; {} writers (one connection each, over {} nodes) \
         write over each of {} revisions at once",
        args.writers,
        cluster.len(),
        args.rounds
    );
    let mut doubled_by_cas = 0;
    for way in [Way::KvUpdate, Way::Cas] {
        let key = format!("{way:?}");
        let mut revision = stores[0].rooms.create(&key, "0".into()).await?;
        let (mut doubled, mut landed, mut empty, mut unanswered) = (0, 0, 0, 0);
        let started = Instant::now();
        for round in 0..args.rounds {
            let writes = stores.iter().enumerate().map(|(i, s)| {
                let value = format!("{round}/{i}").into();
                let key = key.as_str();
                // Landed, refused (a conflict), or no answer (which may have landed: not
                // counted as landing, so the counts are lower bounds).
                async move {
                    match way {
                        Way::KvUpdate => match s.rooms.update(key, value, revision).await {
                            Ok(_) => Some(true),
                            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                                Some(false)
                            }
                            Err(_) => None,
                        },
                        Way::Cas => {
                            match cas::update(&s.js, &s.rooms, key, value, revision).await {
                                Ok(_) => Some(true),
                                Err(CasError::Conflict) => Some(false),
                                Err(CasError::Failed(_)) => None,
                            }
                        }
                    }
                }
            });
            let results = futures::future::join_all(writes).await;
            let ok = results.iter().filter(|r| **r == Some(true)).count();
            landed += ok;
            doubled += usize::from(ok > 1);
            empty += usize::from(ok == 0);
            unanswered += results.iter().filter(|r| r.is_none()).count();
            revision = stores[0]
                .rooms
                .entry(&key)
                .await?
                .context("the key is gone")?
                .revision;
        }
        let per_round = started.elapsed() / args.rounds as u32;
        println!(
            "{way:?}: {doubled} of {} revisions had two or more writes land \
             ({landed} writes landed; {empty} rounds with none; {unanswered} writes \
             unanswered); {per_round:?} a round",
            args.rounds
        );
        if way == Way::Cas {
            doubled_by_cas = doubled;
        }
    }
    if doubled_by_cas > 0 {
        std::process::exit(1);
    }
    Ok(())
}
