// Phasecast: the browser client of the Mafia game. No framework, no build step.
//
// Two live streams, both the browser's native EventSource:
//   GET /v1/lobby/events          the open rooms (snapshot, room_opened, room_updated, room_closed)
//   GET /v1/rooms/<code>/events   one room as this player may see it (snapshot, then events)
// Every SSE event has an `id`; after a dropped connection the browser reconnects by itself and
// sends `Last-Event-ID`, and the gateway replays what happened meanwhile. The page only renders
// state: it never guesses what the server did not say.

'use strict';

const $ = (id) => document.getElementById(id);

const PHASE_LABEL = {
  waiting: 'Waiting for players',
  day_intro: 'Morning',
  notice: 'Announcements',
  day: 'Day: discussion',
  vote: 'Final vote',
  vote_result: 'Vote result',
  night_intro: 'Nightfall',
  night: 'Night',
  ended: 'Game over',
};
const ROLE_LABEL = { mafia: 'Mafia', doctor: 'Doctor', police: 'Police', citizen: 'Citizen' };
const LOBBY_PHASE_LABEL = { waiting: 'waiting', playing: 'in play', ended: 'finished' };
const CAUSE_TEXT = { vote: 'was voted out', mafia: 'was killed by the mafia', left: 'left the game' };
const ROOM_EVENTS = ['snapshot', 'player_joined', 'player_left', 'phase', 'vote', 'death', 'chat',
  'game_over', 'room_closed', 'role', 'investigation', 'mafia_pick', 'protect', 'roles'];
const LOBBY_EVENTS = ['snapshot', 'room_opened', 'room_updated', 'room_closed'];
const MAX_CHAT = 300;
const MAX_LOG = 400;

// ───────────────────────────── errors as sentences ─────────────────────────────

const ERROR_SENTENCES = {
  malformed: 'The server could not read that request.',
  too_large: 'That is too long to send.',
  unknown_command: 'The server does not know that action.',
  invalid_field: 'Something in that request was not valid.',
  invalid_room: 'Those room settings are not possible: a room has 3 to 20 players, at least one mafia, more than twice as many players as mafia, and no more special roles than players.',
  no_such_room: 'There is no room with that code. It may have closed already.',
  no_such_player: 'That player is not in this room.',
  wrong_phase: 'That cannot be done in this phase of the game.',
  not_alive: 'Dead players cannot do that.',
  wrong_role: 'Your role cannot do that.',
  invalid_target: 'You cannot choose that player.',
  not_host: 'Only the host can start the game.',
  room_full: 'This room is full.',
  not_enough_players: 'The room is not full yet: wait until everyone has joined.',
  already_started: 'This game has already started; nobody can join it any more.',
  invalid_name: 'A name has 1 to 20 characters and no control characters.',
  name_taken: 'Someone in this room already has that name. Pick another one.',
  invalid_text: 'A chat message has 1 to 500 characters.',
  chat_closed: 'You cannot chat right now.',
  already_investigated: 'You have already investigated someone tonight.',
  unauthorized: 'Your seat in this room is no longer valid (it expired or was never yours). Join again with your name.',
  forbidden: 'Your pass belongs to a different room.',
  not_found: 'The server does not know that address.',
  unavailable: 'The game server is busy or restarting. Try again in a moment.',
  timeout: 'The game server did not answer in time. Try again.',
  internal: 'Something went wrong on the server. Try again.',
  rate_limited: 'Too many attempts in a short time. Wait a moment and try again.',
  network: 'The server cannot be reached. Check your connection and try again.',
  bad_gateway: 'The server cannot be reached right now. Try again in a moment.',
  missing_name: 'Enter your name first: 1 to 20 characters.',
  missing_title: 'Give the room a title.',
  missing_code: 'Enter a room code: 12 letters and digits, like 7QK3-M9XR-T2VA.',
  too_many_streams: 'Too many game tabs are open from your network. Close one and try again.',
};

function codeForStatus(status) {
  if (status === 429) return 'rate_limited';
  if (status === 401) return 'unauthorized';
  if (status === 403) return 'forbidden';
  if (status === 404) return 'not_found';
  // Gone: a room that has closed (a proxy or another backend may say so with 410).
  if (status === 410) return 'no_such_room';
  if (status === 502 || status === 503) return 'bad_gateway';
  if (status === 504) return 'timeout';
  return 'internal';
}

class ApiError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
  get sentence() {
    return ERROR_SENTENCES[this.code] || (this.message ? `The server refused: ${this.message}` : 'Something went wrong.');
  }
}

function showError(err) {
  const e = err instanceof ApiError ? err : new ApiError('internal', String(err?.message || err));
  if (!(err instanceof ApiError)) console.error(err);
  $('error-text').textContent = e.sentence;
  $('error').dataset.code = e.code;
  $('error').hidden = false;
}
function clearError() {
  $('error').hidden = true;
  $('error').dataset.code = '';
  $('error-text').textContent = '';
}

// ───────────────────────────── HTTP ─────────────────────────────

// Waits before each retry of a request that did not get through (about 4 s in all); the last
// one repeats while an `unavailable` is still retried (below).
const RETRY_DELAYS = [250, 500, 1000, 2000];
// How long the gateway's `unavailable` is retried in all. A room changing engines answers so
// for up to about 5 s (an engine's lease, then the takeover), and a command must outlast
// that rather than show an error; retrying is safe, as every request carries its request id.
const UNAVAILABLE_RETRY_MS = 12000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// What a response's `Retry-After` asks for, in ms (0 when it says nothing usable). Seconds or
// an HTTP date; capped, so that a wrong header cannot park the page for ever.
function retryAfterMs(res) {
  const v = res?.headers?.get('Retry-After')?.trim();
  if (!v) return 0;
  const ms = /^\d+$/.test(v) ? Number(v) * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 30000) : 0;
}

// A `request_id` (docs/protocol.md, "Retrying safely"): random, so that nobody else can
// claim a join's or a create's reply with it; the same on every retry of one request, so
// that a retry of one the engine did apply gets its first reply back instead of applying it
// again.
// (`crypto.randomUUID` needs a secure context; the page is also served over plain HTTP.)
function newRequestId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

// POSTs `body` (a create, a join or a room command) with a request id, so that it can be
// retried whatever became of an attempt: no answer at all (the connection broke, perhaps
// after the gateway had sent it on), nginx's own 502/503 (no gateway took it), the gateway's
// `unavailable` (for about 12 s: a room moving to another engine), or once the gateway's 504
// (the engine did not answer in time: it may have applied it). Each wait is at least what
// the answer's `Retry-After` asks for.
async function post(path, body, token) {
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const payload = JSON.stringify({ ...body, request_id: newRequestId() });
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    let res = null;
    try {
      res = await fetch(path, { method: 'POST', headers, body: payload, credentials: 'same-origin' });
    } catch { /* no answer at all */ }
    let json = null;
    if (res) { try { json = await res.json(); } catch { /* not JSON: an error page from the proxy */ } }
    const unavailable = !!res && (res.status === 502 || res.status === 503) && json?.error === 'unavailable';
    const transient = !res
      || ((res.status === 502 || res.status === 503) && (!json || json.error === 'unavailable'))
      || (res.status === 504 && json?.error === 'timeout' && attempt === 0);
    if (transient) {
      const wait = Math.max(RETRY_DELAYS[Math.min(attempt, RETRY_DELAYS.length - 1)], retryAfterMs(res));
      if (attempt < RETRY_DELAYS.length || (unavailable && Date.now() - started + wait <= UNAVAILABLE_RETRY_MS)) {
        await sleep(wait);
        continue;
      }
    }
    if (!res) throw new ApiError('network');
    if (!res.ok || !json || json.ok === false) {
      throw new ApiError(json?.error || codeForStatus(res.status), json?.message, res.status);
    }
    return json;
  }
}

