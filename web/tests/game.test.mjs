// A whole Mafia game in a real Chromium, against the real stack behind real nginx.
//
// Four browser contexts (phone-sized) create and join a room from the lobby, the host starts,
// and they play to a citizens' win; a fifth context watches the lobby. Roles are dealt at
// random, so every step reads each page's own role from that page and plays accordingly:
//   round 1: during the day the gateways are stopped and restarted one at a time while
//            everyone chats and abstains; at night the mafia kills the citizen, the doctor
//            protects the police, the police investigates the mafia;
//   round 2: the doctor and the police vote the mafia out.
// Every page must reconnect by itself and show what happened during each outage, once.
// axe-core checks the lobby, a day, a night and the end for serious or critical accessibility
// violations.
//
// Then: two tabs of one browser context are two players of one room, each with its own role
// and only its own private events; eight tabs of one context hold eight streams over
// HTTP/2 through nginx (over HTTP/1.1 a browser opens only six connections per origin); and
// a create, a join and a chat line whose answers are lost after the engine applied them (a
// broken connection, a 504) are retried by the page with their request ids, and applied once;
// a second tab opening the invite link is offered the join form instead of becoming the
// first tab's player; and a page whose stream the browser gave up on (every gateway behind
// nginx down) resumes from its last event id once one is back, showing what happened meanwhile.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Stack, waitUntil, WEB_DIR } from './stack.mjs';

const AXE_SOURCE = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
// Room codes: 12 characters of Crockford's base32, shown in groups of four.
const CODE = /^[0-9A-HJKMNP-TV-Z]{12}$/;
const SHOWN_CODE = /^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$/;

const CHROMIUM = process.env.PHASECAST_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
// Screenshots of the game go to web/test-results/screenshots/, which git ignores, so a test run
// leaves the tree clean. PHASECAST_SCREENSHOTS names another folder: deploy/screenshots (or
// `npm run screenshots`) points it at web/screenshots/ to refresh the README's on purpose.
const SHOTS = path.resolve(WEB_DIR, process.env.PHASECAST_SCREENSHOTS || 'test-results/screenshots');
const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1100, height: 800 };

// Seconds, as typed into the create form. The day is long enough for the outages and the
// votes (it ends early once everyone has voted); the night long enough for three clicks.
const DURATIONS = { day_intro: 0.5, notice: 0.5, day_per_player: 6, vote: 1.5, vote_result: 0.6,
  night_intro: 0.6, night: 6, ended: 3 };
const WAIT = 20000;

let stack;
let browser;
let failed = false;
const contexts = [];

before(async () => {
  stack = await Stack.start();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 30000 });
  fs.mkdirSync(SHOTS, { recursive: true });
}, { timeout: 90000 });

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  if (browser) await browser.close().catch(() => {});
  if (stack) await stack.stop({ keep: failed });
}, { timeout: 60000 });

/** A test against the shared stack: one that fails keeps the stack's logs. */
function stackTest(name, timeout, body) {
  test(name, { timeout }, async () => {
    try {
      await body();
    } catch (e) {
      failed = true;
      throw e;
    }
  });
}

// ───────────────────────────── page helpers ─────────────────────────────

/** Everything a test asserts about a room page, read from its DOM in one go. */
function readRoomPage() {
  const q = (s) => document.querySelector(s);
  const qa = (s) => [...document.querySelectorAll(s)];
  const phase = q('[data-testid=phase]');
  const conn = q('[data-testid=conn]');
  const err = q('[data-testid=error]');
  return {
    view: document.body.dataset.view,
    phase: phase?.dataset.phase || null,
    round: Number(phase?.dataset.round || 0),
    endsAt: Number(q('[data-testid=countdown]')?.dataset.endsAt || 0) || null,
    role: q('[data-testid=my-role]')?.dataset.role || null,
    you: q('[data-testid=player][data-you=true]')?.dataset.playerId || null,
    alive: q('[data-testid=my-status]')?.dataset.alive === 'true',
    conn: {
      state: conn.dataset.state, drops: Number(conn.dataset.drops || 0), opens: Number(conn.dataset.opens || 0),
      ignored: Number(conn.dataset.ignored || 0), banner: conn.hidden ? '' : conn.textContent,
      restarts: Number(conn.dataset.restarts || 0), resyncs: Number(conn.dataset.resyncs || 0),
    },
    error: err.hidden ? null : { code: err.dataset.code, text: q('[data-testid=error-text]').textContent },
    players: qa('[data-testid=player]').map((li) => ({
      id: li.dataset.playerId, name: li.dataset.name, alive: li.dataset.alive === 'true', role: li.dataset.role || null,
      votes: li.querySelector('[data-testid=vote-count]') ? Number(li.querySelector('[data-testid=vote-count]').dataset.count) : null,
    })),
    chat: qa('[data-testid=chat-line]').map((li) => ({
      from: li.dataset.from, channel: li.dataset.channel, text: li.querySelector('[data-testid=chat-text]').textContent,
    })),
    phases: qa('[data-testid=log-entry][data-kind=phase]').map((li) => ({
      phase: li.dataset.phase, round: Number(li.dataset.round), source: li.dataset.source, id: li.dataset.id,
      at: Number(li.dataset.at), endsAt: Number(li.dataset.endsAt || 0) || null,
    })),
    // "Back in sync with the server.": a snapshot replaced the state after the first one.
    syncs: qa('[data-testid=log-entry][data-kind=sync]').length,
    deaths: qa('[data-testid=death]').map((li) => ({ id: li.dataset.playerId, cause: li.dataset.cause, round: Number(li.dataset.round) })),
    investigations: qa('[data-testid=investigation]').map((li) => ({ target: li.dataset.target, mafia: li.dataset.mafia === 'true' })),
    pick: q('[data-testid=night-status]')?.dataset.pick || null,
    protect: q('[data-testid=night-status]')?.dataset.protect || null,
    winner: q('[data-testid=result]')?.dataset.winner || null,
    finalRoles: Object.fromEntries(qa('[data-testid=final-role]').map((li) => [li.dataset.playerId, li.dataset.role])),
    chatChannel: q('[data-testid=chat-channel]')?.dataset.channel ?? null,
    chatHint: q('[data-testid=chat-channel]')?.textContent ?? '',
    status: q('[data-testid=my-status]')?.textContent ?? '',
    outcome: q('[data-testid=result]')?.hidden ? null : q('[data-testid=result]')?.dataset.outcome,
    announced: q('[data-testid=announcer]')?.textContent ?? '',
    chatDisabled: q('[data-testid=chat-input]')?.disabled ?? null,
    leaks: window.__roleLeaks || [],
  };
}

