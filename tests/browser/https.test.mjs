// End-to-end test of Huddle's web app over HTTPS/WSS at a non-localhost origin, in headless
// Debian Chromium with fake camera/microphone, driven by playwright-core.
//
// Huddle runs with HTTPS only (plain = false) on 127.0.0.1:0 and generates its self-signed device
// certificate into a temp tls_dir. Chromium reaches it as https://huddle.test:PORT/ through
// --host-resolver-rules (every other name fails to resolve, so all traffic stays on 127.0.0.1)
// and accepts exactly that certificate through --ignore-certificate-errors-spki-list (base64
// SHA-256 of its SubjectPublicKeyInfo). Checked: a secure context (getUserMedia available), the
// WebSocket on wss://huddle.test:PORT/, the invite link https://huddle.test:PORT/?roomName=...,
// two participants decoding each other's video, the logged fingerprint equal to the file's.
//
// Run from the repository root:   cargo build --bin huddle && node --test tests/browser/https.test.mjs
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 prints every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 the server log.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..');
const HUDDLE_BIN = path.resolve(REPO_ROOT, process.env.HUDDLE_BIN || 'target/debug/huddle');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PRINT_FRAMES = process.env.HUDDLE_E2E_FRAMES === '1';
const PRINT_SERVER_LOG = process.env.HUDDLE_E2E_SERVER_LOG === '1';

const HOST = 'huddle.test';
const ROOM = 'secure room 🔒 & co';
const [ALICE, BORIS] = ['alice', 'Борис'];
const WEB_PATHS = new Set(['/', '/app.js', '/room-api.js', '/style.css']);

const STEP_TIMEOUT_MS = 12_000;
const SERVER_START_TIMEOUT_MS = 10_000;
const SERVER_STOP_TIMEOUT_MS = 8_000;
const FILE_WATCHDOG_MS = 58_000;

let tmpDir;
let server; // { proc, addr, stderr: string[], exit, exited, fingerprint, certPath }
let origin; // https://huddle.test:PORT
let browser;
const pages = [];

const watchdog = setTimeout(() => {
  process.stderr.write(`\n[https-e2e] watchdog: file exceeded ${FILE_WATCHDOG_MS} ms, killing everything\n${diagnosticsAll()}\n`);
  try { server?.proc.kill('SIGKILL'); } catch { /* ignore */ }
  try { browser?.close(); } catch { /* ignore */ }
  process.exit(1);
}, FILE_WATCHDOG_MS);
watchdog.unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tail = (lines, n) => lines.slice(-n).join('\n');

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

async function until(description, fn, timeout = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(150);
  }
  assert.fail(`timed out after ${timeout} ms waiting for ${description}; last value: ${JSON.stringify(last)}\n${diagnosticsAll()}`);
}

// Runs in every page before the app: small video, two Chromium participants on few cores.
function initScript() {
  const md = navigator.mediaDevices;
  if (!md) return; // not a secure context: the test says so itself
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } });
}

async function startServer() {
  if (!fs.existsSync(HUDDLE_BIN)) {
    throw new Error(`server binary not found at ${HUDDLE_BIN} (cargo build --bin huddle, or set HUDDLE_BIN)`);
  }
  const tlsDir = path.join(tmpDir, 'tls');
  const configPath = path.join(tmpDir, 'huddle.toml');
  await fsp.writeFile(configPath, `[http]
listen = "127.0.0.1:0"
plain = false
tls = true
tls_listen = "127.0.0.1:0"
tls_dir = ${JSON.stringify(tlsDir)}
[media]
udp_port = 0
advertise_ips = ["127.0.0.1"]
[device]
camera = "none"
microphone = "none"
`);
  const proc = spawn(HUDDLE_BIN, ['--config', configPath], {
    cwd: tmpDir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1', JOURNAL_STREAM: '', NOTIFY_SOCKET: '' },
  });
  const stderr = [];
  const exit = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const s = { proc, stderr, exit, addr: null, exited: null, fingerprint: null, certPath: path.join(tlsDir, 'device-cert.pem') };
  exit.then((r) => { s.exited = r; });
  await new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`server did not log "listening on https://..." within ${SERVER_START_TIMEOUT_MS} ms:\n${buf}`)), SERVER_START_TIMEOUT_MS);
    proc.stdout.resume();
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      if (PRINT_SERVER_LOG) process.stderr.write(d);
      buf += d;
      stderr.push(...d.split('\n').filter((l) => l.length > 0));
      if (stderr.length > 5000) stderr.splice(0, stderr.length - 5000);
      const fp = /HTTPS certificate (\S+) \(SHA-256 ([0-9A-F:]+)\)/.exec(buf);
      if (fp) { s.fingerprint = fp[2]; s.loggedPath = fp[1]; }
      const m = /listening on https:\/\/(127\.0\.0\.1:\d+) \(WebSocket signalling on wss:\/\/127\.0\.0\.1:\d+\/\)/.exec(buf);
      if (m) { clearTimeout(timer); s.addr = m[1]; resolve(); }
    });
    proc.once('error', (e) => { clearTimeout(timer); reject(e); });
    exit.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`server exited early (${code}, ${signal}):\n${buf}`)); });
  });
  return s;
}

