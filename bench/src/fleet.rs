//! SSE client connections spread over worker processes. One process may open only 20,000
//! files here, so N connections run in copies of the benchmark binary itself, started as
//! `<binary> worker ...` (see [`main`]), each holding at most `--per-worker` of them. The
//! parent drives every worker at once with one JSON line on its stdin and reads one JSON line
//! back from its stdout: open your connections; wait until each has received id N; drop
//! every connection; resume every connection with `Last-Event-ID`; report what you counted.
//!
//! A goal is met per connection and reported with the time it was met, so the parent learns
//! both when the last connection got there and the spread. Each connection checks its ids as
//! they arrive ([`Sequence`]); a worker counts deliveries, gaps, duplicates and resets in
//! atomics and records publish→receive latency in a lock-free [`Recorder`], so no delivery
//! takes a lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};

use crate::histogram::{Latencies, Recorder};
use crate::http::source_address;
use crate::sse::{self, Frame, Request, Sequence, Step};
use crate::unix_ns;

/// The entry point of every benchmark binary that uses a [`Fleet`]: runs this process as a
/// worker when it was started as one (`<binary> worker ...`), else runs the benchmark with
/// its parsed arguments.
pub fn main<A, F, Fut>(run: F) -> anyhow::Result<()>
where
    A: Parser,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if std::env::args().nth(1).as_deref() == Some("worker") {
        let worker = WorkerArgs::parse_from(std::env::args().skip(1));
        // One thread per worker: the workers are the parallelism.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(worker.run());
    }
    tokio::runtime::Runtime::new()?.block_on(run(A::parse()))
}

/// How a goal went, over every connection asked.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settled {
    /// Connections that met the goal.
    pub reached: usize,
    /// Connections lost before meeting it, by reason (`HTTP 503`, `closed by the server`, ...).
    pub failed: BTreeMap<String, usize>,
    /// Connections still short of it when the time ran out.
    pub lagging: usize,
    /// Per connection, from the command to meeting the goal.
    pub times: Latencies,
    /// When the goal was set and when the last connection met it (wall clock, ns).
    pub issued_ns: u64,
    pub last_ns: u64,
}

impl Settled {
    fn merge(&mut self, other: Settled) {
        self.reached += other.reached;
        for (reason, n) in other.failed {
            *self.failed.entry(reason).or_default() += n;
        }
        self.lagging += other.lagging;
        self.times.merge(&other.times);
        self.last_ns = self.last_ns.max(other.last_ns);
    }

    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    /// From the command until the last connection met the goal.
    pub fn seconds(&self) -> f64 {
        self.last_ns.saturating_sub(self.issued_ns) as f64 / 1e9
    }

    /// `10000 in 1.23 s (per connection p50 0.51 s, p99 1.20 s); 0 failed, 0 lagging`.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "{} in {:.3} s (per connection p50 {:.3} s, p99 {:.3} s); {} failed, {} lagging",
            self.reached,
            self.seconds(),
            self.times.quantile_ms(0.5) / 1e3,
            self.times.quantile_ms(0.99) / 1e3,
            self.failures(),
            self.lagging
        );
        for (reason, n) in &self.failed {
            line += &format!("\n    {n} × {reason}");
        }
        line
    }
}

/// What the connections counted since the last [`Fleet::tally`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Events received, snapshots aside.
    pub delivered: u64,
    /// Events whose id skipped ids (must be 0).
    pub gaps: u64,
    /// Events whose id was not above the last one (must be 0).
    pub duplicates: u64,
    /// Snapshots after a connection's first event: a resume that started over (must be 0
    /// while the history covers the resume).
    pub resets: u64,
    /// Publish→receive, from the stamp the publisher puts in each event.
    pub latency: Latencies,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.delivered += other.delivered;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.resets += other.resets;
        self.latency.merge(&other.latency);
    }

    /// `gaps 0, duplicates 0, resets 0`.
    pub fn faults(&self) -> String {
        format!(
            "gaps {}, duplicates {}, resets {}",
            self.gaps, self.duplicates, self.resets
        )
    }
}