/** Watches a room page for a role shown that its living player may not know yet. */
function installLeakWatch() {
  window.__roleLeaks = window.__roleLeaks || [];
  const check = () => {
    const phase = document.querySelector('[data-testid=phase]')?.dataset.phase;
    if (!phase || phase === 'ended') return;
    if (document.querySelector('[data-testid=my-status]')?.dataset.alive !== 'true') return;
    const myRole = document.querySelector('[data-testid=my-role]')?.dataset.role;
    const fellows = (document.querySelector('[data-testid=fellow-mafia]')?.dataset.players || '').split(' ').filter(Boolean);
    for (const li of document.querySelectorAll('[data-testid=player][data-role]')) {
      if (li.dataset.you === 'true') continue;
      if (myRole === 'mafia' && li.dataset.role === 'mafia' && fellows.includes(li.dataset.playerId)) continue;
      const leak = `${phase}: ${li.dataset.name} shown as ${li.dataset.role}`;
      if (!window.__roleLeaks.includes(leak)) window.__roleLeaks.push(leak);
    }
  };
  new MutationObserver(check).observe(document.body, { subtree: true, childList: true, attributes: true });
  check();
}

class Player {
  constructor(name, context, page) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.id = null;
    this.role = null;
    this.phaseSegments = []; // phase logs from before a reload
  }

  static async open(name, viewport = PHONE) {
    const context = await browser.newContext({ viewport, baseURL: stack.baseUrl });
    contexts.push(context);
    context.setDefaultTimeout(WAIT);
    return Player.tab(name, context);
  }

  /** Another tab (page) of `context`, on the lobby. */
  static async tab(name, context) {
    const p = await Player.tabAt(name, context, '/');
    await p.page.locator('[data-testid=lobby-view]').waitFor({ state: 'visible' });
    return p;
  }

  /** Another tab (page) of `context` opened at `url` (an invite link, say): waits for the load only. */
  static async tabAt(name, context, url) {
    const page = await context.newPage();
    const p = new Player(name, context, page);
    page.on('pageerror', (e) => { p.pageErrors.push(String(e)); });
    page.on('console', (m) => { if (m.type() === 'error') p.consoleErrors.push(m.text()); });
    p.pageErrors = [];
    p.consoleErrors = [];
    await page.goto(url);
    return p;
  }

  /** From now on, records the address of every room stream request of this page, in order. */
  recordStreams() {
    this.streams = [];
    this.page.on('request', (req) => {
      if (/\/v1\/rooms\/[^/?]+\/events/.test(req.url())) this.streams.push({ url: req.url(), type: req.resourceType() });
    });
  }

  /** This tab's own seat in room `code`, as the page keeps it (sessionStorage). */
  seat(code) {
    return this.page.evaluate((c) => JSON.parse(sessionStorage.getItem(`phasecast:seat:${c}`) || 'null'), code);
  }

  /** axe-core on the page as it is: no serious or critical violation. */
  async checkA11y(what) {
    if (!(await this.page.evaluate(() => !!window.axe))) await this.page.addScriptTag({ content: AXE_SOURCE });
    const result = await this.page.evaluate(() => window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    }));
    const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    const text = bad.map((v) => `${v.impact} ${v.id}: ${v.help}\n${v.nodes.slice(0, 5)
      .map((n) => `    ${n.target.join(' ')}: ${n.failureSummary.split('\n').slice(1, 3).join(' ')}`).join('\n')}`).join('\n');
    assert.equal(bad.length, 0, `axe on ${what} (${this.name}'s page):\n${text}`);
    console.log(`axe on ${what}: ${result.passes.length} rules pass, no serious or critical violation`
      + `${result.violations.length ? ` (minor/moderate: ${result.violations.map((v) => v.id).join(', ')})` : ''}`);
  }

  /** The phase's name fits on one line beside the countdown. */
  async phaseOnOneLine() {
    return this.page.evaluate(() => {
      const name = document.querySelector('[data-testid=phase-name]');
      return name.getClientRects().length === 1
        && name.getBoundingClientRect().height < 1.6 * parseFloat(getComputedStyle(name).lineHeight);
    });
  }

  t(id) { return this.page.locator(`[data-testid="${id}"]`); }
  row(playerId) { return this.page.locator(`[data-testid=player][data-player-id="${playerId}"]`); }
  state() { return this.page.evaluate(readRoomPage); }

  async until(pred, what, timeoutMs = WAIT) {
    let last;
    try {
      return await waitUntil(async () => { last = await this.state(); return pred(last) ? last : null; },
        { timeoutMs, what: `${this.name}: ${what}` });
    } catch (e) {
      e.message += `\n${this.name}'s page: ${JSON.stringify(summary(last))}`;
      if (this.pageErrors.length) e.message += `\n${this.name}'s page errors: ${this.pageErrors.join('\n')}`;
      throw e;
    }
  }

  async setName(name) {
    await this.t('name-input').fill(name);
  }

  /** Sends a chat line through the page's form (Enter) and waits for the command to succeed. */
  async say(text) {
    await this.t('chat-input').fill(text);
    await this.act(`chat "${text}"`, () => this.t('chat-input').press('Enter'));
  }

  async commandCounts() {
    return this.page.evaluate(() => ({
      ok: Number(document.body.dataset.commandsOk || 0), failed: Number(document.body.dataset.commandsFailed || 0),
    }));
  }

  /** Does `action` (a click, a key press) and waits until the command it sends has been answered. */
  async act(what, action) {
    const before = await this.commandCounts();
    await action();
    const after = await waitUntil(async () => {
      const c = await this.commandCounts();
      return c.ok + c.failed > before.ok + before.failed ? c : null;
    }, { timeoutMs: WAIT, what: `${this.name}: ${what} answered` });
    if (after.failed > before.failed) {
      const err = (await this.state()).error;
      throw new Error(`${this.name}: ${what} refused: ${err?.code}: ${err?.text}`);
    }
  }

  click(what, locator) { return this.act(what, () => locator.click()); }

  async shot(file) {
    await this.page.evaluate(() => window.scrollTo(0, 0));
    await this.page.screenshot({ path: path.join(SHOTS, file), fullPage: true });
  }
}

function summary(s) {
  if (!s) return s;
  return { phase: s.phase, round: s.round, role: s.role, alive: s.alive, conn: s.conn, error: s.error,
    chat: s.chat.length, lastPhases: s.phases.slice(-4), players: s.players.map((p) => `${p.name}:${p.alive ? 'alive' : 'dead'}:${p.role ?? '-'}`) };
}

const count = (lines, text) => lines.filter((l) => l.text === text).length;

async function all(players, fn) { return Promise.all(players.map(fn)); }

// ───────────────────────────── the game ─────────────────────────────

stackTest('four players play a whole game in Chromium through nginx and two gateways', 300000, playWholeGame);