class Participant {
  constructor(label, context, page) {
    Object.assign(this, { label, context, page, frames: [], sockets: [], console: [], pageErrors: [], badRequests: [] });
  }

  static async open(label, url) {
    const context = await browser.newContext({ viewport: { width: 1024, height: 720 } });
    await context.addInitScript(initScript);
    const page = await context.newPage();
    const p = new Participant(label, context, page);
    pages.push(p);
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on('console', (m) => p.console.push(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => p.pageErrors.push(String(e?.stack || e)));
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (['data:', 'blob:'].includes(u.protocol)) return;
      if (u.origin !== origin || !WEB_PATHS.has(u.pathname)) p.badRequests.push(r.url());
    });
    page.on('requestfailed', (r) => p.console.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
    page.on('websocket', (ws) => {
      p.sockets.push(ws.url());
      p.frames.push(`-- ws open ${ws.url()}`);
      ws.on('framesent', (f) => p.frame('→', f.payload));
      ws.on('framereceived', (f) => p.frame('←', f.payload));
      ws.on('close', () => p.frames.push('-- ws close'));
    });
    const response = await page.goto(url, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    assert.equal(response?.status(), 200, `${label}: GET ${url}`);
    return p;
  }

  frame(dir, payload) {
    const text = typeof payload === 'string' ? payload : `<binary ${payload.length} bytes>`;
    if (/"message":"(ping|pong)"/.test(text)) return;
    const line = `${new Date().toISOString().slice(11, 23)} ${dir} ${text.length > 300 ? `${text.slice(0, 300)}…` : text}`;
    this.frames.push(line);
    if (PRINT_FRAMES) process.stderr.write(`[${this.label}] ${dir} ${text}\n`);
  }

  async join(login, room) {
    await this.page.fill('#login', login);
    if (room !== undefined) await this.page.fill('#room', room);
    await this.page.click('#join');
  }

  tiles() {
    return this.page.$$eval('#tiles .tile', (els) => els.map((el) => ({
      login: el.dataset.login, stream: el.dataset.stream, status: el.dataset.status,
      local: el.classList.contains('local'),
    })));
  }

  videoStats(stream) {
    return this.page.evaluate(async (name) => {
      const s = window.__huddle.streams().find((x) => x.name === name && !x.published);
      if (!s?.pc) return null;
      let out = null;
      (await s.pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video') out = { framesDecoded: r.framesDecoded ?? 0, packets: r.packetsReceived ?? 0 };
      });
      return out;
    }, stream);
  }

  diagnostics(n = 25) {
    return [
      `--- ${this.label}: WebSockets ${JSON.stringify(this.sockets)}, last frames ---`, tail(this.frames, n) || '(none)',
      `--- ${this.label}: console ---`, tail(this.console, 15) || '(none)',
      this.pageErrors.length ? `--- ${this.label}: page errors ---\n${this.pageErrors.join('\n')}` : '',
      this.badRequests.length ? `--- ${this.label}: unexpected requests ---\n${this.badRequests.join('\n')}` : '',
    ].filter(Boolean).join('\n');
  }

  async close() {
    try { await withTimeout(this.context.close(), 5_000, `${this.label}: close`); } catch { /* ignore */ }
  }
}

