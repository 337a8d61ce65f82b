// Shared mechanics of the browser end-to-end tests (*.test.mjs in this directory): spawning and
// stopping the Huddle binary, the throwaway static HTTP server, launching Chromium, instrumented
// pages, bounded polling, watchdogs and failure diagnostics. What a test checks stays in its file.
//
// Not a test file itself (no `.test.mjs` suffix), so `node --test` does not run it.
//
// Env: HUDDLE_BIN (server binary, default target/debug/huddle relative to the repo root),
//      CHROMIUM (default /usr/bin/chromium), HUDDLE_E2E_FRAMES=1 prints every WebSocket frame,
//      HUDDLE_E2E_SERVER_LOG=1 copies the server's stderr, HUDDLE_E2E_SCREENSHOT_DIR (default:
//      the OS temp dir) is where screenshots go.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, '..', '..');
export const HUDDLE_BIN = path.resolve(REPO_ROOT, process.env.HUDDLE_BIN || 'target/debug/huddle');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SDK_BUNDLE = path.join(HERE, 'node_modules', '@flashphoner', 'websdk', 'flashphoner-room-api.js');
export const PRINT_FRAMES = process.env.HUDDLE_E2E_FRAMES === '1';
export const PRINT_SERVER_LOG = process.env.HUDDLE_E2E_SERVER_LOG === '1';
export const SCREENSHOT_DIR = process.env.HUDDLE_E2E_SCREENSHOT_DIR || os.tmpdir();

// ---------------------------------------------------------------------------------------------
// Small helpers

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const tail = (lines, n) => lines.slice(-n).join('\n');

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// Poll `fn` every `interval` ms until it returns a truthy value, which is returned. After `timeout`
// ms fail with `message(last)` or, by default, "timed out ... waiting for <what>; last value: ..."
// followed by `diagnostics()`.
export async function waitFor(fn, { timeout, interval = 100, what = 'a condition', message, diagnostics } = {}) {
  assert.ok(Number.isFinite(timeout) && timeout > 0, `waitFor(${what}): a finite timeout is required`);
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(interval);
  }
  assert.fail(message
    ? message(last)
    : `timed out after ${timeout} ms waiting for ${what}; last value: ${JSON.stringify(last)}` +
      `${diagnostics ? `\n${diagnostics()}` : ''}`);
}

// Hard bound for a whole test file: if anything hangs beyond the per-step timeouts, print
// `diagnostics()`, run every `cleanup` (kill the server, close browsers) and exit. Returns the
// (unref'd) timer; clear it with clearTimeout once the file is done.
export function watchdog(ms, { tag = 'e2e', diagnostics, cleanup = [] } = {}) {
  const timer = setTimeout(() => {
    let extra = '';
    try { extra = diagnostics ? `${diagnostics()}\n` : ''; } catch { /* ignore */ }
    process.stderr.write(`\n[${tag}] watchdog: file exceeded ${ms} ms, killing everything\n${extra}`);
    for (const fn of cleanup) {
      try { fn(); } catch { /* ignore */ }
    }
    process.exit(1);
  }, ms);
  timer.unref();
  return timer;
}

export const makeTmpDir = (prefix) => fsp.mkdtemp(path.join(os.tmpdir(), prefix));

export function assertChromiumInstalled() {
  assert.ok(fs.existsSync(CHROMIUM), `Chromium missing: ${CHROMIUM} (apt-get install -y chromium fonts-liberation)`);
}

export function assertSdkBundleInstalled() {
  assert.ok(fs.existsSync(SDK_BUNDLE), `SDK bundle missing: ${SDK_BUNDLE} (run \`npm ci\` in tests/browser)`);
}

// ---------------------------------------------------------------------------------------------
// The Huddle server

// Config on 127.0.0.1:0 (by default with no camera/microphone). `http`: the [http] lines after `listen`
// (default: plain HTTP only); `extra`: whole TOML tables (e.g. "[auth]\nmode = ...\n") inserted
// before [log]; `logLevel`: null leaves [log] out (the server's default level).
// `device`: the [device] lines (default: no camera, no microphone).
export const huddleConfig = ({
  http = 'tls = false\n', extra = '', logLevel = 'debug', device = 'camera = "none"\nmicrophone = "none"\n',
} = {}) => `[http]
listen = "127.0.0.1:0"
${http}[media]
udp_port = 0
advertise_ips = ["127.0.0.1"]
workers = 2
[device]
${device}[rtmp]
listen = "127.0.0.1:0"
${extra}${logLevel ? `[log]\nlevel = "${logLevel}"\n` : ''}`;