async function playWholeGame() {
  // ── the lobby watcher ──
  const watcher = await Player.open('Watcher', DESKTOP);
  await waitUntil(async () => !/Connecting/.test(await watcher.t('lobby-status').textContent()),
    { timeoutMs: WAIT, what: 'the lobby snapshot' });
  await watcher.page.evaluate(() => {
    window.__lobbyHistory = [];
    const rec = () => {
      const rows = [...document.querySelectorAll('[data-testid=lobby-room]')]
        .map((li) => `${li.dataset.code}:${li.dataset.players}/${li.dataset.total}:${li.dataset.phase}`);
      const s = rows.join(',');
      if (window.__lobbyHistory.at(-1) !== s) window.__lobbyHistory.push(s);
    };
    new MutationObserver(rec).observe(document.getElementById('lobby-rooms'), { subtree: true, childList: true, attributes: true });
    rec();
  });

  // A private room is never listed: create one, then a public room; once the public one is
  // listed, the private one (created earlier, same ordered stream) must not be.
  const privateCode = await createByApi({ title: 'Hidden', total: 3, mafia: 1, doctor: 0, police: 0, private: true });

  // ── the host creates the room with the form (submitted with the keyboard) ──
  const host = await Player.open('Ann');
  await host.setName('Ann');
  const title = `E2E ${Date.now().toString(36)}`;
  await host.t('create-title').fill(title);
  await host.t('create-total').fill('4');
  await host.t('create-mafia').fill('1');
  await host.t('create-doctor').fill('1');
  await host.t('create-police').fill('1');
  await host.page.locator('#create-form summary').click();
  for (const [k, v] of Object.entries(DURATIONS)) await host.t(`dur-${k}`).fill(String(v));
  await host.t('create-title').press('Enter');
  await host.t('room-view').waitFor({ state: 'visible' });
  const code = await host.t('room-code').getAttribute('data-code');
  assert.match(code, CODE);
  assert.match((await host.t('room-code').textContent()).trim(), SHOWN_CODE, 'the code is shown in groups of four');
  assert.ok((await host.t('share-link').inputValue()).endsWith(`/#/room/${code}`), 'the share link leads to the room');
  const hosted = await host.until((s) => s.phase === 'waiting' && s.you, 'in the waiting room');
  assert.deepEqual(hosted.players.map((x) => x.name), ['Ann'], 'the creator is seated by the create itself');

  const listed = (s) => s.split(',').some((r) => r.startsWith(`${code}:`));
  await waitUntil(async () => (await watcher.page.evaluate(() => window.__lobbyHistory)).some(listed),
    { timeoutMs: WAIT, what: 'the watcher to see the room in the lobby' });

  // ── three more join from the lobby ──
  const others = [];
  for (const name of ['Bea', 'Cy', 'Dee']) {
    const p = await Player.open(name);
    const join = p.page.locator(`[data-testid=lobby-room][data-code="${code}"] [data-testid=lobby-join]`);
    await join.waitFor({ state: 'visible' });
    if (name === 'Dee') {
      // A taken name is refused with a sentence, and the page stays in the lobby.
      await p.setName('Ann');
      await join.click();
      const s = await p.until((x) => x.error, 'the name_taken error');
      assert.equal(s.error.code, 'name_taken');
      assert.match(s.error.text, /already has that name/);
      assert.equal(s.view, 'lobby');
    }
    await p.setName(name);
    await join.click();
    await p.t('room-view').waitFor({ state: 'visible' });
    await p.until((s) => s.phase === 'waiting' && s.you, 'in the waiting room');
    others.push(p);
  }
  const players = [host, ...others];
  const byName = Object.fromEntries(players.map((p) => [p.name, p]));

  // Everyone sees the four players; the host can start, nobody else sees the button.
  for (const p of players) {
    const s = await p.until((x) => x.players.length === 4, 'four players listed');
    p.id = s.you;
    assert.deepEqual(s.players.map((x) => x.name).sort(), ['Ann', 'Bea', 'Cy', 'Dee']);
  }
  assert.equal(new Set(players.map((p) => p.id)).size, 4);
  assert.equal(await host.t('start-button').isVisible(), true);
  for (const p of others) assert.equal(await p.t('start-button').isVisible(), false);

  // A reload rejoins the same seat (localStorage + cookie), without a fifth player.
  await byName.Cy.page.reload();
  await byName.Cy.t('room-view').waitFor({ state: 'visible' });
  const cyAgain = await byName.Cy.until((s) => s.players.length === 4 && s.you, 'back in the room after a reload');
  assert.equal(cyAgain.you, byName.Cy.id);

  // The lobby shows the room full; joining it now is refused with a sentence.
  await waitUntil(async () => (await watcher.page.evaluate(() => window.__lobbyHistory)).at(-1).includes(`${code}:4/4:waiting`),
    { timeoutMs: WAIT, what: 'the lobby to show the room full' });
  assert.ok((await watcher.page.evaluate(() => window.__lobbyHistory)).every((s) => !s.includes(privateCode)),
    'a private room is never listed');
  await watcher.shot('lobby.png');
  await watcher.checkA11y('the lobby');
  // Focus is visible: every control reached with Tab has an outline.
  await watcher.page.evaluate(() => document.activeElement?.blur());
  for (let i = 0; i < 4; i++) {
    await watcher.page.keyboard.press('Tab');
    const focus = await watcher.page.evaluate(() => {
      const e = document.activeElement;
      const st = getComputedStyle(e);
      return { what: `${e.tagName} ${e.dataset.testid || e.className}`, style: st.outlineStyle, width: parseFloat(st.outlineWidth) };
    });
    assert.ok(focus.style !== 'none' && focus.width >= 2, `focus is visible on ${focus.what}: ${JSON.stringify(focus)}`);
  }
  // A code typed as a person would (lower case, in groups, spaced) reaches the same room.
  await watcher.setName('Eve');
  await watcher.t('join-code').fill(` ${code.toLowerCase().match(/.{4}/g).join(' - ')} `);
  await watcher.t('join-code').press('Enter');
  const refused = await watcher.until((s) => s.error, 'the room_full error');
  assert.equal(refused.error.code, 'room_full');
  assert.equal(refused.error.text, 'This room is full.');
  assert.equal(refused.view, 'lobby');

  // In another browser (no cookie, no tab of its own), the seat kept in localStorage still
  // opens the stream: the page always names its token in the query string.
  const secondDevice = await Player.open('Bea, second device');
  const beaSeat = await byName.Bea.page.evaluate((c) => localStorage.getItem(`phasecast:seat:${c}`), code);
  await secondDevice.page.evaluate(([c, seat]) => localStorage.setItem(`phasecast:seat:${c}`, seat), [code, beaSeat]);
  await secondDevice.page.goto(`/#/room/${code}`);
  const beaTwice = await secondDevice.until((s) => s.you && s.players.length === 4, 'Bea on a second device');
  assert.equal(beaTwice.you, byName.Bea.id);
  assert.equal(beaTwice.error, null);
  await secondDevice.context.close();

  // A bad token is told as a sentence, and the page offers to join again.
  const stranger = await Player.open('Stranger');
  await stranger.page.evaluate((c) => localStorage.setItem(`phasecast:seat:${c}`,
    JSON.stringify({ player_id: 'nobody1', token: 'not.a.token', name: 'X' })), code);
  await stranger.page.goto(`/#/room/${code}`);
  const bad = await stranger.until((s) => s.error, 'the unauthorized error');
  assert.equal(bad.error.code, 'unauthorized');
  assert.match(bad.error.text, /no longer valid/);
  await stranger.t('invite').waitFor({ state: 'visible' });
  await stranger.context.close();

  // ── start ──
  for (const p of players) await p.page.evaluate(installLeakWatch);
  await host.click('start', host.t('start-button'));
  for (const p of players) {
    const s = await p.until((x) => x.role && x.phase !== 'waiting', 'a role and a running game');
    p.role = s.role;
  }
  const roles = Object.fromEntries(players.map((p) => [p.id, p.role]));
  assert.deepEqual(Object.values(roles).sort(), ['citizen', 'doctor', 'mafia', 'police'], 'one of each role');
  const of = (role) => players.find((p) => p.role === role);
  const mafia = of('mafia');
  const doctor = of('doctor');
  const police = of('police');
  const citizen = of('citizen');
  console.log(`roles: ${players.map((p) => `${p.name}=${p.role}`).join(', ')}`);
  for (const p of players) {
    const s = await p.state();
    assert.deepEqual(s.players.filter((x) => x.role).map((x) => x.id), [p.id], `${p.name} sees only their own role`);
  }
  await waitUntil(async () => (await watcher.page.evaluate(() => window.__lobbyHistory)).at(-1).includes(`${code}:4/4:playing`),
    { timeoutMs: WAIT, what: 'the lobby to show the room playing' });

  // ── day 1 ──
  for (const p of players) await p.until((s) => s.phase === 'day' && s.conn.state === 'open', 'day 1');
  const day1 = await all(players, (p) => p.state());
  const endsAt = day1[0].endsAt;
  assert.ok(day1.every((s) => s.endsAt === endsAt), 'every page counts down to the same deadline');
  const left = endsAt - Date.now();
  assert.ok(left > 0 && left <= 4 * DURATIONS.day_per_player * 1000 + 1000, `day 1 ends in ${left} ms`);
  await host.say('Good morning, town.');
  for (const p of players) await p.until((s) => count(s.chat, 'Good morning, town.') === 1, 'the first chat line');

  // Outage 1: the first gateway stops; whoever was on it reconnects through nginx to the other.
  await stack.stopGateway(0);
  const outage1 = players.map((p) => `During outage 1, ${p.name} says hi.`);
  await all(players, (p, i) => p.say(outage1[i]));
  for (const p of players) {
    await p.until((s) => s.conn.state === 'open' && outage1.every((t) => count(s.chat, t) === 1), 'the outage 1 lines after reconnecting');
  }
  await stack.startGatewayIntoRotation(0);

  // Outage 2: now every stream is on the second gateway. While it is down everyone chats and
  // abstains, which ends the day at once: vote, vote_result, night_intro, night follow.
  await stack.stopGateway(1);
  const outage2 = players.map((p) => `During outage 2, ${p.name} abstains.`);
  await all(players, (p, i) => p.say(outage2[i]));
  await all(players, (p) => p.click('abstain', p.t('abstain-button')));
  const restart2 = stack.startGatewayIntoRotation(1);
  restart2.catch(() => {}); // awaited below; this only keeps an early failure from being unhandled
  for (const p of players) {
    await p.until((s) => s.conn.state === 'open' && s.phase === 'night' && outage2.every((t) => count(s.chat, t) === 1),
      'night 1 and the outage 2 lines after reconnecting');
  }
  for (const p of players) {
    const s = await p.state();
    assert.ok(s.conn.drops >= 1, `${p.name}'s page lost its stream at least once (drops=${s.conn.drops})`);
    assert.equal(s.deaths.length, 0, 'nobody died from an all-abstain vote');
    // The phases that began while this page was cut off arrived late, replayed on reconnect:
    // a phase's start is its deadline minus its duration.
    const late = s.phases.filter((x) => x.source === 'event' && x.round === 1 && DURATIONS[x.phase] && x.phase !== 'day'
      && x.at - (x.endsAt - DURATIONS[x.phase] * 1000) > 300);
    assert.ok(late.length >= 1, `${p.name} was shown phase changes that happened during outage 2`);
    console.log(`${p.name}: drops=${s.conn.drops}, replayed after outage 2: ${late.map((x) => `${x.phase} (+${x.at - (x.endsAt - DURATIONS[x.phase] * 1000)} ms)`).join(', ')}`);
  }

  // ── night 1 ──
  await mafia.click('kill', mafia.row(citizen.id).locator('[data-testid=skill-button]'));
  await mafia.until((s) => s.pick === citizen.id, 'the mafia pick shown');
  await mafia.say('Tonight the citizen.');
  await doctor.click('protect', doctor.row(police.id).locator('[data-testid=skill-button]'));
  await doctor.until((s) => s.protect === police.id, 'the protection shown');
  await police.click('investigate', police.row(mafia.id).locator('[data-testid=skill-button]'));
  const inv = await police.until((s) => s.investigations.some((i) => i.target === mafia.id), 'the investigation result');
  assert.deepEqual(inv.investigations, [{ target: mafia.id, mafia: true }]);
  const citizenNight = await citizen.state();
  assert.equal(citizenNight.chatDisabled, true, 'a citizen cannot chat at night');
  await mafia.shot('night.png');
  await mafia.checkA11y('a night');
  assert.match((await mafia.state()).announced, /Round 1 · Night\./, 'the phase change was announced');
  assert.equal(await mafia.t('announcer').getAttribute('aria-live'), 'polite');
  await restart2;

  // ── day 2: the citizen was killed ──
  for (const p of players) {
    await p.until((s) => s.deaths.some((d) => d.id === citizen.id && d.cause === 'mafia'), 'the night kill');
  }
  const dead = await citizen.until((s) => !s.alive && s.players.every((x) => x.role), 'the dead citizen sees every role');
  assert.deepEqual(Object.fromEntries(dead.players.map((x) => [x.id, x.role])), roles);
  assert.equal(dead.chatChannel, 'dead');
  assert.match(dead.status, /talk only with the dead/);
  assert.match(dead.chatHint, /Only the dead read/);
  for (const p of players) await p.until((s) => s.phase === 'day' && s.deaths.length === 1, 'day 2');
  await citizen.say('Whispers from the grave.');

  // The dead citizen reloads: same seat, still dead, still sees every role and the dead chat.
  citizen.phaseSegments.push((await citizen.state()).phases);
  await citizen.page.reload();
  await citizen.t('room-view').waitFor({ state: 'visible' });
  const back = await citizen.until((s) => s.you && s.phase === 'day' && s.players.every((x) => x.role), 'the citizen back after a reload');
  assert.equal(back.you, citizen.id);
  assert.equal(back.alive, false);
  assert.equal(count(back.chat, 'Whispers from the grave.'), 1);

  // The doctor and the police vote the mafia out; the day screenshot shows the tally.
  await doctor.click('vote', doctor.row(mafia.id).locator('[data-testid=vote-button]'));
  await police.click('vote', police.row(mafia.id).locator('[data-testid=vote-button]'));
  for (const p of players) {
    await p.until((s) => s.players.find((x) => x.id === mafia.id)?.votes === 2, 'two votes against the mafia');
  }
  await police.shot('day.png');
  await police.checkA11y('a day');
  assert.ok(await police.phaseOnOneLine(), 'the phase name fits on one line by day');
  assert.match((await police.state()).announced, /Round 2 · Day: discussion\./);
  await mafia.click('abstain', mafia.t('abstain-button'));

  // ── the end ──
  for (const p of players) {
    await p.until((s) => s.phase === 'ended' && s.winner === 'citizens' && Object.keys(s.finalRoles).length === 4, 'the result');
  }
  await host.shot('end.png');
  await host.checkA11y('the end');
  for (const p of players) {
    const s = await p.state();
    assert.deepEqual(s.finalRoles, roles, `${p.name} sees everyone's role at the end`);
    assert.ok(s.deaths.some((d) => d.id === mafia.id && d.cause === 'vote'), `${p.name} sees the mafia voted out`);
    // Won or lost, and who was what, at the top of the screen, with the way back to the lobby.
    assert.equal(s.outcome, p === mafia ? 'lost' : 'won', `${p.name} is told they ${p === mafia ? 'lost' : 'won'}`);
    assert.match(s.announced, p === mafia ? /You lost/ : /You won/);
    const top = await p.page.evaluate(() => {
      window.scrollTo(0, 0);
      const box = (id) => document.querySelector(`[data-testid=${id}]`).getBoundingClientRect();
      return { result: box('result').top, roles: box('final-roles').bottom, back: box('result-back').bottom, height: innerHeight };
    });
    assert.ok(top.roles <= top.height && top.back <= top.height,
      `${p.name}: the result, every role and "Back to the lobby" are on the first screen: ${JSON.stringify(top)}`);
    assert.ok(await p.phaseOnOneLine(), `${p.name}: the phase name fits on one line at the end`);
    if (p === citizen) {
      assert.doesNotMatch(s.status, /only with the dead/, 'a dead player at the end is not told to talk only with the dead');
      assert.match(s.chatHint, /Everyone in the room reads/);
    }
  }

  // The room closes after `ended`, and the lobby watcher sees it go.
  await waitUntil(async () => !listed((await watcher.page.evaluate(() => window.__lobbyHistory)).at(-1)),
    { timeoutMs: WAIT, what: 'the room to leave the lobby' });
  const history = (await watcher.page.evaluate(() => window.__lobbyHistory))
    .map((s) => s.split(',').find((r) => r.startsWith(`${code}:`)) || 'gone');
  const states = history.filter((s, i) => s !== history[i - 1]);
  console.log(`lobby history of ${code}: ${states.join(' → ')}`);
  const counts = states.filter((s) => s.endsWith(':waiting')).map((s) => Number(s.split(':')[1].split('/')[0]));
  assert.deepEqual(counts.filter((n, i) => n !== counts[i - 1]), [1, 2, 3, 4], 'the lobby saw the room fill, never without its host');
  assert.ok(states.some((s) => s.endsWith(':playing')), 'the lobby saw the game start');
  assert.ok(states.some((s) => s.endsWith(':ended')), 'the lobby saw the game end');
  assert.equal(states.at(-1), 'gone');
  for (const p of players) await p.until((s) => s.conn.state === 'closed', 'the room closed');

  // ── what every page showed, over the whole game ──
  const expected = ['day_intro', 'notice', 'day', 'vote', 'vote_result', 'night_intro', 'night',
    'day_intro', 'notice', 'day', 'vote', 'vote_result', 'ended'];
  for (const p of players) {
    const s = await p.state();
    let phases = s.phases;
    for (const seg of [...p.phaseSegments].reverse()) {
      const head = phases[0];
      const tail = seg.at(-1);
      phases = [...seg, ...(head && tail && head.phase === tail.phase && head.round === tail.round ? phases.slice(1) : phases)];
    }
    assert.equal(phases[0].phase, 'waiting', `${p.name}'s log starts in the waiting room`);
    const seen = phases.slice(1).map((x) => x.phase);
    assert.deepEqual(seen, expected, `${p.name} saw every phase once, in order`);
    const rounds = phases.map((x) => x.round);
    assert.ok(rounds.every((r, i) => i === 0 || r >= rounds[i - 1]), `${p.name}: rounds never go back`);
    const ids = phases.filter((x) => x.source === 'event').map((x) => Number(x.id));
    assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), `${p.name}: event ids only go up`);
    assert.equal(s.conn.ignored, 0, `${p.name} received no repeated event`);
    for (const t of ['Good morning, town.', ...outage1, ...outage2]) assert.equal(count(s.chat, t), 1, `${p.name} shows "${t}" once`);
    const whisper = count(s.chat, 'Tonight the citizen.');
    assert.equal(whisper, p === mafia ? 1 : 0, `${p.name}: the mafia chat reaches the mafia only`);
    if (p === doctor || p === police) assert.equal(count(s.chat, 'Whispers from the grave.'), 0, `${p.name}: the dead talk among themselves`);
    assert.deepEqual(s.leaks, [], `${p.name} never saw another player's role while alive`);
    assert.deepEqual(p.pageErrors, [], `${p.name}: no page errors`);
  }
}

