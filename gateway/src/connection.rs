//! The public listener: stream connections are served straight off the socket, everything
//! else by hyper and the axum router.
//!
//! An SSE stream is a response that never ends, so whatever an HTTP server keeps per
//! connection is kept for the stream's whole life: with hyper that is a read buffer, a write
//! buffer and a dispatcher, over 20 KiB, idle between events. So the first request of each
//! connection is read here. A plain stream request (a `GET` of a stream route over HTTP/1.1,
//! with no body, and no `Origin`, whose CORS answer is the router's business) gets its response
//! head and then each chunk written to the socket, and costs the gateway little more than its
//! task and its place in the topic's ring. Any other request is handed to hyper with the bytes
//! already read, and from then on that connection is the router's, streams included.
//!
//! A stream's response says `Connection: close`: the connection is never reused, so nothing
//! after the stream needs a parser.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics::counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::WriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::MissedTickBehavior;
use tokio_util::task::TaskTracker;

use crate::metrics as m;
use crate::state::AppState;
use crate::stream::{self, Opened, Route, RESPONSE_HEADERS};

/// The longest request head read here; a longer one is left to hyper.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed at most; more is left to hyper. Browsers send about 15, and proxies and
/// CDNs add their own.
const MAX_HEADERS: usize = 64;
/// How long a client may take to send its request head, and a request body.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The most hyper buffers of a request head: twice what is read here, so that a head this
/// module passes on is still read, and far below hyper's default of about 400 KiB.
const HYPER_MAX_BUF: usize = 2 * MAX_HEAD;

/// Connections the kernel may hold for us before we accept them; it caps this at
/// `net.core.somaxconn`. When ten thousand browsers reconnect at once, a short queue drops
/// their SYNs and each retries only after a second.
const BACKLOG: u32 = 65_535;

/// Binds the public listener with a backlog fit for reconnect storms.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections until `shutdown` is cancelled, then waits for those still open to end.
pub async fn serve(listener: TcpListener, state: AppState, router: Router) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, _)) => {
                let tracker = connections.clone();
                connections.spawn(connection(socket, state.clone(), router.clone(), tracker));
            }
            // Out of descriptors, mostly: refusing by not accepting for a moment is all a
            // server can do (what axum::serve does too).
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Closed at once, so that nginx's connects are refused and go to another gateway
    // rather than queue here unserved until the process exits.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection: a stream by hand, anything else through hyper.
async fn connection(
    mut socket: TcpStream,
    state: AppState,
    router: Router,
    connections: TaskTracker,
) {
    let _ = socket.set_nodelay(true);
    let mut head = BytesMut::with_capacity(1024);
    let reading = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket, &mut head));
    let request = tokio::select! {
        read = reading => match read {
            Ok(Ok(request)) => request,
            Ok(Err(_)) | Err(_) => return,
        },
        // A connection that has not even sent its request does not hold up a shutdown.
        () = state.shutdown.cancelled() => return,
    };
    match request {
        Some(request) if request.len == head.len() => {
            if let Some(route) = request.path.as_deref().and_then(Route::of) {
                drop(head);
                let query = request.query.as_deref();
                let stall = state.config.write_stall;
                let opened = stream::open_request(state, route, query, &request.headers).await;
                match opened {
                    // A task of its own, sized for streaming alone: a task is as big as its
                    // largest state for as long as it lives, and this one's opening and
                    // hyper's states are several times a stream's.
                    Ok(opened) => {
                        connections.spawn(write_stream(socket, opened, stall));
                    }
                    Err(e) => write_response(socket, e.into_response()).await,
                }
                return;
            }
            serve_http(socket, head.freeze(), state, router).await
        }
        _ => serve_http(socket, head.freeze(), state, router).await,
    }
}

/// The parts of a request head this module decides on.
struct Head {
    /// Bytes the head took.
    len: usize,
    /// The path, when the request is one a stream could be: `GET`, HTTP/1.1, no body, no
    /// `Origin`, no `Upgrade`.
    path: Option<String>,
    query: Option<String>,
    headers: HeaderMap,
}

