//! A small HTTP/1.1 client for load tools: keep-alive connections from chosen 127.0.0.x source
//! addresses, a pool of them for requests, and the wire pieces the SSE client
//! ([`crate::sse`]) shares with it: the connect, the request, the response head and chunked
//! bodies.
//!
//! It does only what a benchmark needs and costs little per request: one buffer per connection,
//! `httparse` for response heads, `Content-Length` and chunked bodies. Source addresses matter
//! because tens of thousands of sockets to one port from one address would run a single
//! address out of ephemeral ports; [`source_address`] spreads them over many.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// The `n`th of the loopback source addresses client sockets are spread over, 127.0.0.2 to
/// 127.0.0.251, so that ephemeral ports never run out. 127.0.0.1 is left out: at 100,000
/// streams nginx's own connections to the gateways (from 127.0.0.1) take nearly every port of
/// that address.
pub fn source_address(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8)
}

/// Opens a TCP connection to `addr` from `source` (port chosen by the kernel). No timeout
/// here: callers bound it. The errors name no address, so that the failures of thousands of
/// connections group by their cause.
pub(crate) async fn connect_from(addr: SocketAddr, source: Ipv4Addr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind((source, 0).into())
        .with_context(|| format!("bind {source}"))?;
    let stream = socket.connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The bytes of one request. `headers` are extra `Name: value` pairs.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + path.len() + body.len());
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n").as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !body.is_empty() || method == "POST" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// False when the server said `Connection: close`.
    pub keep_alive: bool,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {}: body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` code of a refusal body (`{"error", "message"}`), or `http_<status>`.
    pub fn error_code(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("http_{}", self.status))
    }
}

/// The parsed head of a response.
pub(crate) struct Head {
    pub(crate) status: u16,
    /// Bytes of the head, its blank line included: the body starts here.
    pub(crate) len: usize,
    pub(crate) body: BodyKind,
    keep_alive: bool,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum BodyKind {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses a response head at the start of `buf`, if it is complete.
pub(crate) fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response
        .parse(buf)
        .context("malformed HTTP response head")?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or(0);
    let mut body = BodyKind::UntilClose;
    let mut keep_alive = response.version == Some(1);
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body = BodyKind::Length(value.parse().context("bad Content-Length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().ends_with("chunked")
        {
            body = BodyKind::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body = BodyKind::Length(0);
    }
    if body == BodyKind::UntilClose {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        len,
        body,
        keep_alive,
    }))
}

/// `Transfer-Encoding: chunked`, decoded as the bytes arrive, however they are split. The
/// payload goes straight to the caller's buffer and only an unfinished size line, chunk end
/// or trailer line is kept here, so an SSE stream that reads into a stack buffer holds no
/// read buffer of its own between reads.
#[derive(Default)]
pub(crate) struct Dechunker {
    state: Chunk,
    /// The start of a line that has not fully arrived.
    partial: Vec<u8>,
}

#[derive(Clone, Copy, Default)]
enum Chunk {
    /// Expecting `<hex size>[;ext]\r\n`.
    #[default]
    Size,
    /// This many bytes of chunk data to go.
    Data(usize),
    /// Expecting the `\r\n` after a chunk's data.
    DataEnd,
    /// Past the last (empty) chunk: trailer lines until an empty one.
    Trailer,
    /// The body has ended.
    Done,
}

impl Dechunker {
    /// Appends the payload in `wire` to `out` and returns how many bytes of `wire` belonged to
    /// the body: all of them, until the body ends.
    pub(crate) fn decode(&mut self, wire: &[u8], out: &mut Vec<u8>) -> anyhow::Result<usize> {
        let joined;
        let mut input: &[u8] = if self.partial.is_empty() {
            wire
        } else {
            self.partial.extend_from_slice(wire);
            joined = std::mem::take(&mut self.partial);
            &joined
        };
        loop {
            match self.state {
                Chunk::Done => break,
                Chunk::Data(_) if input.is_empty() => break,
                Chunk::Data(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = match left - n {
                        0 => Chunk::DataEnd,
                        left => Chunk::Data(left),
                    };
                }
                Chunk::Size | Chunk::DataEnd | Chunk::Trailer => {
                    let Some(end) = find(input, b"\r\n") else {
                        ensure!(input.len() < 1024, "chunk framing line over 1 KiB");
                        self.partial.extend_from_slice(input);
                        input = &[];
                        break;
                    };
                    let line = &input[..end];
                    input = &input[end + 2..];
                    self.state = match self.state {
                        Chunk::DataEnd => {
                            ensure!(line.is_empty(), "chunk data not followed by CRLF");
                            Chunk::Size
                        }
                        Chunk::Trailer if line.is_empty() => Chunk::Done,
                        Chunk::Trailer => Chunk::Trailer,
                        _ => match chunk_size(line)? {
                            0 => Chunk::Trailer,
                            size => Chunk::Data(size),
                        },
                    };
                }
            }
        }
        // What is left can only follow the body's end, so it lies within `wire`.
        Ok(wire.len().saturating_sub(input.len()))
    }

    pub(crate) fn done(&self) -> bool {
        matches!(self.state, Chunk::Done)
    }
}

/// The size of a `<hex size>[;ext]` line.
fn chunk_size(line: &[u8]) -> anyhow::Result<usize> {
    let line = std::str::from_utf8(line).context("chunk size line")?;
    let hex = line.split(';').next().unwrap_or_default().trim();
    usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size line {line:?}"))
}

/// Reads what the socket has (0 at its end) and appends it to `buf`. The scratch buffer lives
/// only between the wake-up and the copy, so an idle connection's task holds no 8 KiB array
/// across its wait: that matters at tens of thousands of connections. Cancel-safe.
pub(crate) async fn read_into(stream: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        let mut chunk = [0u8; 8192];
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The first position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive HTTP/1.1 connection, one request at a time.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes read off the socket so far, heads included.
    pub bytes_read: u64,
}

impl HttpConn {
    /// Connects within `limit`.
    pub async fn connect(
        addr: SocketAddr,
        source: Ipv4Addr,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        let stream = timeout(limit, connect_from(addr, source))
            .await
            .with_context(|| format!("connect to {addr} from {source}: timed out"))?
            .with_context(|| format!("{addr} from {source}"))?;
        Ok(HttpConn {
            stream,
            buf: Vec::new(),
            bytes_read: 0,
        })
    }

    /// Sends `request` (from [`request_bytes`]) and reads the whole response. No timeout here:
    /// callers wrap it.
    pub async fn send(&mut self, request: &[u8]) -> anyhow::Result<Response> {
        self.stream.write_all(request).await?;
        let head = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            self.fill().await?;
        };
        self.buf.drain(..head.len);
        let body = match head.body {
            BodyKind::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.drain(..n).collect()
            }
            BodyKind::Chunked => {
                let (mut body, mut chunks) = (Vec::new(), Dechunker::default());
                loop {
                    let used = chunks.decode(&self.buf, &mut body)?;
                    self.buf.drain(..used);
                    if chunks.done() {
                        break body;
                    }
                    self.fill().await?;
                }
            }
            BodyKind::UntilClose => {
                while self.read_some().await? > 0 {}
                std::mem::take(&mut self.buf)
            }
        };
        Ok(Response {
            status: head.status,
            body,
            keep_alive: head.keep_alive,
        })
    }

    async fn read_some(&mut self) -> anyhow::Result<usize> {
        let n = read_into(&self.stream, &mut self.buf).await?;
        self.bytes_read += n as u64;
        Ok(n)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        ensure!(
            self.read_some().await? > 0,
            "connection closed mid-response"
        );
        Ok(())
    }
}

/// Keep-alive connections to one server shared by many callers, at most `max` open at once,
/// as a browser's or a proxy's connection pool would. Connections come from 127.0.0.1.
pub struct HttpPool {
    addr: SocketAddr,
    idle: Mutex<Vec<HttpConn>>,
    permits: Semaphore,
    limit: Duration,
}

impl HttpPool {
    /// `limit` bounds every wait: for a connection, the connect, and the response.
    pub fn new(addr: SocketAddr, max: usize, limit: Duration) -> Self {
        HttpPool {
            addr,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max),
            limit,
        }
    }

    /// `POST path` with a JSON body and, when given, `Authorization: Bearer <token>`.
    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> anyhow::Result<Response> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        self.send(&request_bytes("POST", path, &headers, body.as_bytes()))
            .await
            .with_context(|| format!("POST {path}"))
    }

    /// Sends on an idle connection (or a new one), within the pool's time limit. A reused
    /// connection that the server closed while idle is replaced once, as browsers do.
    pub async fn send(&self, request: &[u8]) -> anyhow::Result<Response> {
        let _permit = timeout(self.limit, self.permits.acquire())
            .await
            .context("no pooled connection free in time")??;
        let reused = self.idle.lock().expect("pool lock").pop();
        let fresh = reused.is_none();
        let mut conn = match reused {
            Some(conn) => conn,
            None => HttpConn::connect(self.addr, Ipv4Addr::LOCALHOST, self.limit).await?,
        };
        let mut result = timeout(self.limit, conn.send(request)).await;
        if !fresh && matches!(result, Ok(Err(_))) {
            conn = HttpConn::connect(self.addr, Ipv4Addr::LOCALHOST, self.limit).await?;
            result = timeout(self.limit, conn.send(request)).await;
        }
        let response =
            result.map_err(|_| anyhow::anyhow!("no response within {:?}", self.limit))??;
        if response.keep_alive {
            self.idle.lock().expect("pool lock").push(conn);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in the given pieces; the payload, and the bytes after the body's end.
    fn dechunk(pieces: &[&[u8]]) -> (Vec<u8>, Vec<u8>, bool) {
        let (mut chunks, mut out, mut after) = (Dechunker::default(), Vec::new(), Vec::new());
        for piece in pieces {
            let used = chunks.decode(piece, &mut out).unwrap();
            after.extend_from_slice(&piece[used..]);
        }
        (out, after, chunks.done())
    }

    #[test]
    fn dechunks_split_anywhere_up_to_the_end_of_the_trailers() {
        let wire = b"5\r\nhello\r\n3;x=1\r\n wo\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1";
        for cut in 0..wire.len() {
            for second in cut..wire.len() {
                let pieces: [&[u8]; 3] = [&wire[..cut], &wire[cut..second], &wire[second..]];
                let (out, after, done) = dechunk(&pieces);
                assert_eq!(out, b"hello wo", "cut at {cut}, {second}");
                assert_eq!(after, b"HTTP/1.1", "cut at {cut}, {second}");
                assert!(done);
            }
        }
        let (out, _, done) = dechunk(&[b"5\r\nhello\r\n0\r\n"]);
        assert_eq!(out, b"hello");
        assert!(
            !done,
            "the body ends with the blank line after the last chunk"
        );
        assert!(Dechunker::default()
            .decode(b"5\r\nhelloXX\r\n", &mut Vec::new())
            .is_err());
    }
}
