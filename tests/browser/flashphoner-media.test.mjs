// Real-client end-to-end test of Huddle's SFU media path: two Flashphoner RoomApi sessions
// (@flashphoner/websdk 2.0.276, unmodified flashphoner-room-api.js bundle) in headless Debian
// Chromium with fake camera/microphone publish and play each other through Huddle, exactly like
// the SDK's stock Conference example (publish on STATE, play participants' first stream on STATE
// and PUBLISHED). Media is proven by the browsers' own WebRTC stats (framesDecoded growing,
// totalAudioEnergy > 0, negotiated codec) and by sampling the rendered remote <video>.
//
// Run from the repository root:   node --test tests/browser/flashphoner-media.test.mjs
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 to print every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 for server stderr,
//      HUDDLE_E2E_SCREENSHOT_DIR (default: the OS temp dir) for the remote-video screenshots.

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
const PAGE_HTML = path.join(HERE, 'media-page.html');
const PRINT_FRAMES = process.env.HUDDLE_E2E_FRAMES === '1';
const PRINT_SERVER_LOG = process.env.HUDDLE_E2E_SERVER_LOG === '1';
const SCREENSHOT_DIR = process.env.HUDDLE_E2E_SCREENSHOT_DIR || os.tmpdir();

const STEP_TIMEOUT_MS = 15_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const TEST_TIMEOUT_MS = 55_000;
const FILE_WATCHDOG_MS = 150_000; // two tests + setup/teardown

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
    let done = false;
    const timer = setTimeout(() => {
      reject(new Error(`server did not log "listening on http://127.0.0.1:PORT" within ${SERVER_START_TIMEOUT_MS} ms; stderr:\n${buf}`));
    }, SERVER_START_TIMEOUT_MS);
    proc.stderr.setEncoding('utf8');
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (d) => stdout.push(d));
    proc.stderr.on('data', (d) => {
      if (PRINT_SERVER_LOG) process.stderr.write(d);
      stderr.push(...d.split('\n').filter((l) => l.length > 0));
      if (stderr.length > 20_000) stderr.splice(0, stderr.length - 10_000);
      if (done) return;
      buf += d;
      const m = /listening on http:\/\/(127\.0\.0\.1:\d+)/.exec(buf);
      if (m) {
        done = true;
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
    this.sentRequests = []; // parsed publishStream / playStream requests (full SDP offers)
  }

  static async open(label) {
    const context = await browser.newContext({ viewport: { width: 700, height: 500 } });
    const page = await context.newPage();
    const h = new Harness(label, context, page);
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on('console', (m) => {
      h.console.push(`[${m.type()}] ${m.text()}`);
      if (h.console.length > 2000) h.console.splice(0, 1000);
    });
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
    const ready = await page.evaluate(() => typeof window.RoomApi === 'object' && typeof window.join === 'function' &&
      Array.isArray(window.__pcs));
    assert.ok(ready, `${label}: page did not load RoomApi (SDK bundle) / harness; page errors: ${h.pageErrors.join('\n')}`);
    return h;
  }

  pushFrame(dir, payload) {
    if (dir === '→' && typeof payload === 'string' && /"(publishStream|playStream)"/.test(payload)) {
      try {
        const m = JSON.parse(payload);
        this.sentRequests.push({ message: m.message, ...m.data[0] });
      } catch { /* not JSON */ }
    }
    let text = typeof payload === 'string' ? payload : `<binary ${payload.length} bytes>`;
    if (!PRINT_FRAMES && text.length > 600) text = `${text.slice(0, 600)}…(${text.length} chars)`;
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
      `--- ${this.label}: last console lines ---`,
      tail(this.console.filter((l) => !/^\[debug\]/.test(l)), 15) || '(none)',
      this.pageErrors.length ? `--- ${this.label}: page errors ---\n${this.pageErrors.join('\n')}` : '',
    ].filter(Boolean).join('\n');
  }

  async waitFor(description, pred, { from = 0, timeout = STEP_TIMEOUT_MS } = {}) {
    const deadline = Date.now() + timeout;
    let evs = [];
    while (Date.now() < deadline) {
      evs = await this.events();
      const hit = evs.slice(from).find(pred);
      if (hit) return hit;
      await sleep(100);
    }
    assert.fail(
      `${this.label}: timed out after ${timeout} ms waiting for ${description}\n` +
      `--- ${this.label}: page events ---\n${evs.map((e) => JSON.stringify(e)).join('\n')}\n` +
      diagnosticsAll(),
    );
  }

  // Poll window[fn](...args) until `pred(result)`; returns the last result.
  async pollUntil(description, fn, args, pred, timeout = STEP_TIMEOUT_MS) {
    const deadline = Date.now() + timeout;
    let last;
    while (Date.now() < deadline) {
      last = await this.call(fn, ...args);
      if (pred(last)) return last;
      await sleep(250);
    }
    assert.fail(`${this.label}: timed out after ${timeout} ms waiting for ${description}; last ${fn}(): ` +
      `${JSON.stringify(last, null, 1)}\n${diagnosticsAll()}`);
  }

  async close() {
    try { await withTimeout(this.context.close(), 5_000, `${this.label}: close context`); } catch { /* ignore */ }
  }
}

