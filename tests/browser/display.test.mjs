// The room display (/display, web/display.html + display.js, served by Huddle) in headless
// Chromium: before anyone is in a room it shows the waiting screen with the invite address and
// QR code; then two remote participants (Huddle's web app, fake camera and microphone) join a room
// and publish: the display finds the room by itself, shows two tiles with their names (not the
// device's own stream, not itself), publishes nothing and never asks for a camera or microphone,
// keeps every media element muted, shows the chat a participant sends, and highlights whoever the
// device speaker's levels say is talking.
//
// The levels are the real speaker path's: the server has a device (`microphone = "tone"`, no
// camera, `join_new_rooms` as by default, so it joins the participants' room) whose speaker is
// alsa-lib's `file` plugin over `null` (`speaker = "spk"`, selected with ALSA_CONFIG_PATH, as in
// speaker.test.mjs). The participants' Chromium (a separate instance from the display's) captures
// a WAV of a continuous 1 kHz sine at 0.3 (--use-file-for-fake-audio-capture) with Chromium's own
// audio processing off (with it on, noise suppression and gain control take the steady tone from
// a level of ~0.78 down to ~0.45, too close to the talking threshold of 0.3); each participant's
// own mute button (#mute-audio) decides who is heard: ann alone, then Борис alone, then nobody.
// The speaker decodes and mixes them and writes each stream's loudness (/client/levels, every
// 100 ms), which the display polls. The levels seen are logged.
//
// Run from the repository root:   node --test tests/browser/display.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { BrowserPage, E2eFile, assertChromiumInstalled, assertPageClean, huddleConfig, sleep, waitFor, sineWav } from './harness.mjs';

const STEP_TIMEOUT_MS = 15_000;
const FILE_WATCHDOG_MS = 230_000;
const ROOM = 'display room 🎬';
const [ANN, BORIS] = ['ann', 'Борис <b>'];
const CHAT = 'Привет 👋 <i>not italic</i>';
const TONE_HZ = 1000;
const TONE_LEVEL = 0.3; // of full scale, in the WAV the participants' Chromium captures
const TALKING_STEP_MS = 8_000; // the tone through the jitter buffer, levels every 100 ms, polled every 250 ms

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'display-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
let server;
let origin;
let browser; // the display's: no fake-audio file
let talkers; // the participants': the WAV as fake microphone
let config; // a fixed HTTP port: the restart test starts the service again on it
let alsaEnv; // the speaker's ALSA configuration, for every start of the service

const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 150, diagnostics: () => diag.text() });

// Counts getUserMedia calls (the display must make none); for the participants small video and
// the fake microphone's tone unprocessed (no echo cancellation, noise suppression or gain
// control: see the header).
function initScript() {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  window.__gumCalls = 0;
  md.getUserMedia = (c) => {
    window.__gumCalls += 1;
    const raw = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
    return gum({
      ...c,
      video: c.video && { width: 320, height: 240, frameRate: 15 },
      audio: c.audio && { ...(typeof c.audio === 'object' ? c.audio : {}), ...raw },
    });
  };
}


// The display opens in `browser`, participants (`talker`) in `talkers`.
async function open(label, pathAndQuery, { talker = false } = {}) {
  const p = await BrowserPage.openChromium(talker ? talkers : browser, label, {
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
  const dir = await e2e.makeTmpDir('huddle-display-e2e-');
  assertChromiumInstalled();
  const asoundrc = path.join(dir, 'asoundrc');
  await fsp.writeFile(asoundrc, 'pcm.nullpb { type null }\n' +
    `pcm.spk { type file; slave.pcm "nullpb"; file "${path.join(dir, 'spk.raw')}"; format "raw" }\n`);
  alsaEnv = { ALSA_CONFIG_PATH: asoundrc };
  const wav = path.join(dir, 'tone-1k.wav');
  await fsp.writeFile(wav, sineWav(TONE_HZ, TONE_LEVEL, 10));
  const port = await new Promise((resolve, reject) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = probe.address();
      probe.close(() => resolve(p));
    });
    probe.on('error', reject);
  });
  // Only [http] listen (the first "127.0.0.1:0"); RTMP keeps a free port.
  // The device: its microphone (a tone) in whichever room is created, no camera, the speaker.
  config = huddleConfig({ device: 'camera = "none"\nmicrophone = "tone"\nspeaker = "spk"\n' })
    .replace('listen = "127.0.0.1:0"', `listen = "127.0.0.1:${port}"`);
  server = await e2e.startHuddle({ config, env: alsaEnv, startTimeout: 20_000 });
  origin = `http://${server.addr}`;
  browser = await e2e.launchChromium({ timeout: 15_000 });
  talkers = await e2e.launchChromium({ extraArgs: [`--use-file-for-fake-audio-capture=${wav}`], timeout: 15_000 });
}, { timeout: 50_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 20_000 });