/// Parent → worker, one JSON line each.
#[derive(Serialize, Deserialize)]
enum Order {
    /// Open every connection now; settled when each has its first event.
    Open {
        issued_ns: u64,
    },
    /// Settled when every connection has received `id`.
    Reach {
        id: u64,
        issued_ns: u64,
    },
    /// Close every connection; settled when each has.
    Disconnect {
        issued_ns: u64,
    },
    /// Open every connection again with `Last-Event-ID: <last id seen>`; settled when each
    /// has received `id`.
    Resume {
        id: u64,
        issued_ns: u64,
    },
    Tally,
}

/// Worker → parent, one JSON line each.
#[derive(Serialize, Deserialize)]
enum Reply {
    Ready,
    Settled(Settled),
    Tally(Tally),
}

/// The connections of a benchmark, over as many worker processes as they need.
pub struct Fleet {
    target: SocketAddr,
    path: String,
    per_worker: usize,
    timeout: Duration,
    /// Workers whose connections are open.
    workers: Vec<Worker>,
    /// Workers started, their connections not yet opened.
    waiting: Vec<Worker>,
    added: usize,
}

impl Fleet {
    /// Connections will go to `path` at `target`; `timeout` bounds every goal.
    pub fn new(target: SocketAddr, path: &str, per_worker: usize, timeout: Duration) -> Fleet {
        Fleet {
            target,
            path: path.to_owned(),
            per_worker: per_worker.max(1),
            timeout,
            workers: Vec::new(),
            waiting: Vec::new(),
            added: 0,
        }
    }

    /// Connections added so far (including any lost since).
    pub fn added(&self) -> usize {
        self.added
    }

    pub fn pids(&self) -> Vec<u32> {
        let all = self.workers.iter().chain(&self.waiting);
        all.filter_map(|w| w.child.id()).collect()
    }

    /// Starts worker processes for `n` more connections and waits until they are ready; the
    /// connections open on [`Fleet::open`]. There are at least as many workers as cores, so
    /// that no single thread reads every stream.
    pub async fn add(&mut self, n: usize) -> anyhow::Result<()> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let count = n.div_ceil(self.per_worker).max(cores.min(n));
        for i in 0..count {
            // Spread evenly: 9,000 over two workers is 4,500 each.
            let share = n / count + usize::from(i < n % count);
            let worker = self.spawn(share).await?;
            self.waiting.push(worker);
            self.added += share;
        }
        Ok(())
    }

    /// Every connection added since the last call opens at the same moment; settled when
    /// each has its first event (the snapshot).
    pub async fn open(&mut self) -> anyhow::Result<Settled> {
        let order = |issued_ns| Order::Open { issued_ns };
        let settled = settle(&mut self.waiting, order, self.timeout).await;
        self.workers.append(&mut self.waiting);
        settled
    }

    /// Settled when every connection has received the event with `id`.
    pub async fn reach(&mut self, id: u64) -> anyhow::Result<Settled> {
        let order = |issued_ns| Order::Reach { id, issued_ns };
        settle(&mut self.workers, order, self.timeout).await
    }

    /// Every connection closes its socket at once.
    pub async fn disconnect(&mut self) -> anyhow::Result<Settled> {
        let order = |issued_ns| Order::Disconnect { issued_ns };
        settle(&mut self.workers, order, self.timeout).await
    }

    /// Every connection opens again at once, with `Last-Event-ID: <the last id it saw>`;
    /// settled when each has received the event with `id`.
    pub async fn resume(&mut self, id: u64) -> anyhow::Result<Settled> {
        let order = |issued_ns| Order::Resume { id, issued_ns };
        settle(&mut self.workers, order, self.timeout).await
    }

    /// What every connection counted since the last call.
    pub async fn tally(&mut self) -> anyhow::Result<Tally> {
        let mut total = Tally::default();
        for reply in ask_all(&mut self.workers, &Order::Tally, Duration::ZERO).await? {
            match reply {
                Reply::Tally(tally) => total.merge(tally),
                _ => bail!("a worker answered a tally with something else"),
            }
        }
        Ok(total)
    }

    async fn spawn(&self, connections: usize) -> anyhow::Result<Worker> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("worker")
            .args(["--target", &self.target.to_string()])
            .args(["--path", &self.path])
            .args(["--connections", &connections.to_string()])
            .args(["--first", &self.added.to_string()])
            .args(["--timeout-ms", &self.timeout.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start a worker process")?;
        let mut worker = Worker {
            stdin: child.stdin.take().context("worker stdin")?,
            replies: BufReader::new(child.stdout.take().context("worker stdout")?).lines(),
            child,
        };
        match worker.reply(Duration::from_secs(10)).await? {
            Reply::Ready => Ok(worker),
            _ => bail!("a worker did not start with Ready"),
        }
    }
}