// ───────────────────────────── room codes ─────────────────────────────

// Our engine's codes are 12 characters of Crockford's base32 (digits and upper-case letters
// without I, L, O, U), shown in groups of four to be read aloud: 7QK3-M9XR-T2VA. What a
// person types is made canonical before use when it is such a code: spaces and dashes
// dropped, upper case, and the look-alikes O → 0, I and L → 1. Any other code (another
// backend's: PROTOCOL.md allows any [A-Za-z0-9]{1,64}, case-sensitive) is kept as typed,
// without its spaces and dashes.
const DRAWN_CODE = /^[0-9A-HJKMNP-TV-Z]{12}$/;
function normalizeCode(text) {
  const typed = String(text || '').replace(/[\s\-_.]+/g, '');
  const drawn = typed.toUpperCase().replace(/O/g, '0').replace(/[IL]/g, '1');
  return DRAWN_CODE.test(drawn) ? drawn : typed;
}
const isCode = (code) => /^[A-Za-z0-9]{1,64}$/.test(code);
function formatCode(code) { return code.match(/.{1,4}/g)?.join('-') ?? code; }

// ───────────────────────────── seats ─────────────────────────────

// A seat ({player_id, token, name}) belongs to a tab: two tabs of one browser may be two
// players of one room. The tab's own seat is in sessionStorage (it survives a reload); the
// last seat taken in this browser is also in localStorage, for a new tab or a reopened link.
// A new tab takes that one only if no open tab of this browser holds it: otherwise a friend
// opening the invite link in a second tab would silently become the first tab's player.
// The page always names its own token (the stream's ?token=, the commands' Authorization),
// never relying on the cookie, which the browser shares between tabs.
const seatKey = (code) => `phasecast:seat:${code}`;
function readSeat(store, code) {
  try {
    const s = JSON.parse(store.getItem(seatKey(code)) || 'null');
    return s && typeof s.token === 'string' && typeof s.player_id === 'string' ? s : null;
  } catch { return null; }
}
// The rooms where this tab has a seat of its own (read once per lobby render, not per room).
function tabSeatCodes() {
  const codes = new Set();
  try {
    for (let i = 0; i < sessionStorage.length; i++) {
      const key = sessionStorage.key(i);
      const code = key?.startsWith(seatKey('')) ? key.slice(seatKey('').length) : null;
      if (code && readSeat(sessionStorage, code)) codes.add(code);
    }
  } catch { /* storage unavailable: no seats */ }
  return codes;
}
// This tab's seat in room `code`: `{seat}` its own, or the browser's last one there, which
// it then adopts; `{held}` that last one when another open tab of this browser holds it;
// `{}` none.
async function findSeat(code) {
  const own = readSeat(sessionStorage, code);
  if (own) return { seat: own };
  const last = readSeat(localStorage, code);
  if (!last) return {};
  if (await seatHeldElsewhere(code, last)) return { held: last };
  // Adopted at once (no await between the answer and this), so that from now on this tab
  // answers for the seat itself.
  saveSeat(code, last, { shared: false });
  return { seat: last };
}
function saveSeat(code, seat, { shared = true } = {}) {
  try { sessionStorage.setItem(seatKey(code), JSON.stringify(seat)); } catch { /* private mode */ }
  if (shared) try { localStorage.setItem(seatKey(code), JSON.stringify(seat)); } catch { /* private mode */ }
}
function dropSeat(code, playerId) {
  try { sessionStorage.removeItem(seatKey(code)); } catch { /* ignore */ }
  // Another tab's seat in the same room stays.
  const last = readSeat(localStorage, code);
  if (last && (!playerId || last.player_id === playerId)) {
    try { localStorage.removeItem(seatKey(code)); } catch { /* ignore */ }
  }
}
// Which tab holds a seat, asked over a BroadcastChannel of this browser's tabs (same
// origin): "who holds player P of room X?"; a tab whose own seat (sessionStorage) it is
// answers. No answer within SEAT_ASK_MS: nobody does. Two tabs asking for one seat while
// both wait: the one that asked first (by the clock the tabs share, then the nonce) takes
// it and tells the other it is held, so that not both take it; the later one's question may
// reach the earlier only, so the earlier one decides.
const SEAT_ASK_MS = 200;
const seatChannel = typeof BroadcastChannel === 'function' ? new BroadcastChannel('phasecast:seats') : null;
const seatQuestions = new Map(); // nonce → this tab's open question
seatChannel?.addEventListener('message', ({ data: m }) => {
  if (!m || typeof m !== 'object' || typeof m.nonce !== 'string') return;
  if (m.type === 'who-holds' && typeof m.at === 'number') {
    const mine = readSeat(sessionStorage, m.code);
    const before = (q) => q.at < m.at || (q.at === m.at && q.nonce < m.nonce);
    const rival = [...seatQuestions.values()]
      .some((q) => q.code === m.code && q.playerId === m.player_id && before(q));
    if (mine?.player_id === m.player_id || rival) seatChannel.postMessage({ type: 'held', nonce: m.nonce });
  } else if (m.type === 'held') {
    seatQuestions.get(m.nonce)?.answer(true);
  }
});
function seatHeldElsewhere(code, seat) {
  // A browser without BroadcastChannel cannot ask: it takes the seat, as pages always did.
  if (!seatChannel) return Promise.resolve(false);
  const nonce = newRequestId();
  return new Promise((resolve) => {
    const answer = (held) => {
      if (!seatQuestions.delete(nonce)) return;
      clearTimeout(timer);
      resolve(held);
    };
    const timer = setTimeout(() => answer(false), SEAT_ASK_MS);
    const at = Date.now();
    seatQuestions.set(nonce, { code, playerId: seat.player_id, nonce, at, answer });
    seatChannel.postMessage({ type: 'who-holds', code, player_id: seat.player_id, nonce, at });
  });
}
function rememberName(name) { try { localStorage.setItem('phasecast:name', name); } catch { /* ignore */ } }
function recallName() { try { return localStorage.getItem('phasecast:name') || ''; } catch { return ''; } }

// ───────────────────────────── the connection banner ─────────────────────────────

const conn = {
  set(stateName, text) {
    const el = $('conn');
    el.dataset.state = stateName;
    el.textContent = text || '';
    el.hidden = stateName === 'open' || stateName === 'idle';
  },
  count(attr, n) { $('conn').dataset[attr] = String(n); },
};

// ───────────────────────────── a resumable stream ─────────────────────────────

// Wraps one EventSource. While the browser can reconnect by itself (the stream ended or the
// network dropped), it does, with Last-Event-ID. When it gives up (the reconnect got a non-200
// status, e.g. 502 while every gateway is down, 503 while a room changes engines, or 401),
// this class asks the server why with a plain fetch and either opens a new EventSource after
// a wait or reports a fatal error. A new EventSource sends no Last-Event-ID, so it names the
// last id this stream saw in its query instead (`last_event_id`), and the gateway replays
// what happened meanwhile rather than sending a fresh snapshot (docs/protocol.md §12.2).
const BEHIND_LIMIT = 3; // events in a row with an id below the last one before starting afresh

class Stream {
  constructor({ url, names, onEvent, onAuthFailure, onFatal, label }) {
    this.url = url; // () => string: the stream's address without any id
    this.names = names;
    this.onEvent = onEvent;
    this.onAuthFailure = onAuthFailure || (() => false);
    this.onFatal = onFatal;
    this.label = label;
    this.es = null;
    this.closed = false;
    this.isOpen = false;
    this.lastId = null;
    this.lastIdFor = null; // the address (room and token) `lastId` was seen on
    this.opened = null; // the address of the current EventSource, without its id
    this.behind = 0;
    this.opens = 0;
    this.drops = 0;
    this.ignored = 0;
    this.restarts = 0;
    this.resyncs = 0;
    this.notice = null; // a sentence the banner shows instead of "reconnecting" (e.g. a 429's)
    this.backoff = 1000;
    this.timer = null;
  }