/// Reads until a whole request head is in `buf`. `None`: not one to parse here (too long,
/// too many headers, malformed); hyper answers it from the same bytes.
async fn read_head(socket: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<Head>> {
    loop {
        if socket.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(head) = Head::parse(buf) {
            return Ok(head);
        }
    }
}

impl Head {
    /// What the bytes read so far are: `None` while a head may still be coming, then the
    /// head, or `Some(None)` for one not to parse here (too long, too many headers,
    /// malformed), which hyper answers from the same bytes.
    fn parse(buf: &[u8]) -> Option<Option<Head>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => Some(Some(Head::of(&request, len))),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => None,
            _ => Some(None),
        }
    }

    fn of(request: &httparse::Request<'_, '_>, len: usize) -> Head {
        let mut headers = HeaderMap::with_capacity(request.headers.len());
        for h in request.headers.iter() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                headers.append(name, value);
            }
        }
        let plain = request.method == Some("GET")
            && request.version == Some(1)
            // Percent-encoding is the router's to decode, so both paths read a path alike.
            && request.path.is_some_and(|path| !path.contains('%'))
            && !["origin", "upgrade", "content-length", "transfer-encoding"]
                .iter()
                .any(|name| headers.contains_key(*name));
        let (path, query) = match request.path.filter(|_| plain) {
            Some(target) => match target.split_once('?') {
                Some((path, query)) => (Some(path.to_owned()), Some(query.to_owned())),
                None => (Some(target.to_owned()), None),
            },
            None => (None, None),
        };
        Head {
            len,
            path,
            query,
            headers,
        }
    }
}

/// Writes a stream's head and chunks until it ends or the client goes away (or takes no
/// bytes for `stall`: a slow consumer).
async fn write_stream(mut socket: TcpStream, opened: Opened, stall: Duration) {
    let Opened { first, mut live } = opened;
    let head = response_head(
        StatusCode::OK,
        RESPONSE_HEADERS,
        "transfer-encoding: chunked",
    );
    let (reader, mut writer) = socket.split();
    let sent = write_chunk(&mut writer, head.as_bytes(), &first, stall).await;
    // Both would otherwise live as long as the stream (the snapshot can be kilobytes).
    drop((head, first));
    if sent.is_err() {
        return;
    }
    // One watch for the client's end for the stream's whole life: made afresh per event, it
    // would register with the socket's readiness and leave again every time.
    let closed = closed(reader.as_ref());
    tokio::pin!(closed);
    loop {
        let chunk = tokio::select! {
            // Fixed order: no random draw per event, and a stream's own bytes come first.
            biased;
            chunk = live.next_chunk() => chunk,
            () = &mut closed => return,
        };
        let Some(chunk) = chunk else { break };
        // An empty chunk is the end of the body in HTTP/1.1.
        if chunk.is_empty() {
            continue;
        }
        if write_chunk(&mut writer, b"", &chunk, stall).await.is_err() {
            return;
        }
    }
    // The last chunk, so that the client sees the stream end rather than break off.
    let _ = tokio::time::timeout(stall, writer.write_all(b"0\r\n\r\n")).await;
}

/// A chunk up to this size is first copied into one buffer and offered with a plain `write`,
/// which the kernel takes more cheaply than a `writev` of its four pieces; a typical event is
/// a few hundred bytes.
const COPIED_CHUNK: usize = 1024;

/// Writes `prefix` and then `data` as one HTTP/1.1 chunk, in one write when the socket takes
/// it all. Fails if the socket takes no byte for `stall` (each write that makes progress
/// starts the wait again: a big chunk to a slow reader is fine), counting a slow consumer.
async fn write_chunk(
    socket: &mut WriteHalf<'_>,
    prefix: &[u8],
    data: &[u8],
    stall: Duration,
) -> io::Result<()> {
    let (size, size_len) = chunk_size(data.len());
    let parts = chunk_parts(prefix, &size[..size_len], data);
    let sent = write_now(socket.as_ref(), &parts)?;
    if sent == parts.iter().map(|p| p.len()).sum::<usize>() {
        return Ok(());
    }
    // Boxed: a full socket is the rare case, and its wait (a timer, the chunk's pieces) would
    // otherwise be part of every stream's task, which lives for the stream's whole life.
    Box::pin(write_rest(
        socket,
        prefix,
        (size, size_len),
        data,
        sent,
        stall,
    ))
    .await
}

