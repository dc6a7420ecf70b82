//! Gateway fan-out: N SSE connections on the lobby stream of one gateway process, events
//! published straight to NATS at a fixed rate; prints memory per idle connection, deliveries
//! per second, publish→receive latency, gaps and duplicates, and CPU.
//!
//! The publisher plays the engine's part (it answers `game.lobby.snap` with its current id and
//! stamps each event's data with the send time). Connections come from 127.0.0.x source
//! addresses so that ephemeral ports never run out; each parses frames off its socket.
//!
//! `cargo build --release -p gateway -p bench &&
//!  target/release/fanout --connections 10000 --rate 10 --seconds 20`

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bench::{cpu_seconds, latency_line};
use clap::Parser;
use futures::StreamExt;
use proto::headers::{SSE_EVENT, SSE_ID};
use proto::Subjects;
use serde_json::json;
use test_support::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Events per second published to the stream.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The gateway binary (built with `cargo build --release -p gateway`).
    #[arg(long, default_value = "target/release/gateway")]
    gateway: String,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What every connection reports.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsServer::start();
    let keys = tempfile::tempdir()?;
    let (_, verify) = test_support::write_test_keys(keys.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut gateway = Command::new(&args.gateway)
        .env("PHASECAST_NATS__URL", nats.url())
        .env("PHASECAST_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
        .env("PHASECAST_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0")
        .env("PHASECAST_GATEWAY__MAX_CONNECTIONS", "100000")
        .env("PHASECAST_AUTH__VERIFY_KEY_FILE", &verify)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let gw_pid = gateway.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // The publisher: answers snapshots with its current id, publishes on command.
    let client = async_nats::connect(nats.url()).await?;
    let subjects = Subjects::default();
    let seq = Arc::new(AtomicU64::new(0));
    let mut snaps = client.subscribe(subjects.lobby_snap()).await?;
    let (answer_client, answer_seq) = (client.clone(), seq.clone());
    tokio::spawn(async move {
        while let Some(msg) = snaps.next().await {
            let id = answer_seq.load(Ordering::SeqCst);
            let body = json!({"ok": true, "events": [{"id": id, "event": "snapshot", "data": {"rooms": []}}]});
            if let Some(reply) = msg.reply {
                let _ = answer_client.publish(reply, body.to_string().into()).await;
            }
        }
    });
    client.flush().await?;
    wait_ready(addr).await?;

    let base_rss = rss_kib(gw_pid);
    let tally = Arc::new(Tally::default());
    let connecting = Instant::now();
    let mut opened = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        // 127.0.0.1 .. 127.0.0.250 as source addresses.
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % 250) as u8);
        opened.push(tokio::spawn(connection(addr, source, tally.clone())));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    // Every connection has its snapshot when each task reports in.
    let mut ready = Vec::with_capacity(opened.len());
    for task in opened {
        ready.push(task.await??);
    }
    let connect_time = connecting.elapsed().as_secs_f64();
    let idle_rss = rss_kib(gw_pid);
    println!(
        "{} connections with snapshots in {:.2} s ({:.0}/s)",
        args.connections,
        connect_time,
        args.connections as f64 / connect_time
    );
    println!(
        "gateway RSS {} KiB idle before, {} KiB with {} idle connections: {:.2} KiB per connection",
        base_rss,
        idle_rss,
        args.connections,
        (idle_rss.saturating_sub(base_rss)) as f64 / args.connections as f64
    );

    let (gw0, nats0, me0) = (
        cpu_seconds(gw_pid),
        cpu_seconds(nats.pid().unwrap_or(0)),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    let total = (args.rate * args.seconds as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = tokio::time::Instant::now();
    for _ in 0..total {
        next += interval;
        tokio::time::sleep_until(next).await;
        let id = seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut headers = HeaderMap::new();
        headers.insert(SSE_ID, id.to_string().as_str());
        headers.insert(SSE_EVENT, "tick");
        let data = format!("{{\"t\":{}}}", now_ns());
        client
            .publish_with_headers(subjects.lobby_events(), headers, data.into())
            .await?;
    }
    client.flush().await?;
    // Let the last event reach everyone (bounded).
    let expected = total * args.connections as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let span = started.elapsed().as_secs_f64();
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let latencies = std::mem::take(&mut *tally.latencies.lock().expect("lock"));
    println!(
        "{} events × {} connections: {} of {} delivered in {:.1} s ({:.0} deliveries/s); gaps {}, duplicates {}",
        total,
        args.connections,
        delivered,
        expected,
        span,
        delivered as f64 / span,
        tally.gaps.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed)
    );
    println!("{}", latency_line("publish→receive", latencies));
    println!(
        "CPU: gateway {:.0} %, nats-server {:.0} %, load tool {:.0} % of a core",
        100.0 * (cpu_seconds(gw_pid) - gw0) / span,
        100.0 * (cpu_seconds(nats.pid().unwrap_or(0)) - nats0) / span,
        100.0 * (cpu_seconds(std::process::id()) - me0) / span
    );
    drop(ready);
    // SIGTERM: the gateway's own clean shutdown (and profilers wrapping it get to write out).
    let _ = Command::new("kill")
        .args(["-TERM", &gw_pid.to_string()])
        .status();
    let _ = gateway.wait();
    Ok(())
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "gateway not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens one stream, returns once its snapshot arrived, and keeps reading in the background.
async fn connection(
    addr: SocketAddr,
    source: Ipv4Addr,
    tally: Arc<Tally>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let mut stream = socket.connect(addr).await?;
    stream
        .write_all(b"GET /v1/lobby/events HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(4096);
    let mut last: Option<u64> = None;
    // Read until the snapshot frame is complete.
    loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the snapshot");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = find(&buf, b"event: snapshot") {
            if let Some(end) = find(&buf[at..], b"\n\n") {
                last = parse_id(&buf[..at]).or(last);
                buf.drain(..at + end + 2);
                break;
            }
        }
    }
    Ok(tokio::spawn(async move {
        let mut chunk = vec![0u8; 8192];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let received = now_ns();
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = find(&buf, b"\n\n") {
                let frame = &buf[..end];
                if let (Some(id), Some(t)) = (parse_id(frame), parse_t(frame)) {
                    match last {
                        Some(l) if id <= l => {
                            tally.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(l) if id != l + 1 => {
                            tally.gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    last = Some(id);
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    let latency = received.saturating_sub(t) as f64 / 1e9;
                    tally.latencies.lock().expect("lock").push(latency);
                }
                buf.drain(..end + 2);
            }
        }
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The last `id: N` in `frame`.
fn parse_id(frame: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(frame).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: ")?.trim().parse().ok())
}

fn parse_t(frame: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(frame).ok()?;
    let at = text.find("\"t\":")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