/// Sends a goal to every worker at once and merges what they report.
async fn settle(
    workers: &mut [Worker],
    order: impl FnOnce(u64) -> Order,
    timeout: Duration,
) -> anyhow::Result<Settled> {
    let issued_ns = unix_ns();
    let mut total = Settled {
        issued_ns,
        ..Settled::default()
    };
    for reply in ask_all(workers, &order(issued_ns), timeout).await? {
        match reply {
            Reply::Settled(settled) => total.merge(settled),
            _ => bail!("a worker answered a goal with something else"),
        }
    }
    Ok(total)
}

/// Writes an order to every worker first, then reads every reply, each within the workers'
/// own `timeout` and 10 s more.
async fn ask_all(
    workers: &mut [Worker],
    order: &Order,
    timeout: Duration,
) -> anyhow::Result<Vec<Reply>> {
    let mut line = serde_json::to_string(order)?;
    line.push('\n');
    for worker in workers.iter_mut() {
        worker
            .stdin
            .write_all(line.as_bytes())
            .await
            .context("write to a worker")?;
    }
    let mut replies = Vec::with_capacity(workers.len());
    for worker in workers {
        replies.push(worker.reply(timeout + Duration::from_secs(10)).await?);
    }
    Ok(replies)
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn reply(&mut self, within: Duration) -> anyhow::Result<Reply> {
        let pid = self.child.id().unwrap_or(0);
        let line = tokio::time::timeout(within, self.replies.next_line())
            .await
            .with_context(|| format!("worker {pid} silent for {within:?}"))??;
        match line {
            Some(line) => Ok(serde_json::from_str(&line)?),
            None => bail!("worker {pid} exited: {:?}", self.child.wait().await?),
        }
    }
}

// ---- the worker process ------------------------------------------------------------------

#[derive(Parser)]
#[command(name = "worker")]
struct WorkerArgs {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long)]
    path: String,
    #[arg(long)]
    connections: usize,
    /// This worker's first connection number, which picks its source addresses.
    #[arg(long)]
    first: usize,
    #[arg(long)]
    timeout_ms: u64,
}

/// What a connection is asked for now, published to all of a worker's connections at once.
#[derive(Clone, Copy)]
struct Goal {
    generation: u64,
    /// Met once the connection has received this id (unless it is to close).
    id: u64,
    action: Action,
}

#[derive(Clone, Copy)]
enum Action {
    /// Keep reading.
    Follow,
    /// Close the socket; met once closed.
    Close,
    /// Open again with `Last-Event-ID`, then keep reading.
    Resume,
}

/// Connection → worker.
enum Note {
    Reached {
        generation: u64,
        at_ns: u64,
    },
    /// The connection is gone; `reached` is the last goal it met.
    Ended {
        reason: String,
        reached: Option<u64>,
    },
}