/// The rest of [`write_chunk`] once the socket has taken `sent` bytes of it and no more.
async fn write_rest(
    socket: &mut WriteHalf<'_>,
    prefix: &[u8],
    (size, size_len): ([u8; 18], usize),
    data: &[u8],
    sent: usize,
    stall: Duration,
) -> io::Result<()> {
    let mut parts = chunk_parts(prefix, &size[..size_len], data);
    let mut parts = &mut parts[..];
    IoSlice::advance_slices(&mut parts, sent);
    while !parts.is_empty() {
        let Ok(written) = tokio::time::timeout(stall, socket.write_vectored(parts)).await else {
            counter!(m::SLOW_CONSUMERS).increment(1);
            return Err(io::ErrorKind::TimedOut.into());
        };
        let n = written?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// A chunk's size line (`1a2\r\n`) and its length.
fn chunk_size(len: usize) -> ([u8; 18], usize) {
    use std::io::Write;
    let mut size = [0u8; 18];
    let mut cursor = io::Cursor::new(&mut size[..]);
    write!(cursor, "{len:x}\r\n").expect("a usize in hex and CRLF fit in 18 bytes");
    let len = cursor.position() as usize;
    (size, len)
}

/// The pieces of one chunk on the wire.
fn chunk_parts<'a>(prefix: &'a [u8], size: &'a [u8], data: &'a [u8]) -> [IoSlice<'a>; 4] {
    [
        IoSlice::new(prefix),
        IoSlice::new(size),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ]
}

/// Offers a small chunk to the socket in one `write` and says how many bytes it took (0 for a
/// chunk over [`COPIED_CHUNK`] or a full socket). Not async on purpose: its buffer then never
/// becomes part of a stream's task, which lives, and is sized, for the stream's whole life.
fn write_now(socket: &TcpStream, parts: &[IoSlice<'_>]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > COPIED_CHUNK {
        return Ok(0);
    }
    let mut copied = [0u8; COPIED_CHUNK];
    let mut at = 0;
    for part in parts {
        copied[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    match socket.try_write(&copied[..total]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        written => written,
    }
}

/// Resolves when the client has closed its end, reset it, or sent anything at all: a
/// stream's response says `Connection: close`, so its client has nothing more to say, and
/// reading whatever it sends would let one client keep a worker busy.
///
/// Polled by hand rather than written with `readable().await`: that future holds a waiter of
/// its own (176 bytes in every stream's task), while `poll_read_ready` keeps the waker in the
/// socket, and nothing else waits to read from a stream's socket.
fn closed(socket: &TcpStream) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| loop {
        if std::task::ready!(socket.poll_read_ready(cx)).is_err() {
            return Poll::Ready(());
        }
        let mut byte = [0u8; 1];
        match socket.try_read(&mut byte) {
            // Readiness cleared: the next poll registers the waker again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return Poll::Ready(()),
        }
    })
}

/// Writes a whole (small) response, such as a stream's refusal, and closes.
async fn write_response(mut socket: TcpStream, response: Response) {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let length = format!("content-length: {}", body.len());
    let head = response_head(parts.status, headers, &length);
    let write = async {
        socket.write_all(head.as_bytes()).await?;
        socket.write_all(&body).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(HEAD_TIMEOUT, write).await;
}

/// A response head: the status line, `Date`, `headers`, `framing` (how the body ends), and
/// `Connection: close`, which every response written here carries.
fn response_head<'a>(
    status: StatusCode,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    framing: &str,
) -> String {
    let date = httpdate::fmt_http_date(SystemTime::now());
    let mut head = format!("HTTP/1.1 {status}\r\ndate: {date}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("{framing}\r\nconnection: close\r\n\r\n"));
    head
}

/// Hands the connection to hyper and the router, replaying the bytes already read; ends it
/// gracefully (the response in flight finishes) on shutdown. It gets the limits of the direct
/// path: a bounded head, and the write stall, for streams served here too (a client behind a
/// kept-alive proxy connection, or cross-origin). The router bounds request bodies in time.
async fn serve_http(socket: TcpStream, read: Bytes, state: AppState, router: Router) {
    let blocked = Arc::new(Blocked::default());
    let io = TokioIo::new(Rewind {
        read,
        socket,
        blocked: blocked.clone(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(HYPER_MAX_BUF);
    let conn = http.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let stall = state.config.write_stall;
    tokio::select! {
        _ = conn.as_mut() => {}
        () = blocked.for_longer_than(stall) => {
            counter!(m::SLOW_CONSUMERS).increment(1);
        }
        () = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Since when a connection's writes have been refused by a full socket (0: they are not).
#[derive(Default)]
struct Blocked {
    since_ms: AtomicU64,
}

impl Blocked {
    /// Milliseconds since the first call, on the monotonic clock; never 0, which means
    /// "not blocked".
    fn now_ms() -> u64 {
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        let start = START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn note(&self, poll: &Poll<io::Result<usize>>) {
        match poll {
            Poll::Pending => {
                let _ = self.since_ms.compare_exchange(
                    0,
                    Self::now_ms(),
                    AtomicOrdering::Relaxed,
                    AtomicOrdering::Relaxed,
                );
            }
            Poll::Ready(_) => self.since_ms.store(0, AtomicOrdering::Relaxed),
        }
    }

    /// Resolves once the connection's writes have made no progress for `stall`.
    async fn for_longer_than(&self, stall: Duration) {
        let stall_ms = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        let mut checks = tokio::time::interval((stall / 4).max(Duration::from_millis(10)));
        checks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            checks.tick().await;
            let since = self.since_ms.load(AtomicOrdering::Relaxed);
            if since != 0 && Self::now_ms().saturating_sub(since) >= stall_ms {
                return;
            }
        }
    }
}

/// A socket whose first reads return bytes that were already read from it.
struct Rewind {
    read: Bytes,
    socket: TcpStream,
    blocked: Arc<Blocked>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.has_remaining() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.socket).poll_write(cx, buf);
        self.blocked.note(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        self.blocked.note(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Requests a browser or a proxy could send, to mutate.
    const SEEDS: [&str; 4] = [
        "GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        "GET /v1/rooms/7QK3M9XRT2VA/events?token=a.b.c HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 42\r\n\r\n",
        "POST /v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        "GET /v1/lobby/events HTTP/1.1\r\nHost: x\r\nOrigin: http://x\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ];

    /// What the direct path promises of any head it takes: only a plain `GET` over HTTP/1.1
    /// without a body, `Origin` or `Upgrade`, and without percent-encoding, is a stream here.
    fn check(buf: &[u8]) -> Result<(), TestCaseError> {
        if let Some(Some(head)) = Head::parse(buf) {
            prop_assert!(head.len <= buf.len());
            if let Some(path) = &head.path {
                prop_assert!(buf.starts_with(b"GET "));
                prop_assert!(!path.contains('%') && !path.contains('?'));
                for refused in ["origin", "upgrade", "content-length", "transfer-encoding"] {
                    prop_assert!(!head.headers.contains_key(refused));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8192))]

        #[test]
        fn any_bytes_are_a_head_to_serve_or_to_pass_on_and_never_a_panic(
            buf in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            check(&buf)?;
        }

        #[test]
        fn mutated_requests_are_too(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 0..8),
            cut in any::<usize>(),
        ) {
            let mut buf = SEEDS[seed].as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let at = at % (buf.len() + 1);
                match kind {
                    0 => buf.insert(at, byte),
                    1 if at < buf.len() => buf[at] = byte,
                    _ if at < buf.len() => { buf.remove(at); }
                    _ => {}
                }
            }
            // Truncated anywhere, as a slow client's first read would be.
            buf.truncate(cut % (buf.len() + 1));
            check(&buf)?;
        }
    }

    #[test]
    fn a_head_too_long_or_with_too_many_headers_is_passed_on() {
        let long = format!(
            "GET /v1/lobby/events HTTP/1.1\r\nX: {}\r\n",
            "x".repeat(MAX_HEAD)
        );
        assert!(matches!(Head::parse(long.as_bytes()), Some(None)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET /v1/lobby/events HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(Head::parse(many.as_bytes()), Some(None)));
        assert!(
            Head::parse(b"GET /v1/lobby/events HTTP/1.1\r\nHost").is_none(),
            "still coming"
        );
    }
}
