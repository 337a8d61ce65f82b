// Real-client end-to-end test of Huddle's token access (`[auth] mode = "token"`): the unmodified
// Flashphoner Web SDK (@flashphoner/websdk 2.0.276, flashphoner-room-api.js bundle) in headless
// Debian Chromium, driven by playwright-core. The SDK sends `RoomApi.connect({token})` as
// `custom.token` of the `connection` message; the server answers a refused join with a
// DataStatusEvent FAILED whose info the SDK hands to ROOM_EVENT.FAILED(room, info).
//
// Tokens are minted with the server binary (`huddle --config FILE token ...`), except the
// expired one, which is crafted here (HS256 = HMAC-SHA256) because the server allows 30 s of
// leeway and `--ttl` cannot produce an `exp` in the past.
//
// Run from the repository root:   node --test tests/browser/token.test.mjs
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 to print every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 for the server log.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..');
const HUDDLE_BIN = path.resolve(REPO_ROOT, process.env.HUDDLE_BIN || 'target/debug/huddle');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SDK_BUNDLE = path.join(HERE, 'node_modules', '@flashphoner', 'websdk', 'flashphoner-room-api.js');
const PAGE_HTML = path.join(HERE, 'room-page.html');
const PRINT_FRAMES = process.env.HUDDLE_E2E_FRAMES === '1';
const PRINT_SERVER_LOG = process.env.HUDDLE_E2E_SERVER_LOG === '1';

const ROOM = 'daily-стендап 🎉';
const OTHER_ROOM = 'board-room';

const STEP_TIMEOUT_MS = 8_000;
const MINT_TIMEOUT_MS = 8_000;
const SERVER_START_TIMEOUT_MS = 15_000;
const SERVER_STOP_TIMEOUT_MS = 8_000;
const FILE_WATCHDOG_MS = 39_000;

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

// A fresh random secret per run; the "forged" tokens are signed with a different one.
const SECRET = crypto.randomBytes(32).toString('base64url');
const WRONG_SECRET = crypto.randomBytes(32).toString('base64url');

const serverConfig = (secret) => `[http]
listen = "127.0.0.1:0"
tls = false
[media]
udp_port = 0
advertise_ips = ["127.0.0.1"]
[device]
camera = "none"
microphone = "none"
[auth]
mode = "token"
secret = "${secret}"
[log]
level = "debug"
`;

// ---------------------------------------------------------------------------------------------
// Shared state

let tmpDir;
let configPath; // the server's config (holds SECRET)
let wrongConfigPath; // same shape, WRONG_SECRET: mints tokens with a bad signature
let server; // { proc, addr, stderr: string[], exit: Promise<{code, signal}> }
let staticServer; // { server, origin, requests: string[] }
let browser;
const pages = []; // every Harness created, for diagnostics / cleanup
const issuedTokens = []; // every token handed to a page: none may show up in the server log

// Hard bound for the whole file: if anything hangs beyond the per-step timeouts, tear down and exit.
const watchdog = setTimeout(() => {
  process.stderr.write(`\n[e2e] watchdog: file exceeded ${FILE_WATCHDOG_MS} ms, killing everything\n`);
  try { server?.proc.kill('SIGKILL'); } catch { /* ignore */ }
  try { browser?.close(); } catch { /* ignore */ }
  process.exit(1);
}, FILE_WATCHDOG_MS);
watchdog.unref();

// ---------------------------------------------------------------------------------------------
// Helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function tail(lines, n) {
  return lines.slice(-n).join('\n');
}

// `huddle --config FILE token --login LOGIN --room R [--room R2] [--ttl T] [--no-publish]` → the JWT.
function mintToken(config, login, rooms, { ttl = '1h', noPublish = false } = {}) {
  const args = ['--config', config, 'token', '--login', login];
  for (const r of rooms) args.push('--room', r);
  args.push('--ttl', ttl);
  if (noPublish) args.push('--no-publish');
  return new Promise((resolve, reject) => {
    execFile(HUDDLE_BIN, args, { timeout: MINT_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`huddle token ${args.slice(2).join(' ')} failed: ${err.message}\nstderr: ${stderr}`));
        return;
      }
      const token = stdout.trim();
      if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) {
        reject(new Error(`huddle token printed something that is not a JWT: ${JSON.stringify(stdout)}`));
        return;
      }
      issuedTokens.push(token);
      resolve(token);
    });
  });
}

