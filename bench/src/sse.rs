//! The benchmarks' SSE client, cheap enough to hold tens of thousands of streams per process:
//! one raw TCP socket from a chosen loopback source address, an HTTP/1.1 request, and frames
//! parsed off the socket (de-chunked when the server uses `Transfer-Encoding: chunked`).
//!
//! An open stream keeps no read buffer of its own: it waits for readiness, then reads into a
//! buffer on the stack and keeps only the bytes of an unfinished frame, and frames are
//! borrowed, not copied. That is what lets 100,000 streams fit on one machine; a reader that
//! owned its buffers and each frame's text would cost some 16 KiB more per stream. Each frame
//! carries the time it was read, for latency, and [`Sequence`] checks a stream's ids as they
//! arrive: a gap or a repeat is counted, never expected.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use nix::cmsg_space;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::http::{connect_from, find, parse_head, read_into, request_bytes, BodyKind, Dechunker};
use crate::unix_ns;

/// What to open.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub target: SocketAddr,
    pub source: Ipv4Addr,
    /// E.g. `/v1/lobby/events`.
    pub path: &'a str,
    /// Sent as `Authorization: Bearer <token>` (a room stream wants its player's token).
    pub token: Option<&'a str>,
    /// Sent as `Last-Event-ID` to resume after this id.
    pub last_event_id: Option<u64>,
}

/// An open event stream, past its response head.
pub struct Stream {
    socket: TcpStream,
    /// `None` for a body that runs until the server closes.
    chunks: Option<Dechunker>,
    /// Bytes of the body not yet handed out as frames.
    text: Vec<u8>,
}

/// One event, borrowed from the stream's buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub id: Option<u64>,
    pub event: &'a str,
    /// The first `data:` line. The gateway writes one line per line of the body, and every
    /// body here is JSON on one line.
    pub data: &'a str,
    /// When the bytes that completed the frame reached this socket: the kernel's receive
    /// timestamp (unix ns; both ends of a benchmark share this machine's clock), not the
    /// time this process got round to reading them, which on cores shared with the server
    /// measures the load tool's own scheduling as well.
    pub received_ns: u64,
}

impl Frame<'_> {
    /// The publisher's send time, from data shaped `{"t":<ns>,...}`.
    pub fn stamp(&self) -> Option<u64> {
        let at = self.data.find("\"t\":")? + 4;
        let digits = &self.data[at..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    }
}

/// What one [`Stream::read_frames`] took off the socket, besides the events.
#[derive(Debug)]
pub struct Received {
    /// Bytes read, chunk framing included.
    pub bytes: usize,
    /// Comment-only blocks: the heartbeats (`: ping`), which are no events.
    pub comments: usize,
    /// False once the server has ended the stream.
    pub open: bool,
}

