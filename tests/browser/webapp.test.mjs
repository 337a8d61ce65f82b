// End-to-end test of Huddle's own web app (web/index.html, app.js, room-api.js, style.css) in
// headless Debian Chromium with fake camera/microphone/screen, driven by playwright-core.
//
// Run from the repository root:   node --test tests/browser/webapp.test.mjs
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 prints every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 the server log,
//      HUDDLE_E2E_SHOTS=<dir> where the screenshots go (default /tmp).
//
// The pages come from Huddle itself when it serves this checkout's web/ files (GET /app.js equal
// to web/app.js); otherwise from a throwaway static server on 127.0.0.1 serving exactly the four
// web/ files, with the page pointed at Huddle by ?ws=ws://127.0.0.1:PORT/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  REPO_ROOT, BrowserPage, E2eFile, CSS, HTML, JS, assertChromiumInstalled, assertPageClean, huddleConfig, sleep,
  waitFor, metricValue,
} from './harness.mjs';

const WEB_DIR = path.join(REPO_ROOT, 'web');
const SHOTS_DIR = process.env.HUDDLE_E2E_SHOTS || os.tmpdir();

// What Huddle serves (and nothing else may be requested by the page).
const WEB_FILES = {
  '/': ['index.html', HTML],
  '/app.js': ['app.js', JS],
  '/room-api.js': ['room-api.js', JS],
  '/style.css': ['style.css', CSS],
};

const MAX_PARTICIPANTS = 3;
const ROOM = 'планёрка #1 🎉 & co';
const [ALICE, BORIS, CAROL] = ['alice', 'Борис', 'carol 🎈'];
const CHAT_TEXT = 'Привет, мир! 👋🏽 🇺🇦 👨‍👩‍👧\nвторая строка <b>не жирный</b> &amp; <img src=x onerror=alert(1)>';
const CHAT_REPLY = 'Ответ: ок 👍 日本語';

const STEP_TIMEOUT_MS = 15_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 120_000;

const SERVER_CONFIG = huddleConfig({ extra: `[rooms]
max_participants = ${MAX_PARTICIPANTS}
` });

// Runs in every page before the app. Three Chromium participants on two cores need small
// video: the app's own constraints are overridden here, not in the app. With camera = false
// getUserMedia is refused the way a user's "Block" is.
function initScript({ camera }) {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  const gdm = md.getDisplayMedia.bind(md);
  md.getUserMedia = (c) => (camera
    ? gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } })
    : Promise.reject(new DOMException('Permission denied', 'NotAllowedError')));
  md.getDisplayMedia = (c) => gdm({ ...c, video: { width: { max: 640 }, height: { max: 360 }, frameRate: { max: 10 } } });
}

// ---------------------------------------------------------------------------------------------

// Temp dir, server, static server, browser and open pages (diag) of this file, under one watchdog.
const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'webapp-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
const diagnosticsAll = () => diag.text();
let server; // startHuddle(): { proc, addr, stderrLines, stop() }
let pageBase; // { origin, query } the app is loaded from
let browser;

// Poll `fn` until it returns a truthy value; fail with diagnostics after `timeout`.
const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 150, diagnostics: diagnosticsAll });

