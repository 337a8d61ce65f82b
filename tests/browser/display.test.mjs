// The room display (/display, web/display.html + display.js, served by Huddle) in headless
// Chromium: before anyone is in a room it shows the waiting screen with the invite address and
// QR code; then two remote participants (Huddle's web app, fake camera) join a room and publish:
// the display finds the room by itself, shows two tiles with their names, publishes nothing and
// never asks for a camera or microphone, keeps every media element muted, shows the chat a
// participant sends, and highlights whoever the device speaker's levels say is talking.
//
// The levels come from the speaker thread (/client/levels). Until the speaker is merged nothing
// writes them in a test server, so this test serves a test double of /client/levels through
// Playwright request interception, in the test only (TODO(speaker): once the speaker thread
// plays the room, drop the interception and let the participants' fake microphones drive it).
//
// Run from the repository root:   node --test tests/browser/display.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { BrowserPage, E2eFile, assertChromiumInstalled, assertPageClean, huddleConfig, waitFor } from './harness.mjs';

const STEP_TIMEOUT_MS = 15_000;
const FILE_WATCHDOG_MS = 170_000;
const ROOM = 'display room 🎬';
const [ANN, BORIS] = ['ann', 'Борис <b>'];
const CHAT = 'Привет 👋 <i>not italic</i>';

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'display-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
let server;
let origin;
let browser;
let config; // a fixed HTTP port: the restart test starts the service again on it

const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 150, diagnostics: () => diag.text() });

// Counts getUserMedia calls (the display must make none); small video for the participants.
function initScript() {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  window.__gumCalls = 0;
  md.getUserMedia = (c) => {
    window.__gumCalls += 1;
    return gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } });
  };
}

async function open(label, pathAndQuery) {
  const p = await BrowserPage.openChromium(browser, label, {
    viewport: { width: 1024, height: 700 }, initScript, diag, stepTimeout: STEP_TIMEOUT_MS,
    frameLimit: 600, skipFrames: /"message":"(ping|pong)"/,
    badRequest: (u) => {
      const url = new URL(u);
      if (['data:', 'blob:'].includes(url.protocol)) return false;
      return url.origin !== origin;
    },
    badSocket: (u) => u !== `ws://${server.addr}/`,
  });
  await p.page.goto(`${origin}${pathAndQuery}`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  return p;
}

before(async () => {
  await e2e.makeTmpDir('huddle-display-e2e-');
  assertChromiumInstalled();
  const port = await new Promise((resolve, reject) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = probe.address();
      probe.close(() => resolve(p));
    });
    probe.on('error', reject);
  });
  // Only [http] listen (the first "127.0.0.1:0"); RTMP keeps a free port.
  config = huddleConfig().replace('listen = "127.0.0.1:0"', `listen = "127.0.0.1:${port}"`);
  server = await e2e.startHuddle({ config, startTimeout: 20_000 });
  origin = `http://${server.addr}`;
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 20_000 });