impl Stream {
    /// Connects, sends the request and reads the response head; fails unless it is a 200.
    /// The caller bounds the time this takes. Errors name no address, so that the failures of
    /// many connections group by their cause.
    pub async fn open(request: &Request<'_>) -> anyhow::Result<Stream> {
        let mut socket = connect_from(request.target, request.source).await?;
        receive_timestamps(&socket).await?;
        let resume = request.last_event_id.map(|id| id.to_string());
        let bearer = request.token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = &resume {
            headers.push(("Last-Event-ID", id));
        }
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer));
        }
        let head = request_bytes("GET", request.path, &headers, b"");
        socket.write_all(&head).await.context("send")?;

        let mut received = Vec::new();
        let head = loop {
            if let Some(head) = parse_head(&received)? {
                break head;
            }
            ensure!(received.len() < 16 * 1024, "response head over 16 KiB");
            let n = read_into(&socket, &mut received).await.context("read")?;
            ensure!(n > 0, "closed before the response head");
        };
        if head.status != 200 {
            bail!("HTTP {}", head.status);
        }
        let mut stream = Stream {
            socket,
            chunks: (head.body == BodyKind::Chunked).then(Dechunker::default),
            text: Vec::new(),
        };
        stream.decode(&received[head.len..])?;
        Ok(stream)
    }

    /// Waits until there is something to read: bytes on the socket, frames left unread by a
    /// [`Stream::read_frames`] that was stopped early, or the end of the body (cancel-safe).
    /// A body that ended came with the frames before it, maybe with the snapshot a caller
    /// stopped at, and a proxy keeps the connection open for its next request: waiting on the
    /// socket then would wait for ever (what the chaos soak took for a silent stream).
    pub async fn readable(&self) -> std::io::Result<()> {
        let ended = self.chunks.as_ref().is_some_and(Dechunker::done);
        if ended || find(&self.text, b"\n\n").is_some() {
            return Ok(());
        }
        self.socket.readable().await
    }

    /// Reads what the socket holds now and hands every complete event to `on_frame`, until
    /// it says stop (the rest wait for the next call). Also call it once right after
    /// [`Stream::open`]: the response head may have come with the first events.
    pub fn read_frames(
        &mut self,
        mut on_frame: impl FnMut(Frame<'_>) -> ControlFlow<()>,
    ) -> anyhow::Result<Received> {
        let mut buf = [0u8; 16 * 1024];
        let mut arrived_ns = None;
        let (bytes, closed) = match self.socket.try_io(Interest::READABLE, || {
            receive(&self.socket, &mut buf, &mut arrived_ns)
        }) {
            Ok(0) => (0, true),
            Ok(n) => (self.decode(&buf[..n]).map(|()| n)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (0, false),
            Err(e) => return Err(e.into()),
        };
        let received_ns = arrived_ns.unwrap_or_else(unix_ns);
        let comments = take_frames(&mut self.text, received_ns, &mut on_frame);
        let ended = self.chunks.as_ref().is_some_and(Dechunker::done);
        Ok(Received {
            bytes,
            comments,
            open: !closed && !ended,
        })
    }

    /// Appends the payload of `wire` to the unread text.
    fn decode(&mut self, wire: &[u8]) -> anyhow::Result<()> {
        match &mut self.chunks {
            Some(chunks) => chunks.decode(wire, &mut self.text).map(drop),
            None => {
                self.text.extend_from_slice(wire);
                Ok(())
            }
        }
    }
}

/// Asks for the kernel's receive time of what reaches `socket` (`SO_TIMESTAMPNS`), and
/// returns once the kernel is taking those times.
///
/// Linux stamps arriving packets only while some socket on the machine asks for it, behind one
/// switch for all sockets, and the first socket to ask does not turn it on: its `setsockopt`
/// leaves that to a workqueue (`net_enable_timestamp`, then `netstamp_clear`), which runs a
/// little later, and later still when the cores are busy. A packet that arrives in between
/// carries no time, and the read that returns it comes without an `SO_TIMESTAMPNS` message. On
/// a machine where nothing else keeps the switch on, that hit the first reads of every process
/// of the load tool (which then fell back to its own clock), and one run in three of
/// `reads_carry_the_kernels_arrival_time`. The switch goes off again, just as lazily, when the
/// last socket that asked closes. So the first call here opens a loopback connection that asks
/// for timestamps and stays open for the life of the process, holding the switch on, and sends
/// a byte through it until one arrives stamped.
pub async fn receive_timestamps(socket: &TcpStream) -> anyhow::Result<()> {
    static HELD: OnceCell<std::net::TcpStream> = OnceCell::const_new();
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
    HELD.get_or_try_init(timestamps_on).await?;
    Ok(())
}

/// A loopback socket that asks for receive timestamps, returned once a read on it came stamped.
async fn timestamps_on() -> anyhow::Result<std::net::TcpStream> {
    const LIMIT: Duration = Duration::from_secs(10);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let mut sender = TcpStream::connect(listener.local_addr()?).await?;
    let (receiver, _) = listener.accept().await?;
    setsockopt(&receiver, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
    let deadline = Instant::now() + LIMIT;
    let mut buf = [0u8; 64];
    loop {
        sender.write_all(b".").await?;
        let mut arrived = None;
        receive_ready(&receiver, &mut buf, &mut arrived).await?;
        if arrived.is_some() {
            // Deregistered from this runtime: the socket only has to stay open.
            return Ok(receiver.into_std()?);
        }
        ensure!(
            Instant::now() < deadline,
            "the kernel did not start timestamping received packets within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits for `socket` to be readable, then [`receive`]s.
async fn receive_ready(
    socket: &TcpStream,
    buf: &mut [u8],
    arrived_ns: &mut Option<u64>,
) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_io(Interest::READABLE, || receive(socket, buf, arrived_ns)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            read => return read,
        }
    }
}

/// One `recvmsg` into `buf`, noting in `arrived_ns` the kernel's receive time of the last
/// bytes read (`SO_TIMESTAMPNS`).
fn receive(
    socket: &TcpStream,
    buf: &mut [u8],
    arrived_ns: &mut Option<u64>,
) -> std::io::Result<usize> {
    let mut space = cmsg_space!(TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(at) = cmsg {
            *arrived_ns = Some(at.tv_sec() as u64 * 1_000_000_000 + at.tv_nsec() as u64);
        }
    }
    Ok(message.bytes)
}

/// Hands the complete events at the start of `text` to `on_frame` until it says stop, and
/// removes what it handed out; returns how many comment-only blocks it passed.
fn take_frames(
    text: &mut Vec<u8>,
    received_ns: u64,
    on_frame: &mut impl FnMut(Frame<'_>) -> ControlFlow<()>,
) -> usize {
    let (mut start, mut comments) = (0, 0);
    while let Some(end) = find(&text[start..], b"\n\n") {
        let block = parse_block(&text[start..start + end], received_ns);
        start += end + 2;
        match block {
            Block::Event(frame) => {
                if on_frame(frame).is_break() {
                    break;
                }
            }
            Block::Comment => comments += 1,
            Block::Other => {}
        }
    }
    text.drain(..start);
    comments
}

/// One block of lines, up to a blank line.
enum Block<'a> {
    Event(Frame<'a>),
    /// Only comments, such as the `: ping` heartbeat.
    Comment,
    /// No data and no comment: `retry:`, or an event without data, which an `EventSource`
    /// does not dispatch either.
    Other,
}

fn parse_block(block: &[u8], received_ns: u64) -> Block<'_> {
    let Ok(block) = std::str::from_utf8(block) else {
        return Block::Other;
    };
    let (mut id, mut event, mut data, mut comment) = (None, "message", None, false);
    for line in block.lines() {
        if line.starts_with(':') {
            comment = true;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => event = value,
            "data" if data.is_none() => data = Some(value),
            _ => {}
        }
    }
    match data {
        Some(data) => Block::Event(Frame {
            id,
            event,
            data,
            received_ns,
        }),
        None if comment => Block::Comment,
        None => Block::Other,
    }
}

/// What one connection has seen of its stream's ids: an id at or below the last one is a
/// duplicate. On the lobby stream every event is public, so ids are consecutive and anything
/// but `last + 1` is a fault; on a room stream a player misses other players' private
/// events, so only duplicates are.
#[derive(Debug, Default)]
pub struct Sequence {
    last: Option<u64>,
}

/// How an event's id relates to the ones before it.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first event, or the one after the last.
    Next,
    /// Some ids were skipped (or the event had no id to check).
    Gap,
    /// An id at or below the last one.
    Duplicate,
    /// A snapshot after the first event: the stream started over instead of resuming.
    Reset,
}

impl Sequence {
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    pub fn observe(&mut self, frame: &Frame<'_>) -> Step {
        let Some(id) = frame.id else {
            return Step::Gap;
        };
        let step = match self.last {
            None => Step::Next,
            Some(_) if frame.event == "snapshot" => Step::Reset,
            Some(last) if id <= last => return Step::Duplicate,
            Some(last) if id == last + 1 => Step::Next,
            Some(_) => Step::Gap,
        };
        self.last = Some(id);
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` in the given pieces as a chunked body, taking frames after each piece
    /// and stopping after every `stop` event; (id, event, data) of each frame, and comments.
    fn frames(wire: &[&[u8]]) -> (Vec<(Option<u64>, String, String)>, usize) {
        let (mut chunks, mut text, mut seen, mut comments) =
            (Dechunker::default(), Vec::new(), Vec::new(), 0);
        let mut on_frame = |f: Frame<'_>| {
            seen.push((f.id, f.event.to_owned(), f.data.to_owned()));
            match f.event {
                "stop" => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        };
        for piece in wire {
            chunks.decode(piece, &mut text).unwrap();
            comments += take_frames(&mut text, 0, &mut on_frame);
        }
        // What a stop left waits for the next read.
        while find(&text, b"\n\n").is_some() {
            comments += take_frames(&mut text, 0, &mut on_frame);
        }
        (seen, comments)
    }

    #[test]
    fn chunked_frames_split_anywhere_come_out_whole_and_in_order() {
        let wire = b"d\r\nretry: 2000\n\n\r\n2e\r\nid: 7\nevent: stop\ndata: {\"rooms\":[]}\n\n: ping\n\n\r\n\
                     21\r\nid: 8\nevent: tick\ndata: {\"t\":5}\n\n\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            for second in cut..wire.len() {
                let pieces: [&[u8]; 3] = [&wire[..cut], &wire[cut..second], &wire[second..]];
                let (seen, comments) = frames(&pieces);
                assert_eq!(seen.len(), 2, "cut at {cut}, {second}");
                assert_eq!(seen[0], (Some(7), "stop".into(), "{\"rooms\":[]}".into()));
                assert_eq!(seen[1], (Some(8), "tick".into(), "{\"t\":5}".into()));
                assert_eq!(comments, 1);
            }
        }
    }

    #[test]
    fn blocks_are_events_comments_or_neither() {
        let Block::Event(frame) = parse_block(b"id: 7\nevent: phase\ndata: {\"a\":1}\ndata: x", 3)
        else {
            panic!("not an event");
        };
        assert_eq!(
            (frame.id, frame.event, frame.data, frame.received_ns),
            (Some(7), "phase", "{\"a\":1}", 3)
        );
        let Block::Event(frame) = parse_block(b"data: x", 3) else {
            panic!("not an event");
        };
        assert_eq!((frame.id, frame.event), (None, "message"));
        assert!(matches!(parse_block(b": ping", 3), Block::Comment));
        assert!(matches!(parse_block(b"retry: 2000", 3), Block::Other));
    }

    #[tokio::test]
    async fn reads_carry_the_kernels_arrival_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (receiver, _) = listener.accept().await.unwrap();
        // As the load tool does: see receive_timestamps for why a bare setsockopt is not enough.
        receive_timestamps(&receiver).await.unwrap();
        let before = unix_ns();
        sender.write_all(b"data: x\n\n").await.unwrap();
        // Taken before the read: a time from the read itself would come after it.
        let after = unix_ns();
        let (mut buf, mut arrived) = ([0u8; 64], None);
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            receive_ready(&receiver, &mut buf, &mut arrived),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&buf[..n], b"data: x\n\n");
        let arrived = arrived.expect("no SO_TIMESTAMPNS message");
        assert!(
            (before..=after).contains(&arrived),
            "{before} <= {arrived} <= {after}"
        );
    }

    /// A body whose end came in the same read as the event a caller stopped at, on a
    /// connection the server keeps open (nginx's keep-alive): the next wait must end.
    #[tokio::test]
    async fn a_body_that_ended_with_the_event_read_is_seen_to_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = socket.readable().await;
            let _ = socket.try_read(&mut head);
            socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                      20\r\nid: 3\nevent: snapshot\ndata: {}\n\n\r\n0\r\n\r\n",
                )
                .await
                .unwrap();
            // Kept open, as a proxy keeps a kept-alive connection.
            std::future::pending::<()>().await;
        });
        let request = Request {
            target: addr,
            source: Ipv4Addr::LOCALHOST,
            path: "/",
            token: None,
            last_event_id: None,
        };
        let wait = Duration::from_secs(5);
        let mut stream = tokio::time::timeout(wait, Stream::open(&request))
            .await
            .unwrap()
            .unwrap();
        let mut snapshot = None;
        stream
            .read_frames(|frame| {
                snapshot = frame.id;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!(snapshot, Some(3));
        tokio::time::timeout(wait, stream.readable())
            .await
            .expect("the wait after the end of the body ends")
            .unwrap();
        assert!(
            !stream
                .read_frames(|_| ControlFlow::Continue(()))
                .unwrap()
                .open
        );
        server.abort();
    }

    #[test]
    fn sequences_count_gaps_duplicates_and_resets() {
        let frame = |id, event| Frame {
            id: Some(id),
            event,
            data: "{\"t\":12}",
            received_ns: 0,
        };
        let mut seq = Sequence::default();
        assert_eq!(seq.observe(&frame(4, "snapshot")), Step::Next);
        assert_eq!(seq.observe(&frame(5, "tick")), Step::Next);
        assert_eq!(seq.observe(&frame(5, "tick")), Step::Duplicate);
        assert_eq!(seq.observe(&frame(7, "tick")), Step::Gap);
        assert_eq!(seq.observe(&frame(9, "snapshot")), Step::Reset);
        assert_eq!(seq.last(), Some(9));
        assert_eq!(frame(1, "tick").stamp(), Some(12));
    }
}