// ───────────────────────────── two players in one browser ─────────────────────────────

stackTest('two tabs of one browser are two players: each sees its own role and only its own private events', 180000, twoTabsOneBrowser);

async function twoTabsOneBrowser() {
  // Ann and Bob share one context (one cookie jar, one localStorage); Cy has her own.
  const ann = await Player.open('Ann');
  const bob = await Player.tab('Bob', ann.context);
  const cy = await Player.open('Cy');
  await ann.setName('Ann');
  await ann.t('create-title').fill(`Two tabs ${Date.now().toString(36)}`);
  await ann.t('create-total').fill('3');
  await ann.t('create-mafia').fill('1');
  await ann.t('create-doctor').fill('1');
  await ann.t('create-police').fill('1');
  await ann.page.locator('#create-form summary').click();
  const durations = { ...DURATIONS, night: 8, day_per_player: 8 };
  for (const [k, v] of Object.entries(durations)) await ann.t(`dur-${k}`).fill(String(v));
  await ann.t('create-submit').click();
  await ann.t('room-view').waitFor({ state: 'visible' });
  const code = await ann.t('room-code').getAttribute('data-code');
  for (const p of [bob, cy]) {
    const join = p.page.locator(`[data-testid=lobby-room][data-code="${code}"] [data-testid=lobby-join]`);
    await p.setName(p.name);
    await join.click();
    await p.t('room-view').waitFor({ state: 'visible' });
  }
  const players = [ann, bob, cy];
  for (const p of players) {
    const s = await p.until((x) => x.players.length === 3 && x.you, 'three players listed');
    p.id = s.you;
    assert.equal((await p.seat(code))?.player_id, p.id, `${p.name}'s tab keeps its own seat`);
  }
  assert.equal(new Set(players.map((p) => p.id)).size, 3, 'two tabs of one browser are two players');

  // The cookie now holds Bob's token (he joined last); Ann's tab reloads and is still Ann.
  await ann.page.reload();
  await ann.t('room-view').waitFor({ state: 'visible' });
  assert.equal((await ann.until((s) => s.you && s.players.length === 3, 'Ann back after a reload')).you, ann.id);

  for (const p of players) await p.page.evaluate(installLeakWatch);
  await ann.click('start', ann.t('start-button'));
  for (const p of players) p.role = (await p.until((x) => x.role && x.phase !== 'waiting', 'a role')).role;
  assert.deepEqual(players.map((p) => p.role).sort(), ['doctor', 'mafia', 'police'],
    `each tab shows its own role: ${players.map((p) => `${p.name}=${p.role}`).join(', ')}`);
  for (const p of players) {
    const s = await p.state();
    assert.deepEqual(s.players.filter((x) => x.role).map((x) => x.id), [p.id], `${p.name} sees only their own role`);
  }

  // Day: everyone abstains, which brings the night at once.
  for (const p of players) await p.until((s) => s.phase === 'day', 'day 1');
  await all(players, (p) => p.click('abstain', p.t('abstain-button')));
  for (const p of players) await p.until((s) => s.phase === 'night', 'night 1');
  const of = (role) => players.find((p) => p.role === role);
  const [mafia, doctor, police] = [of('mafia'), of('doctor'), of('police')];
  await mafia.click('kill', mafia.row(police.id).locator('[data-testid=skill-button]'));
  await mafia.say('Only the mafia hears this.');
  await doctor.click('protect', doctor.row(police.id).locator('[data-testid=skill-button]'));
  await police.click('investigate', police.row(mafia.id).locator('[data-testid=skill-button]'));
  await mafia.until((s) => s.pick === police.id, 'the mafia pick shown');
  await doctor.until((s) => s.protect === police.id, 'the protection shown');
  await police.until((s) => s.investigations.length === 1, 'the investigation shown');
  // Each tab shows its own private events only: the night ends (the doctor saved the police),
  // so every event of the night has reached every stream by then.
  for (const p of players) await p.until((s) => s.phase === 'day_intro' || s.phase === 'notice' || s.phase === 'day', 'the morning');
  for (const p of players) {
    const s = await p.state();
    assert.equal(s.deaths.length, 0, 'the doctor saved the police');
    assert.equal(count(s.chat, 'Only the mafia hears this.'), p === mafia ? 1 : 0, `${p.name}: the mafia's whisper`);
    assert.equal(s.investigations.length, p === police ? 1 : 0, `${p.name}: the investigation`);
    assert.equal(s.pick, p === mafia ? police.id : null, `${p.name}: the mafia's pick`);
    assert.equal(s.protect, p === doctor ? police.id : null, `${p.name}: the doctor's choice`);
    assert.deepEqual(s.leaks, [], `${p.name} never saw another player's role`);
    assert.deepEqual(p.pageErrors, [], `${p.name}: no page errors`);
  }
  for (const p of players) assert.equal((await p.state()).role, p.role, `${p.name} still shows their own role`);
  console.log(`two tabs of one browser: ${players.map((p) => `${p.name}=${p.role}`).join(', ')}`);
  await ann.context.close();
  await cy.context.close();
}