test('the display shows the room: two tiles with names, muted, no publishing, chat, talking highlight', { timeout: 80_000 }, async () => {
  const display = await open('display', '/display');
  // The test double of the speaker's levels (see the header): which stream is talking now.
  let talking = null;
  let levelsRequests = 0;
  await display.page.route('**/client/levels', (route) => {
    levelsRequests += 1;
    const levels = talking ? [{ stream: talking, level: 0.8, talking: true }] : [];
    return route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ levels }) });
  });
  try {
    // Nobody here yet: the waiting screen with the invite address and its QR code.
    await until('display: the waiting screen', async () => display.page.isVisible('#waiting'));
    assert.match(await display.page.textContent('#waiting'), /Nobody here yet — join at http:\/\/127\.0\.0\.1:\d+\//);
    await until('display: waiting QR code', async () => display.page.evaluate(() => {
      const img = document.getElementById('waiting-qr');
      return !img.hidden && img.complete && img.naturalWidth > 0;
    }));

    const ann = await open(ANN, '/');
    const boris = await open('boris', '/');
    for (const [p, login] of [[ann, ANN], [boris, BORIS]]) {
      await p.page.fill('#login', login);
      await p.page.fill('#room', ROOM);
      await p.page.click('#join');
      await until(`${login} publishing`, async () => p.page.evaluate(() => window.__huddle.streams().some((s) => s.published && s.status === 'PUBLISHING')));
    }
    const streamOf = (p) => p.page.evaluate(() => window.__huddle.streams().find((s) => s.published).name);
    const [annStream, borisStream] = [await streamOf(ann), await streamOf(boris)];

    // The display finds the room, joins as a viewer and plays both.
    await until('display: two playing tiles', async () => display.page.evaluate(() => {
      const tiles = [...document.querySelectorAll('#tiles .tile')];
      return tiles.length === 2 && tiles.every((t) => t.dataset.status === 'PLAYING' && t.querySelector('video').videoWidth > 0);
    }), 25_000);
    const tiles = await display.page.$$eval('#tiles .tile', (els) => els.map((el) => ({
      login: el.dataset.login, stream: el.dataset.stream, name: el.querySelector('.name').textContent,
    })));
    assert.deepEqual(tiles.map((t) => t.name).sort(), [ANN, BORIS].sort(), JSON.stringify(tiles));
    assert.equal(await display.page.textContent('#room-title'), ROOM);
    assert.match(await display.page.textContent('#invite-link'), /^http:\/\/127\.0\.0\.1:\d+\/\?roomName=/);

    // A viewer: no publish, no camera or microphone asked for, every media element muted.
    assert.equal(await display.page.evaluate(() => window.__gumCalls), 0, 'getUserMedia was called');
    assert.ok(!display.frames.some((f) => f.includes('"publishStream"')), 'the display published');
    assert.deepEqual(await display.page.evaluate(() => window.__display.streams().filter((s) => s.published).length), 0);
    assert.ok(await display.page.evaluate(() => [...document.querySelectorAll('video, audio')].every((m) => m.muted)), 'an unmuted media element');
    assert.ok(display.frames.some((f) => f.includes('"Room display"')), 'the display\'s login');

    // Chat from a participant appears on the display, as text.
    await ann.page.fill('#chat-text', CHAT);
    await ann.page.click('#chat-form button');
    await until('display: the chat message', async () => (await display.page.$$eval('#messages li .text', (els) => els.map((e) => e.textContent))).includes(CHAT));
    assert.equal(await display.page.$$eval('#messages i', (els) => els.length), 0, 'chat put in as HTML');

    // Talking: the tile of the stream the levels say, and only it.
    const highlighted = () => display.page.$$eval('#tiles .tile.talking', (els) => els.map((el) => el.dataset.stream));
    talking = annStream;
    await until('display: ann highlighted', async () => JSON.stringify(await highlighted()) === JSON.stringify([annStream]));
    talking = borisStream;
    await until('display: Борис highlighted instead', async () => JSON.stringify(await highlighted()) === JSON.stringify([borisStream]));
    talking = null;
    await until('display: nobody highlighted', async () => (await highlighted()).length === 0);
    assert.ok(levelsRequests >= 3, `levels polled: ${levelsRequests}`);

    // Both leave: the display leaves too and waits for the next room.
    for (const p of [ann, boris]) await p.page.click('#leave');
    await until('display: back to waiting', async () => display.page.isVisible('#waiting'), 20_000);
    for (const p of [display, ann, boris]) assertPageClean(p);
  } finally {
    await diag.closeAll();
  }
});

test('the display recovers by itself when the service restarts', { timeout: 70_000 }, async () => {
  const display = await open('display', '/display');
  const ann = await open(ANN, '/');
  const annJoins = async () => {
    await ann.page.fill('#login', ANN);
    await ann.page.fill('#room', 'after restart');
    await ann.page.click('#join');
    await until('ann publishing', async () => ann.page.evaluate(() => window.__huddle.streams().some((s) => s.published && s.status === 'PUBLISHING')));
  };
  const annShown = () => until('display: ann\'s tile playing', async () => display.page.evaluate(() => {
    const tiles = [...document.querySelectorAll('#tiles .tile')];
    return tiles.length === 1 && tiles[0].dataset.status === 'PLAYING' && tiles[0].querySelector('.name').textContent === 'ann';
  }), 25_000);
  try {
    await annJoins();
    await annShown();
    await server.stop({ timeout: 10_000 });
    await until('display: the connection lost', async () => (await display.page.getAttribute('#status', 'data-state')) === 'offline');
    server = await e2e.startHuddle({ config, startTimeout: 20_000 });
    assert.equal(`http://${server.addr}`, origin, 'the same address again');
    await until('ann: back at the join form', async () => ann.page.isVisible('#join-form'));
    await annJoins();
    await annShown();
    for (const p of [display, ann]) assert.deepEqual(p.pageErrors, [], `${p.label}: uncaught errors`);
  } finally {
    await diag.closeAll();
  }
});
