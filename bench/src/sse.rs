//! A cheap SSE client for holding tens of thousands of streams per process: one raw TCP socket
//! from a chosen loopback source address, an HTTP/1.1 request written by hand, and frames
//! parsed off the socket (de-chunking `Transfer-Encoding: chunked` when the server uses it).
//!
//! An open stream keeps no read buffer of its own: it waits for readiness, then reads into a
//! buffer on the stack and keeps only the bytes of an unfinished frame, and frames are
//! borrowed, not copied. ([`crate::http::SseStream`] is the general reader, which owns its
//! buffers and each frame's text: right for a few thousand browser-like streams, about 16 KiB
//! each too many for 100,000.) It also checks the
//! stream's ids as they arrive ([`Sequence`]): a gap or a repeat is counted, never expected.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::http::find;

/// The `n`th of the loopback source addresses held streams are spread over, 127.0.0.2 to
/// 127.0.0.251, so that ephemeral ports never run out. Unlike [`crate::http::source_address`]
/// this leaves out 127.0.0.1: at 100,000 streams nginx's own connections to the gateways
/// (from 127.0.0.1) take nearly every port of that address.
pub fn source_address(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8)
}

/// What to open.
#[derive(Clone, Debug)]
pub struct Request {
    pub target: SocketAddr,
    pub source: Ipv4Addr,
    /// E.g. `/v1/lobby/events`.
    pub path: String,
    /// Sent as `Last-Event-ID` to resume after this id.
    pub last_event_id: Option<u64>,
}

/// An open event stream, past its response head.
pub struct Stream {
    socket: TcpStream,
    body: Body,
    /// Bytes of the body not yet part of a complete frame.
    text: Vec<u8>,
}

/// One event, borrowed from the stream's buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub id: Option<u64>,
    pub event: &'a str,
    /// The first `data:` line.
    pub data: &'a str,
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

impl Stream {
    /// Connects, sends the request and reads the response head; fails unless it is a 200.
    /// The caller bounds the time this takes.
    pub async fn open(request: &Request) -> anyhow::Result<Stream> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind((request.source, 0).into())
            .with_context(|| format!("bind {}", request.source))?;
        let mut socket = socket.connect(request.target).await.context("connect")?;
        let resume = request
            .last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "GET {} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{resume}\r\n",
            request.path
        );
        socket.write_all(head.as_bytes()).await.context("send")?;

        let mut received = Vec::with_capacity(1024);
        let end = loop {
            if let Some(end) = find(&received, b"\r\n\r\n") {
                break end;
            }
            ensure!(received.len() < 16 * 1024, "response head over 16 KiB");
            let n = socket.read_buf(&mut received).await.context("read")?;
            ensure!(n > 0, "closed before the response head");
        };
        let head = std::str::from_utf8(&received[..end]).context("response head")?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            bail!("HTTP {status}");
        }
        let chunked = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked"
            })
        });
        let mut stream = Stream {
            socket,
            body: if chunked {
                Body::Chunked(Chunk::Size, Vec::new())
            } else {
                Body::Plain
            },
            text: Vec::new(),
        };
        stream.body.decode(&received[end + 4..], &mut stream.text)?;
        Ok(stream)
    }

    /// Waits until the socket has something to read (cancel-safe).
    pub async fn readable(&self) -> std::io::Result<()> {
        self.socket.readable().await
    }

    /// Reads what the socket holds now and hands every complete event to `on_frame`;
    /// `Ok(false)` once the server has ended the stream. Also call it once right after
    /// [`Stream::open`]: the response head may have come with the first events.
    pub fn read_frames(&mut self, mut on_frame: impl FnMut(Frame<'_>)) -> anyhow::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let open = match self.socket.try_read(&mut buf) {
            Ok(0) => false,
            Ok(n) => self.body.decode(&buf[..n], &mut self.text)?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(e.into()),
        };
        let mut start = 0;
        while let Some(end) = find(&self.text[start..], b"\n\n") {
            if let Some(frame) = parse_frame(&self.text[start..start + end]) {
                on_frame(frame);
            }
            start += end + 2;
        }
        self.text.drain(..start);
        Ok(open)
    }
}

/// How the response body is framed on the wire.
enum Body {
    /// Until the server closes.
    Plain,
    /// `Transfer-Encoding: chunked`: where we are, and bytes of an unfinished size line or
    /// chunk end.
    Chunked(Chunk, Vec<u8>),
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Expecting `<hex size>[;ext]\r\n`.
    Size,
    /// This many bytes of chunk data to go.
    Data(usize),
    /// Expecting the `\r\n` after a chunk's data.
    End,
    /// The last (empty) chunk has been read.
    Done,
}