// ───────────────────────────── HTTP/2 ─────────────────────────────

stackTest('eight tabs of one browser hold eight streams over HTTP/2 through nginx', 120000, eightStreamsOverHttp2);

async function eightStreamsOverHttp2() {
  // The certificate is self-signed for the run: this context accepts it.
  const context = await browser.newContext({ viewport: PHONE, baseURL: stack.httpsUrl, ignoreHTTPSErrors: true });
  contexts.push(context);
  context.setDefaultTimeout(WAIT);
  const tabs = [];
  for (let i = 0; i < 8; i++) {
    const tab = await Player.tab(`Tab ${i + 1}`, context);
    await waitUntil(async () => !/Connecting/.test(await tab.t('lobby-status').textContent()),
      { timeoutMs: WAIT, what: `tab ${i + 1}'s lobby snapshot` });
    tabs.push(tab);
  }
  const protocol = await tabs[7].page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  assert.equal(protocol, 'h2', 'the page came over HTTP/2');
  // An event after all eight streams are open reaches every one of them.
  const title = `HTTP/2 ${Date.now().toString(36)}`;
  const res = await fetch(`${stack.baseUrl}/v1/rooms`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ title, total: 3, mafia: 1, name: 'Host' }),
  });
  const created = await res.json();
  assert.equal(res.status, 200, JSON.stringify(created));
  for (const tab of tabs) {
    await tab.page.locator(`[data-testid=lobby-room][data-code="${created.code}"]`).waitFor({ state: 'visible' });
  }
  for (const tab of tabs) assert.deepEqual(tab.pageErrors, [], `${tab.name}: no page errors`);
  // nginx logs a stream when it ends: eight lobby streams, each over HTTP/2.
  await context.close();
  await waitUntil(() => (stack.nginxAccessLog().match(/"GET \/v1\/lobby\/events HTTP\/2\.0"/g) || []).length >= 8,
    { timeoutMs: WAIT, what: 'eight HTTP/2 lobby streams in nginx\'s access log' });
}