test('the display shows the room: two tiles with names, muted, no publishing, chat, talking highlight', { timeout: 100_000 }, async (t) => {
  const display = await open('display', '/display');
  let levelsRequests = 0;
  display.page.on('request', (r) => { if (new URL(r.url()).pathname === '/client/levels') levelsRequests += 1; });
  try {
    // Nobody here yet: the waiting screen with the invite address and its QR code.
    await until('display: the waiting screen', async () => display.page.isVisible('#waiting'));
    assert.match(await display.page.textContent('#waiting'), /Nobody here yet — join at http:\/\/127\.0\.0\.1:\d+\//);
    await until('display: waiting QR code', async () => display.page.evaluate(() => {
      const img = document.getElementById('waiting-qr');
      return !img.hidden && img.complete && img.naturalWidth > 0;
    }));

    const ann = await open(ANN, '/', { talker: true });
    const boris = await open('boris', '/', { talker: true });
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
    // ...though the device is in the room too, publishing its microphone (not a tile).
    await until('the device in the room with the participants and the display', async () => {
      const { rooms } = await (await fetch(`${origin}/client/rooms`, { cache: 'no-store' })).json();
      const members = rooms.find((r) => r.name === ROOM)?.members ?? [];
      return JSON.stringify(members.slice().sort()) === JSON.stringify([ANN, BORIS, 'Room display', 'Room system'].sort());
    });
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

    // Talking: each participant's own mute button decides who sends the tone; the speaker's
    // levels (polled by the display) highlight that tile, and only it.
    const highlighted = () => display.page.$$eval('#tiles .tile.talking', (els) => els.map((el) => el.dataset.stream));
    const levels = async () => (await (await fetch(`${origin}/client/levels`, { cache: 'no-store' })).json()).levels;
    const setMuted = async (p, who, muted) => {
      if ((await p.page.getAttribute('#mute-audio', 'aria-pressed')) !== String(muted)) await p.page.click('#mute-audio');
      assert.equal(await p.page.getAttribute('#mute-audio', 'aria-pressed'), String(muted), `${who}'s mute button`);
    };
    const byStream = { [annStream]: ANN, [borisStream]: BORIS };
    const show = (ls) => ls.map((l) => `${byStream[l.stream] ?? l.stream}=${l.level.toFixed(3)}${l.talking ? ' talking' : ''}`).join(', ');
    const step = async (what, annMuted, borisMuted, expected) => {
      await setMuted(ann, ANN, annMuted);
      await setMuted(boris, BORIS, borisMuted);
      const start = Date.now();
      const seen = [];
      await until(`display: ${what}`, async () => {
        seen.push(show(await levels()));
        return JSON.stringify(await highlighted()) === JSON.stringify(expected);
      }, TALKING_STEP_MS);
      const took = Date.now() - start;
      await sleep(1_000); // and it stays so
      assert.deepEqual(await highlighted(), expected, `${what}: not steady`);
      const now = await levels();
      t.diagnostic(`${what}: highlighted after ${took} ms; levels then [${seen.at(-1)}], 1 s later [${show(now)}]`);
      assert.deepEqual(now.filter((l) => l.talking).map((l) => l.stream), expected, `${what}: /client/levels ${JSON.stringify(now)}`);
      return now;
    };
    await step('ann talking', false, true, [annStream]);
    await step('Борис talking instead', true, false, [borisStream]);
    await step('nobody talking', true, true, []);
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
  const ann = await open(ANN, '/', { talker: true });
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
    server = await e2e.startHuddle({ config, env: alsaEnv, startTimeout: 20_000 });
    assert.equal(`http://${server.addr}`, origin, 'the same address again');
    await until('ann: back at the join form', async () => ann.page.isVisible('#join-form'));
    await annJoins();
    await annShown();
    for (const p of [display, ann]) assert.deepEqual(p.pageErrors, [], `${p.label}: uncaught errors`);
  } finally {
    await diag.closeAll();
  }
});
