//! What one compare-and-set of a KV value costs nats-server, by the value's size: the engine
//! rewrites each room's whole record on every step, so this says what a byte of the record
//! costs (`docs/benchmarks.md`, *Commands over NATS*).
//!
//! For each `--sizes` value, a fresh bucket configured as the engine's rooms bucket (one
//! file-stored copy, history 1, direct get) and `--keys` writers, each updating its own key
//! over the revision it last wrote, as a room commits, for `--seconds`; then updates per second
//! and nats-server's CPU per update. No engine runs.
//!
//! `cargo build --release -p bench && target/release/kv-writes --sizes 100,300,600,1200,2400`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use bench::rig::CpuMeter;
use bench::servers::{Servers, Topology, FILE_BUDGET};
use bytes::Bytes;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Value sizes in bytes, one bucket each, in this order.
    #[arg(long, value_delimiter = ',', default_value = "300,1200")]
    sizes: Vec<usize>,
    /// Writers, each with a key of its own (so this many updates in flight).
    #[arg(long, default_value_t = 64)]
    keys: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = Servers::start(Topology::Single, FILE_BUDGET).await?;
    let js = jetstream::new(async_nats::connect(nats.url(0)).await?);
    for (round, &size) in args.sizes.iter().enumerate() {
        let bucket = format!("probe{round}");
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_message_size: 1024 * 1024,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await?;
        let kv = js.get_key_value(&bucket).await?;
        let value = Bytes::from(vec![b'x'; size]);
        let updates = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + Duration::from_secs(args.seconds);
        let cpu = CpuMeter::start(&nats.pids());
        let writers: Vec<_> = (0..args.keys)
            .map(|k| {
                let (kv, value, updates) = (kv.clone(), value.clone(), updates.clone());
                tokio::spawn(async move {
                    let key = format!("k{k}");
                    let mut revision = kv.create(&key, value.clone()).await?;
                    while Instant::now() < end {
                        revision = kv.update(&key, value.clone(), revision).await?;
                        updates.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for writer in writers {
            writer.await?.context("a writer")?;
        }
        let (span, percent) = (cpu.elapsed(), cpu.percents());
        let n = updates.load(Ordering::Relaxed).max(1);
        let nats_percent: f64 = percent.iter().map(|(_, p)| p).sum();
        println!(
            "{size:>6} bytes: {:>7.0} updates/s, nats-server {nats_percent:.1} % of a core, \
             {:.1} µs of its CPU per update",
            n as f64 / span,
            nats_percent / 100.0 * span * 1e6 / n as f64,
        );
    }
    Ok(())
}