// HS256 by hand: base64url(header) "." base64url(payload) "." base64url(HMAC-SHA256(secret, both)).
function craftHs256(claims, secret) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj), 'utf8').toString('base64url');
  const signingInput = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(signingInput).digest('base64url');
  const token = `${signingInput}.${sig}`;
  issuedTokens.push(token);
  return token;
}

const nowUnix = () => Math.floor(Date.now() / 1000);

async function startServer() {
  if (!fs.existsSync(HUDDLE_BIN)) {
    throw new Error(`server binary not found at ${HUDDLE_BIN} (build it with \`cargo build --bin huddle\` or set HUDDLE_BIN)`);
  }
  const proc = spawn(HUDDLE_BIN, ['--config', configPath], {
    cwd: tmpDir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1' },
  });
  const stderr = [];
  const stdout = [];
  const exit = new Promise((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const s = { proc, stderr, stdout, exit, addr: null, exited: null };
  exit.then((r) => { s.exited = r; });

  const addr = await new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => {
      reject(new Error(`server did not log "listening on http://127.0.0.1:PORT" within ${SERVER_START_TIMEOUT_MS} ms; stderr:\n${buf}`));
    }, SERVER_START_TIMEOUT_MS);
    proc.stderr.setEncoding('utf8');
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d) => stdout.push(d));
    proc.stderr.on('data', (d) => {
      if (PRINT_SERVER_LOG) process.stderr.write(d);
      buf += d;
      stderr.push(...d.split('\n').filter((l) => l.length > 0));
      const m = /listening on http:\/\/(127\.0\.0\.1:\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.once('error', (e) => { clearTimeout(timer); reject(e); });
    exit.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${signal}); stderr:\n${buf}`));
    });
  });
  s.addr = addr;
  return s;
}

async function startStaticServer() {
  const [html, bundle] = await Promise.all([fsp.readFile(PAGE_HTML), fsp.readFile(SDK_BUNDLE)]);
  const requests = [];
  const srv = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const url = new URL(req.url, 'http://127.0.0.1');
    if (req.method === 'GET' && (url.pathname === '/' || url.pathname === '/index.html')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(html);
    } else if (req.method === 'GET' && url.pathname === '/flashphoner-room-api.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store' });
      res.end(bundle);
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  const { port } = srv.address();
  return { server: srv, origin: `http://127.0.0.1:${port}`, requests };
}

// One browser context + page = one RoomApi session.
class Harness {
  constructor(label, context, page) {
    this.label = label;
    this.context = context;
    this.page = page;
    this.frames = []; // WebSocket frames, both directions
    this.console = [];
    this.pageErrors = [];
    this.foreignRequests = [];
  }

  static async open(label) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const h = new Harness(label, context, page);
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on('console', (m) => h.console.push(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => h.pageErrors.push(String(e && e.stack ? e.stack : e)));
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (!['127.0.0.1'].includes(u.hostname) && !['data:', 'blob:', 'about:'].includes(u.protocol)) {
        h.foreignRequests.push(r.url());
      }
    });
    page.on('websocket', (ws) => {
      const u = new URL(ws.url());
      if (u.hostname !== '127.0.0.1') h.foreignRequests.push(ws.url());
      h.frames.push(`-- ws open ${ws.url()}`);
      ws.on('framesent', (f) => h.pushFrame('→', f.payload));
      ws.on('framereceived', (f) => h.pushFrame('←', f.payload));
      ws.on('socketerror', (e) => h.frames.push(`-- ws error ${e}`));
      ws.on('close', () => h.frames.push('-- ws close'));
    });
    pages.push(h);
    await page.goto(`${staticServer.origin}/`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    const ready = await page.evaluate(() => typeof window.RoomApi === 'object' && typeof window.connect === 'function');
    assert.ok(ready, `${label}: page did not load RoomApi (SDK bundle) / harness; page errors: ${h.pageErrors.join('\n')}`);
    return h;
  }

  pushFrame(dir, payload) {
    const text = typeof payload === 'string' ? payload : `<binary ${payload.length} bytes>`;
    const line = `${new Date().toISOString().slice(11, 23)} ${dir} ${text}`;
    this.frames.push(line);
    if (PRINT_FRAMES) process.stderr.write(`[${this.label}] ${line}\n`);
  }

  events() {
    return this.page.evaluate(() => window.__events.slice());
  }

  call(fn, ...args) {
    return withTimeout(
      this.page.evaluate(([name, a]) => window[name](...a), [fn, args]),
      STEP_TIMEOUT_MS,
      `${this.label}: ${fn}()`,
    );
  }

  diagnostics(n = 30) {
    return [
      `--- ${this.label}: last WebSocket frames ---`,
      tail(this.frames, n) || '(none)',
      this.pageErrors.length ? `--- ${this.label}: page errors ---\n${this.pageErrors.join('\n')}` : '',
    ].filter(Boolean).join('\n');
  }

  // Poll the page's event log until `pred` matches an event (optionally after index `from`).
  async waitFor(description, pred, { from = 0, timeout = STEP_TIMEOUT_MS } = {}) {
    const deadline = Date.now() + timeout;
    let evs = [];
    while (Date.now() < deadline) {
      evs = await this.events();
      const hit = evs.slice(from).find(pred);
      if (hit) return hit;
      await sleep(50);
    }
    assert.fail(
      `${this.label}: timed out after ${timeout} ms waiting for ${description}\n` +
      `--- ${this.label}: page events ---\n${evs.map((e) => JSON.stringify(e)).join('\n')}\n` +
      diagnosticsAll(),
    );
  }

  async close() {
    try { await withTimeout(this.context.close(), 5_000, `${this.label}: close context`); } catch { /* ignore */ }
  }
}