// Huddle itself when it serves exactly this checkout's web/ files (a binary built after the
// last edit), else the static server.
async function choosePageBase() {
  const same = async ([urlPath, [file]]) => {
    const r = await fetch(`http://${server.addr}${urlPath}`, { signal: AbortSignal.timeout(3000) });
    return r.ok && (await r.text()) === (await fsp.readFile(path.join(WEB_DIR, file), 'utf8'));
  };
  try {
    if ((await Promise.all(Object.entries(WEB_FILES).map(same))).every(Boolean)) {
      return { origin: `http://${server.addr}`, query: '', servedBy: 'huddle' };
    }
  } catch { /* not served (yet) */ }
  const staticServer = await e2e.startStaticServer(Object.fromEntries(Object.entries(WEB_FILES)
    .map(([urlPath, [file, type]]) => [urlPath, { file: path.join(WEB_DIR, file), type }])));
  return { origin: staticServer.origin, query: `ws=${encodeURIComponent(`ws://${server.addr}/`)}`, servedBy: 'static' };
}

const pageUrl = (extra = '') => `${pageBase.origin}/?${[pageBase.query, extra].filter(Boolean).join('&')}`;

// One browser context + page = one participant.
class Participant extends BrowserPage {
  static async open(label, { viewport = { width: 1024, height: 720 }, camera = true, url = pageUrl() } = {}) {
    const p = await this.openChromium(browser, label, {
      viewport, initScript, initArg: { camera }, diag, stepTimeout: STEP_TIMEOUT_MS,
      frameLimit: 400, skipFrames: /"message":"(ping|pong)"/,
      badRequest: (u) => {
        const { protocol, origin, pathname } = new URL(u);
        if (['data:', 'blob:'].includes(protocol)) return false;
        // The landing's read-only routes (device name, live rooms, records, QR code) too.
        return origin !== pageBase.origin || !(WEB_FILES[pathname] || pathname.startsWith('/client/'));
      },
      badSocket: (u) => u !== `ws://${server.addr}/`,
    });
    await p.page.goto(url, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    return p;
  }

  async join(login, room) {
    await this.page.fill('#login', login);
    if (room !== undefined) await this.page.fill('#room', room);
    await this.page.click('#join');
  }

  text(selector) { return this.page.locator(selector).textContent(); }

  tiles() {
    return this.page.$$eval('#tiles .tile', (els) => els.map((el) => ({
      login: el.dataset.login, stream: el.dataset.stream, kind: el.dataset.kind,
      status: el.dataset.status, local: el.classList.contains('local'),
      label: el.querySelector('.name').textContent,
    })));
  }

  async remoteTiles(status = 'PLAYING') {
    return (await this.tiles()).filter((t) => !t.local && (!status || t.status === status));
  }

  // inbound-rtp of the app's player of `stream`, via window.__huddle.
  inbound(stream) {
    return this.page.evaluate(async (name) => {
      const s = window.__huddle.streams().find((x) => x.name === name && !x.published);
      if (!s) return null;
      const out = { status: s.status };
      (await s.pc.getStats()).forEach((r) => {
        if (r.type === 'inbound-rtp') {
          out[r.kind] = { framesDecoded: r.framesDecoded ?? 0, totalAudioEnergy: r.totalAudioEnergy ?? 0, packets: r.packetsReceived ?? 0 };
        }
        // What the browser learnt from the server's RTCP sender reports.
        if (r.type === 'remote-outbound-rtp') {
          out[`${r.kind}Reports`] = { reportsSent: r.reportsSent ?? 0, packetsSent: r.packetsSent ?? 0 };
        }
      });
      return out;
    }, stream);
  }

  messages() {
    return this.page.$$eval('#messages li', (els) => els.map((li) => ({
      from: li.querySelector('.from')?.textContent ?? null,
      text: li.querySelector('.text').textContent,
      system: li.classList.contains('system'),
    })));
  }
}

function assertClean(p) {
  assertPageClean(p, { requestsHint: 'requests outside the four web files and the Huddle WebSocket' });
}

// Video decodes and keeps decoding; audio has energy (the tile's <video> is unmuted).
async function assertMediaFlows(p, stream, { audio = true } = {}) {
  const first = await until(`${p.label}: frames decoded from ${stream}`, async () => {
    const s = await p.inbound(stream);
    return s?.video?.framesDecoded > 0 && (!audio || s.audio?.totalAudioEnergy > 0) && s;
  });
  const later = await until(`${p.label}: frame count of ${stream} growing`, async () => {
    const s = await p.inbound(stream);
    return s?.video?.framesDecoded > first.video.framesDecoded + 5 && s;
  }, 8_000);
  // The server's sender reports (sent past the peer connection's pipeline, protected with
  // the player's own SRTCP context) reach the browser, which reads them for lip sync.
  await until(`${p.label}: sender reports of ${stream}`, async () => {
    const s = await p.inbound(stream);
    return s?.videoReports?.packetsSent > 0 && (!audio || s.audioReports?.packetsSent > 0) && s;
  }, 8_000);
  return { first, later };
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  await e2e.makeTmpDir('huddle-webapp-e2e-');
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: SERVER_CONFIG, startTimeout: SERVER_START_TIMEOUT_MS });
  pageBase = await choosePageBase();
  process.stderr.write(`[webapp-e2e] pages served by ${pageBase.servedBy} at ${pageBase.origin}\n`);
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

// Pages, browser, static server (if any); SIGTERM must stop the server with exit code 0, without a panic.
after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 20_000 });