stackTest('a command whose answer is lost on the way back is retried and applied once', 120000, lostAnswers);

/**
 * Lets the first request to `pattern` reach the gateway (and the engine apply it), then keeps
 * its answer from the page: `cut` is `reset` (the connection breaks, as when a proxy or a
 * gateway dies at that moment) or `timeout` (the gateway's 504, as when the engine's answer
 * comes too late). Returns the request ids of every attempt in order, and the answer the
 * page never saw.
 */
async function loseFirstAnswer(page, pattern, cut) {
  const seen = { ids: [], lost: null };
  await page.route(pattern, async (route) => {
    seen.ids.push(route.request().postDataJSON().request_id);
    if (seen.ids.length > 1) return route.continue();
    try {
      const answer = await route.fetch();
      seen.lost = { status: answer.status(), body: await answer.json() };
    } finally {
      await (cut === 'reset' ? route.abort('connectionreset')
        : route.fulfill({ status: 504, json: { ok: false, error: 'timeout', message: 'the engine did not answer in time' } }));
    }
  });
  return seen;
}

async function lostAnswers() {
  // The host's create: its answer is lost, the page creates again with the same request id
  // and is seated in the room the first attempt made; the lobby lists one such room.
  const host = await Player.open('Host');
  const title = `Lost answers ${Date.now().toString(36)}`;
  await host.setName('Host');
  await host.t('create-title').fill(title);
  await host.t('create-total').fill('3');
  await host.t('create-mafia').fill('1');
  await host.t('create-doctor').fill('0');
  await host.t('create-police').fill('0');
  const create = await loseFirstAnswer(host.page, '**/v1/rooms', 'reset');
  await host.t('create-submit').click();
  await host.t('room-view').waitFor({ state: 'visible' });
  const code = await host.t('room-code').getAttribute('data-code');
  assert.equal(create.lost?.status, 200, `the first attempt made the room: ${JSON.stringify(create.lost)}`);
  assert.equal(code, create.lost.body.code, 'the page is in the room the first attempt made');
  assert.equal((await host.seat(code))?.token, create.lost.body.token, 'with the first attempt\'s seat');
  assert.deepEqual([create.ids.length, create.ids[1]], [2, create.ids[0]], 'sent again with its request id');

  const ann = await Player.open('Ann');
  await ann.page.locator(`[data-testid=lobby-room][data-code="${code}"]`).waitFor({ state: 'visible' });
  assert.equal(await ann.page.locator('[data-testid=lobby-room]', { hasText: title }).count(), 1, 'one room made');
  await ann.setName('Ann');
  const join = await loseFirstAnswer(ann.page, '**/v1/rooms/*/join', 'reset');
  await ann.page.locator(`[data-testid=lobby-room][data-code="${code}"] [data-testid=lobby-join]`).click();
  await ann.t('room-view').waitFor({ state: 'visible' });
  const seated = await ann.until((s) => s.you && s.players.length === 2, 'Ann seated beside the host');
  assert.equal(seated.error, null, 'no error: the retry got the seat the first attempt took');
  assert.deepEqual(seated.players.map((p) => p.name).sort(), ['Ann', 'Host'], 'one seat for Ann, no ghost');
  assert.equal(join.lost?.status, 200, `the first attempt took the seat: ${JSON.stringify(join.lost)}`);
  const seat = await ann.seat(code);
  assert.deepEqual([seat.player_id, seat.token], [join.lost.body.player_id, join.lost.body.token],
    'the retry got the first answer back, token and all');
  assert.equal(join.ids.length, 2, 'the join was sent again');
  assert.match(join.ids[0], /^[0-9a-f]{32}$/, 'a random request id');
  assert.equal(join.ids[1], join.ids[0], 'the retry carries the first attempt\'s request id');

  const chat = await loseFirstAnswer(ann.page, '**/v1/rooms/*/commands', 'timeout');
  await ann.say('said once');
  await ann.say('and then');
  const lines = (await ann.until((s) => count(s.chat, 'and then') === 1, 'the second line')).chat;
  assert.equal(chat.lost?.status, 200, `the first attempt said the line: ${JSON.stringify(chat.lost)}`);
  assert.equal(count(lines, 'said once'), 1, `the line retried after a 504 is in the room once: ${JSON.stringify(lines)}`);
  assert.equal(chat.ids.length, 3, 'the first line was sent twice, the second once');
  assert.equal(chat.ids[1], chat.ids[0]);
  assert.notEqual(chat.ids[2], chat.ids[0], 'each command has an id of its own');
  assert.deepEqual([...host.pageErrors, ...ann.pageErrors], []);
  await host.page.unrouteAll();
  await ann.page.unrouteAll();
}