function diagnosticsAll() {
  const parts = pages.map((h) => h.diagnostics());
  if (server) parts.push(`--- server stderr (last 40 lines) ---\n${tail(server.stderr, 40)}`);
  return parts.join('\n');
}

// Attach frames/stderr to a failure that does not carry them yet (e.g. a plain assert.equal).
async function withDiagnostics(fn) {
  try {
    await fn();
  } catch (e) {
    if (e && typeof e.message === 'string' && !e.message.includes('last WebSocket frames')) {
      try { e.message += `\n${diagnosticsAll()}`; } catch { /* read-only message */ }
    }
    throw e;
  }
}

// Open one page per label (in parallel), run `body(...harnesses)`, always close the pages afterwards.
async function withPages(labels, body) {
  const opened = await Promise.allSettled(labels.map((label) => Harness.open(label)));
  const hs = opened.filter((r) => r.status === 'fulfilled').map((r) => r.value);
  try {
    const failed = opened.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    await withDiagnostics(() => body(...hs));
  } finally {
    await Promise.all(hs.map((h) => h.close()));
  }
}

function assertClean(h) {
  assert.deepEqual(h.pageErrors, [], `${h.label}: uncaught errors in the page (SDK threw on a server message?)\n${diagnosticsAll()}`);
  assert.deepEqual(h.foreignRequests, [], `${h.label}: requests to hosts other than 127.0.0.1`);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'huddle-e2e-token-'));
  assert.ok(fs.existsSync(SDK_BUNDLE), `SDK bundle missing: ${SDK_BUNDLE} (run \`npm ci\` in tests/browser)`);
  assert.ok(fs.existsSync(CHROMIUM), `Chromium missing: ${CHROMIUM} (apt-get install -y chromium fonts-liberation)`);
  configPath = path.join(tmpDir, 'huddle.toml');
  wrongConfigPath = path.join(tmpDir, 'wrong-secret.toml');
  await fsp.writeFile(configPath, serverConfig(SECRET));
  await fsp.writeFile(wrongConfigPath, serverConfig(WRONG_SECRET));
  const [srv, stat, br] = await Promise.all([
    startServer(),
    startStaticServer(),
    chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 15_000 }),
  ]);
  server = srv;
  staticServer = stat;
  browser = br;
}, { timeout: 25_000 });

