// The real Phasecast stack on free ports, for the browser tests:
//   nats-server → game-engine → two gateways → nginx (serving web/public and proxying /v1/),
// nginx on plain HTTP (`baseUrl`) and on HTTPS with HTTP/2 (`httpsUrl`, a self-signed
// certificate made for the run), as deploy/up --https serves it.
//
// Every process is configured by environment variables only, logs to a file in a temporary
// folder, and is waited for by polling its health endpoint under a deadline (never a fixed
// sleep). `stopGateway(i)` / `startGateway(i)` make an outage of one gateway on its own port;
// `startSideGateway()` starts one more that nginx does not know, a way in for the tests while
// nginx's gateways are all down.
//
// PHASECAST_BIN_DIR holds `game-engine` and `gateway` (relative to web/); by default the debug
// build in $CARGO_TARGET_DIR when that is set (a relative one from the repository root), else
// in ../target. deploy/test passes the folder cargo itself reports.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const WEB_DIR = path.resolve(here, '..');
export const REPO_DIR = path.resolve(WEB_DIR, '..');
export const BIN_DIR = process.env.PHASECAST_BIN_DIR
  ? path.resolve(WEB_DIR, process.env.PHASECAST_BIN_DIR)
  : path.join(path.resolve(REPO_DIR, process.env.CARGO_TARGET_DIR || 'target'), 'debug');