function diagnosticsAll() {
  const parts = pages.map((p) => p.diagnostics());
  if (server) parts.push(`--- server stderr (last 40 lines) ---\n${tail(server.stderr, 40)}`);
  return parts.join('\n');
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  tmpDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'huddle-https-e2e-'));
  assert.ok(fs.existsSync(CHROMIUM), `Chromium missing: ${CHROMIUM} (apt-get install -y chromium fonts-liberation)`);
  server = await startServer();
  origin = `https://${HOST}:${server.addr.split(':')[1]}`;

  // The generated certificate: logged with its fingerprint, accepted by its SPKI hash.
  const cert = new crypto.X509Certificate(await fsp.readFile(server.certPath));
  assert.equal(server.loggedPath, server.certPath, 'the log names the certificate file');
  assert.equal(server.fingerprint, cert.fingerprint256, 'the logged SHA-256 is the file\'s');
  const spki = crypto.createHash('sha256')
    .update(cert.publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  assert.ok(!cert.checkHost(HOST), `${HOST} is not a name of the device certificate: only the SPKI pin lets Chromium in`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 15_000,
    args: [
      '--no-sandbox',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      `--host-resolver-rules=MAP ${HOST} 127.0.0.1, MAP * ~NOTFOUND`,
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}, { timeout: 30_000 });

after(async () => {
  for (const p of pages) await p.close();
  if (browser) { try { await withTimeout(browser.close(), 5_000, 'browser.close()'); } catch { /* ignore */ } }
  try {
    if (server) {
      if (!server.exited) server.proc.kill('SIGTERM');
      let result;
      try {
        result = await withTimeout(server.exit, SERVER_STOP_TIMEOUT_MS, 'server exit after SIGTERM');
      } catch {
        server.proc.kill('SIGKILL');
        await server.exit;
        assert.fail(`server did not exit within ${SERVER_STOP_TIMEOUT_MS} ms of SIGTERM\n${tail(server.stderr, 40)}`);
      }
      assert.deepEqual(server.stderr.filter((l) => /panicked at/.test(l)), [], `server panicked\n${tail(server.stderr, 40)}`);
      assert.deepEqual(result, { code: 0, signal: null }, `server must exit 0 on SIGTERM\n${tail(server.stderr, 40)}`);
    }
  } finally {
    if (tmpDir) await fsp.rm(tmpDir, { recursive: true, force: true });
    clearTimeout(watchdog);
  }
}, { timeout: 15_000 });

test('web app on https://huddle.test: secure context, wss://, invite link, video both ways', { timeout: 40_000 }, async () => {
  try {
    const alice = await Participant.open(ALICE, `${origin}/`);
    const page = await alice.page.evaluate(() => ({
      secure: window.isSecureContext,
      href: location.href,
      getUserMedia: typeof navigator.mediaDevices?.getUserMedia,
    }));
    assert.deepEqual(page, { secure: true, href: `${origin}/`, getUserMedia: 'function' }, 'a secure context at the https origin');

    await alice.join(ALICE, ROOM);
    await until('alice in the room', async () => (await alice.page.getAttribute('#status', 'data-state')) === 'joined');
    assert.deepEqual(alice.sockets, [`wss://${HOST}:${server.addr.split(':')[1]}/`], 'the app connects over wss:// to its own origin');
    await until('alice publishing', async () => (await alice.tiles()).some((t) => t.local && t.status === 'PUBLISHING'));
    const invite = await alice.page.inputValue('#invite');
    assert.equal(invite, `${origin}/?roomName=${encodeURIComponent(ROOM)}`, 'invite link at the https origin');

    // Борис opens the invite link: the room is prefilled.
    const boris = await Participant.open(BORIS, invite);
    assert.equal(await boris.page.inputValue('#room'), ROOM, 'invite link prefills the room');
    assert.equal(await boris.page.evaluate(() => window.isSecureContext), true);
    await boris.join(BORIS);
    await until('Борис in the room', async () => (await boris.page.getAttribute('#status', 'data-state')) === 'joined');
    assert.deepEqual(boris.sockets, alice.sockets, 'Борис uses the same wss:// URL');

    // Each plays the other's camera and decodes ever more frames.
    for (const [p, other] of [[alice, BORIS], [boris, ALICE]]) {
      const tile = await until(`${p.label}: ${other}'s tile PLAYING`, async () =>
        (await p.tiles()).find((t) => !t.local && t.login === other && t.status === 'PLAYING'));
      const first = await until(`${p.label}: frames decoded from ${other}`, async () => {
        const s = await p.videoStats(tile.stream);
        return s?.framesDecoded > 0 && s;
      });
      await until(`${p.label}: frame count from ${other} growing`, async () => {
        const s = await p.videoStats(tile.stream);
        return s?.framesDecoded > first.framesDecoded + 5 && s;
      }, 8_000);
    }

    for (const p of [alice, boris]) {
      assert.deepEqual(p.pageErrors, [], `${p.label}: uncaught errors in the page`);
      assert.deepEqual(p.badRequests, [], `${p.label}: requests outside ${origin} and the web files`);
      assert.ok(p.frames.some((f) => f.includes(' → ') && f.includes('"connection"')), `${p.label}: signalling went over the wss:// socket`);
    }
  } catch (e) {
    if (e && typeof e.message === 'string' && !e.message.includes('WebSockets [')) {
      try { e.message += `\n${diagnosticsAll()}`; } catch { /* ignore */ }
    }
    throw e;
  } finally {
    for (const p of pages) await p.close();
    pages.length = 0;
  }
});