  // Where to (re)connect: with `last_event_id` once this stream has seen an id on this same
  // address (same room, same token). Never on a first connection, after a switch of token,
  // or after starting afresh (resync); the gateway prefers a Last-Event-ID header anyway.
  target() {
    const base = this.url();
    if (this.lastId == null || this.lastIdFor !== base) return base;
    return `${base}${base.includes('?') ? '&' : '?'}last_event_id=${this.lastId}`;
  }

  start() {
    if (this.closed) return;
    this.opened = this.url();
    const es = new EventSource(this.target());
    this.es = es;
    conn.set(this.opens ? 'reconnecting' : 'connecting', this.notice || (this.opens ? 'Connection lost: reconnecting…' : 'Connecting…'));
    es.onopen = () => {
      if (es !== this.es) return;
      this.isOpen = true;
      this.opens += 1;
      this.backoff = 1000;
      this.notice = null;
      conn.count('opens', this.opens);
      conn.set('open', '');
    };
    es.onerror = () => {
      if (es !== this.es || this.closed) return;
      if (this.isOpen) {
        this.isOpen = false;
        this.drops += 1;
        conn.count('drops', this.drops);
      }
      conn.set('reconnecting', this.notice || 'Connection lost: reconnecting…');
      if (es.readyState === EventSource.CLOSED) this.diagnose();
      // Otherwise (CONNECTING) the browser retries by itself with Last-Event-ID.
    };
    for (const name of this.names) {
      es.addEventListener(name, (ev) => { if (es === this.es) this.dispatch(name, ev); });
    }
  }

  dispatch(name, ev) {
    const raw = ev.lastEventId;
    const id = raw !== '' && raw != null && /^\d+$/.test(raw) ? Number(raw) : null;
    if (name !== 'snapshot' && id != null && this.lastId != null && id <= this.lastId) {
      // Ids only go up; a repeat or a step back is never shown twice. Counted for the tests.
      this.ignored += 1;
      conn.count('ignored', this.ignored);
      // Ids that went back without the snapshot that should come with that (docs/protocol.md
      // §12.4) would keep this page silent until they passed the old ones: after a few in a
      // row, start again without an id, for a fresh snapshot.
      if (id < this.lastId && ++this.behind >= BEHIND_LIMIT) this.resync();
      return;
    }
    this.behind = 0;
    if (id != null) {
      this.lastId = id;
      this.lastIdFor = this.opened;
    }
    let data;
    try { data = JSON.parse(ev.data); } catch { console.warn('unparsable event', name, ev.data); return; }
    try { this.onEvent(name, data, id); } catch (e) { console.error('while handling', name, e); }
  }

  // Starts again from a fresh snapshot: this stream's ids are not to be trusted any more.
  resync() {
    this.lastId = null;
    this.lastIdFor = null;
    this.behind = 0;
    this.resyncs += 1;
    conn.count('resyncs', this.resyncs);
    this.restart(0);
  }

  async diagnose() {
    const es = this.es;
    let status = 0;
    let body = null;
    let retryAfter = 0;
    const ctl = new AbortController();
    const giveUp = setTimeout(() => ctl.abort(), 8000);
    try {
      // The address the next EventSource would open, id and all: a room that closed while the
      // page was away still answers a catch-up for a while (its end), not a fresh stream.
      const res = await fetch(this.target(), { headers: { Accept: 'text/event-stream' }, cache: 'no-store', signal: ctl.signal });
      status = res.status;
      retryAfter = retryAfterMs(res);
      if (!res.ok) { try { body = await res.json(); } catch { /* not JSON */ } }
    } catch { /* network error or our abort */ }
    clearTimeout(giveUp);
    ctl.abort(); // a 200 is a live stream: we only wanted the status
    if (this.closed || es !== this.es) return;
    if (status === 200) return this.restart(0);
    if (status === 401 && this.onAuthFailure()) return this.restart(0);
    if ([400, 401, 403, 404, 410].includes(status)) {
      this.close();
      conn.set('closed', 'Disconnected.');
      this.onFatal(new ApiError(body?.error || codeForStatus(status), body?.message, status));
      return;
    }
    // 0 (no answer), 429, 5xx: the server is away or busy; try again later, when it asks to if
    // it says (Retry-After: a room changing engines, nginx's limit on streams), else after a
    // backoff. A 429 (too many streams from this address) is a sentence in the banner: only
    // the person can close a tab.
    this.notice = status === 429
      ? `${new ApiError(body?.error || codeForStatus(status), body?.message, status).sentence} This page keeps trying meanwhile.` : null;
    if (this.notice) conn.set('reconnecting', this.notice);
    // Never sooner than the backoff, and spread, so that every page of a busy gateway does
    // not come back in the same second.
    const wait = Math.max(retryAfter, this.backoff) * (1 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, 10000);
    this.restart(wait);
  }

  restart(wait) {
    if (this.es) this.es.close();
    this.es = null;
    this.isOpen = false;
    this.restarts += 1;
    conn.count('restarts', this.restarts);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.start(), wait);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    this.es = null;
  }
}

// ───────────────────────────── lobby ─────────────────────────────

const lobby = { stream: null, rooms: new Map(), live: false };

function startLobby() {
  // Already live: render anyway, since this tab's seats (its "Back to your seat") may have changed.
  if (lobby.stream) { renderLobby(); return; }
  lobby.rooms = new Map();
  lobby.live = false;
  renderLobby();
  lobby.stream = new Stream({
    label: 'lobby',
    url: () => '/v1/lobby/events',
    names: LOBBY_EVENTS,
    onEvent: lobbyEvent,
    onFatal: (err) => { $('lobby-status').textContent = err.sentence; },
  });
  lobby.stream.start();
}
function stopLobby() {
  if (lobby.stream) lobby.stream.close();
  lobby.stream = null;
}

function lobbyEvent(name, data) {
  switch (name) {
    case 'snapshot':
      lobby.rooms = new Map((data.rooms || []).map((r) => [r.code, r]));
      lobby.live = true;
      break;
    case 'room_opened':
    case 'room_updated':
      lobby.rooms.set(data.code, data);
      break;
    case 'room_closed':
      lobby.rooms.delete(data.code);
      break;
    default:
      return;
  }
  renderLobby();
}

function renderLobby() {
  $('lobby-status').textContent = lobby.live
    ? (lobby.rooms.size ? `${lobby.rooms.size} open ${lobby.rooms.size === 1 ? 'room' : 'rooms'}, updated live.` : 'No open rooms yet. Create one below.')
    : 'Connecting to the lobby…';
  const ul = $('lobby-rooms');
  const focusKey = document.activeElement?.dataset?.focusKey;
  ul.replaceChildren();
  const seatedIn = tabSeatCodes();
  for (const r of lobby.rooms.values()) {
    const li = document.createElement('li');
    li.setAttribute('data-testid', 'lobby-room');
    li.dataset.code = r.code;
    li.dataset.players = String(r.players);
    li.dataset.total = String(r.total);
    li.dataset.phase = r.phase;
    const info = el('div', 'room-info');
    info.append(el('strong', 'room-title', r.title));
    const full = r.players >= r.total;
    info.append(el('span', 'room-meta',
      `${r.players}/${r.total} players · ${LOBBY_PHASE_LABEL[r.phase] || r.phase}${r.phase === 'waiting' && full ? ' · full' : ''}`));
    // A room where this tab has a seat leads back to it, whatever its state: joining again
    // would make a second player (or be refused as full, started or name taken).
    const seated = seatedIn.has(r.code);
    const joinable = r.phase === 'waiting' && !full;
    const label = seated ? 'Back to your seat'
      : joinable ? 'Join' : ({ waiting: 'Full', playing: 'In play', ended: 'Finished' }[r.phase] || 'Closed');
    const btn = el('button', 'join', label);
    btn.type = 'button';
    btn.setAttribute('data-testid', 'lobby-join');
    btn.dataset.focusKey = `join-${r.code}`;
    if (seated) btn.dataset.seated = 'true';
    // The accessible name starts with the visible text (speech control users say what they see).
    btn.setAttribute('aria-label', `${label}: ${r.title}`);
    btn.disabled = !(seated || joinable);
    btn.addEventListener('click', () => (seated ? goRoom(r.code) : joinRoom(r.code, btn)));
    li.append(info, btn);
    ul.append(li);
  }
  restoreFocus(ul, focusKey);
}