test('three participants: video+audio both ways, Unicode chat, screen share, mute, invite link, leave', { timeout: 90_000 }, async () => {
  const alice = await Participant.open(ALICE, { viewport: { width: 1280, height: 800 } });
  const boris = await Participant.open(BORIS);
  try {
    // alice creates the room: her own camera goes live, the invite link names the room.
    await alice.join(ALICE, ROOM);
    await until('alice in the room', async () => (await alice.page.getAttribute('#status', 'data-state')) === 'joined');
    await until('alice publishing', async () => (await alice.tiles()).some((t) => t.local && t.status === 'PUBLISHING'));
    const invite = await alice.page.inputValue('#invite');
    assert.equal(new URL(invite).searchParams.get('roomName'), ROOM, `invite link must carry the room: ${invite}`);
    assert.ok(invite.includes(`roomName=${encodeURIComponent(ROOM)}`), `room must be URL-encoded in ${invite}`);

    // Борис types the room; carol (a phone) opens alice's invite link: the room is prefilled.
    await boris.join(BORIS, ROOM);
    const carol = await Participant.open(CAROL, { viewport: { width: 375, height: 812 }, url: invite });
    assert.equal(await carol.page.inputValue('#room'), ROOM, 'invite link prefills the room field');
    await carol.join(CAROL);

    // Everybody plays both others' cameras, labelled with their logins.
    const everyone = [alice, boris, carol];
    for (const p of everyone) {
      const others = everyone.filter((o) => o !== p).map((o) => o.label).sort();
      await until(`${p.label}: tiles of ${others.join(', ')} PLAYING`, async () => {
        const t = await p.remoteTiles();
        return JSON.stringify(t.map((x) => x.login).sort()) === JSON.stringify(others) &&
          t.every((x) => x.kind === 'camera' && x.label === x.login);
      });
    }
    // ...and decodes their video and hears their audio.
    for (const p of everyone) {
      for (const t of await p.remoteTiles()) await assertMediaFlows(p, t.stream);
    }
    // Two media workers (huddleConfig): the six players are split between the media task,
    // where every publisher is, and the worker thread beside it; all of them decoded above.
    const placed = (w) => metricValue(server.addr, `huddle_media_worker_players{worker="${w}"}`);
    assert.deepEqual([await placed(0), await placed(1)], [3, 3], 'players per media worker');

    // Chat: Cyrillic, emoji sequences, a newline and HTML all arrive verbatim, as text.
    await alice.page.fill('#chat-text', CHAT_TEXT);
    await alice.page.click('#chat-form button[type=submit]');
    for (const p of [boris, carol]) {
      await until(`${p.label}: alice's message`, async () => (await p.messages()).some((m) => m.from === ALICE && m.text === CHAT_TEXT));
      assert.equal(await p.page.locator('#messages b, #messages img').count(), 0, 'chat text must not become HTML');
    }
    assert.ok((await alice.messages()).some((m) => m.from === ALICE && m.text === CHAT_TEXT), 'own message shown once sent');
    await boris.page.fill('#chat-text', CHAT_REPLY);
    await boris.page.press('#chat-text', 'Enter'); // Enter sends
    for (const p of [alice, carol]) {
      await until(`${p.label}: Борис's reply`, async () => (await p.messages()).some((m) => m.from === BORIS && m.text === CHAT_REPLY));
    }

    // Mute audio: the track is disabled and a sendStreamEvent notice goes to the server.
    await alice.page.click('#mute-audio');
    assert.equal(await alice.page.getAttribute('#mute-audio', 'aria-pressed'), 'true');
    assert.equal(await alice.page.evaluate(() => window.__huddle.streams().find((s) => s.published).media.getAudioTracks()[0].enabled), false);
    await until('alice sent audioMuted', async () => alice.frames.some((f) => f.includes('"sendStreamEvent"') && f.includes('"audioMuted"')), 3_000);
    await alice.page.click('#mute-audio');
    assert.equal(await alice.page.getAttribute('#mute-audio', 'aria-pressed'), 'false');

    // Борис shares his screen: a second stream "...-screenShare" that the others decode.
    await boris.page.click('#share');
    await until('Борис publishing his screen', async () => (await boris.tiles()).some((t) => t.local && t.kind === 'screen' && t.status === 'PUBLISHING'));
    const screenName = (await boris.tiles()).find((t) => t.kind === 'screen').stream;
    assert.match(screenName, /-screenShare$/);
    assert.ok(screenName.startsWith(`${ROOM}-${BORIS}-`), `stream name rule <room>-<login>-<hex>-screenShare: ${screenName}`);
    for (const p of [alice, carol]) {
      await until(`${p.label}: Борис's screen tile`, async () => (await p.remoteTiles()).some((t) => t.stream === screenName && t.label === `${BORIS} (screen)`));
      await assertMediaFlows(p, screenName, { audio: false });
    }

    // Screenshots with three cameras and a shared screen on: desktop and phone.
    const desktopShot = path.join(SHOTS_DIR, 'huddle-webapp-desktop.png');
    const phoneShot = path.join(SHOTS_DIR, 'huddle-webapp-phone.png');
    await sleep(500);
    await alice.page.screenshot({ path: desktopShot });
    await carol.page.screenshot({ path: phoneShot, fullPage: true });
    process.stderr.write(`[webapp-e2e] screenshots: ${desktopShot} ${phoneShot}\n`);
    // On a phone the chat sits under the video; on the desktop beside it.
    const box = (p, sel) => p.page.locator(sel).boundingBox();
    const [cTiles, cChat] = [await box(carol, '#tiles'), await box(carol, '#chat')];
    assert.ok(cChat.y >= cTiles.y + cTiles.height, `phone: chat under the video (${JSON.stringify({ cTiles, cChat })})`);
    assert.ok(cChat.width <= 375 && cTiles.width <= 375, 'phone: nothing wider than the screen');
    const [aTiles, aChat] = [await box(alice, '#tiles'), await box(alice, '#chat')];
    assert.ok(aChat.x >= aTiles.x + aTiles.width, 'desktop: chat beside the video');

    // Stop sharing: unPublishStream; the others' screen tiles go.
    await boris.page.click('#share');
    assert.equal(await boris.page.getAttribute('#share', 'aria-pressed'), 'false');
    for (const p of [alice, boris, carol]) {
      await until(`${p.label}: screen tile gone`, async () => !(await p.tiles()).some((t) => t.stream === screenName));
    }
    assert.ok(boris.frames.some((f) => f.includes(' → ') && f.includes('"unPublishStream"') && f.includes('screenShare')), 'stop sharing sends unPublishStream');

    // carol leaves: her page goes back to the join form, the others lose her tile.
    await carol.page.click('#leave');
    await until('carol back at the join form', async () => carol.page.isVisible('#join-form'));
    assert.equal(await carol.page.getAttribute('#status', 'data-state'), 'offline');
    for (const p of [alice, boris]) {
      await until(`${p.label}: carol's tiles gone`, async () => !(await p.tiles()).some((t) => t.login === CAROL));
      await until(`${p.label}: "carol left" in chat`, async () => (await p.messages()).some((m) => m.system && m.text === `${CAROL} left`));
      assert.equal((await p.remoteTiles(null)).length, 1, `${p.label}: one remote tile left`);
    }
    for (const p of everyone) assertClean(p);
  } catch (e) {
    throw diag.annotate(e);
  } finally {
    await diag.closeAll();
  }
});

