//! A small HTTP/1.1 client for load tools: keep-alive connections from chosen 127.0.0.x source
//! addresses, a pool of them for requests, and a raw SSE reader.
//!
//! It does only what a benchmark needs and costs little per request: one buffer per connection,
//! `httparse` for response heads, `Content-Length` and chunked bodies. Source addresses matter
//! because tens of thousands of sockets to one port from one address would run a single
//! address out of ephemeral ports; [`source_address`] spreads them over 127.0.0.1–250.
//!
//! [`SseStream`] reads `text/event-stream` frames as a browser's `EventSource` would
//! (`id:`, `event:`, `data:`, comments, `retry:`; lines end in `\n`, a trailing `\r` is
//! dropped) and stamps each frame with the wall-clock time its last byte was read.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// Wall-clock time in unix nanoseconds (both ends of a one-machine benchmark share the clock).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `i`-th of 250 loopback source addresses, 127.0.0.1 to 127.0.0.250.
pub fn source_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % 250) as u8)
}

/// Opens a TCP connection to `addr` from `source` (port chosen by the kernel), within `limit`.
pub async fn connect_from(
    addr: SocketAddr,
    source: Ipv4Addr,
    limit: Duration,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind((source, 0).into())
        .with_context(|| format!("bind {source}:0"))?;
    let stream = timeout(limit, socket.connect(addr))
        .await
        .with_context(|| format!("connect to {addr} from {source}: timed out"))?
        .with_context(|| format!("connect to {addr} from {source}"))?;
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
struct Head {
    status: u16,
    len: usize,
    body: BodyKind,
    keep_alive: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum BodyKind {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses a response head at the start of `buf`, if it is complete.
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
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

/// Incremental chunked-transfer decoding: moves payload bytes from `raw` to `out`.
#[derive(Default)]
struct Dechunker {
    /// Payload bytes left in the current chunk, then its CRLF.
    left: usize,
    in_data: bool,
    done: bool,
}

impl Dechunker {
    /// Consumes what it can of `raw`; returns an error on malformed framing.
    fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut at = 0;
        while !self.done {
            if self.in_data {
                if self.left > 0 {
                    let take = self.left.min(raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    out.extend_from_slice(&raw[at..at + take]);
                    at += take;
                    self.left -= take;
                    continue;
                }
                if raw.len() - at < 2 {
                    break;
                }
                ensure!(&raw[at..at + 2] == b"\r\n", "chunk not followed by CRLF");
                at += 2;
                self.in_data = false;
            } else {
                let Some(end) = find(&raw[at..], b"\r\n") else {
                    break;
                };
                let line = std::str::from_utf8(&raw[at..at + end]).context("chunk size")?;
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                at += end + 2;
                if size == 0 {
                    // Trailers are not used by anyone here; the final CRLF is left unread.
                    self.done = true;
                } else {
                    self.left = size;
                    self.in_data = true;
                }
            }
        }
        raw.drain(..at);
        Ok(())
    }
}

/// Reads what the socket has (0 at its end) and appends it to `buf`. The scratch buffer lives
/// only between the wake-up and the copy, so an idle connection's task holds no 8 KiB array
/// across its wait: that matters at tens of thousands of connections. Cancel-safe.
async fn read_into(stream: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
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
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
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
    pub async fn connect(
        addr: SocketAddr,
        source: Ipv4Addr,
        limit: Duration,
    ) -> anyhow::Result<Self> {
        Ok(HttpConn {
            stream: connect_from(addr, source, limit).await?,
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
                let mut body = Vec::new();
                let mut chunks = Dechunker::default();
                loop {
                    chunks.feed(&mut self.buf, &mut body)?;
                    if chunks.done {
                        break;
                    }
                    self.fill().await?;
                }
                // The CRLF after the last chunk (no trailers expected).
                while self.buf.len() < 2 {
                    self.fill().await?;
                }
                self.buf.drain(..2);
                body
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

/// One SSE frame (or comment) off the wire.
#[derive(Debug)]
pub enum SseItem {
    /// An event. `received_ns` is when its last byte was read (unix ns).
    Event {
        id: Option<u64>,
        event: String,
        data: String,
        received_ns: u64,
    },
    /// A comment-only frame such as the `: ping` heartbeat.
    Comment { received_ns: u64 },
}

/// A `text/event-stream` response being read frame by frame.
pub struct SseStream {
    stream: TcpStream,
    /// Bytes as read (still chunk-encoded, when the response is chunked).
    raw: Vec<u8>,
    chunks: Option<Dechunker>,
    /// Decoded stream text not yet parsed into frames.
    text: Vec<u8>,
    /// Where to resume looking for the end of a frame in `text`.
    scanned: usize,
    received_ns: u64,
    /// Bytes read off the socket, headers included.
    pub bytes: u64,
}

impl SseStream {
    /// `GET path` from `source`; succeeds once a 200 `text/event-stream` head arrived, all
    /// within `limit`. Any other status is an error quoting the body.
    pub async fn open(
        addr: SocketAddr,
        source: Ipv4Addr,
        path: &str,
        headers: &[(&str, &str)],
        limit: Duration,
    ) -> anyhow::Result<SseStream> {
        timeout(limit, Self::open_inner(addr, source, path, headers, limit))
            .await
            .with_context(|| format!("GET {path}: no response head within {limit:?}"))?
            .with_context(|| format!("GET {path}"))
    }

    async fn open_inner(
        addr: SocketAddr,
        source: Ipv4Addr,
        path: &str,
        headers: &[(&str, &str)],
        limit: Duration,
    ) -> anyhow::Result<SseStream> {
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        let mut stream = connect_from(addr, source, limit).await?;
        stream
            .write_all(&request_bytes("GET", path, &all, b""))
            .await?;
        let mut sse = SseStream {
            stream,
            raw: Vec::new(),
            chunks: None,
            text: Vec::new(),
            scanned: 0,
            received_ns: 0,
            bytes: 0,
        };
        let head = loop {
            if let Some(head) = parse_head(&sse.raw)? {
                break head;
            }
            ensure!(
                sse.read_some().await? > 0,
                "closed before the response head"
            );
        };
        sse.raw.drain(..head.len);
        if head.status != 200 {
            // Read what body there is for the message, briefly.
            let _ = timeout(Duration::from_millis(200), sse.read_some()).await;
            bail!(
                "HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&sse.raw).trim()
            );
        }
        if head.body == BodyKind::Chunked {
            sse.chunks = Some(Dechunker::default());
        }
        Ok(sse)
    }

    async fn read_some(&mut self) -> anyhow::Result<usize> {
        let n = read_into(&self.stream, &mut self.raw).await?;
        self.received_ns = unix_ns();
        self.bytes += n as u64;
        Ok(n)
    }

    /// The next frame; `None` once the server ended the stream. Cancel-safe: a cancelled call
    /// loses nothing, so it can sit in a `select!`. No timeout here: callers wrap it.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseItem>> {
        loop {
            // Move newly read bytes into the decoded text.
            match &mut self.chunks {
                Some(chunks) => {
                    chunks.feed(&mut self.raw, &mut self.text)?;
                }
                None => self.text.append(&mut self.raw),
            }
            while let Some(end) = find(&self.text[self.scanned..], b"\n\n") {
                let end = self.scanned + end;
                let item = parse_frame(&self.text[..end], self.received_ns);
                self.text.drain(..end + 2);
                self.scanned = 0;
                if let Some(item) = item {
                    return Ok(Some(item));
                }
            }
            self.scanned = self.text.len().saturating_sub(1);
            if self.chunks.as_ref().is_some_and(|c| c.done) {
                return Ok(None);
            }
            if self.read_some().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads frames until the first event named `name`, within `limit`; earlier events are
    /// returned with it, in order.
    pub async fn until_event(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> anyhow::Result<Vec<SseItem>> {
        let mut items = Vec::new();
        timeout(limit, async {
            loop {
                match self.next().await? {
                    None => bail!("stream ended before its {name} event"),
                    Some(item) => {
                        let found = matches!(&item, SseItem::Event { event, .. } if event == name);
                        items.push(item);
                        if found {
                            return Ok(());
                        }
                    }
                }
            }
        })
        .await
        .with_context(|| format!("no {name} event within {limit:?}"))??;
        Ok(items)
    }
}

/// One frame's text (without its blank line) as an item; `None` for a frame with only `retry:`.
fn parse_frame(frame: &[u8], received_ns: u64) -> Option<SseItem> {
    let text = String::from_utf8_lossy(frame);
    let (mut id, mut event, mut data) = (None, None::<String>, None::<String>);
    let mut comment = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with(':') {
            comment = true;
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => id = value.parse().ok(),
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    match (event, data) {
        (None, None) if comment => Some(SseItem::Comment { received_ns }),
        (None, None) => None,
        (event, data) => Some(SseItem::Event {
            id,
            event: event.unwrap_or_else(|| "message".into()),
            data: data.unwrap_or_default(),
            received_ns,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_reads() {
        let mut chunks = Dechunker::default();
        let mut out = Vec::new();
        let mut raw = b"5\r\nhel".to_vec();
        chunks.feed(&mut raw, &mut out).unwrap();
        raw.extend_from_slice(b"lo\r\n3;x=1\r\n wo\r\n0\r\n");
        chunks.feed(&mut raw, &mut out).unwrap();
        assert_eq!(out, b"hello wo");
        assert!(chunks.done);
    }

    #[test]
    fn parses_frames_and_heartbeats() {
        let Some(SseItem::Event {
            id, event, data, ..
        }) = parse_frame(b"id: 7\nevent: phase\ndata: {\"a\":1}\ndata: x", 1)
        else {
            panic!("not an event");
        };
        assert_eq!(
            (id, event.as_str(), data.as_str()),
            (Some(7), "phase", "{\"a\":1}\nx")
        );
        assert!(matches!(
            parse_frame(b": ping", 1),
            Some(SseItem::Comment { .. })
        ));
        assert!(parse_frame(b"retry: 2000", 1).is_none());
    }
}