// ───────────────────────────── create / join ─────────────────────────────

function readName() {
  const name = $('name-input').value.trim();
  if (!name || [...name].length > 20) {
    $('name-input').focus();
    throw new ApiError('missing_name');
  }
  return name;
}

async function busy(button, fn) {
  if (button) button.disabled = true;
  try { return await fn(); } finally { if (button) button.disabled = false; }
}

async function joinRoom(code, button) {
  clearError();
  try {
    code = normalizeCode(code);
    if (!isCode(code)) { $('join-code').focus(); throw new ApiError('missing_code'); }
    const name = readName();
    await busy(button, async () => {
      const r = await post(`/v1/rooms/${encodeURIComponent(code)}/join`, { name });
      rememberName(name);
      saveSeat(code, { player_id: r.player_id, token: r.token, name });
      goRoom(code);
    });
  } catch (e) { showError(e); }
}

function goRoom(code) {
  const hash = `#/room/${code}`;
  if (location.hash === hash) reroute(); else location.hash = hash;
}

const DURATIONS = ['day_intro', 'notice', 'day_per_player', 'vote', 'vote_result', 'night_intro', 'night', 'ended'];

async function createRoom(ev) {
  ev.preventDefault();
  clearError();
  const btn = $('create-form').querySelector('button[type=submit]');
  try {
    const name = readName();
    const int = (id) => Number.parseInt($(id).value, 10);
    const body = {
      title: $('c-title').value.trim(),
      total: int('c-total'), mafia: int('c-mafia'), doctor: int('c-doctor'), police: int('c-police'),
      private: $('c-private').checked,
      durations_ms: {},
    };
    for (const k of DURATIONS) {
      const v = $(`d-${k}`).value.trim();
      if (v !== '') {
        const ms = Math.round(Number(v) * 1000);
        if (!Number.isFinite(ms) || ms <= 0) throw new ApiError('invalid_room');
        body.durations_ms[k] = ms;
      }
    }
    if (!body.title) { $('c-title').focus(); throw new ApiError('missing_title'); }
    const { total, mafia, doctor, police } = body;
    if (![total, mafia, doctor, police].every(Number.isInteger) || total < 3 || total > 20 || mafia < 1
        || total <= 2 * mafia || doctor < 0 || police < 0 || mafia + doctor + police > total) {
      throw new ApiError('invalid_room');
    }
    await busy(btn, async () => {
      // One call creates the room and seats its creator as the host, so the lobby never lists
      // the room without its host and nobody else can take the host's seat.
      let seat = await post('/v1/rooms', { ...body, name });
      if (!seat.token) {
        // A gateway that predates create-and-join answers with the code only: join then.
        seat = { code: seat.code, ...(await post(`/v1/rooms/${encodeURIComponent(seat.code)}/join`, { name })) };
      }
      rememberName(name);
      saveSeat(seat.code, { player_id: seat.player_id, token: seat.token, name });
      goRoom(seat.code);
    });
  } catch (e) { showError(e); }
}

// ───────────────────────────── the room ─────────────────────────────

let room = null; // the one room this tab is in

function newRoom(code, seat) {
  return {
    code, seat, stream: null, gotSnapshot: false, chatGen: 0, chatBase: 0, announced: '',
    title: '', total: 0, mafia: 0, doctor: 0, police: 0, private: false,
    phase: null, round: 0, endsAt: null, host: null, you: seat.player_id,
    players: new Map(), votes: new Map(), tally: null, abstain: 0,
    deaths: [], chat: [], mafiaPick: null, protect: null, investigations: [],
    winner: null, roles: new Map(), myRole: null, fellowMafia: [],
    closed: false, fatal: null, log: [], logSeq: 0,
    deathsAtNight: null, deathsAtVote: null, leaveArmed: false,
  };
}

function enterRoom(code, seat) {
  if (room && room.code === code && !room.closed && !room.fatal) { showView('room'); return; }
  leaveRoomView();
  stopLobby();
  room = newRoom(code, seat);
  const r = room;
  r.stream = new Stream({
    label: 'room',
    // This tab's own token, named explicitly: the gateway prefers it to the cookie, which
    // holds whichever player of this browser joined last. (EventSource cannot set headers.)
    url: () => `/v1/rooms/${encodeURIComponent(code)}/events?token=${encodeURIComponent(r.seat.token)}`,
    names: ROOM_EVENTS,
    onEvent: (name, data, id) => { if (room === r) { roomEvent(name, data, id); scheduleRender(); } },
    onFatal: (err) => {
      if (room !== r) return;
      r.fatal = err;
      if (['unauthorized', 'forbidden', 'no_such_room', 'not_found'].includes(err.code)) dropSeat(code, r.seat.player_id);
      showError(err);
      scheduleRender();
      if (err.code === 'unauthorized' || err.code === 'forbidden') {
        // Offer the join form for the same room.
        room = null;
        showLobby(code);
        showError(err);
      }
    },
  });
  showView('room');
  renderRoom();
  r.stream.start();
}

function leaveRoomView() {
  if (room?.stream) room.stream.close();
  room = null;
}

const nameOf = (id) => room.players.get(id)?.name ?? 'someone';

function log(kind, text, attrs = {}) {
  // `at`: when this page learnt it (unix ms), which shows what was replayed after an outage.
  room.log.push({ kind, text, attrs: { ...attrs, at: Date.now() }, seq: ++room.logSeq });
  if (room.log.length > MAX_LOG) room.log.splice(0, room.log.length - MAX_LOG);
}

function setRole(playerId, role) {
  const p = room.players.get(playerId);
  if (p) p.role = role;
  room.roles.set(playerId, role);
}

function applySnapshot(s, id) {
  const mid = room.gotSnapshot;
  const prev = room.phase ? `${room.phase}/${room.round}` : null;
  Object.assign(room, {
    title: s.title, total: s.total, mafia: s.mafia, doctor: s.doctor, police: s.police, private: s.private,
    phase: s.phase, round: s.round, endsAt: s.ends_at ?? null, host: s.host ?? null,
    you: s.you ?? room.seat.player_id,
  });
  room.players = new Map(s.players.map((p) => [p.player_id, { ...p }]));
  room.roles = new Map();
  for (const p of s.players) if (p.role) room.roles.set(p.player_id, p.role);
  room.myRole = room.roles.get(room.you) ?? null;
  room.fellowMafia = room.myRole === 'mafia'
    ? s.players.filter((p) => p.role === 'mafia' && p.player_id !== room.you).map((p) => p.player_id) : [];
  room.votes = new Map(Object.entries(s.votes || {}));
  room.tally = null;
  room.deaths = [...(s.deaths || [])];
  room.chat = [...(s.chat || [])];
  room.chatGen += 1;
  room.chatBase = 0;
  room.mafiaPick = s.mafia_pick ? { target: s.mafia_pick } : null;
  room.protect = s.protect ?? null;
  room.investigations = [...(s.investigations || [])];
  room.winner = s.winner ?? null;
  room.deathsAtNight = null;
  room.deathsAtVote = null;
  room.gotSnapshot = true;
  if (mid) log('sync', 'Back in sync with the server.', { id });
  if (!mid || prev !== `${s.phase}/${s.round}`) {
    log('phase', phaseText(s.phase, s.round), { phase: s.phase, round: s.round, source: 'snapshot', id });
  }
}