test('join errors: no camera joins without publishing, duplicate login, room full', { timeout: 40_000 }, async () => {
  const room = 'full room ✋';
  try {
    const members = [];
    for (const login of ['d1', 'd2', 'd3']) {
      const p = await Participant.open(login, { camera: false });
      await p.join(login, room);
      await until(`${login}: joined without a camera`, async () =>
        (await p.page.getAttribute('#status', 'data-state')) === 'joined' && (await p.page.isVisible('#notice')));
      assert.match(await p.text('#notice'), /joined without sending video or sound/);
      assert.equal((await p.tiles()).length, 0, 'nothing published');
      members.push(p);
    }
    const late = await Participant.open('late', { camera: false, viewport: { width: 375, height: 812 } });
    await late.join('d1', room);
    await until('duplicate login error', async () => (await late.page.isVisible('#error')) && (await late.text('#error')));
    assert.match(await late.text('#error'), /Room already has user with such login/);
    await late.join('d4', room);
    await until('room full error', async () => /Room is full/.test(await late.text('#error')));
    assert.match(await late.text('#error'), new RegExp(`Room is full: at most ${MAX_PARTICIPANTS} participants`));
    assert.ok(await late.page.isVisible('#join-form'), 'the join form stays usable');
    assert.equal(await late.page.getAttribute('#status', 'data-state'), 'offline');
    const errorShot = path.join(SHOTS_DIR, 'huddle-webapp-phone-room-full.png');
    await late.page.screenshot({ path: errorShot });
    process.stderr.write(`[webapp-e2e] screenshot: ${errorShot}\n`);
    for (const p of [...members, late]) assertClean(p);
  } finally {
    await diag.closeAll();
  }
});
