// Real-client end-to-end test of Huddle's Room API signalling (no media):
// the unmodified Flashphoner Web SDK (@flashphoner/websdk 2.0.276, flashphoner-room-api.js bundle)
// in headless Debian Chromium, driven by playwright-core.
//
// Run from the repository root:   node --test tests/browser/
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 to print every WebSocket frame.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
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

const ROOM = 'комната-1 🎉';
const ALICE = 'alice';
const BORIS = 'Борис';
const TEXT_FROM_BORIS = 'Привет, 世界 👋 <b>&amp;</b>\nline2';
const TEXT_FROM_ALICE = '你好, 世界 🌏🇺🇦 👨‍👩‍👧 ありがとう 𝄞 "quotes" \\ \u00e9\u0301 \t tab';

const STEP_TIMEOUT_MS = 10_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 58_000;

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

const SERVER_CONFIG = `[http]
listen = "127.0.0.1:0"
tls = false
[media]
udp_port = 0
advertise_ips = ["127.0.0.1"]
[device]
camera = "none"
microphone = "none"
[log]
level = "debug"
`;

// ---------------------------------------------------------------------------------------------
// Shared state

let tmpDir;
let server; // { proc, addr, stderr: string[], exit: Promise<{code, signal}> }
let staticServer; // { server, origin, requests: string[] }
let browser;
const pages = []; // every Harness created, for diagnostics / cleanup

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

async function startServer() {
  if (!fs.existsSync(HUDDLE_BIN)) {
    throw new Error(`server binary not found at ${HUDDLE_BIN} (build it with \`cargo build --bin huddle\` or set HUDDLE_BIN)`);
  }
  const configPath = path.join(tmpDir, 'huddle.toml');
  await fsp.writeFile(configPath, SERVER_CONFIG);
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

  diagnostics(n = 40) {
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

// Open one page per label, run `body(...harnesses)`, always close the pages afterwards.
async function withPages(labels, body) {
  const hs = [];
  try {
    for (const label of labels) hs.push(await Harness.open(label));
    await withDiagnostics(() => body(...hs));
  } finally {
    for (const h of hs) await h.close();
  }
}

function assertClean(h) {
  assert.deepEqual(h.pageErrors, [], `${h.label}: uncaught errors in the page (SDK threw on a server message?)\n${diagnosticsAll()}`);
  assert.deepEqual(h.foreignRequests, [], `${h.label}: requests to hosts other than 127.0.0.1`);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'huddle-e2e-'));
  assert.ok(fs.existsSync(SDK_BUNDLE), `SDK bundle missing: ${SDK_BUNDLE} (run \`npm ci\` in tests/browser)`);
  assert.ok(fs.existsSync(CHROMIUM), `Chromium missing: ${CHROMIUM} (apt-get install -y chromium fonts-liberation)`);
  server = await startServer();
  staticServer = await startStaticServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    timeout: 15_000,
  });
}, { timeout: 40_000 });

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
}, { timeout: 20_000 });

// ---------------------------------------------------------------------------------------------
// Tests

