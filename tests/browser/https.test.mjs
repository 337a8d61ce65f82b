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
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { BrowserPage, E2eFile, assertChromiumInstalled, huddleConfig, waitFor } from './harness.mjs';

const HOST = 'huddle.test';
const ROOM = 'secure room 🔒 & co';
const [ALICE, BORIS] = ['alice', 'Борис'];
const WEB_PATHS = new Set(['/', '/app.js', '/room-api.js', '/style.css']);

const STEP_TIMEOUT_MS = 12_000;
const SERVER_START_TIMEOUT_MS = 10_000;
const SERVER_STOP_TIMEOUT_MS = 8_000;
const FILE_WATCHDOG_MS = 58_000;

// Temp dir, server, browser and open pages (diag) of this file, under one watchdog.
const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'https-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
const diagnosticsAll = () => diag.text();
let server; // startHuddle(): { proc, addr, stderrLines, startupLog, stop() }
let certPath; // the device certificate Huddle generates into tls_dir
let origin; // https://huddle.test:PORT
let browser;

const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 150, diagnostics: diagnosticsAll });

// Runs in every page before the app: small video, two Chromium participants on few cores.
function initScript() {
  const md = navigator.mediaDevices;
  if (!md) return; // not a secure context: the test says so itself
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } });
}

// HTTPS only, with the device certificate generated into a temp tls_dir; the server's default log level.
async function startServer() {
  const tlsDir = path.join(e2e.tmpDir, 'tls');
  certPath = path.join(tlsDir, 'device-cert.pem');
  return e2e.startHuddle({
    tls: true,
    startTimeout: SERVER_START_TIMEOUT_MS,
    env: { JOURNAL_STREAM: '', NOTIFY_SOCKET: '' },
    config: huddleConfig({
      http: `plain = false\ntls = true\ntls_listen = "127.0.0.1:0"\ntls_dir = ${JSON.stringify(tlsDir)}\n`,
      logLevel: null,
    }),
  });
}

class Participant extends BrowserPage {
  static async open(label, url) {
    const p = await this.openChromium(browser, label, {
      viewport: { width: 1024, height: 720 }, initScript, diag, stepTimeout: STEP_TIMEOUT_MS,
      frameLimit: 300, skipFrames: /"message":"(ping|pong)"/,
      badRequest: (u) => {
        const parsed = new URL(u);
        if (['data:', 'blob:'].includes(parsed.protocol)) return false;
        return parsed.origin !== origin || !(WEB_PATHS.has(parsed.pathname) || parsed.pathname.startsWith('/client/'));
      },
      badSocket: () => false, // the test checks `sockets` itself
    });
    const response = await p.page.goto(url, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    assert.equal(response?.status(), 200, `${label}: GET ${url}`);
    return p;
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
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  await e2e.makeTmpDir('huddle-https-e2e-');
  assertChromiumInstalled();
  server = await startServer();
  origin = `https://${HOST}:${server.addr.split(':')[1]}`;

  // The generated certificate: logged with its fingerprint, accepted by its SPKI hash.
  const cert = new crypto.X509Certificate(await fsp.readFile(certPath));
  const [, loggedPath, fingerprint] = /HTTPS certificate (\S+) \(SHA-256 ([0-9A-F:]+)\)/.exec(server.startupLog) ?? [];
  assert.equal(loggedPath, certPath, 'the log names the certificate file');
  assert.equal(fingerprint, cert.fingerprint256, 'the logged SHA-256 is the file\'s');
  const spki = crypto.createHash('sha256')
    .update(cert.publicKey.export({ type: 'spki', format: 'der' }))
    .digest('base64');
  assert.ok(!cert.checkHost(HOST), `${HOST} is not a name of the device certificate: only the SPKI pin lets Chromium in`);

  browser = await e2e.launchChromium({
    timeout: 15_000,
    extraArgs: [
      `--host-resolver-rules=MAP ${HOST} 127.0.0.1, MAP * ~NOTFOUND`,
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}, { timeout: 30_000 });

// Pages, browser; SIGTERM must stop the server with exit code 0, without a panic.
after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 15_000 });

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
    throw diag.annotate(e);
  } finally {
    await diag.closeAll();
  }
});