function diagnosticsAll() {
  const parts = pages.filter((h) => !h.closed).map((h) => h.diagnostics());
  if (server) parts.push(`--- server stderr (last 40 lines) ---\n${tail(server.stderr, 40)}`);
  return parts.join('\n');
}

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

async function withPages(labels, body) {
  const hs = [];
  try {
    for (const label of labels) hs.push(await Harness.open(label));
    await withDiagnostics(() => body(...hs));
  } finally {
    for (const h of hs) { await h.close(); h.closed = true; }
  }
}

function assertClean(h) {
  assert.deepEqual(h.pageErrors, [], `${h.label}: uncaught errors in the page\n${diagnosticsAll()}`);
  assert.deepEqual(h.foreignRequests, [], `${h.label}: requests to hosts other than 127.0.0.1`);
}

const isStatus = (kind, status, extra = () => true) => (e) => e.type === kind && e.status === status && extra(e);

// Wait until `viewer`'s playback of `publisher` decodes video (framesDecoded > 0 and growing) and
// audio carries energy. Returns { first, last } playerStats snapshots.
async function waitForMedia(viewer, publisher) {
  const first = await viewer.pollUntil(
    `${viewer.label} decoding ${publisher}'s video and audio`,
    'playerStats', [publisher],
    (s) => s && s.video && s.video.framesDecoded > 0 && s.audio && s.audio.totalAudioEnergy > 0,
  );
  const last = await viewer.pollUntil(
    `${viewer.label}: framesDecoded of ${publisher}'s video to keep growing`,
    'playerStats', [publisher],
    (s) => s && s.video && s.video.framesDecoded >= first.video.framesDecoded + 10 &&
      s.audio && s.audio.totalAudioEnergy > first.audio.totalAudioEnergy,
    8_000,
  );
  return { first, last };
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'huddle-media-e2e-'));
  assert.ok(fs.existsSync(SDK_BUNDLE), `SDK bundle missing: ${SDK_BUNDLE} (run \`npm ci\` in tests/browser)`);
  assert.ok(fs.existsSync(CHROMIUM), `Chromium missing: ${CHROMIUM} (apt-get install -y chromium fonts-liberation)`);
  server = await startServer();
  staticServer = await startStaticServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 15_000 });
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
      assert.deepEqual(result, { code: 0, signal: null },
        `server must shut down gracefully (exit code 0) on SIGTERM\n--- server stderr ---\n${tail(server.stderr, 40)}`);
    }
  } finally {
    if (tmpDir) await fsp.rm(tmpDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
}, { timeout: 20_000 });

// ---------------------------------------------------------------------------------------------
// The scenario, run once per codec variant.