// ───────────────────────────── the invite link in a second tab ─────────────────────────────

stackTest('a second tab opening the invite link gets the join form, not the first tab\'s seat', 120000, inviteInSecondTab);

/** Creates a waiting room from `host`'s lobby form; returns its code once the host is seated. */
async function createFromForm(host, { title, total = 3, mafia = 1, doctor = 0, police = 0, durations = null }) {
  await host.setName(host.name);
  await host.t('create-title').fill(title);
  await host.t('create-total').fill(String(total));
  await host.t('create-mafia').fill(String(mafia));
  await host.t('create-doctor').fill(String(doctor));
  await host.t('create-police').fill(String(police));
  if (durations) {
    await host.page.locator('#create-form summary').click();
    for (const [k, v] of Object.entries(durations)) await host.t(`dur-${k}`).fill(String(v));
  }
  await host.t('create-submit').click();
  await host.t('room-view').waitFor({ state: 'visible' });
  const code = await host.t('room-code').getAttribute('data-code');
  host.id = (await host.until((s) => s.you && s.phase === 'waiting', `${host.name} seated in the new room`)).you;
  return code;
}

async function inviteInSecondTab() {
  // Ann creates a room; her seat is her tab's, and the browser's last one (localStorage).
  const ann = await Player.open('Ann');
  const code = await createFromForm(ann, { title: `Invite ${Date.now().toString(36)}` });
  const link = await ann.t('share-link').inputValue();
  const browserSeat = () => ann.page.evaluate((c) => JSON.parse(localStorage.getItem(`phasecast:seat:${c}`) || 'null'), code);
  assert.equal((await browserSeat())?.player_id, ann.id, 'the browser\'s last seat is Ann\'s');

  // Bob opens the invite link in a second tab of the same browser. Ann's tab holds that seat,
  // so Bob's tab does not take it: it offers the join form, and continuing as Ann only on purpose.
  const bob = await Player.tabAt('Bob', ann.context, link);
  await bob.t('invite').waitFor({ state: 'visible' });
  assert.equal(await bob.t('room-view').isVisible(), false, 'the second tab did not enter the room as Ann');
  assert.equal(await bob.seat(code), null, 'the second tab took no seat');
  assert.equal(await bob.t('invite-continue').textContent(), 'Continue as Ann');
  assert.match(await bob.t('invite-held').textContent(), /Another tab of this browser is playing as Ann/);
  assert.equal(await bob.t('name-input').inputValue(), '', 'Ann\'s remembered name is not offered to the second person');
  await bob.setName('Bob');
  await bob.t('invite-join').click();
  await bob.t('room-view').waitFor({ state: 'visible' });
  bob.id = (await bob.until((s) => s.you && s.players.length === 2, 'Bob seated beside Ann')).you;
  assert.notEqual(bob.id, ann.id, 'Bob is a player of his own');

  // Cy opens the link in its `?room=` form, typed in lower case, in a third tab: the
  // browser's last seat is now Bob's, and Bob's tab holds it.
  const cy = await Player.tabAt('Cy', ann.context, `/?room=${code.toLowerCase()}`);
  await cy.t('invite').waitFor({ state: 'visible' });
  assert.equal(await cy.t('invite-continue').textContent(), 'Continue as Bob');
  assert.equal(await cy.seat(code), null);
  await cy.setName('Cy');
  await cy.t('invite-join').click();
  await cy.t('room-view').waitFor({ state: 'visible' });
  cy.id = (await cy.until((s) => s.you && s.players.length === 3, 'Cy seated')).you;
  assert.equal(new Set([ann.id, bob.id, cy.id]).size, 3, 'three tabs, three players');

  // Ann's tab kept its player all along.
  const annNow = await ann.until((s) => s.players.length === 3, 'Ann sees three players');
  assert.equal(annNow.you, ann.id, 'the first tab is still Ann');
  assert.equal(annNow.error, null);
  assert.equal((await ann.seat(code))?.player_id, ann.id, 'the first tab\'s seat is still Ann\'s');
  for (const p of [bob, cy]) assert.equal((await p.seat(code))?.player_id, p.id, `${p.name}'s tab keeps its own seat`);

  // "Continue as Cy", clicked on purpose in a fourth tab, makes it Cy too.
  const cyAgain = await Player.tabAt('Cy again', ann.context, link);
  await cyAgain.t('invite').waitFor({ state: 'visible' });
  assert.equal(await cyAgain.t('invite-continue').textContent(), 'Continue as Cy');
  await cyAgain.t('invite-continue').click();
  await cyAgain.t('room-view').waitFor({ state: 'visible' });
  assert.equal((await cyAgain.until((s) => s.you && s.players.length === 3, 'Cy in the fourth tab')).you, cy.id);

  // With no tab holding Cy's seat any more, the link in a new tab goes straight back to it
  // (a reopened link, a restarted browser).
  await cy.page.close();
  await cyAgain.page.close();
  const cyBack = await Player.tabAt('Cy, reopened', ann.context, link);
  const back = await cyBack.until((s) => s.view === 'room' && s.you && s.players.length === 3, 'Cy back through the link');
  assert.equal(back.you, cy.id, 'the browser\'s last seat is taken when no tab holds it');
  assert.equal(await cyBack.t('invite').isVisible(), false);

  // The lobby leads Ann back to her seat (the room is full: anyone else sees "Full").
  await ann.t('home-link').click();
  const annRow = ann.page.locator(`[data-testid=lobby-room][data-code="${code}"] [data-testid=lobby-join]`);
  await annRow.waitFor({ state: 'visible' });
  assert.equal(await annRow.textContent(), 'Back to your seat');
  assert.equal(await annRow.isEnabled(), true);
  const stranger = await Player.open('Stranger');
  const strangerRow = stranger.page.locator(`[data-testid=lobby-room][data-code="${code}"] [data-testid=lobby-join]`);
  await strangerRow.waitFor({ state: 'visible' });
  assert.equal(await strangerRow.textContent(), 'Full');
  assert.equal(await strangerRow.isEnabled(), false);
  await annRow.click();
  await ann.t('room-view').waitFor({ state: 'visible' });
  assert.equal((await ann.until((s) => s.you && s.players.length === 3, 'Ann back in her seat')).you, ann.id);

  for (const p of [ann, bob, cy, cyAgain, cyBack, stranger]) assert.deepEqual(p.pageErrors, [], `${p.name}: no page errors`);
  await ann.context.close();
  await stranger.context.close();
}