function phaseText(phase, round) {
  if (phase === 'waiting') return PHASE_LABEL.waiting;
  return `Round ${round} · ${PHASE_LABEL[phase] || phase}`;
}

function roomEvent(eventName, d, id) {
  const r = room;
  switch (eventName) {
    case 'snapshot':
      applySnapshot(d, id);
      break;
    case 'player_joined':
      r.players.set(d.player_id, { player_id: d.player_id, name: d.name, alive: true, role: r.roles.get(d.player_id) });
      r.host = d.host ?? r.host;
      log('join', `${d.name} joined.`, { id });
      break;
    case 'player_left': {
      const who = nameOf(d.player_id);
      if (r.phase === 'waiting' || r.phase == null) r.players.delete(d.player_id);
      else { const p = r.players.get(d.player_id); if (p) { p.alive = false; p.left = true; } }
      r.host = d.host ?? null;
      log('leave', `${who} left.`, { id });
      break;
    }
    case 'phase': {
      const before = r.phase;
      r.phase = d.phase; r.round = d.round; r.endsAt = d.ends_at ?? null;
      if (d.phase !== 'vote' && d.phase !== 'vote_result') { r.votes = new Map(); r.tally = null; r.abstain = 0; }
      if (d.phase === 'night_intro' || d.phase === 'night') {
        if (before !== 'night_intro' && before !== 'night') { r.mafiaPick = null; r.protect = null; }
        if (d.phase === 'night_intro' || r.deathsAtNight == null) r.deathsAtNight = r.deaths.length;
      }
      if (d.phase === 'vote' && before !== 'vote') r.deathsAtVote = r.deaths.length;
      if (d.phase === 'day' && r.deathsAtVote == null) r.deathsAtVote = r.deaths.length;
      log('phase', phaseText(d.phase, d.round), { phase: d.phase, round: d.round, source: 'event', id, endsAt: d.ends_at });
      break;
    }
    case 'vote':
      r.votes.set(d.voter, d.target ?? null);
      r.tally = new Map(Object.entries(d.tally || {}));
      r.abstain = d.abstain ?? 0;
      log('vote', d.target ? `${nameOf(d.voter)} votes for ${nameOf(d.target)}.` : `${nameOf(d.voter)} abstains.`, { id });
      break;
    case 'death': {
      const p = r.players.get(d.player_id);
      if (p) p.alive = false;
      r.deaths.push(d);
      log('death', `${nameOf(d.player_id)} ${CAUSE_TEXT[d.cause] || 'died'}.`, { id, player: d.player_id, cause: d.cause });
      break;
    }
    case 'chat':
      r.chat.push(d);
      if (r.chat.length > MAX_CHAT) r.chatBase += r.chat.splice(0, r.chat.length - MAX_CHAT).length;
      break;
    case 'game_over':
      r.winner = d.winner;
      for (const [pid, role] of Object.entries(d.roles || {})) setRole(pid, role);
      log('end', d.winner === 'mafia' ? 'The mafia wins.' : 'The citizens win.', { id, winner: d.winner });
      break;
    case 'room_closed':
      r.closed = true;
      r.stream.close();
      conn.set('closed', 'This room has closed.');
      dropSeat(r.code, r.seat.player_id);
      log('closed', 'The room has closed.', { id });
      break;
    case 'role':
      r.myRole = d.role;
      setRole(r.you, d.role);
      r.fellowMafia = (d.mafia || []).filter((pid) => pid !== r.you);
      for (const pid of r.fellowMafia) setRole(pid, 'mafia');
      log('role', `You are${article(d.role)} ${ROLE_LABEL[d.role] || d.role}.`, { id });
      break;
    case 'investigation':
      addInvestigation(d);
      break;
    case 'mafia_pick':
      r.mafiaPick = { by: d.by, target: d.target };
      break;
    case 'protect':
      r.protect = d.target;
      break;
    case 'roles':
      for (const [pid, role] of Object.entries(d.roles || {})) setRole(pid, role);
      break;
    default:
      break;
  }
}

// "You are the Police.", "You are a Doctor.", "You are Mafia."
function article(role) { return role === 'police' ? ' the' : role === 'mafia' ? '' : ' a'; }

function addInvestigation(inv) {
  if (!room.investigations.some((i) => i.target === inv.target && i.round === inv.round)) {
    room.investigations.push(inv);
  }
}

// ───────────────────────────── room commands ─────────────────────────────

// Sends a room command as this tab's player. Resolves to the reply, or to null once the
// error is shown; `refused` (when given) hears that error first.
async function command(body, button, refused) {
  if (!room) return null;
  const r = room;
  clearError();
  try {
    const res = await busy(button, () => post(`/v1/rooms/${encodeURIComponent(r.code)}/commands`, body, r.seat.token));
    countCommand('commandsOk');
    return res;
  } catch (e) {
    refused?.(e);
    showError(e);
    countCommand('commandsFailed');
    if (e.code === 'unauthorized') dropSeat(r.code, r.seat.player_id);
    return null;
  } finally {
    scheduleRender();
  }
}

// How many commands this page sent and how they ended (read by the tests, harmless otherwise).
function countCommand(key) {
  document.body.dataset[key] = String(Number(document.body.dataset[key] || 0) + 1);
}

// Refusals that mean this tab's seat no longer exists (it expired, its player left, the room
// closed): a leave that gets one of these has nothing left to leave.
const SEAT_GONE = ['unauthorized', 'no_such_player', 'no_such_room'];

async function skill(target, button) {
  const role = room.myRole;
  const round = room.round;
  const res = await command({ type: 'skill', target }, button);
  if (res && role === 'police' && typeof res.mafia === 'boolean' && room) {
    addInvestigation({ target, mafia: res.mafia, round });
    scheduleRender();
  }
}

// ───────────────────────────── room rendering ─────────────────────────────

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; if (room) renderRoom(); }, 0);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
function tid(e, id) { e.setAttribute('data-testid', id); return e; }

function restoreFocus(container, key) {
  if (!key) return;
  const target = container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
  if (target && !target.disabled) target.focus();
}

function me() { return room.players.get(room.you); }
function amAlive() { return !!me()?.alive; }
function inGame() { return room.phase && room.phase !== 'waiting' && room.phase !== 'ended'; }

function myChannel() {
  if (!me() || me().left) return null;
  if (room.phase === 'waiting' || room.phase === 'ended') return 'public';
  if (!amAlive()) return 'dead';
  if (room.phase === 'night') return room.myRole === 'mafia' ? 'mafia' : null;
  return 'public';
}

function tallyMap() {
  if (room.tally) return { counts: room.tally, abstain: room.abstain };
  const counts = new Map();
  let abstain = 0;
  for (const t of room.votes.values()) {
    if (t == null) abstain += 1; else counts.set(t, (counts.get(t) || 0) + 1);
  }
  return { counts, abstain };
}