async function conferenceScenario({ room, publishOptions, expectVideoCodec, screenshotName }, t) {
  const wsUrl = `ws://${server.addr}/`;
  await withPages(['alice', 'bob'], async (alice, bob) => {
    await alice.call('connect', wsUrl, 'alice');
    await bob.call('connect', wsUrl, 'bob');
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await bob.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    // alice joins the empty room and publishes on STATE (Conference behaviour).
    await alice.call('join', room, publishOptions);
    const aliceState = await alice.waitFor('STATE', (e) => e.type === 'STATE');
    assert.deepEqual(aliceState.participants, []);
    const alicePub = await alice.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(alicePub.status, 'PUBLISHING', `alice's publish must reach PUBLISHING, got ${JSON.stringify(alicePub)}`);
    assert.ok(alicePub.name.startsWith(`${room}-alice-`), `room-module stream name: ${alicePub.name}`);

    // bob joins: STATE lists alice with her live stream; bob plays it (from STATE) and publishes.
    await bob.call('join', room, publishOptions);
    const bobState = await bob.waitFor('STATE', (e) => e.type === 'STATE');
    assert.deepEqual(bobState.participants, ['alice']);
    assert.deepEqual(bobState.streams, [[alicePub.name]], 'STATE must carry alice\'s published stream');
    const bobPlay = await bob.waitFor('PLAYING alice', (e) => e.type === 'PLAY_STATUS' && e.login === 'alice' && e.status !== 'PENDING');
    assert.equal(bobPlay.status, 'PLAYING', `bob's player of alice: ${JSON.stringify(bobPlay)}`);
    assert.equal(bobPlay.name, alicePub.name);
    const bobPub = await bob.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(bobPub.status, 'PUBLISHING', `bob's publish must reach PUBLISHING, got ${JSON.stringify(bobPub)}`);

    // alice: JOINED(bob), then PUBLISHED(bob) → plays bob's stream.
    await alice.waitFor('JOINED bob', (e) => e.type === 'JOINED' && e.login === 'bob');
    const published = await alice.waitFor('PUBLISHED bob', (e) => e.type === 'PUBLISHED' && e.login === 'bob');
    assert.deepEqual(published.streams, [bobPub.name]);
    const alicePlay = await alice.waitFor('PLAYING bob', (e) => e.type === 'PLAY_STATUS' && e.login === 'bob' && e.status !== 'PENDING');
    assert.equal(alicePlay.status, 'PLAYING', `alice's player of bob: ${JSON.stringify(alicePlay)}`);

    // What the SDK offered: publishers offer H264+VP8 unless stripped; players always offer both.
    const rtpmaps = (sdp, codec) => (sdp.match(new RegExp(`^a=rtpmap:\\d+ ${codec}/`, 'gm')) || []).length;
    for (const h of [alice, bob]) {
      const pub = h.sentRequests.find((r) => r.message === 'publishStream');
      const play = h.sentRequests.find((r) => r.message === 'playStream');
      assert.ok(pub && play, `${h.label}: publishStream and playStream were sent`);
      assert.ok(rtpmaps(pub.sdp, 'VP8') > 0, `${h.label}: publish offer has VP8`);
      assert.equal(rtpmaps(pub.sdp, 'H264') > 0, !publishOptions.stripCodecs,
        `${h.label}: publish offer ${publishOptions.stripCodecs ? 'must not' : 'must'} contain H264`);
      assert.ok(rtpmaps(play.sdp, 'VP8') > 0 && rtpmaps(play.sdp, 'H264') > 0, `${h.label}: play offer has H264 and VP8`);
    }

    // Media both ways, decoded by the browsers.
    const [bobSeesAlice, aliceSeesBob] = await Promise.all([waitForMedia(bob, 'alice'), waitForMedia(alice, 'bob')]);
    const [alicePubStats, bobPubStats] = await Promise.all([alice.call('publisherStats'), bob.call('publisherStats')]);
    const summary = {
      bobSeesAlice: { first: bobSeesAlice.first.video.framesDecoded, last: bobSeesAlice.last.video, audio: bobSeesAlice.last.audio },
      aliceSeesBob: { first: aliceSeesBob.first.video.framesDecoded, last: aliceSeesBob.last.video, audio: aliceSeesBob.last.audio },
      alicePublisher: alicePubStats,
      bobPublisher: bobPubStats,
    };
    t.diagnostic(`media stats: ${JSON.stringify(summary)}`);
    for (const [who, s] of [['bob←alice', bobSeesAlice.last], ['alice←bob', aliceSeesBob.last]]) {
      assert.equal(s.video.codec?.mimeType, expectVideoCodec, `${who}: inbound video codec`);
      assert.equal(s.audio.codec?.mimeType, 'audio/opus', `${who}: inbound audio codec`);
      assert.equal(s.element.muted, false, `${who}: the SDK must unmute the remote <video> (unmutePlayOnStart)`);
      assert.ok(s.element.videoWidth > 0 && s.element.videoHeight > 0, `${who}: <video> has dimensions`);
    }
    for (const [who, s] of [['alice', alicePubStats], ['bob', bobPubStats]]) {
      assert.equal(s.video?.codec?.mimeType, expectVideoCodec, `${who}: outbound video codec`);
    }

    // The rendered remote video is not black and moves (fake camera pattern).
    const sample = await bob.call('sampleRemoteVideo', 'alice', 600);
    t.diagnostic(`bob's remote video sample: ${JSON.stringify(sample)}`);
    assert.ok(sample.meanLuma > 20 && sample.nonBlackFraction > 0.3, `remote video looks black: ${JSON.stringify(sample)}`);
    assert.ok(sample.changedFraction > 0.001, `remote video does not move: ${JSON.stringify(sample)}`);
    const videoId = await bob.call('remoteVideoId', 'alice');
    const shot = path.join(SCREENSHOT_DIR, screenshotName);
    await bob.page.locator(`video[id="${videoId}"]`).screenshot({ path: shot, timeout: STEP_TIMEOUT_MS });
    t.diagnostic(`screenshot of bob's remote video (alice): ${shot}`);

    // alice unpublishes: her stream → UNPUBLISHED; bob's player → STOPPED; alice's stream disappears
    // from bob's participant list; alice stays in the room.
    let bobMark = (await bob.events()).length;
    await alice.call('unpublish');
    const unpub = await alice.waitFor('own stream UNPUBLISHED', isStatus('PUBLISH_STATUS', 'UNPUBLISHED'));
    assert.equal(unpub.name, alicePub.name);
    const stopped = await bob.waitFor('player of alice STOPPED',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'alice' && ['STOPPED', 'FAILED'].includes(e.status), { from: bobMark });
    assert.equal(stopped.status, 'STOPPED', `bob's player of alice must be STOPPED: ${JSON.stringify(stopped)}`);
    await bob.pollUntil('alice\'s stream to disappear from bob\'s room view', 'participantStreams', ['alice'],
      (s) => Array.isArray(s) && s.length === 0);
    // bob still decodes nothing new from alice but alice keeps decoding bob.
    const aliceStill = await alice.call('playerStats', 'bob');
    await sleep(500);
    const aliceStill2 = await alice.call('playerStats', 'bob');
    assert.ok(aliceStill2.video.framesDecoded > aliceStill.video.framesDecoded,
      'alice still decodes bob after her own unpublish');

    // alice leaves: bob gets LEFT(alice); alice's player of bob ends (leave cleanup stops it).
    bobMark = (await bob.events()).length;
    const aliceMark = (await alice.events()).length;
    assert.equal(await alice.call('leave'), 'resolved');
    const left = await bob.waitFor('LEFT alice', (e) => e.type === 'LEFT', { from: bobMark });
    assert.equal(left.login, 'alice');
    assert.deepEqual(left.participants, []);
    const aliceStopped = await alice.waitFor('player of bob STOPPED after leave',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'bob' && ['STOPPED', 'FAILED'].includes(e.status), { from: aliceMark });
    assert.equal(aliceStopped.status, 'STOPPED');

    // bob leaves too: his publish is stopped by the SDK's leave cleanup → UNPUBLISHED.
    const bobMark2 = (await bob.events()).length;
    assert.equal(await bob.call('leave'), 'resolved');
    const bobUnpub = await bob.waitFor('own stream UNPUBLISHED after leave', (e) => e.type === 'PUBLISH_STATUS', { from: bobMark2 });
    assert.equal(bobUnpub.status, 'UNPUBLISHED');

    await sleep(300);
    for (const h of [alice, bob]) {
      const evs = await h.events();
      const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
        ((e.type === 'PLAY_STATUS' || e.type === 'PUBLISH_STATUS') && e.status === 'FAILED'));
      assert.deepEqual(bad, [], `${h.label}: unexpected failure events`);
      assertClean(h);
    }
  });
}

test('Conference-style call, H.264 (server picks H.264 when offered): publish, play, decode both ways, unpublish, leave',
  { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await conferenceScenario({
      room: 'media-h264',
      publishOptions: {},
      expectVideoCodec: 'video/H264',
      screenshotName: 'huddle-media-h264-bob-sees-alice.png',
    }, t);
  });

test('Conference-style call, publishers strip H264 (stripCodecs) → VP8 end to end', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await conferenceScenario({
    room: 'media-vp8',
    publishOptions: { stripCodecs: 'H264' },
    expectVideoCodec: 'video/VP8',
    screenshotName: 'huddle-media-vp8-bob-sees-alice.png',
  }, t);
});