after(async () => {
  for (const h of pages) await h.close();
  if (browser) {
    try { await withTimeout(browser.close(), 5_000, 'browser.close()'); } catch { /* ignore */ }
  }
  if (staticServer) {
    staticServer.server.closeAllConnections?.();
    await new Promise((r) => staticServer.server.close(() => r()));
  }
  try {
    if (server) {
      if (!server.exited) server.proc.kill('SIGTERM');
      let result;
      try {
        result = await withTimeout(server.exit, SERVER_STOP_TIMEOUT_MS, 'server exit after SIGTERM');
      } catch (e) {
        server.proc.kill('SIGKILL');
        await server.exit;
        assert.fail(`server did not exit within ${SERVER_STOP_TIMEOUT_MS} ms of SIGTERM\n--- server stderr ---\n${tail(server.stderr, 40)}`);
      }
      const panics = server.stderr.filter((l) => /panicked at/.test(l));
      assert.deepEqual(panics, [], `server panicked\n--- server stderr ---\n${tail(server.stderr, 40)}`);
      // auth.rs: "the token itself is never logged" — not even at debug level.
      const log = server.stderr.join('\n');
      for (const t of issuedTokens) {
        const sig = t.split('.')[2];
        assert.ok(!log.includes(sig), `the server log contains a token (signature ${sig.slice(0, 12)}…)`);
      }
      assert.deepEqual(
        result,
        { code: 0, signal: null },
        `server must shut down gracefully (exit code 0) on SIGTERM\n--- server stderr ---\n${tail(server.stderr, 40)}`,
      );
    }
  } finally {
    if (tmpDir) await fsp.rm(tmpDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
}, { timeout: 15_000 });

// ---------------------------------------------------------------------------------------------
// Tests

test('valid tokens: alice and bob join the room and chat', { timeout: 20_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  const [aliceToken, bobToken] = await Promise.all([
    mintToken(configPath, 'alice', [ROOM]),
    mintToken(configPath, 'bob', [OTHER_ROOM, ROOM], { noPublish: true }),
  ]);
  await withPages(['alice', 'bob'], async (alice, bob) => {
    await alice.call('connect', wsUrl, 'alice', aliceToken);
    await bob.call('connect', wsUrl, 'bob', bobToken);
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await bob.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    // The SDK really sent the token as custom.token of the connection message.
    const conn = alice.frames.find((f) => f.includes('"message":"connection"'));
    assert.ok(conn && conn.includes(`"token":"${aliceToken}"`), `alice's connection message must carry custom.token: ${conn}`);

    await alice.call('join', ROOM);
    const aliceState = await alice.waitFor('STATE after joining', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(aliceState.type, 'STATE', `alice's join must succeed: ${JSON.stringify(aliceState)}`);
    assert.equal(aliceState.room, ROOM);
    assert.deepEqual(aliceState.participants, []);

    await bob.call('join', ROOM);
    const bobState = await bob.waitFor('STATE after joining', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(bobState.type, 'STATE', `bob's join must succeed (token lists two rooms): ${JSON.stringify(bobState)}`);
    assert.deepEqual(bobState.participants, ['alice']);
    const joined = await alice.waitFor('JOINED for bob', (e) => e.type === 'JOINED');
    assert.equal(joined.login, 'bob');

    // Chat both ways.
    const aliceMark = (await alice.events()).length;
    await bob.call('sendMessage', 'alice', 'hi alice — 👋');
    const toAlice = await alice.waitFor('MESSAGE from bob', (e) => e.type === 'MESSAGE', { from: aliceMark });
    assert.equal(toAlice.text, 'hi alice — 👋');
    assert.equal(toAlice.login, 'bob');
    const bobMark = (await bob.events()).length;
    await alice.call('sendMessage', 'bob', 'hello bob');
    const toBob = await bob.waitFor('MESSAGE from alice', (e) => e.type === 'MESSAGE', { from: bobMark });
    assert.equal(toBob.text, 'hello bob');
    assert.equal(toBob.login, 'alice');

    await sleep(200); // let any stray frames arrive
    const bad = (evs) => evs.filter((e) => ['FAILED', 'SEND_FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type));
    assert.deepEqual(bad(await alice.events()), [], 'alice: unexpected failure events');
    assert.deepEqual(bad(await bob.events()), [], 'bob: unexpected failure events');
    assertClean(alice);
    assertClean(bob);
  });
});

test('refused tokens: each join gets room FAILED with the server\'s reason', { timeout: 25_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  const exp = (s) => nowUnix() + s;
  const [forged, aliceToken, otherRoom, hostToken] = await Promise.all([
    mintToken(wrongConfigPath, 'dave', [ROOM]),
    mintToken(configPath, 'alice', [ROOM]),
    mintToken(configPath, 'erin', [OTHER_ROOM]),
    mintToken(configPath, 'host', ['*']),
  ]);
  // Crafted here: exp an hour in the past (well beyond the server's 30 s leeway), and a control
  // crafted the same way but valid, proving the refusal is about `exp` and not the crafting.
  const expired = craftHs256({ sub: 'frank', rooms: [ROOM], publish: true, exp: exp(-3600) }, SECRET);
  const craftedOk = craftHs256({ sub: 'grace', rooms: [ROOM], publish: true, exp: exp(600) }, SECRET);

  const cases = [
    { label: 'frank (expired)', login: 'frank', token: expired, reason: 'Restricted access: the token has expired' },
    { label: 'dave (wrong secret)', login: 'dave', token: forged, reason: "Restricted access: the token's signature is not valid" },
    { label: 'mallory (alice\'s token)', login: 'mallory', token: aliceToken, reason: 'Restricted access: the token was issued for another login' },
    { label: 'erin (other room)', login: 'erin', token: otherRoom, reason: `Restricted access: the token does not allow room '${ROOM}'` },
    { label: 'nobody (no token)', login: 'nobody', token: undefined, reason: 'Restricted access: a token is required (custom.token)' },
  ];

  await withPages(['host', 'grace (crafted, valid)', ...cases.map((c) => c.label)], async (host, grace, ...refused) => {
    // A member already in the room: no refused joiner may ever reach it.
    await host.call('connect', wsUrl, 'host', hostToken);
    await host.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await host.call('join', ROOM);
    const hostState = await host.waitFor('STATE', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(hostState.type, 'STATE', `host (rooms "*") must join: ${JSON.stringify(hostState)}`);
    const hostMark = (await host.events()).length;

    await Promise.all(cases.map((c, i) => refused[i].call('connect', wsUrl, c.login, c.token)));
    for (const h of refused) await h.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    for (const h of refused) await h.call('join', ROOM);

    for (const [i, c] of cases.entries()) {
      const h = refused[i];
      const ev = await h.waitFor('room FAILED', (e) => e.type === 'FAILED' || e.type === 'STATE');
      assert.equal(ev.type, 'FAILED', `${c.label}: the join must be refused, got ${JSON.stringify(ev)}`);
      assert.equal(ev.room, ROOM, `${c.label}: FAILED must be for the joined room`);
      assert.equal(typeof ev.info, 'string', `${c.label}: FAILED must carry the reason text`);
      assert.ok(ev.info.includes(c.reason), `${c.label}: expected reason ${JSON.stringify(c.reason)}, got ${JSON.stringify(ev.info)}`);
      assert.ok(ev.info.startsWith('Restricted access: '), `${c.label}: ${JSON.stringify(ev.info)}`);
    }

    // The crafted-but-valid token is accepted.
    await grace.call('connect', wsUrl, 'grace', craftedOk);
    await grace.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await grace.call('join', ROOM);
    const graceState = await grace.waitFor('STATE', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(graceState.type, 'STATE', `grace (hand-crafted valid HS256 token) must join: ${JSON.stringify(graceState)}`);
    assert.deepEqual(graceState.participants, ['host'], 'only host is in the room: no refused joiner got in');
    const joined = await host.waitFor('JOINED for grace', (e) => e.type === 'JOINED', { from: hostMark });
    assert.equal(joined.login, 'grace');

    await sleep(200); // let any stray frames arrive
    const hostJoins = (await host.events()).slice(hostMark).filter((e) => e.type === 'JOINED').map((e) => e.login);
    assert.deepEqual(hostJoins, ['grace'], 'host must see JOINED only for grace, never for a refused login');
    for (const [i, c] of cases.entries()) {
      const evs = await refused[i].events();
      assert.equal(evs.filter((e) => e.type === 'FAILED').length, 1, `${c.label}: exactly one FAILED`);
      assert.equal(evs.filter((e) => e.type === 'STATE').length, 0, `${c.label}: no STATE`);
      assertClean(refused[i]);
    }
    assertClean(host);
    assertClean(grace);
  });
});
