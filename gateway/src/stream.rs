//! One browser's SSE stream: snapshot first, then live events, resumable, with heartbeats.
//!
//! The order is the one PROTOCOL.md sets: join the stream's shared subscription (events start
//! collecting in its ring), ask the engine for a snapshot or for the events after `Last-Event-ID`, send those,
//! then send queued and live events whose id is above the last one sent. The client therefore
//! sees no gap, no repeat, and ids only going up. After a NATS outage, or when the client fell
//! a whole ring behind, the same request with `since` = the last id sent fills in what it
//! missed, while the live events that arrive meanwhile are held.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge, histogram, Counter};
use proto::{PlayerId, SnapReply, SnapRequest};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::auth::token_of;
use crate::backend::{self, room_code};
use crate::error::ApiError;
use crate::frame::Frame;
use crate::hub::{is_for, Item, Membership, StreamKey};
use crate::metrics as m;
use crate::state::AppState;

const HEARTBEAT: &[u8] = b": ping\n\n";

/// The id to resume after: the `Last-Event-ID` header, else the `last_event_id` query
/// parameter (a page whose `EventSource` gave up, say on a 502 while every gateway
/// restarted, must open a new one, and cannot set its headers); a malformed value means "no
/// resume".
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<u64> {
    let parse = |v: &str| v.trim().parse().ok();
    match headers.get("last-event-id") {
        Some(header) => header.to_str().ok().and_then(parse),
        None => form_urlencoded::parse(query?.as_bytes())
            .find(|(k, _)| k == "last_event_id")
            .and_then(|(_, v)| parse(&v)),
    }
}

/// A stream route, as its path names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v1/lobby/events`
    Lobby,
    /// `/v1/rooms/{code}/events`, with the code as written.
    Room(&'a str),
}

impl<'a> Route<'a> {
    pub const LOBBY: &'static str = "/v1/lobby/events";
    pub const ROOM: &'static str = "/v1/rooms/{code}/events";

    /// The stream route `path` names, if any.
    pub fn of(path: &'a str) -> Option<Self> {
        if path == Self::LOBBY {
            return Some(Route::Lobby);
        }
        let code = path.strip_prefix("/v1/rooms/")?.strip_suffix("/events")?;
        (!code.is_empty() && !code.contains('/')).then_some(Route::Room(code))
    }
}

/// The response headers of every stream.
pub const RESPONSE_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx not to buffer, whatever its config says.
    ("x-accel-buffering", "no"),
];

/// Checks a stream request (room code, token) and opens the stream it asks for.
pub async fn open_request(
    state: AppState,
    route: Route<'_>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Opened, ApiError> {
    let since = last_event_id(headers, query);
    match route {
        Route::Lobby => open(state, StreamKey::Lobby, None, since).await,
        Route::Room(code) => {
            let code = room_code(code)?;
            let token = token_of(headers, query);
            let claims = state.verifier.authorize(token.as_deref(), &code)?;
            // The token's room: the path may name it as a person typed it.
            open(state, StreamKey::Room(claims.room), Some(claims.sub), since).await
        }
    }
}

/// An open stream: what to send first (the `retry:` advice and the snapshot or the missed
/// events), then what [`Live::next_chunk`] yields.
pub struct Opened {
    pub first: Bytes,
    pub live: Live,
}