// ───────────────────────────── a stream the browser gave up on ─────────────────────────────

stackTest('a page whose stream the browser gave up on resumes from its last event id and shows the gap', 180000, resumeAfterGiveUp);

async function resumeAfterGiveUp() {
  // A long day and night; the steps between them short, so that they all pass in the outage.
  const durations = { day_intro: 0.5, notice: 0.5, day_per_player: 20, vote: 1, vote_result: 0.5,
    night_intro: 0.5, night: 40, ended: 3 };
  const host = await Player.open('Hal');
  host.recordStreams();
  const code = await createFromForm(host, { title: `Gap ${Date.now().toString(36)}`, durations });
  const players = [host];
  for (const name of ['Ivy', 'Jo']) {
    const p = await Player.open(name);
    p.recordStreams();
    const join = p.page.locator(`[data-testid=lobby-room][data-code="${code}"] [data-testid=lobby-join]`);
    await p.setName(name);
    await join.click();
    await p.t('room-view').waitFor({ state: 'visible' });
    players.push(p);
  }
  for (const p of players) p.id = (await p.until((s) => s.you && s.players.length === 3, 'three players')).you;
  await host.click('start', host.t('start-button'));
  for (const p of players) await p.until((s) => s.phase === 'day' && s.conn.state === 'open', 'day 1');
  const seats = await all(players, (p) => p.seat(code));
  const before = await all(players, (p) => p.state());

  // Every gateway behind nginx stops. The streams end, the browser's own reconnect gets
  // nginx's 502 and gives up (the EventSource closes): from then on the page opens new ones.
  await stack.stopGateway(0);
  await stack.stopGateway(1);
  for (const [i, p] of players.entries()) {
    await p.until((s) => s.conn.restarts > before[i].conn.restarts && s.conn.state !== 'open', 'the browser to give up its stream');
  }

  // Meanwhile, through a gateway nginx does not know: everyone chats and abstains, which ends
  // the day; vote, vote result, nightfall and night follow on the engine's clock.
  const side = await stack.startSideGateway();
  const gap = players.map((p) => `While nginx had no gateway, ${p.name} said hi.`);
  for (const [i] of players.entries()) await sideCommand(side, code, seats[i].token, { type: 'chat', text: gap[i] });
  for (const [i] of players.entries()) await sideCommand(side, code, seats[i].token, { type: 'vote', target: null });
  await waitUntil(async () => (await roomSnapshot(side, code, seats[0].token))?.phase === 'night',
    { timeoutMs: WAIT, what: 'night 1 on the server' });
  for (const p of players) {
    const s = await p.state();
    assert.equal(s.phase, 'day', `${p.name}'s page has seen nothing of it yet`);
    assert.equal(gap.filter((t) => count(s.chat, t) > 0).length, 0, `${p.name}'s page has none of the lines yet`);
  }

  // A gateway is back: each page's next stream names its last id, and the gateway replays
  // the gap (not a fresh snapshot, which would skip the phases in between).
  await stack.startGateway(0);
  await stack.startGateway(1);
  for (const p of players) {
    await p.until((s) => s.conn.state === 'open' && s.phases.some((x) => x.phase === 'night' && x.round === 1)
      && gap.every((t) => count(s.chat, t) === 1), 'night 1 and the lines said in the gap', 45000);
  }
  await side.proc.stop();
  for (const p of players) {
    const s = await p.state();
    assert.deepEqual(s.phases.filter((x) => x.round <= 1).map((x) => `${x.phase}:${x.source}`),
      ['waiting:snapshot', 'day_intro:event', 'notice:event', 'day:event', 'vote:event', 'vote_result:event',
        'night_intro:event', 'night:event'], `${p.name} was shown every phase change of the gap, as events`);
    assert.equal(s.syncs, 0, `${p.name}'s page resumed rather than starting again from a snapshot`);
    assert.equal(s.conn.ignored, 0, `${p.name} received no repeated event`);
    assert.equal(s.conn.resyncs, 0);
    for (const t of gap) assert.equal(count(s.chat, t), 1, `${p.name} shows "${t}" once`);
    const urls = p.streams.map((x) => x.url);
    assert.doesNotMatch(urls[0], /last_event_id=/, `${p.name}'s first stream asks for no id`);
    assert.ok(p.streams.some((x) => x.type === 'eventsource' && /[?&]last_event_id=\d+(&|$)/.test(x.url)),
      `${p.name}'s page opened a stream with its last id: ${urls.join(' ')}`);
    assert.deepEqual(p.pageErrors, [], `${p.name}: no page errors`);
  }
  for (const p of players) await p.context.close();
}

/** A room command straight to `gateway` (not through nginx) as the holder of `token`. */
async function sideCommand(gateway, code, token, body) {
  const res = await fetch(`http://${gateway.addr}/v1/rooms/${code}/commands`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify(body), signal: AbortSignal.timeout(10000),
  });
  const json = await res.json();
  assert.equal(res.status, 200, `${body.type} through ${gateway.addr}: ${JSON.stringify(json)}`);
  return json;
}

/** The room as `token`'s player sees it now: the snapshot that opens a fresh stream on `gateway`. */
async function roomSnapshot(gateway, code, token) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 5000);
  try {
    const res = await fetch(`http://${gateway.addr}/v1/rooms/${code}/events?token=${encodeURIComponent(token)}`,
      { headers: { Accept: 'text/event-stream' }, signal: ctl.signal });
    if (res.status !== 200) return null;
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      text += decoder.decode(value, { stream: true });
      // Whole frames only: the last piece may still be arriving.
      const snap = text.split('\n\n').slice(0, -1).find((f) => /^event: snapshot$/m.test(f));
      if (snap) {
        return JSON.parse(snap.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n'));
      }
    }
  } finally {
    clearTimeout(timer);
    ctl.abort();
  }
}

async function createByApi(body) {
  const res = await fetch(`${stack.baseUrl}/v1/rooms`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ durations_ms: {}, ...body }),
  });
  const json = await res.json();
  assert.equal(res.status, 200, `create: ${JSON.stringify(json)}`);
  return json.code;
}