const live = new Set(); // every child still running, killed if this process exits
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** Polls `probe` until it returns a truthy value or `timeoutMs` passes. */
export async function waitUntil(probe, { timeoutMs = 15000, intervalMs = 100, what = 'condition', proc } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError = null;
  for (;;) {
    if (proc && proc.exited) {
      throw new Error(`${proc.name} exited (${proc.exitDescription}) while waiting for ${what}\n${proc.tail()}`);
    }
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`
        + `${lastError ? ` (last error: ${lastError.message})` : ''}${proc ? `\n${proc.tail()}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** `count` distinct free TCP ports on 127.0.0.1 (all held open until all are found). */
export async function freePorts(count) {
  const servers = [];
  try {
    for (let i = 0; i < count; i++) {
      const srv = net.createServer();
      await new Promise((res, rej) => { srv.once('error', rej); srv.listen(0, '127.0.0.1', res); });
      servers.push(srv);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

async function httpOk(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(1500) });
  await res.arrayBuffer().catch(() => {});
  return res.status === 200;
}

function tcpBanner(port, prefix) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = '';
    const done = (v) => { sock.destroy(); resolve(v); };
    sock.setTimeout(1000, () => done(false));
    sock.on('data', (d) => { buf += d; if (buf.includes('\n')) done(buf.startsWith(prefix)); });
    sock.on('error', () => done(false));
  });
}

/** One child process with its log file. */
class Proc {
  constructor(name, cmd, args, env, logFile) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.env = env;
    this.logFile = logFile;
    this.child = null;
    this.exited = false;
    this.exitDescription = '';
  }

  start() {
    fs.appendFileSync(this.logFile, `\n===== ${new Date().toISOString()} starting ${this.cmd} ${this.args.join(' ')}\n`);
    const fd = fs.openSync(this.logFile, 'a');
    this.exited = false;
    this.child = spawn(this.cmd, this.args, { env: { ...process.env, ...this.env }, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    const child = this.child;
    live.add(child);
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        if (this.child === child) {
          this.exited = true;
          this.exitDescription = signal ? `signal ${signal}` : `code ${code}`;
        }
        resolve({ code, signal });
      });
      child.once('error', (err) => {
        live.delete(child);
        this.exited = true;
        this.exitDescription = err.message;
        resolve({ code: null, signal: null, error: err });
      });
    });
    return this;
  }

  get running() { return this.child && !this.exited; }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. Resolves with how it ended. */
  async stop(graceMs = 10000) {
    if (!this.running) return null;
    const child = this.child;
    child.kill('SIGTERM');
    let timer;
    const killed = new Promise((r) => { timer = setTimeout(() => { child.kill('SIGKILL'); r(); }, graceMs); });
    const res = await Promise.race([this.exitPromise, killed.then(() => this.exitPromise)]);
    clearTimeout(timer);
    return res;
  }

  tail(lines = 30) {
    try {
      const text = fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n');
      return `--- last lines of ${this.logFile}:\n${text.slice(-lines).join('\n')}`;
    } catch {
      return `(no log at ${this.logFile})`;
    }
  }
}

export class Stack {
  /** Starts everything and waits until nginx answers with a ready gateway behind it. */
  static async start({ heartbeat = '1s', nginxReadTimeout = '10s', startTimeoutMs = 30000 } = {}) {
    const s = new Stack();
    try {
      await s.#start({ heartbeat, nginxReadTimeout, startTimeoutMs });
    } catch (e) {
      await s.stop({ keep: true });
      throw e;
    }
    return s;
  }

  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phasecast-web-'));
    // nginx's workers run as an unprivileged user when the master is root: they must be able
    // to enter this folder (for the temp paths) and read web/public.
    fs.chmodSync(this.dir, 0o755);
    this.procs = [];
    this.gateways = [];
    this.sideGateways = [];
  }

  log(name) { return path.join(this.dir, `${name}.log`); }

  async #start({ heartbeat, nginxReadTimeout, startTimeoutMs }) {
    for (const bin of ['game-engine', 'gateway']) {
      const p = path.join(BIN_DIR, bin);
      if (!fs.existsSync(p)) throw new Error(`${p} does not exist: build it first, or set PHASECAST_BIN_DIR`);
    }
    const [natsPort, enginePort, gw1, gw1Admin, gw2, gw2Admin, nginxPort, tlsPort] = await freePorts(8);

    // Keys: the engine signs tokens, the gateways verify them.
    const signing = path.join(this.dir, 'signing.pem');
    const verify = path.join(this.dir, 'verify.pem');
    execFileSync('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', signing], { stdio: 'pipe' });
    execFileSync('openssl', ['pkey', '-in', signing, '-pubout', '-out', verify], { stdio: 'pipe' });

    const rustLog = { RUST_LOG: process.env.RUST_LOG || 'info' };
    this.natsUrl = `nats://127.0.0.1:${natsPort}`;

    // JetStream on, with its store in this stack's folder: the engine keeps its rooms there.
    this.nats = this.#proc('nats', 'nats-server',
      ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', path.join(this.dir, 'nats')], {});
    this.nats.start();
    await waitUntil(() => tcpBanner(natsPort, 'INFO '), { timeoutMs: startTimeoutMs, what: 'nats-server', proc: this.nats });

    this.engineAdmin = `127.0.0.1:${enginePort}`;
    this.engine = this.#proc('game-engine', path.join(BIN_DIR, 'game-engine'), [], {
      ...rustLog,
      PHASECAST_NATS__URL: this.natsUrl,
      PHASECAST_ENGINE__ADMIN_LISTEN: this.engineAdmin,
      PHASECAST_AUTH__SIGNING_KEY_FILE: signing,
    });
    this.engine.start();
    await waitUntil(() => httpOk(`http://${this.engineAdmin}/healthz`), { timeoutMs: startTimeoutMs, what: 'game-engine /healthz', proc: this.engine });

    this.gatewayEnv = (port, admin) => ({
      ...rustLog,
      PHASECAST_NATS__URL: this.natsUrl,
      PHASECAST_AUTH__VERIFY_KEY_FILE: verify,
      PHASECAST_GATEWAY__LISTEN: `127.0.0.1:${port}`,
      PHASECAST_GATEWAY__ADMIN_LISTEN: `127.0.0.1:${admin}`,
      PHASECAST_GATEWAY__HEARTBEAT: heartbeat,
    });
    for (const [i, [port, admin]] of [[gw1, gw1Admin], [gw2, gw2Admin]].entries()) {
      const proc = this.#proc(`gateway${i + 1}`, path.join(BIN_DIR, 'gateway'), [], this.gatewayEnv(port, admin));
      this.gateways.push({ proc, port, admin, addr: `127.0.0.1:${port}` });
    }
    await Promise.all(this.gateways.map((_, i) => this.startGateway(i, startTimeoutMs)));

    // nginx, rendered from the same template as production.
    const prefix = path.join(this.dir, 'nginx');
    fs.mkdirSync(prefix, { recursive: true, mode: 0o755 });
    this.nginxPrefix = prefix;
    const cert = path.join(this.dir, 'tls-cert.pem');
    const key = path.join(this.dir, 'tls-key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', key, '-out', cert], { stdio: 'pipe' });
    const conf = execFileSync('bash', [path.join(REPO_DIR, 'deploy/nginx/render'), prefix, `127.0.0.1:${nginxPort}`,
      path.join(WEB_DIR, 'public'), nginxReadTimeout, ...this.gateways.map((g) => g.addr)],
    { encoding: 'utf8', env: { ...process.env, TLS_LISTEN: `127.0.0.1:${tlsPort}`, TLS_CERT: cert, TLS_KEY: key } });
    fs.writeFileSync(path.join(prefix, 'nginx.conf'), conf);
    this.nginx = this.#proc('nginx', 'nginx', ['-p', prefix, '-c', path.join(prefix, 'nginx.conf'), '-g', 'daemon off;'], {});
    this.nginx.start();
    this.baseUrl = `http://127.0.0.1:${nginxPort}`;
    this.httpsUrl = `https://127.0.0.1:${tlsPort}`;
    await waitUntil(async () => (await httpOk(`${this.baseUrl}/index.html`)) && httpOk(`${this.baseUrl}/healthz`),
      { timeoutMs: startTimeoutMs, what: 'nginx serving the page and /healthz', proc: this.nginx });
  }

  #proc(name, cmd, args, env) {
    const p = new Proc(name, cmd, args, env, this.log(name));
    this.procs.push(p);
    return p;
  }

  /** Starts gateway `i` (0 or 1) on its port and waits until it is live and ready. */
  async startGateway(i, timeoutMs = 20000) {
    const g = this.gateways[i];
    if (g.proc.running) return;
    g.proc.start();
    await Stack.#ready(g, timeoutMs);
  }

  static async #ready(g, timeoutMs) {
    await waitUntil(() => httpOk(`http://${g.addr}/healthz`), { timeoutMs, what: `${g.proc.name} /healthz`, proc: g.proc });
    // Ready means connected to NATS (PROTOCOL.md: GET /readyz).
    await waitUntil(() => httpOk(`http://${g.addr}/readyz`), { timeoutMs, what: `${g.proc.name} /readyz`, proc: g.proc });
  }

  /**
   * Starts one more gateway, on free ports, that nginx does not route to: the tests reach
   * the room through it (`g.addr`) while every gateway behind nginx is down. Stopped with
   * `g.proc.stop()`, or with the stack.
   */
  async startSideGateway(timeoutMs = 20000) {
    const [port, admin] = await freePorts(2);
    const proc = this.#proc(`side-gateway${this.sideGateways.length + 1}`, path.join(BIN_DIR, 'gateway'), [],
      this.gatewayEnv(port, admin));
    const g = { proc, port, admin, addr: `127.0.0.1:${port}` };
    this.sideGateways.push(g);
    proc.start();
    await Stack.#ready(g, timeoutMs);
    return g;
  }

  /**
   * Starts gateway `i` again; nginx routes to it as soon as it listens (the deploy template
   * renders upstreams with max_fails=0, so nginx never holds a restarted gateway out).
   */
  async startGatewayIntoRotation(i) {
    await this.startGateway(i);
  }

  /** Stops gateway `i` with SIGTERM (SIGKILL after `graceMs`) and waits until it has exited. */
  async stopGateway(i, graceMs = 10000) {
    const g = this.gateways[i];
    const res = await g.proc.stop(graceMs);
    // Its port must be closed before we call it an outage.
    await waitUntil(async () => !(await httpOk(`http://${g.addr}/healthz`).catch(() => false)),
      { timeoutMs: 5000, what: `${g.proc.name} to stop answering` });
    return res;
  }

  async restartGateway(i) {
    await this.stopGateway(i);
    await this.startGateway(i);
  }

  /** nginx's access log so far (one line per finished request; no query strings). */
  nginxAccessLog() {
    try { return fs.readFileSync(path.join(this.nginxPrefix, 'access.log'), 'utf8'); } catch { return ''; }
  }

  /** Gateway `i`'s Prometheus metrics (admin listener), for diagnostics. */
  async gatewayMetrics(i) {
    const res = await fetch(`http://${this.gateways[i].admin}/metrics`, { signal: AbortSignal.timeout(2000) });
    return res.text();
  }

  /** Stops everything, newest first. Keeps the logs when `keep` (or PHASECAST_KEEP_LOGS=1). */
  async stop({ keep = false } = {}) {
    const order = [this.nginx, ...this.gateways.map((g) => g.proc), ...this.sideGateways.map((g) => g.proc),
      this.engine, this.nats].filter(Boolean);
    for (const p of order) {
      try { await p.stop(5000); } catch { /* keep going */ }
    }
    if (keep || process.env.PHASECAST_KEEP_LOGS === '1') {
      console.error(`stack logs kept in ${this.dir}`);
    } else {
      fs.rmSync(this.dir, { recursive: true, force: true });
    }
  }
}