function headline() {
  const r = room;
  const alive = [...r.players.values()].filter((p) => p.alive).length;
  switch (r.phase) {
    case 'waiting': {
      const missing = r.total - r.players.size;
      return missing > 0 ? `${r.players.size} of ${r.total} players are here. Waiting for ${missing} more.` : 'Everyone is here. The host can start the game.';
    }
    case 'day_intro': return `Morning comes. ${alive} players are still alive.`;
    case 'notice': {
      if (r.deathsAtNight == null && r.round <= 1) return 'The town wakes up. Somewhere among you is the mafia.';
      // Seen live: the deaths since nightfall. After a snapshot (no nightfall seen), last
      // night's from the deaths it lists: a night's kill carries that night's round, the one
      // before this morning's.
      const killed = r.deathsAtNight != null
        ? r.deaths.slice(r.deathsAtNight).filter((d) => d.cause === 'mafia')
        : r.deaths.filter((d) => d.cause === 'mafia' && d.round === r.round - 1);
      return killed.length ? `Last night, ${killed.map((d) => nameOf(d.player_id)).join(' and ')} was killed.` : 'Nobody died last night.';
    }
    case 'day': return 'Discuss, then vote. The day ends early once everyone alive has voted.';
    case 'vote': return 'Final vote: change or confirm your vote now.';
    case 'vote_result': {
      // As above: after a snapshot, the vote deaths of this round.
      const out = r.deathsAtVote != null
        ? r.deaths.slice(r.deathsAtVote).filter((d) => d.cause === 'vote')
        : r.deaths.filter((d) => d.cause === 'vote' && d.round === r.round);
      return out.length ? `${out.map((d) => nameOf(d.player_id)).join(' and ')} was voted out.` : 'Nobody was voted out.';
    }
    case 'night_intro': return 'Night falls. Everyone closes their eyes.';
    case 'night':
      if (!amAlive()) return 'Night. You watch from beyond.';
      return {
        mafia: 'Night. Choose someone to kill.',
        doctor: 'Night. Choose someone to protect.',
        police: 'Night. Choose someone to investigate.',
      }[r.myRole] || 'Night. Sleep tight while the mafia choose.';
    case 'ended':
      return 'Every role is shown above.';
    default: return '';
  }
}