impl Body {
    /// Appends the payload of `wire` to `text`; false once the body has ended.
    fn decode(&mut self, wire: &[u8], text: &mut Vec<u8>) -> anyhow::Result<bool> {
        let (state, partial) = match self {
            Body::Plain => {
                text.extend_from_slice(wire);
                return Ok(true);
            }
            Body::Chunked(state, partial) => (state, partial),
        };
        let joined;
        let mut input: &[u8] = if partial.is_empty() {
            wire
        } else {
            partial.extend_from_slice(wire);
            joined = std::mem::take(partial);
            &joined
        };
        while !input.is_empty() {
            match *state {
                Chunk::Size => {
                    let Some(line_end) = find(input, b"\r\n") else {
                        ensure!(input.len() < 1024, "chunk size line over 1 KiB");
                        partial.extend_from_slice(input);
                        break;
                    };
                    let line = std::str::from_utf8(&input[..line_end])?;
                    let hex = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size line {line:?}"))?;
                    *state = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                    input = &input[line_end + 2..];
                }
                Chunk::Data(left) => {
                    let n = left.min(input.len());
                    text.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *state = if n == left {
                        Chunk::End
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::End => {
                    if input.len() < 2 {
                        partial.extend_from_slice(input);
                        break;
                    }
                    ensure!(
                        input.starts_with(b"\r\n"),
                        "chunk data not followed by CRLF"
                    );
                    *state = Chunk::Size;
                    input = &input[2..];
                }
                Chunk::Done => break,
            }
        }
        Ok(!matches!(state, Chunk::Done))
    }
}

/// An event from one block of lines; `None` for blocks without data (comments, `retry:`).
fn parse_frame(block: &[u8]) -> Option<Frame<'_>> {
    let block = std::str::from_utf8(block).ok()?;
    let (mut id, mut event, mut data) = (None, "message", None);
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => event = value,
            "data" if data.is_none() => data = Some(value),
            _ => {}
        }
    }
    Some(Frame {
        id,
        event,
        data: data?,
    })
}

/// What one connection has seen of its stream's ids. Events of one stream carry consecutive
/// ids here (every event is public), so anything but `last + 1` is a fault.
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

    fn frames(body: &mut Body, wire: &[&[u8]]) -> (Vec<(Option<u64>, String, String)>, bool) {
        let (mut text, mut seen, mut open) = (Vec::new(), Vec::new(), true);
        for piece in wire {
            open = body.decode(piece, &mut text).unwrap();
            let mut start = 0;
            while let Some(end) = find(&text[start..], b"\n\n") {
                if let Some(f) = parse_frame(&text[start..start + end]) {
                    seen.push((f.id, f.event.to_owned(), f.data.to_owned()));
                }
                start += end + 2;
            }
            text.drain(..start);
        }
        (seen, open)
    }

    #[test]
    fn chunked_frames_split_anywhere_come_out_whole() {
        let wire =
            b"d\r\nretry: 2000\n\n\r\n2a\r\nid: 7\nevent: snapshot\ndata: {\"rooms\":[]}\n\n\r\n\
                     21\r\nid: 8\nevent: tick\ndata: {\"t\":5}\n\n\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            for second in cut..wire.len() {
                let mut body = Body::Chunked(Chunk::Size, Vec::new());
                let pieces: [&[u8]; 3] = [&wire[..cut], &wire[cut..second], &wire[second..]];
                let (seen, open) = frames(&mut body, &pieces);
                assert_eq!(seen.len(), 2, "cut at {cut}, {second}");
                assert_eq!(
                    seen[0],
                    (Some(7), "snapshot".into(), "{\"rooms\":[]}".into())
                );
                assert_eq!(seen[1], (Some(8), "tick".into(), "{\"t\":5}".into()));
                assert!(!open, "the last chunk ends the body");
            }
        }
    }

    #[test]
    fn plain_bodies_pass_through() {
        let (seen, open) = frames(&mut Body::Plain, &[b": ping\n\nid: 3\nda", b"ta: x\n\n"]);
        assert_eq!(seen, vec![(Some(3), "message".into(), "x".into())]);
        assert!(open);
    }

    #[test]
    fn sequences_count_gaps_duplicates_and_resets() {
        let frame = |id, event| Frame {
            id: Some(id),
            event,
            data: "{\"t\":12}",
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