/// A worker's counters, shared by its connections.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    resets: AtomicU64,
    latency: Recorder,
}

impl Counters {
    fn count(&self, sequence: &mut Sequence, frame: &Frame<'_>) {
        let add = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        let delivered = match sequence.observe(frame) {
            // A stream's first event, its snapshot, is not a delivery.
            Step::Next => frame.event != "snapshot",
            Step::Gap => {
                add(&self.gaps);
                true
            }
            Step::Duplicate => {
                add(&self.duplicates);
                false
            }
            Step::Reset => {
                add(&self.resets);
                false
            }
        };
        if delivered {
            add(&self.delivered);
            if let Some(sent) = frame.stamp() {
                self.latency.record(frame.received_ns.saturating_sub(sent));
            }
        }
    }

    fn take(&self) -> Tally {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        Tally {
            delivered: take(&self.delivered),
            gaps: take(&self.gaps),
            duplicates: take(&self.duplicates),
            resets: take(&self.resets),
            latency: self.latency.take(),
        }
    }
}

impl WorkerArgs {
    async fn run(self) -> anyhow::Result<()> {
        check_open_files(self.connections)?;
        let timeout = Duration::from_millis(self.timeout_ms);
        let counters = Arc::new(Counters::default());
        let first_goal = Goal {
            generation: 0,
            id: 0,
            action: Action::Follow,
        };
        let (goals, goal) = watch::channel(first_goal);
        let (noted, mut notes) = mpsc::unbounded_channel();
        let mut orders = BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        let (mut live, mut generation) = (0, 0);
        let mut reply = Reply::Ready;
        loop {
            let mut line = serde_json::to_string(&reply)?;
            line.push('\n');
            stdout.write_all(line.as_bytes()).await?;
            stdout.flush().await?;
            // The parent closes stdin when it is done with us.
            let Some(order) = orders.next_line().await? else {
                return Ok(());
            };
            let (issued_ns, id, action) = match serde_json::from_str(&order)? {
                Order::Tally => {
                    reply = Reply::Tally(counters.take());
                    continue;
                }
                Order::Open { issued_ns } => {
                    ensure!(live == 0, "a worker opens its connections once");
                    let path: Arc<str> = self.path.as_str().into();
                    for n in 0..self.connections {
                        let connection = Connection {
                            target: self.target,
                            source: source_address(self.first + n),
                            path: path.clone(),
                            counters: counters.clone(),
                            goal: goal.clone(),
                            noted: noted.clone(),
                            timeout,
                        };
                        tokio::spawn(connection.hold());
                    }
                    live = self.connections;
                    reply = Reply::Settled(
                        settle_notes(&mut notes, &mut live, 0, issued_ns, timeout).await,
                    );
                    continue;
                }
                Order::Reach { id, issued_ns } => (issued_ns, id, Action::Follow),
                Order::Disconnect { issued_ns } => (issued_ns, 0, Action::Close),
                Order::Resume { id, issued_ns } => (issued_ns, id, Action::Resume),
            };
            generation += 1;
            goals.send_replace(Goal {
                generation,
                id,
                action,
            });
            reply = Reply::Settled(
                settle_notes(&mut notes, &mut live, generation, issued_ns, timeout).await,
            );
        }
    }
}

/// Counts connections' notes until each live one has met goal `generation` or is gone, or
/// `timeout` passes.
async fn settle_notes(
    notes: &mut mpsc::UnboundedReceiver<Note>,
    live: &mut usize,
    generation: u64,
    issued_ns: u64,
    timeout: Duration,
) -> Settled {
    let deadline = tokio::time::Instant::now() + timeout;
    let times = Recorder::default();
    let mut settled = Settled {
        issued_ns,
        ..Settled::default()
    };
    let mut pending = *live;
    while pending > 0 {
        let Ok(Some(note)) = tokio::time::timeout_at(deadline, notes.recv()).await else {
            break;
        };
        match note {
            Note::Reached {
                generation: g,
                at_ns,
            } if g == generation => {
                settled.reached += 1;
                pending -= 1;
                times.record(at_ns.saturating_sub(issued_ns));
                settled.last_ns = settled.last_ns.max(at_ns);
            }
            // Met an earlier goal late.
            Note::Reached { .. } => {}
            Note::Ended { reason, reached } => {
                *live -= 1;
                if reached != Some(generation) {
                    pending -= 1;
                    *settled.failed.entry(reason).or_default() += 1;
                }
            }
        }
    }
    settled.lagging = pending;
    settled.times = times.take();
    settled
}