function renderRoom() {
  const r = room;
  if (!r) return;
  document.body.dataset.phase = r.phase || '';
  document.title = `${r.title || 'Room'}${r.phase ? ` · ${PHASE_LABEL[r.phase] || r.phase}` : ''} · Phasecast`;
  $('room-title').textContent = r.title || 'Loading the room…';
  $('room-code').textContent = formatCode(r.code);
  $('room-code').dataset.code = r.code;
  $('room-setup').textContent = r.total
    ? `${r.total} players: ${r.mafia} mafia, ${r.doctor} doctor${r.doctor === 1 ? '' : 's'}, ${r.police} police${r.private ? ' · private' : ''}`
    : '';
  $('share-link').value = `${location.origin}/#/room/${r.code}`;

  // Phase and countdown.
  const ph = $('phase');
  ph.dataset.phase = r.phase || '';
  ph.dataset.round = String(r.round || 0);
  // The round on a small line of its own, so the phase's name never wraps beside the clock.
  $('phase-round').textContent = r.phase && r.phase !== 'waiting' && r.phase !== 'ended' ? `Round ${r.round}` : '';
  $('phase-name').textContent = r.phase ? PHASE_LABEL[r.phase] || r.phase : 'Connecting…';
  $('countdown').dataset.endsAt = r.endsAt == null ? '' : String(r.endsAt);
  tick();
  const line = r.phase ? headline() : '';
  $('headline').textContent = line;
  // Screen readers hear each phase change (and the result) once, from the live region.
  const key = `${r.phase}/${r.round}/${r.winner}/${r.closed}`;
  if (r.phase && key !== r.announced) {
    r.announced = key;
    const outcome = outcomeText();
    $('announcer').textContent = r.closed ? 'The room has closed.'
      : `${phaseText(r.phase, r.round)}. ${outcome ? `${outcome} ` : ''}${line}`;
  }

  // You.
  const myRole = $('my-role');
  myRole.dataset.role = r.myRole || '';
  myRole.textContent = r.myRole
    ? `You are${article(r.myRole)} ${ROLE_LABEL[r.myRole]}.`
    : (r.phase === 'waiting' ? 'Roles are dealt when the game starts.' : '');
  const fm = $('fellow-mafia');
  fm.hidden = !(r.myRole === 'mafia' && r.mafia > 1);
  fm.dataset.players = r.fellowMafia.join(' ');
  fm.textContent = r.fellowMafia.length ? `Your fellow mafia: ${r.fellowMafia.map(nameOf).join(', ')}.` : 'Your fellow mafia: none left.';
  const status = $('my-status');
  const mine = me();
  status.dataset.alive = String(!!mine?.alive);
  const myDeath = mine && r.deaths.find((d) => d.player_id === mine.player_id);
  status.textContent = !mine ? (r.gotSnapshot ? 'You are watching; you are not in this room.' : '')
    : mine.left ? 'You left the game.'
      : r.phase === 'ended' ? (mine.alive ? `You survived, ${mine.name}.` : `You died${myDeath ? ` in round ${myDeath.round}` : ''}.`)
        : mine.alive ? (r.phase === 'waiting' ? `You joined as ${mine.name}.` : `You are alive, ${mine.name}.`)
          : 'You are dead: you see every role, and you talk only with the dead.';

  // Start.
  const isHost = r.host != null && r.host === r.you;
  const start = $('start-button');
  start.hidden = !(r.phase === 'waiting' && isHost && !r.closed);
  start.disabled = r.players.size < r.total;
  const hint = $('start-hint');
  hint.hidden = r.phase !== 'waiting' || r.closed;
  hint.textContent = isHost
    ? (r.players.size < r.total ? `You are the host: start once ${r.total - r.players.size} more ${r.total - r.players.size === 1 ? 'player joins' : 'players join'}.` : 'You are the host: start when ready.')
    : `${nameOf(r.host)} (the host) starts the game when the room is full.`;

  // Votes.
  const canVote = (r.phase === 'day' || r.phase === 'vote') && amAlive() && !r.closed;
  const { counts, abstain } = tallyMap();
  const myVote = r.votes.has(r.you) ? r.votes.get(r.you) : undefined;
  const ab = $('abstain-button');
  ab.hidden = !canVote;
  ab.setAttribute('aria-pressed', String(myVote === null));
  ab.textContent = `Abstain (${abstain})`;
  ab.dataset.count = String(abstain);

  // Night actions.
  const nightAct = r.phase === 'night' && amAlive() && ['mafia', 'doctor', 'police'].includes(r.myRole) && !r.closed;
  const investigatedTonight = r.investigations.some((i) => i.round === r.round);
  const prompt = $('action-prompt');
  prompt.hidden = !(canVote || nightAct);
  prompt.textContent = canVote
    ? (myVote === undefined ? 'Vote for the player you suspect, or abstain.' : `Your vote: ${myVote === null ? 'abstain' : nameOf(myVote)}. You can change it.`)
    : nightAct ? ({ mafia: 'Pick the player the mafia will kill tonight.', doctor: 'Pick the player you will protect tonight.',
      police: investigatedTonight ? 'You have investigated tonight.' : 'Pick one player to investigate tonight.' }[r.myRole]) : '';
  const ns = $('night-status');
  const nsText = [];
  if (r.myRole === 'mafia' && r.mafiaPick && (r.phase === 'night' || r.phase === 'night_intro')) {
    nsText.push(`The mafia's pick: ${nameOf(r.mafiaPick.target)}${r.mafiaPick.by ? ` (chosen by ${r.mafiaPick.by === r.you ? 'you' : nameOf(r.mafiaPick.by)})` : ''}.`);
  }
  if (r.myRole === 'doctor' && r.protect && (r.phase === 'night' || r.phase === 'night_intro')) nsText.push(`You protect ${nameOf(r.protect)} tonight.`);
  ns.hidden = nsText.length === 0;
  ns.textContent = nsText.join(' ');
  ns.dataset.pick = r.mafiaPick?.target || '';
  ns.dataset.protect = r.protect || '';

  // Players.
  const ul = $('players');
  const focusKey = document.activeElement?.dataset?.focusKey;
  ul.replaceChildren();
  const aliveCount = [...r.players.values()].filter((p) => p.alive).length;
  $('players-count').textContent = r.phase === 'waiting' ? `(${r.players.size}/${r.total})` : `(${aliveCount} alive)`;
  for (const p of r.players.values()) {
    const li = tid(el('li', 'player'), 'player');
    li.dataset.playerId = p.player_id;
    li.dataset.name = p.name;
    li.dataset.alive = String(!!p.alive);
    const role = r.roles.get(p.player_id) || p.role;
    if (role) li.dataset.role = role;
    if (p.player_id === r.you) li.dataset.you = 'true';
    if (p.player_id === r.host) li.dataset.host = 'true';
    if (!p.alive) li.classList.add('dead');
    const col = el('div', 'who-col');
    const who = el('span', 'who');
    who.append(tid(el('span', 'pname', p.name), 'player-name'));
    if (p.player_id === r.you) who.append(el('span', 'tag you', 'you'));
    if (p.player_id === r.host && r.phase === 'waiting') who.append(el('span', 'tag', 'host'));
    if (!p.alive) who.append(el('span', 'tag dead', p.left ? 'left' : 'dead'));
    if (role) who.append(tid(el('span', `tag role role-${role}`, ROLE_LABEL[role] || role), 'player-role'));
    col.append(who);

    if (r.phase === 'day' || r.phase === 'vote' || r.phase === 'vote_result') {
      const meta = el('span', 'meta');
      const n = counts.get(p.player_id) || 0;
      const vc = tid(el('span', 'votes', `${n} ${n === 1 ? 'vote' : 'votes'}`), 'vote-count');
      vc.dataset.count = String(n);
      meta.append(vc);
      if (r.votes.has(p.player_id)) {
        const t = r.votes.get(p.player_id);
        meta.append(tid(el('span', 'voted-for', t == null ? 'abstains' : `votes for ${nameOf(t)}`), 'voted-for'));
      }
      col.append(meta);
    }
    li.append(col);
    const btns = el('span', 'btns');
    if (canVote && p.alive && p.player_id !== r.you) {
      const text = myVote === p.player_id ? 'Voted' : 'Vote';
      const b = tid(el('button', 'vote', text), 'vote-button');
      b.type = 'button';
      b.dataset.focusKey = `vote-${p.player_id}`;
      b.setAttribute('aria-pressed', String(myVote === p.player_id));
      b.setAttribute('aria-label', `${text} for ${p.name}`);
      b.addEventListener('click', () => command({ type: 'vote', target: p.player_id }, b));
      btns.append(b);
    }
    if (nightAct && p.alive) {
      let label = null; let pressed = false;
      if (r.myRole === 'mafia' && p.player_id !== r.you && !r.fellowMafia.includes(p.player_id)) {
        label = 'Kill'; pressed = r.mafiaPick?.target === p.player_id;
      } else if (r.myRole === 'doctor') {
        label = 'Protect'; pressed = r.protect === p.player_id;
      } else if (r.myRole === 'police' && p.player_id !== r.you) {
        label = 'Investigate';
      }
      if (label) {
        const b = tid(el('button', 'skill', label), 'skill-button');
        b.type = 'button';
        b.dataset.skill = label.toLowerCase();
        b.dataset.focusKey = `skill-${p.player_id}`;
        b.setAttribute('aria-pressed', String(pressed));
        b.setAttribute('aria-label', `${label} ${p.name}`);
        if (r.myRole === 'police' && investigatedTonight) b.disabled = true;
        b.addEventListener('click', () => skill(p.player_id, b));
        btns.append(b);
      }
    }
    if (btns.childElementCount) li.append(btns);
    ul.append(li);
  }
  restoreFocus(ul, focusKey);

  // Investigations.
  $('investigations-card').hidden = r.myRole !== 'police' && r.investigations.length === 0;
  $('investigations').replaceChildren(...r.investigations.map((i) => {
    const li = tid(el('li', i.mafia ? 'inv mafia' : 'inv', `Night ${i.round}: ${nameOf(i.target)} ${i.mafia ? 'IS mafia.' : 'is not mafia.'}`), 'investigation');
    li.dataset.target = i.target; li.dataset.mafia = String(i.mafia); li.dataset.round = String(i.round);
    return li;
  }));
  if (r.myRole === 'police' && r.investigations.length === 0) {
    $('investigations').append(el('li', 'hint', 'Nothing yet: investigate one player each night.'));
  }

  // Result: first in the room view, so it shows at once at the top of the screen.
  const res = $('result');
  res.hidden = !r.winner;
  res.dataset.winner = r.winner || '';
  res.dataset.outcome = outcome();
  $('winner').textContent = outcomeText();
  $('final-roles').replaceChildren(...(r.winner ? [...r.players.values()].map((p) => {
    const role = r.roles.get(p.player_id) || p.role;
    const li = tid(el('li', `final role-${role}`), 'final-role');
    li.dataset.playerId = p.player_id;
    li.dataset.role = role || '';
    li.append(el('span', 'pname', p.name));
    if (p.player_id === r.you) li.append(el('span', 'tag you', 'you'));
    li.append(el('span', `tag role role-${role}`, ROLE_LABEL[role] || '?'));
    if (!p.alive) li.append(el('span', 'tag dead', p.left ? 'left' : 'dead'));
    return li;
  }) : []));

  // Chat.
  renderChat();

  // Deaths.
  const deaths = $('deaths');
  deaths.replaceChildren(...r.deaths.map((d) => {
    const li = tid(el('li', 'death', `Round ${d.round}: ${nameOf(d.player_id)} ${CAUSE_TEXT[d.cause] || 'died'}.`), 'death');
    li.dataset.playerId = d.player_id; li.dataset.cause = d.cause; li.dataset.round = String(d.round);
    return li;
  }));
  if (!r.deaths.length) deaths.append(el('li', 'hint', 'Nobody has died yet.'));

  // Log.
  renderLog();

  // Footer.
  const leave = $('leave-button');
  leave.hidden = r.closed || !!r.fatal || !mine;
  leave.textContent = r.leaveArmed ? 'Really leave? Click again' : (inGame() ? 'Leave the game' : 'Leave the room');
  $('back-link').hidden = !(r.closed || r.fatal || !mine);
}

function chatLine(c) {
  const li = tid(el('li', `line ch-${c.channel}`), 'chat-line');
  li.dataset.channel = c.channel;
  li.dataset.from = c.from;
  li.append(el('span', 'who', c.name));
  if (c.channel !== 'public') li.append(el('span', `tag ch ch-${c.channel}`, c.channel === 'mafia' ? 'mafia only' : 'the dead'));
  li.append(tid(el('span', 'text', c.text), 'chat-text'));
  return li;
}

// The chat is a live region (aria-live, additions): only new lines are added to it, so a screen reader
// reads each line once. A snapshot replaces it whole.
function renderChat() {
  const r = room;
  const ol = $('chat');
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  if (ol.dataset.gen !== `${r.code}/${r.chatGen}`) {
    ol.replaceChildren();
    ol.dataset.gen = `${r.code}/${r.chatGen}`;
    ol.dataset.base = '0';
  }
  for (let base = Number(ol.dataset.base); base < r.chatBase && ol.firstChild; base++) {
    ol.firstChild.remove();
    ol.dataset.base = String(base + 1);
  }
  ol.append(...r.chat.slice(ol.childElementCount).map(chatLine));
  if (atBottom) ol.scrollTop = ol.scrollHeight;
  const ch = myChannel();
  const input = $('chat-input');
  const send = $('chat-send');
  const disabled = !ch || r.closed || !!r.fatal;
  input.disabled = disabled;
  send.disabled = disabled;
  const info = $('chat-channel');
  info.dataset.channel = ch || '';
  info.textContent = !me() ? '' : r.closed ? 'The room has closed.'
    : me().left ? 'You left the game: you can no longer chat.'
    : ch === 'dead' ? 'Only the dead read what you write.'
      : ch === 'mafia' ? 'Night: only your fellow mafia read what you write.'
        : ch === 'public' ? 'Everyone in the room reads what you write.'
          : 'Chat is closed at night. Only the mafia whisper.';
  input.placeholder = ch === 'dead' ? 'Talk with the dead' : ch === 'mafia' ? 'Whisper to the mafia' : ch ? 'Say something' : 'Chat is closed';
}