test('two Flashphoner RoomApi clients: join, STATE/JOINED, Unicode chat both ways, LEFT', { timeout: 30_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  await withPages([ALICE, BORIS], async (alice, boris) => {
    // Both sessions become ESTABLISHED.
    await alice.call('connect', wsUrl, ALICE);
    await boris.call('connect', wsUrl, BORIS);
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await boris.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    // alice joins the (new) room first: STATE with no participants.
    await alice.call('join', ROOM);
    const aliceState = await alice.waitFor('STATE after joining', (e) => e.type === 'STATE');
    assert.equal(aliceState.room, ROOM, 'STATE routed to the room with the exact (non-Latin) name');
    assert.deepEqual(aliceState.participants, [], 'first joiner must get STATE with 0 participants (self excluded)');

    // Борис joins: his STATE lists alice; alice gets JOINED for Борис.
    await boris.call('join', ROOM);
    const borisState = await boris.waitFor('STATE after joining', (e) => e.type === 'STATE');
    assert.deepEqual(borisState.participants, [ALICE], 'second joiner must get STATE listing exactly alice');
    const joined = await alice.waitFor(`JOINED for ${BORIS}`, (e) => e.type === 'JOINED');
    assert.equal(joined.login, BORIS, 'JOINED must carry the joiner login byte-exact');
    assert.deepEqual(joined.participants, [BORIS]);

    // Борис → alice, Unicode + HTML-ish + newline, via participant.sendMessage.
    let aliceMark = (await alice.events()).length;
    await boris.call('sendMessage', ALICE, TEXT_FROM_BORIS);
    const msgToAlice = await alice.waitFor('MESSAGE from Борис', (e) => e.type === 'MESSAGE', { from: aliceMark });
    assert.equal(msgToAlice.text, TEXT_FROM_BORIS, 'chat text must arrive unchanged');
    assert.equal(msgToAlice.login, BORIS, 'MESSAGE.from must resolve to participant Борис');

    // alice → Борис, CJK/emoji (astral plane, ZWJ sequence, flags, combining marks).
    const borisMark = (await boris.events()).length;
    await alice.call('sendMessage', BORIS, TEXT_FROM_ALICE);
    const msgToBoris = await boris.waitFor('MESSAGE from alice', (e) => e.type === 'MESSAGE', { from: borisMark });
    assert.equal(msgToBoris.text, TEXT_FROM_ALICE, 'chat text must arrive unchanged');
    assert.equal(msgToBoris.login, ALICE, 'MESSAGE.from must resolve to participant alice');

    // Борис leaves: his leave promise resolves (ACCEPTED); alice gets LEFT for Борис.
    aliceMark = (await alice.events()).length;
    const leaveResult = await boris.call('leave');
    assert.equal(leaveResult, 'resolved', 'leave must be ACCEPTED (promise resolved)');
    const left = await alice.waitFor(`LEFT for ${BORIS}`, (e) => e.type === 'LEFT', { from: aliceMark });
    assert.equal(left.login, BORIS, 'LEFT must name Борис');
    assert.deepEqual(left.participants, [], 'alice has no participants after Борис left');

    // Nothing unexpected along the way.
    await sleep(300); // let any stray frames arrive
    const aEv = await alice.events();
    const bEv = await boris.events();
    const bad = (evs) => evs.filter((e) => ['FAILED', 'SEND_FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type));
    assert.deepEqual(bad(aEv), [], `alice: unexpected failure events\n${diagnosticsAll()}`);
    assert.deepEqual(bad(bEv), [], `Борис: unexpected failure events\n${diagnosticsAll()}`);
    assert.equal(aEv.filter((e) => e.type === 'STATE').length, 1, 'alice: exactly one STATE');
    assert.equal(bEv.filter((e) => e.type === 'STATE').length, 1, 'Борис: exactly one STATE');
    assert.equal(aEv.filter((e) => e.type === 'MESSAGE').length, 1, 'alice: exactly one MESSAGE (no echo of her own)');
    assert.equal(bEv.filter((e) => e.type === 'MESSAGE').length, 1, 'Борис: exactly one MESSAGE (no echo of his own)');
    assert.equal(aEv.filter((e) => e.type === 'JOINED').length, 1, 'alice: exactly one JOINED');
    assert.equal(bEv.filter((e) => e.type === 'JOINED' || e.type === 'LEFT').length, 0, 'Борис: no JOINED/LEFT about himself');
    assertClean(alice);
    assertClean(boris);
  });
});

test('leave → join 20 times in a row on one session never fails', { timeout: 30_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  const LOGIN = 'carol-кэрол';
  const ITERATIONS = 20;
  await withPages([LOGIN], async (carol) => {
    await carol.call('connect', wsUrl, LOGIN);
    await carol.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    await carol.call('join', ROOM);
    await carol.waitFor('STATE after first join', (e) => e.type === 'STATE');

    const leaveResults = [];
    for (let i = 0; i < ITERATIONS; i++) {
      leaveResults.push(await carol.call('leave'));
      await carol.call('join', ROOM);
    }

    // Every join gets its STATE (1 + ITERATIONS in total), and no FAILED ever.
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    let evs = await carol.events();
    while (Date.now() < deadline && evs.filter((e) => e.type === 'STATE').length < ITERATIONS + 1 &&
      !evs.some((e) => e.type === 'FAILED')) {
      await sleep(50);
      evs = await carol.events();
    }
    const failed = evs.filter((e) => e.type === 'FAILED' || e.type === 'SESSION_FAILED' || e.type === 'DISCONNECTED');
    assert.deepEqual(failed, [], `room FAILED during leave→join loop (e.g. "Room already has user with such login")\n${carol.diagnostics(60)}`);
    assert.deepEqual(leaveResults, Array(ITERATIONS).fill('resolved'), 'every leave must be ACCEPTED');
    const states = evs.filter((e) => e.type === 'STATE');
    assert.equal(states.length, ITERATIONS + 1, `expected ${ITERATIONS + 1} STATE events, got ${states.length}\n${carol.diagnostics(60)}`);
    for (const s of states) {
      assert.ok(!s.participants.includes(LOGIN), `STATE must not list the joiner itself: ${JSON.stringify(s)}`);
    }

    // Leave cleanly at the end; the room is still usable.
    assert.equal(await carol.call('leave'), 'resolved');
    assertClean(carol);
  });
});