/// One client connection of a worker.
struct Connection {
    target: SocketAddr,
    source: Ipv4Addr,
    /// Shared by the worker's connections.
    path: Arc<str>,
    counters: Arc<Counters>,
    goal: watch::Receiver<Goal>,
    noted: mpsc::UnboundedSender<Note>,
    timeout: Duration,
}

impl Connection {
    /// Opens the stream and reads it until it ends or the worker stops, meeting each goal.
    async fn hold(mut self) {
        let mut sequence = Sequence::default();
        let mut reached = None;
        let mut goal = *self.goal.borrow_and_update();
        let mut stream = match self.open(None).await {
            Ok(stream) => Some(stream),
            Err(reason) => return self.end(reason, reached),
        };
        loop {
            if let Some(open) = &mut stream {
                let count = |frame: Frame<'_>| {
                    self.counters.count(&mut sequence, &frame);
                    ControlFlow::Continue(())
                };
                match open.read_frames(count) {
                    Ok(received) if received.open => {}
                    Ok(_) => return self.end("closed by the server".into(), reached),
                    Err(e) => return self.end(format!("{e:#}"), reached),
                }
            }
            let met = match goal.action {
                Action::Close => stream.is_none(),
                Action::Follow | Action::Resume => {
                    stream.is_some() && sequence.last().is_some_and(|last| last >= goal.id)
                }
            };
            if met && reached != Some(goal.generation) {
                reached = Some(goal.generation);
                let note = Note::Reached {
                    generation: goal.generation,
                    at_ns: unix_ns(),
                };
                let _ = self.noted.send(note);
            }
            tokio::select! {
                ready = readable(&stream) => if let Err(e) = ready {
                    return self.end(format!("read: {e}"), reached);
                },
                changed = self.goal.changed() => {
                    if changed.is_err() {
                        return; // the worker is stopping
                    }
                    goal = *self.goal.borrow_and_update();
                    match goal.action {
                        Action::Follow => {}
                        Action::Close => stream = None,
                        Action::Resume => {
                            stream = match self.open(sequence.last()).await {
                                Ok(stream) => Some(stream),
                                Err(reason) => return self.end(reason, reached),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Opens the stream, resuming after `last_event_id` when given; the error is the reason
    /// the worker reports.
    async fn open(&self, last_event_id: Option<u64>) -> Result<sse::Stream, String> {
        let request = Request {
            target: self.target,
            source: self.source,
            path: &self.path,
            token: None,
            last_event_id,
        };
        match tokio::time::timeout(self.timeout, sse::Stream::open(&request)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no response within {:?}", self.timeout)),
        }
    }

    fn end(&self, reason: String, reached: Option<u64>) {
        let _ = self.noted.send(Note::Ended { reason, reached });
    }
}

/// Readiness of an open stream; never, for a closed one.
async fn readable(stream: &Option<sse::Stream>) -> std::io::Result<()> {
    match stream {
        Some(stream) => stream.readable().await,
        None => std::future::pending().await,
    }
}

/// Fails clearly when this process may not open enough files for its connections.
fn check_open_files(connections: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let soft: Option<usize> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    if let Some(soft) = soft {
        ensure!(
            connections + 64 <= soft,
            "a worker may open {soft} files, too few for {connections} connections: \
             lower --per-worker"
        );
    }
    Ok(())
}