function renderLog() {
  const ol = $('log');
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.replaceChildren(...room.log.map((e) => {
    const li = tid(el('li', `log-${e.kind}`, e.text), 'log-entry');
    li.dataset.kind = e.kind;
    for (const [k, v] of Object.entries(e.attrs)) if (v != null) li.dataset[k] = String(v);
    return li;
  }));
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}

function tick() {
  const cd = $('countdown');
  const closes = $('closes');
  const endsAt = room?.endsAt;
  if (!room || endsAt == null || room.phase === 'waiting' || room.closed) {
    cd.textContent = '';
    cd.hidden = true;
    closes.hidden = true;
    return;
  }
  const left = Math.max(0, endsAt - Date.now());
  const s = Math.ceil(left / 1000);
  const clock = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  cd.dataset.left = String(left);
  // At the end the big clock gives way to a quiet line: nothing is left to play.
  cd.hidden = room.phase === 'ended';
  cd.textContent = room.phase === 'ended' ? '' : clock;
  cd.setAttribute('aria-label', `${clock} left in this phase`);
  closes.hidden = room.phase !== 'ended';
  closes.textContent = `This room closes in ${clock}.`;
}

// 'won', 'lost', or 'none' (no winner yet, or a watcher), from this player's side.
function outcome() {
  const r = room;
  if (!r.winner || !me() || !r.myRole) return 'none';
  return r.winner === (r.myRole === 'mafia' ? 'mafia' : 'citizens') ? 'won' : 'lost';
}
function outcomeText() {
  const r = room;
  if (!r.winner) return '';
  const side = r.winner === 'mafia' ? 'the mafia win' : 'the citizens win';
  return { won: `You won: ${side}!`, lost: `You lost: ${side}.` }[outcome()] || `Game over: ${side}.`;
}

// ───────────────────────────── views and routing ─────────────────────────────

function showView(v) {
  document.body.dataset.view = v;
  $('lobby-view').hidden = v !== 'lobby';
  $('room-view').hidden = v !== 'room';
  if (v === 'lobby') document.body.dataset.phase = '';
}

// The seat another tab of this browser holds in the room of the invite shown, if any: what
// "Continue as <name>" takes, on purpose.
let invitedSeat = null;

function showLobby(inviteCode, held = null) {
  leaveRoomView();
  showView('lobby');
  document.title = 'Phasecast · Mafia';
  const invite = $('invite');
  invite.hidden = !inviteCode;
  invite.dataset.code = inviteCode || '';
  $('invite-code').textContent = inviteCode ? formatCode(inviteCode) : '';
  invitedSeat = inviteCode && held ? held : null;
  const heldName = held?.name || 'another player';
  $('invite-held').hidden = !invitedSeat;
  $('invite-held').textContent = invitedSeat
    ? `Another tab of this browser is playing as ${heldName} in this room. Join with your own name, or continue as ${heldName} here too.`
    : '';
  $('invite-continue').hidden = !invitedSeat;
  $('invite-continue').textContent = invitedSeat ? `Continue as ${heldName}` : '';
  if (inviteCode) {
    $('join-code').value = formatCode(inviteCode);
    // The name remembered is likely the other tab's player's: a second person needs their own.
    if (invitedSeat && $('name-input').value.trim() === invitedSeat.name) $('name-input').value = '';
    $('name-input').focus();
  }
  conn.set('idle', '');
  startLobby();
}

// Routes run one at a time in effect: finding a seat may wait for other tabs' answers, and a
// later route (the person clicked on meanwhile) wins over an earlier one still waiting.
let routeGen = 0;

async function route() {
  const gen = ++routeGen;
  const m = location.hash.match(/^#\/room\/([^/]{1,80})\/?$/);
  if (m) {
    // A link someone typed or pasted may be spaced, dashed or in lower case.
    const code = normalizeCode(decodeURIComponent(m[1]));
    if (!isCode(code)) { showLobby(null); showError(new ApiError('missing_code')); return; }
    if (m[1] !== code) { history.replaceState(null, '', `#/room/${code}`); }
    const { seat, held } = await findSeat(code);
    if (gen !== routeGen) return;
    if (seat) { enterRoom(code, seat); return; }
    // No seat of this tab's, or the browser's last one is another open tab's player: the
    // invite, to join as someone else.
    showLobby(code, held);
    return;
  }
  showLobby(null);
}
const reroute = () => { route().catch(showError); };

function init() {
  // `?room=<code>` is accepted as a share link too.
  const q = normalizeCode(new URLSearchParams(location.search).get('room'));
  if (isCode(q)) history.replaceState(null, '', `/#/room/${q}`);

  $('name-input').value = recallName();
  $('error-close').addEventListener('click', clearError);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && !$('error').hidden) clearError(); });
  $('create-form').addEventListener('submit', createRoom);
  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    joinRoom($('join-code').value, e.submitter || $('join-form').querySelector('button'));
  });
  $('invite-join').addEventListener('click', (e) => joinRoom($('invite').dataset.code, e.currentTarget));
  // Taking the seat another tab holds, explicitly: both tabs are then the same player.
  $('invite-continue').addEventListener('click', () => {
    const code = $('invite').dataset.code;
    const seat = invitedSeat;
    if (!seat || !isCode(code)) return;
    clearError();
    saveSeat(code, seat, { shared: false });
    enterRoom(code, seat);
  });
  $('start-button').addEventListener('click', (e) => command({ type: 'start' }, e.currentTarget));
  $('abstain-button').addEventListener('click', (e) => command({ type: 'vote', target: null }, e.currentTarget));
  $('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = $('chat-input');
    const text = input.value.trim();
    if (!text) return;
    const ok = await command({ type: 'chat', text }, $('chat-send'));
    if (ok) { input.value = ''; }
    input.disabled = false;
    input.focus();
    scheduleRender();
  });
  $('share-copy').addEventListener('click', async () => {
    const input = $('share-link');
    try { await navigator.clipboard.writeText(input.value); } catch { input.select(); document.execCommand?.('copy'); }
    $('share-copy').textContent = 'Copied';
    setTimeout(() => { $('share-copy').textContent = 'Copy'; }, 1500);
  });
  $('leave-button').addEventListener('click', async (e) => {
    if (!room) return;
    if (!room.leaveArmed) {
      room.leaveArmed = true;
      renderRoom();
      const r = room;
      setTimeout(() => { if (room === r) { r.leaveArmed = false; renderRoom(); } }, 4000);
      return;
    }
    const { code } = room;
    const playerId = room.seat.player_id;
    // The seat is dropped only once it is gone: the leave was taken, or the server says the
    // seat no longer exists. Any other failure (the server away for longer than the retries,
    // a refusal) leaves the player seated, with the error shown, free to try again.
    let gone = false;
    const left = await command({ type: 'leave' }, e.currentTarget, (err) => { gone = SEAT_GONE.includes(err.code) || err.status === 404 || err.status === 410; });
    if (!left && !gone) return;
    dropSeat(code, playerId);
    location.hash = '#/';
  });
  window.addEventListener('hashchange', reroute);
  setInterval(() => { if (room) tick(); }, 250);
  reroute();
}

init();