impl Opened {
    /// The stream as an axum response, for connections that hyper serves.
    pub fn into_response(self) -> Response {
        let Opened { first, live } = self;
        let rest = futures::stream::unfold(live, |mut live| async move {
            let chunk = live.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), live))
        });
        let chunks = futures::stream::once(async { Ok(first) }).chain(rest);
        let mut response = Response::new(Body::from_stream(chunks));
        for (name, value) in RESPONSE_HEADERS {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

/// Opens a stream for `viewer` (a room's player) or for everyone (the lobby).
async fn open(
    state: AppState,
    key: StreamKey,
    viewer: Option<PlayerId>,
    since: Option<u64>,
) -> Result<Opened, ApiError> {
    let slot = Slot::acquire(&state, key.kind())?;
    let membership = state.hub.join(key);
    let subscribed = tokio::time::timeout(state.config.request_timeout, membership.ready()).await;
    if subscribed != Ok(true) {
        return Err(ApiError::unavailable(
            "cannot subscribe to the stream now",
            state.config.retry,
        ));
    }
    let started = Instant::now();
    let key = membership.key();
    let frames = fetch(&state, key, viewer.as_ref(), since).await?;
    histogram!(m::SNAPSHOT_SECONDS).record(started.elapsed().as_secs_f64());

    counter!(m::CONNECTIONS_OPENED, "stream" => key.kind()).increment(1);

    let mut first = BytesMut::new();
    first.extend_from_slice(format!("retry: {}\n\n", state.config.retry.as_millis()).as_bytes());
    let mut live = Live {
        state,
        viewer,
        membership,
        last: since,
        paused: None,
        resync: None,
        finished: false,
        delivered: counter!(m::EVENTS_DELIVERED),
        _slot: slot,
    };
    live.admit_all(&mut first, frames);
    Ok(Opened {
        first: first.freeze(),
        live,
    })
}

/// A snapshot (`since` = None) or the events after `since`, as frames.
async fn fetch(
    state: &AppState,
    key: &StreamKey,
    viewer: Option<&PlayerId>,
    since: Option<u64>,
) -> Result<Vec<Frame>, ApiError> {
    let (subject, room) = match key {
        StreamKey::Lobby => (state.subjects.lobby_snap(), None),
        StreamKey::Room(code) => (state.subjects.room_snap(code), Some(code)),
    };
    let request = SnapRequest {
        viewer: viewer.cloned(),
        since,
    };
    let body = serde_json::to_vec(&request).expect("requests serialise infallibly");
    let reply = backend::request(state, subject, body.into(), room).await?;
    let reply = SnapReply::decode(&reply).map_err(|r| {
        ApiError::refusal_in(&reply, state.config.retry).unwrap_or_else(|| r.into())
    })?;
    Ok(reply
        .events
        .into_iter()
        .map(|e| Frame::encode(e.id, &e.event, e.data.get().as_bytes()))
        .collect())
}

/// Whether a frame is to be sent after `last` (`None`: nothing sent yet): any newer event, and
/// any snapshot, which resets the client whatever its id.
fn is_newer(frame: &Frame, last: Option<u64>) -> bool {
    frame.snapshot || last.is_none_or(|last| frame.id > last)
}

/// A connection's place in the open-connection count; freeing it is dropping it.
struct Slot {
    state: AppState,
    kind: &'static str,
}

impl Slot {
    fn acquire(state: &AppState, kind: &'static str) -> Result<Slot, ApiError> {
        if state.shutdown.is_cancelled() {
            return Err(ApiError::unavailable(
                "this gateway is shutting down",
                state.config.retry,
            ));
        }
        if !state.nats_connected() {
            return Err(ApiError::unavailable(
                "NATS is unreachable",
                state.config.retry,
            ));
        }
        let open = state.connections.fetch_add(1, Ordering::AcqRel);
        if open >= state.config.max_connections {
            state.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(
                "this gateway is at its connection limit",
                state.config.retry,
            ));
        }
        gauge!(m::CONNECTIONS, "stream" => kind).increment(1.0);
        Ok(Slot {
            state: state.clone(),
            kind,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::AcqRel);
        gauge!(m::CONNECTIONS, "stream" => self.kind).decrement(1.0);
    }
}

/// The state of an open stream between chunks.
pub struct Live {
    state: AppState,
    viewer: Option<PlayerId>,
    membership: Membership,
    /// The last id sent to this client.
    last: Option<u64>,
    /// Frames held back while events may be missing (a NATS outage, a lag), until a
    /// catch-up has filled the gap, and since when.
    /// Boxed: most streams never pause, and this is in every stream's task.
    paused: Option<Box<(tokio::time::Instant, Vec<Frame>)>>,
    /// When to ask for the catch-up (again, after the engine did not answer: it may
    /// reconnect to NATS later than we do), and how many tries are left.
    resync: Option<(tokio::time::Instant, u32)>,
    /// End the stream once what is in hand is sent: the room closed, the client fell behind,
    /// or the stream's topic ended.
    finished: bool,
    delivered: Counter,
    _slot: Slot,
}

/// How often a stream asks for its catch-up before giving up (the browser then reconnects
/// with `Last-Event-ID`, which recovers too), and the waits between tries: doubling from
/// the first to the last, each with up to half again of jitter (about 40 s in all, longer
/// than an engine takes to reconnect to NATS).
const RESYNC_TRIES: u32 = 12;
const RESYNC_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const RESYNC_BACKOFF_LAST: Duration = Duration::from_secs(5);

/// The most a chunk gathers from a ring that has several items ready.
const MAX_CHUNK: usize = 64 * 1024;

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        // Boxed: only a stream retrying a resync needs a timer, so the others don't carry one.
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

impl Live {
    /// Whether `frame` goes to the client next (see [`is_newer`]); if so it counts as sent,
    /// and a room's `room_closed` ends the stream after it (a lobby's is only news).
    fn admit(&mut self, frame: &Frame) -> bool {
        if !is_newer(frame, self.last) {
            return false;
        }
        self.last = Some(frame.id);
        self.finished |= frame.closes_room && matches!(self.membership.key(), StreamKey::Room(_));
        self.delivered.increment(1);
        true
    }

    /// Appends to `out` every frame of `frames` that [`Live::admit`] lets through.
    fn admit_all(&mut self, out: &mut BytesMut, frames: impl IntoIterator<Item = Frame>) {
        for frame in frames {
            if self.admit(&frame) {
                out.extend_from_slice(&frame.bytes);
            }
        }
    }

    /// Holds live frames from now on, until a catch-up fills the gap before them.
    fn hold(&mut self) {
        let now = tokio::time::Instant::now();
        self.paused
            .get_or_insert_with(|| Box::new((now, Vec::new())));
    }

    /// Holds live frames, and asks for the catch-up `after` from now.
    fn start_resync(&mut self, after: Duration) {
        self.hold();
        let at = tokio::time::Instant::now() + after;
        self.resync = Some((at, RESYNC_TRIES));
    }

    /// What one item from the ring means for this client: bytes to send, or nothing (not
    /// for this viewer, already sent, held until a catch-up, or the stream is ending).
    fn take(&mut self, item: Result<Item, RecvError>) -> Option<Bytes> {
        match item {
            Ok(Item::Frame(event)) => {
                if !is_for(event.to.as_deref(), self.viewer.as_ref()) {
                    return None;
                }
                if let Some((since, held)) = self.paused.as_deref_mut() {
                    if held.len() >= self.state.config.client_queue {
                        // Held for too long (the catch-up does not come): what is held is
                        // dropped, to be fetched with the rest, which only a request made
                        // from now on is sure to include.
                        held.clear();
                        *since = tokio::time::Instant::now();
                        if self.resync.is_none() {
                            self.start_resync(Duration::ZERO);
                        }
                    } else {
                        held.push(event.frame.clone());
                    }
                    return None;
                }
                self.admit(&event.frame).then(|| event.frame.bytes.clone())
            }
            Ok(Item::Heartbeat) => Some(Bytes::from_static(HEARTBEAT)),
            Ok(Item::Pause) => {
                self.hold();
                None
            }
            // Also when not paused: a lost `Pause`, or messages the NATS client dropped,
            // leave a gap only a catch-up from the last id can fill.
            Ok(Item::Resync(after_ms)) => {
                self.start_resync(Duration::from_millis(after_ms.into()));
                None
            }
            // The ids went back: from a snapshot, whatever was sent before.
            Ok(Item::Reset) => {
                self.last = None;
                self.start_resync(Duration::ZERO);
                None
            }
            // The client (or its task) fell a whole ring behind: what it skipped is fetched.
            // Only a client that stops reading is dropped (the write stall).
            Err(RecvError::Lagged(_)) => {
                counter!(m::STREAMS_LAGGED).increment(1);
                if self.resync.is_none() {
                    self.start_resync(Duration::ZERO);
                }
                None
            }
            Err(RecvError::Closed) => {
                self.finished = true;
                None
            }
        }
    }

    /// `first` and whatever else the ring already holds for this client, as one chunk: a
    /// busy stream costs one write per wake rather than one per event.
    fn gather(&mut self, first: Bytes) -> Bytes {
        let mut chunk: Option<BytesMut> = None;
        while !self.finished && chunk.as_ref().is_none_or(|c| c.len() < MAX_CHUNK) {
            let item = match self.membership.rx.try_recv() {
                Ok(item) => Ok(item),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(more) = self.take(item) {
                chunk
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&more);
            }
        }
        chunk.map_or(first, BytesMut::freeze)
    }

    /// Fetches what was missed (sharing the request with the topic's other members that
    /// miss the same) and releases the held frames after it. `Some(None)`: nothing new to
    /// send; `None`: give up and end the stream.
    async fn resync(&mut self) -> Option<Option<Bytes>> {
        // Cleared only once the catch-up has answered: a resync cancelled halfway is tried
        // again rather than forgotten.
        let (_, tries) = self.resync?;
        let paused = self.paused.as_ref().map(|paused| paused.0)?;
        let (state, key, viewer, since) = (
            self.state.clone(),
            self.membership.key().clone(),
            self.viewer.clone(),
            self.last,
        );
        let round = RESYNC_TRIES - tries;
        let fetch = move || {
            async move {
                counter!(m::CATCH_UP_REQUESTS).increment(1);
                match fetch(&state, &key, viewer.as_ref(), since).await {
                    Ok(frames) => Ok(Arc::from(frames)),
                    Err(e) => {
                        let wait = (RESYNC_BACKOFF_FIRST * 2u32.saturating_pow(round))
                            .min(RESYNC_BACKOFF_LAST);
                        Err((e, wait + wait.mul_f64(rand::random::<f64>() / 2.0)))
                    }
                }
            }
            .boxed()
        };
        let caught_up = (self.membership)
            .catch_up(self.viewer.as_ref(), self.last, paused, fetch)
            .await;
        self.resync = None;
        match caught_up {
            Ok(missed) => {
                let held = self
                    .paused
                    .take()
                    .map(|paused| paused.1)
                    .unwrap_or_default();
                let mut out = BytesMut::new();
                self.admit_all(&mut out, missed.iter().cloned().chain(held));
                Some((!out.is_empty()).then(|| out.freeze()))
            }
            Err((e, wait)) if tries > 1 => {
                tracing::debug!(error = ?e, "resync failed; retrying");
                self.resync = Some((tokio::time::Instant::now() + wait, tries - 1));
                Some(None)
            }
            Err((e, _)) => {
                tracing::info!(error = ?e, "resync failed; ending the stream");
                None
            }
        }
    }

    /// The next bytes to write, or `None` to end the stream (room closed, shutdown, slow
    /// consumer, or a resync that failed); the browser then reconnects with `Last-Event-ID`.
    /// Cancel-safe: dropped halfway, it loses nothing (a resync in flight is tried again).
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        while !self.finished {
            let retry_at = self.resync.map(|(at, _)| at);
            // No shutdown branch: shutdown closes the topic's ring (see `hub::Topic::stop`),
            // which ends this stream through `RecvError::Closed`.
            tokio::select! {
                biased;
                () = sleep_until_some(retry_at) => {
                    // Boxed: a resync is rare, and its state would otherwise sit in every
                    // stream's task for good.
                    if let Some(chunk) = Box::pin(self.resync()).await? {
                        return Some(chunk);
                    }
                }
                item = self.membership.rx.recv() => {
                    if let Some(first) = self.take(item) {
                        return Some(self.gather(first));
                    }
                }
            }
        }
        None
    }
}
