//! The floor under fan-out latency: what the same clients measure from the simplest server
//! there is, with no NATS, runtime, ring or HTTP parsing in the way. It accepts N streams,
//! answers each with a bare SSE head and a snapshot, and at each event writes the frame to
//! every socket in a plain blocking loop on `--threads` threads, each owning an equal share
//! of the sockets. Whatever latency remains is the kernel's loopback send path and the
//! clients on the same cores; the gateway's figures in fan-out are to be read against it.
//!
//! Results: `<out>/floor-<N>.csv` (one row per thread count) and
//! `<out>/floor-cdf-<N>-<threads>.csv` (latency CDFs, for bench/plot.sh).
//!
//! `cargo build --release -p bench && target/release/write-floor --connections 10000`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context};
use bench::fleet::{self, Fleet};
use bench::histogram::Latencies;
use bench::report::{remove_earlier, write_cdf, Csv};
use bench::rig::{cpu_line, CpuMeter};
use bench::unix_ns;
use clap::Parser;
use tokio::net::TcpSocket;

/// Fan-out from a plain write loop: N connections, one rate, for 1 and 2 writer threads.
#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Events per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of publishing for each thread count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Writer thread counts to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Client connections per worker process.
    #[arg(long, default_value_t = 5000)]
    per_worker: usize,
    /// Folder for the CSV results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-results"))]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    fleet::main(run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(4096)?;
    let target = listener.local_addr()?;
    let streams = Arc::new(Mutex::new(Vec::with_capacity(args.connections)));
    let accepted = streams.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let Ok(socket) = socket.into_std() else {
                continue;
            };
            let accepted = accepted.clone();
            tokio::task::spawn_blocking(move || {
                if let Ok(socket) = answer(socket) {
                    accepted.lock().unwrap().push(socket);
                }
            });
        }
    });

    let mut fleet = Fleet::new(target, "/events", args.per_worker, Duration::from_secs(60));
    fleet.add(args.connections).await?;
    let opened = fleet.open().await?;
    println!("{} connections: {}", args.connections, opened.describe());
    ensure!(opened.failures() == 0, "every connection must open");
    let sockets = std::mem::take(&mut *streams.lock().unwrap());
    ensure!(
        sockets.len() == args.connections,
        "accepted {}",
        sockets.len()
    );
    let sockets = Arc::new(sockets);

    let mut header = vec!["connections", "threads", "rate", "deliveries"];
    header.extend(Latencies::COLUMNS);
    header.extend([
        "gaps",
        "duplicates",
        "lagging",
        "cpu_write_loop",
        "cpu_clients",
        "us_per_delivery",
    ]);
    let mut csv = Csv::create(
        &args.out,
        &format!("floor-{}.csv", args.connections),
        &header,
    )?;
    remove_earlier(&args.out, &format!("floor-cdf-{}-", args.connections))?;
    let mut id = 0;
    for &threads in &args.threads {
        let writers = Writers::start(&sockets, threads.max(1));
        fleet.tally().await?;
        let processes: Vec<_> = std::iter::once(("write loop", std::process::id()))
            .chain(fleet.pids().into_iter().map(|pid| ("clients", pid)))
            .collect();
        let cpu = CpuMeter::start(&processes);
        let start = tokio::time::Instant::now();
        let events = (args.rate * args.seconds as f64) as u64;
        for k in 0..events {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / args.rate)).await;
            id += 1;
            writers.send(id);
        }
        let drained = fleet.reach(id).await?;
        let cpu = cpu.percents();
        let tally = fleet.tally().await?;
        println!(
            "\n{threads} writer thread(s), {} events/s × {} connections: {} delivered; last \
             event everywhere {:.3} s after the last write began",
            args.rate,
            args.connections,
            tally.delivered,
            drained.seconds()
        );
        println!("  publish→receive: {}", tally.latency.summary());
        println!("  {}; lagging {}", tally.faults(), drained.lagging);
        println!("  CPU: {}", cpu_line(&cpu));
        let share = |role| {
            cpu.iter()
                .find(|(r, _)| *r == role)
                .map_or(0.0, |(_, p)| *p)
        };
        let per_delivery =
            share("write loop") / 100.0 * 1e6 / (args.rate * args.connections as f64);
        println!("  write loop: {per_delivery:.1} µs of CPU per delivery");
        let mut row = vec![
            args.connections.to_string(),
            threads.to_string(),
            args.rate.to_string(),
            tally.delivered.to_string(),
        ];
        row.extend(tally.latency.columns());
        row.extend([
            tally.gaps.to_string(),
            tally.duplicates.to_string(),
            drained.lagging.to_string(),
            format!("{:.1}", share("write loop")),
            format!("{:.1}", share("clients")),
            format!("{per_delivery:.2}"),
        ]);
        csv.row(&row)?;
        let cdf = format!("floor-cdf-{}-{threads}.csv", args.connections);
        write_cdf(&args.out, &cdf, &tally.latency)?;
    }
    println!("\nresults: {}", csv.path().display());
    Ok(())
}

/// Reads a request head and answers it with a stream head and a snapshot (id 0).
fn answer(mut socket: TcpStream) -> std::io::Result<TcpStream> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.set_nodelay(true)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    socket.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
          id: 0\nevent: snapshot\ndata: {}\n\n",
    )?;
    Ok(socket)
}

/// Writer threads, each owning a share of the sockets; dropped, they stop.
struct Writers {
    orders: Vec<mpsc::Sender<Arc<[u8]>>>,
}

impl Writers {
    fn start(sockets: &Arc<Vec<TcpStream>>, threads: usize) -> Writers {
        let share = sockets.len().div_ceil(threads);
        let orders = (0..threads)
            .map(|t| {
                let (order, frames) = mpsc::channel::<Arc<[u8]>>();
                let sockets = sockets.clone();
                thread::spawn(move || {
                    let mine = &sockets[(t * share).min(sockets.len())..]
                        [..share.min(sockets.len().saturating_sub(t * share))];
                    for frame in frames {
                        for mut socket in mine {
                            // A stream that fails is the clients' to report as a gap.
                            let _ = socket.write_all(&frame);
                        }
                    }
                });
                order
            })
            .collect();
        Writers { orders }
    }

    /// Stamps event `id` with the time now and hands it to every writer.
    fn send(&self, id: u64) {
        let frame = format!("id: {id}\nevent: tick\ndata: {{\"t\":{}}}\n\n", unix_ns());
        let frame: Arc<[u8]> = frame.into_bytes().into();
        for order in &self.orders {
            order.send(frame.clone()).context("writer stopped").unwrap();
        }
    }
}