// GET /metrics on the server at `addr`; the value of the sample `name` (exact, labels
// included). Rejects when the sample is not there.
export function metricValue(addr, name) {
  return new Promise((resolve, reject) => {
    http.get(`http://${addr}/metrics`, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        const line = body.split('\n').find((l) => l.startsWith(`${name} `));
        if (!line) reject(new Error(`no ${name} in /metrics:\n${body}`));
        else resolve(Number(line.slice(name.length + 1)));
      });
    }).on('error', reject);
  });
}

const LISTENING_HTTP = /listening on http:\/\/(127\.0\.0\.1:\d+)/;
const LISTENING_HTTPS = /listening on https:\/\/(127\.0\.0\.1:\d+) \(WebSocket signalling on wss:\/\/127\.0\.0\.1:\d+\/\)/;

// Spawn `huddle --config FILE` (FILE = `configPath`, or `config` written to DIR/huddle.toml) with
// cwd DIR (a fresh temp dir, removed by stop(), when `dir` is not given) and wait up to
// `startTimeout` ms for "listening on http(s)://127.0.0.1:PORT" (https with `tls`) on stderr.
// Returns { proc, addr, cwd, stderrLines, startupLog (stderr up to that line), exit, exited, stop() }.
// stop() sends SIGTERM and asserts, within `timeout` ms, exit code 0 and no "panicked at" line.
export async function startHuddle({
  config, configPath, dir, env = {}, tls = false, startTimeout = 20_000, stderrLimit = 20_000,
} = {}) {
  if (!fs.existsSync(HUDDLE_BIN)) {
    throw new Error(`server binary not found at ${HUDDLE_BIN} (build it with \`cargo build --bin huddle\` or set HUDDLE_BIN)`);
  }
  const ownDir = dir ? null : await makeTmpDir('huddle-e2e-server-');
  const cwd = dir || ownDir;
  if (config !== undefined) {
    configPath = path.join(cwd, 'huddle.toml');
    await fsp.writeFile(configPath, config);
  }
  assert.ok(configPath, 'startHuddle: `config` or `configPath` is required');
  const proc = spawn(HUDDLE_BIN, ['--config', configPath], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1', ...env },
  });
  const stderrLines = [];
  const panics = []; // kept apart so trimming stderrLines can never hide a panic
  const exit = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const stderrClosed = new Promise((resolve) => proc.stderr.once('close', resolve));
  const s = { proc, configPath, cwd, stderrLines, exit, addr: null, exited: null, startupLog: '' };
  exit.then((r) => { s.exited = r; });

  s.stop = async ({ timeout = 10_000, check } = {}) => {
    try {
      if (!s.exited) proc.kill('SIGTERM');
      let result;
      try {
        result = await withTimeout(exit, timeout, 'server exit after SIGTERM');
      } catch {
        proc.kill('SIGKILL');
        await exit;
        assert.fail(`server did not exit within ${timeout} ms of SIGTERM\n--- server stderr ---\n${tail(stderrLines, 40)}`);
      }
      // The last lines may still be in the pipe when 'exit' fires.
      await withTimeout(stderrClosed, 1_000, 'server stderr closed').catch(() => {});
      assert.deepEqual(panics, [], `server panicked\n--- server stderr ---\n${tail(stderrLines, 40)}`);
      if (check) check(stderrLines);
      assert.deepEqual(result, { code: 0, signal: null },
        `server must shut down gracefully (exit code 0) on SIGTERM\n--- server stderr ---\n${tail(stderrLines, 40)}`);
    } finally {
      if (ownDir) await fsp.rm(ownDir, { recursive: true, force: true });
    }
  };

  const listening = tls ? LISTENING_HTTPS : LISTENING_HTTP;
  proc.stdout.resume();
  proc.stderr.setEncoding('utf8');
  s.addr = await new Promise((resolve, reject) => {
    let buf = '';
    let done = false;
    const timer = setTimeout(() => {
      reject(new Error(`server did not log "listening on ${tls ? 'https' : 'http'}://127.0.0.1:PORT" within ${startTimeout} ms; stderr:\n${buf}`));
    }, startTimeout);
    proc.stderr.on('data', (d) => {
      if (PRINT_SERVER_LOG) process.stderr.write(d);
      const lines = d.split('\n').filter((l) => l.length > 0);
      stderrLines.push(...lines);
      panics.push(...lines.filter((l) => /panicked at/.test(l)));
      if (stderrLines.length > stderrLimit) stderrLines.splice(0, stderrLines.length - Math.ceil(stderrLimit / 2));
      if (done) return;
      buf += d;
      const m = listening.exec(buf);
      if (m) {
        done = true;
        s.startupLog = buf;
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.once('error', (e) => { clearTimeout(timer); reject(e); });
    exit.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (code ${code}, signal ${signal}); stderr:\n${buf}`));
    });
  }).catch(async (e) => {
    if (!s.exited) proc.kill('SIGKILL');
    if (ownDir) await fsp.rm(ownDir, { recursive: true, force: true });
    throw e;
  });
  return s;
}

// ---------------------------------------------------------------------------------------------
// Static HTTP server on 127.0.0.1 for pages and the SDK bundle

export const HTML = 'text/html; charset=utf-8';
export const JS = 'text/javascript; charset=utf-8';
export const CSS = 'text/css; charset=utf-8';

// `routes`: { '/path': { file, type } | { body, type } }; GET only, everything else is a 404.
// Returns { server, origin, requests: ['GET /...'], close() }.
export async function startStaticServer(routes) {
  const requests = [];
  const srv = http.createServer(async (req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const route = routes[new URL(req.url, 'http://127.0.0.1').pathname];
    if (req.method !== 'GET' || !route) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    try {
      const body = route.body ?? await fsp.readFile(route.file);
      res.writeHead(200, { 'content-type': route.type, 'cache-control': 'no-store' });
      res.end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(e));
    }
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  return {
    server: srv,
    origin: `http://127.0.0.1:${srv.address().port}`,
    requests,
    async close() {
      srv.closeAllConnections?.();
      await new Promise((r) => srv.close(() => r()));
    },
  };
}

// A test page (room-page.html, media-page.html) at / and /index.html plus the SDK bundle.
export const sdkPageRoutes = (pageHtml) => ({
  '/': { file: pageHtml, type: HTML },
  '/index.html': { file: pageHtml, type: HTML },
  '/flashphoner-room-api.js': { file: SDK_BUNDLE, type: JS },
});

// ---------------------------------------------------------------------------------------------
// Browsers

export const chromiumArgs = (extra = []) => [
  '--no-sandbox',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream', // also makes getDisplayMedia return a fake screen, no picker
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  ...extra,
];

export const launchChromium = ({ extraArgs = [], timeout = 15_000 } = {}) =>
  chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs(extraArgs), timeout });

// Close a playwright or puppeteer browser within `timeout` ms; a puppeteer browser that does not
// close is killed.
export async function closeBrowser(browser, { timeout = 5_000, what = 'browser.close()' } = {}) {
  if (!browser) return;
  try {
    await withTimeout(browser.close(), timeout, what);
  } catch {
    try { browser.process?.()?.kill('SIGKILL'); } catch { /* ignore */ }
  }
}

const LOCAL_PROTOCOLS = ['data:', 'blob:', 'about:'];

// A request that leaves 127.0.0.1 (ignoring `localProtocols` such as data: and blob:).
export function isForeign(url, localProtocols = LOCAL_PROTOCOLS) {
  try {
    const u = new URL(url);
    if (localProtocols.includes(u.protocol)) return false;
    return u.hostname !== '127.0.0.1';
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Failure diagnostics: the pages of a file and its server

const DIAGNOSTICS_MARKS = ['last WebSocket frames', 'server stderr (last'];

export class Diagnostics {
  constructor() {
    this.pages = [];
    this.server = null;
  }

  add(page) {
    this.pages.push(page);
    return page;
  }

  text() {
    const parts = this.pages.filter((p) => !p.closed).map((p) => p.diagnostics());
    if (this.server) parts.push(`--- server stderr (last 40 lines) ---\n${tail(this.server.stderrLines, 40)}`);
    return parts.join('\n');
  }

  // Attach frames/stderr to a failure that does not carry them yet (e.g. a plain assert.equal).
  annotate(e) {
    if (e && typeof e.message === 'string' && !DIAGNOSTICS_MARKS.some((m) => e.message.includes(m))) {
      try { e.message += `\n${this.text()}`; } catch { /* read-only message */ }
    }
    return e;
  }

  async wrap(fn) {
    try {
      return await fn();
    } catch (e) {
      throw this.annotate(e);
    }
  }

  // Open one page per opener (one after the other, or all at once with `parallel`), run
  // `body(...pages)`, always close the pages afterwards.
  async withPages(openers, body, { parallel = false } = {}) {
    let hs = [];
    if (parallel) {
      const opened = await Promise.allSettled(openers.map((open) => open()));
      hs = opened.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      try {
        const failed = opened.find((r) => r.status === 'rejected');
        if (failed) throw failed.reason;
        await this.wrap(() => body(...hs));
      } finally {
        await Promise.all(hs.map((h) => h.close()));
      }
      return;
    }
    try {
      for (const open of openers) hs.push(await open());
      await this.wrap(() => body(...hs));
    } finally {
      for (const h of hs) await h.close();
    }
  }

  async closeAll() {
    for (const p of this.pages) await p.close();
    this.pages.length = 0;
  }
}

// Per-file state of a test file: temp dir, Huddle server, static server, browsers and pages
// (in `diag`), a watchdog over all of it (started at once: construct at module level) and one
// teardown for after(). `watchdogDiagnostics` also prints diag.text() when the watchdog fires.
export class E2eFile {
  constructor({ watchdogMs, tag = 'e2e', watchdogDiagnostics = false }) {
    this.diag = new Diagnostics();
    this.tmpDir = null;
    this.server = null;
    this.staticServer = null;
    this.browsers = []; // [{ browser, timeout, what }], closed in this order
    this.watchdog = watchdog(watchdogMs, {
      tag,
      diagnostics: watchdogDiagnostics ? () => this.diag.text() : undefined,
      cleanup: [() => this.server?.proc.kill('SIGKILL'), () => this.abandonBrowsers()],
    });
  }

  // Watchdog: kill puppeteer browsers (they have process()), ask playwright ones to close.
  abandonBrowsers() {
    for (const { browser } of this.browsers) {
      try {
        if (typeof browser.process === 'function') browser.process()?.kill('SIGKILL');
        else browser.close();
      } catch { /* ignore */ }
    }
  }

  async makeTmpDir(prefix) {
    this.tmpDir = await makeTmpDir(prefix);
    return this.tmpDir;
  }

  // startHuddle() in the file's temp dir; the server's stderr goes into failure diagnostics.
  async startHuddle(opts) {
    this.server = await startHuddle({ dir: this.tmpDir, ...opts });
    this.diag.server = this.server;
    return this.server;
  }

  async startStaticServer(routes) {
    this.staticServer = await startStaticServer(routes);
    return this.staticServer;
  }

  addBrowser(browser, { timeout = 5_000, what = 'browser.close()' } = {}) {
    this.browsers.push({ browser, timeout, what });
    return browser;
  }

  async launchChromium(opts, closeOpts) {
    return this.addBrowser(await launchChromium(opts), closeOpts);
  }

  // For after(): close pages, browsers and the static server, stop the Huddle server (asserting
  // exit 0 and no panic, see startHuddle; `stop` = its options), always remove the temp dir and
  // clear the watchdog.
  async teardown({ stop } = {}) {
    try {
      await this.diag.closeAll();
      for (const { browser, timeout, what } of this.browsers) await closeBrowser(browser, { timeout, what });
      if (this.staticServer) await this.staticServer.close();
      if (this.server) await this.server.stop(stop);
    } finally {
      if (this.tmpDir) await fsp.rm(this.tmpDir, { recursive: true, force: true });
      clearTimeout(this.watchdog);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Instrumented pages

// One page (a playwright Chromium context, or a puppeteer Firefox page) that records console
// lines, uncaught page errors, WebSocket frames (Chromium only) and requests `badRequest(url)`
// rejects. Options: diag (Diagnostics to register with), stepTimeout, pollInterval, frameLimit
// (stored frame text is cut there), skipFrames (regex of frames not to keep), badRequest,
// badSocket.
export class BrowserPage {
  constructor(label, {
    page, browserName = 'chromium', closeFn, evalFn, diag = null, stepTimeout = 15_000, pollInterval = 100,
    frameLimit = Infinity, skipFrames = null, badRequest = (u) => isForeign(u), badSocket = (u) => isForeign(u),
  }) {
    Object.assign(this, { label, page, browserName, closeFn, evalFn, diag, stepTimeout, pollInterval, frameLimit, skipFrames });
    this.frames = []; // WebSocket frames, both directions
    this.sockets = []; // WebSocket URLs
    this.console = [];
    this.pageErrors = [];
    this.badRequests = [];
    this.closed = false;
    diag?.add(this);
    page.setDefaultTimeout(stepTimeout);
    page.on('console', (m) => this.pushConsole(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => this.pageErrors.push(String(e?.stack || e)));
    page.on('request', (r) => { if (badRequest(r.url())) this.badRequests.push(r.url()); });
    page.on('requestfailed', (r) => this.pushConsole(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`));
    if (browserName === 'chromium') {
      page.on('websocket', (ws) => {
        this.sockets.push(ws.url());
        if (badSocket(ws.url())) this.badRequests.push(ws.url());
        this.frames.push(`-- ws open ${ws.url()}`);
        ws.on('framesent', (f) => this.pushFrame('→', f.payload));
        ws.on('framereceived', (f) => this.pushFrame('←', f.payload));
        ws.on('socketerror', (e) => this.frames.push(`-- ws error ${e}`));
        ws.on('close', () => this.frames.push('-- ws close'));
      });
    }
  }

  // A new context + page in a playwright Chromium `browser`; `initScript(initArg)` runs before
  // every page script.
  static async openChromium(browser, label, { viewport, initScript, initArg, ...opts } = {}) {
    const context = await browser.newContext(viewport ? { viewport } : undefined);
    if (initScript) await context.addInitScript(initScript, initArg);
    const page = await context.newPage();
    return new this(label, {
      ...opts,
      page,
      browserName: 'chromium',
      closeFn: () => context.close(),
      evalFn: (name, args) => page.evaluate(([n, a]) => window[n](...a), [name, args]),
    });
  }

  // A new page in a puppeteer Firefox `browser` (no WebSocket frame capture).
  static async openFirefox(browser, label, { viewport = { width: 700, height: 500 }, ...opts } = {}) {
    const page = await browser.newPage();
    const h = new this(label, {
      ...opts,
      page,
      browserName: 'firefox',
      closeFn: () => page.close(),
      evalFn: (name, args) => page.evaluate((n, a) => window[n](...a), name, args),
    });
    await page.setViewport(viewport);
    return h;
  }

  pushConsole(line) {
    this.console.push(line);
    if (this.console.length > 2000) this.console.splice(0, 1000);
  }

  pushFrame(dir, payload) {
    const text = typeof payload === 'string' ? payload : `<binary ${payload.length} bytes>`;
    if (this.skipFrames && this.skipFrames.test(text)) return;
    const time = new Date().toISOString().slice(11, 23);
    if (PRINT_FRAMES) process.stderr.write(`[${this.label}] ${time} ${dir} ${text}\n`);
    const kept = text.length > this.frameLimit ? `${text.slice(0, this.frameLimit)}…(${text.length} chars)` : text;
    this.frames.push(`${time} ${dir} ${kept}`);
  }

  // window[fn](...args) in the page, bounded by the step timeout.
  call(fn, ...args) {
    return withTimeout(this.evalFn(fn, args), this.stepTimeout, `${this.label}: ${fn}()`);
  }

  diagnostics(n = 30) {
    return [
      `--- ${this.label} (${this.browserName}): last WebSocket frames; sockets ${JSON.stringify(this.sockets)} ---`,
      tail(this.frames, n) || (this.browserName === 'chromium' ? '(none)' : '(not captured for this browser)'),
      `--- ${this.label}: last console lines ---`,
      tail(this.console.filter((l) => !/^\[debug\]/.test(l)), 15) || '(none)',
      this.pageErrors.length ? `--- ${this.label}: page errors ---\n${this.pageErrors.join('\n')}` : '',
      this.badRequests.length ? `--- ${this.label}: unexpected requests ---\n${this.badRequests.join('\n')}` : '',
    ].filter(Boolean).join('\n');
  }

  async close() {
    if (this.closed) return;
    this.closed = true;
    try { await withTimeout(this.closeFn(), 5_000, `${this.label}: close`); } catch { /* ignore */ }
  }
}

// Readiness checks of the two Flashphoner test pages.
export const ROOM_PAGE_READY = () => typeof window.RoomApi === 'object' && typeof window.connect === 'function';
export const MEDIA_PAGE_READY = () => typeof window.RoomApi === 'object' && typeof window.join === 'function' &&
  Array.isArray(window.__pcs);

// One page = one Flashphoner RoomApi session on room-page.html / media-page.html, whose helpers
// (window.connect, join, ...) are called with call() and which records every SDK callback in
// window.__events. Open with SdkPage.openChromium / openFirefox(browser, label, { origin, ready,
// ...BrowserPage options }).
export class SdkPage extends BrowserPage {
  static async openChromium(browser, label, opts = {}) {
    return (await super.openChromium(browser, label, opts)).load(opts);
  }

  static async openFirefox(browser, label, opts = {}) {
    return (await super.openFirefox(browser, label, opts)).load(opts);
  }

  async load({ origin, ready = ROOM_PAGE_READY }) {
    await this.page.goto(`${origin}/`, { waitUntil: 'load', timeout: this.stepTimeout });
    const ok = await this.page.evaluate(ready);
    assert.ok(ok, `${this.label}: page did not load RoomApi (SDK bundle) / harness; page errors: ${this.pageErrors.join('\n')}`);
    return this;
  }

  events() {
    return withTimeout(this.page.evaluate(() => window.__events.slice()), this.stepTimeout, `${this.label}: events`);
  }

  // Poll the page's event log until `pred` matches an event (optionally after index `from`).
  async waitFor(description, pred, { from = 0, timeout = this.stepTimeout } = {}) {
    let evs = [];
    return waitFor(async () => {
      evs = await this.events();
      return evs.slice(from).find(pred);
    }, {
      timeout,
      interval: this.pollInterval,
      message: () => `${this.label}: timed out after ${timeout} ms waiting for ${description}\n` +
        `--- ${this.label}: page events ---\n${evs.map((e) => JSON.stringify(e)).join('\n')}\n${this.diag?.text() ?? ''}`,
    });
  }

  // Poll window[fn](...args) until `pred(result)`; returns the last result.
  async pollUntil(description, fn, args, pred, timeout = this.stepTimeout) {
    let last;
    await waitFor(async () => {
      last = await this.call(fn, ...args);
      return pred(last);
    }, {
      timeout,
      interval: 250,
      message: () => `${this.label}: timed out after ${timeout} ms waiting for ${description}; last ${fn}(): ` +
        `${JSON.stringify(last, null, 1)}\n${this.diag?.text() ?? ''}`,
    });
    return last;
  }
}

// media-page.html: wait until `viewer`'s playback of `publisher` decodes video (framesDecoded > 0
// and growing) and audio carries energy. Returns { first, last } playerStats snapshots.
export async function waitForMedia(viewer, publisher) {
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

// No uncaught page errors and no request outside what the page may load.
export function assertPageClean(h, { errorsHint = '', requestsHint = 'requests to hosts other than 127.0.0.1' } = {}) {
  assert.deepEqual(h.pageErrors, [], `${h.label}: uncaught errors in the page${errorsHint}`);
  assert.deepEqual(h.badRequests, [], `${h.label}: ${requestsHint}`);
}

// A mono 16-bit PCM WAV at 48 kHz: `seconds` of a sine at `amplitude` of full scale (a whole
// number of cycles, so Chromium's loop of it as a fake microphone,
// --use-file-for-fake-audio-capture, is seamless).
export function sineWav(freq, amplitude, seconds) {
  const rate = 48_000;
  const n = rate * seconds;
  const data = Buffer.alloc(2 * n);
  for (let i = 0; i < n; i++) {
    data.writeInt16LE(Math.round(Math.sin((2 * Math.PI * freq * i) / rate) * amplitude * 32767), 2 * i);
  }
  const h = Buffer.alloc(44);
  h.write('RIFF', 0); h.writeUInt32LE(36 + data.length, 4); h.write('WAVE', 8);
  h.write('fmt ', 12); h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22);
  h.writeUInt32LE(rate, 24); h.writeUInt32LE(rate * 2, 28); h.writeUInt16LE(2, 32); h.writeUInt16LE(16, 34);
  h.write('data', 36); h.writeUInt32LE(data.length, 40);
  return Buffer.concat([h, data]);
}
