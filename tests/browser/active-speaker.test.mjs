// The active speaker in real browsers (issue 15, item 3). Two headless Chromium instances: one
// whose fake microphone is a loud sine (--use-file-for-fake-audio-capture, a WAV at 0.5 of full
// scale), one whose fake microphone is silence (the same WAV at amplitude 0). Chromium offers the
// RFC 6464 audio-level extension; Huddle negotiates it, reads each packet's level, and tells the
// room who the dominant speaker is (the ACTIVE_SPEAKER room event). Chromium's own audio
// processing stays on, as the web app asks for it.
//
// 1. Huddle's web app (served by Huddle): "listener" (silent) joins a room, then "talker" (loud);
//    the listener's page highlights and focuses the talker's tile, not its own; pinning its own
//    tile moves the focus there while the highlight stays on the talker. The room display
//    (/display?room=) highlights the talker's tile too.
// 2. An unmodified Flashphoner SDK page (media-page.html, flashphoner-room-api.js) in the silent
//    browser joins the talker's room: it receives ACTIVE_SPEAKER right after STATE (checked in its
//    WebSocket frames), ignores it, and keeps working: it publishes, plays the talker and hears it.
// 3. Firefox ESR (when installed, with puppeteer-core) publishing through the SDK page with its
//    fake microphone (a tone) negotiates the extension too: the silent web-app listener highlights
//    it.
//
// Run from the repository root:   node --test tests/browser/active-speaker.test.mjs
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_SERVER_LOG=1, HUDDLE_E2E_FRAMES=1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  HERE, BrowserPage, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, isForeign, sdkPageRoutes, sineWav, waitFor,
} from './harness.mjs';

const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
// As in firefox.test.mjs: fake devices without a prompt, loopback ICE, nothing beyond 127.0.0.1.
const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  'media.peerconnection.ice.loopback': true,
  'permissions.default.camera': 1,
  'permissions.default.microphone': 1,
  'media.gmp-manager.updateEnabled': false,
  'media.gmp-gmpopenh264.autoupdate': false,
  'network.proxy.type': 1,
  'network.proxy.http': '127.0.0.1',
  'network.proxy.http_port': 9,
  'network.proxy.share_proxy_settings': true,
  'network.proxy.allow_hijacking_localhost': false,
  'network.proxy.no_proxies_on': '127.0.0.1, localhost',
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
  'network.trr.mode': 5,
};

const STEP_TIMEOUT_MS = 15_000;
const TEST_TIMEOUT_MS = 60_000;
const FILE_WATCHDOG_MS = 170_000;
// The highlight must follow the audio quickly: the server decides within a second of loud
// packets; the page has its own start-up (publish, ICE, DTLS) before the first packet.
const HIGHLIGHT_TIMEOUT_MS = 10_000;
const ENERGY = 0.001;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'active-speaker-e2e' });
const { diag } = e2e;
let server;
let origin;
let sdkStatic;
let loud;
let silent;

const until = (what, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what, timeout, interval: 150, diagnostics: () => diag.text() });

before(async () => {
  const dir = await e2e.makeTmpDir('huddle-active-speaker-e2e-');
  assertChromiumInstalled();
  assertSdkBundleInstalled();
  const loudWav = path.join(dir, 'loud.wav');
  const silentWav = path.join(dir, 'silent.wav');
  await fsp.writeFile(loudWav, sineWav(440, 0.5, 2));
  await fsp.writeFile(silentWav, sineWav(440, 0, 2));
  server = await e2e.startHuddle({ config: huddleConfig() });
  origin = `http://${server.addr}`;
  sdkStatic = await e2e.startStaticServer(sdkPageRoutes(path.join(HERE, 'media-page.html')));
  loud = await e2e.launchChromium({ extraArgs: [`--use-file-for-fake-audio-capture=${loudWav}`], timeout: 15_000 });
  silent = await e2e.launchChromium({ extraArgs: [`--use-file-for-fake-audio-capture=${silentWav}`], timeout: 15_000 });
}, { timeout: 50_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 25_000 });

// Small video: two or three Chromium participants share two cores.
function smallVideo() {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } });
}

async function openApp(browser, label, urlPath) {
  const p = await BrowserPage.openChromium(browser, label, {
    viewport: { width: 1000, height: 700 }, initScript: smallVideo, diag, stepTimeout: STEP_TIMEOUT_MS,
    frameLimit: 400, skipFrames: /"message":"(ping|pong)"/,
  });
  await p.page.goto(`${origin}${urlPath}`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  return p;
}

async function joinApp(p, login, room) {
  await p.page.fill('#login', login);
  await p.page.fill('#room', room);
  await p.page.click('#join');
  await until(`${p.label} publishing`, () => p.page.evaluate(
    () => window.__huddle.streams().some((s) => s.published && s.status === 'PUBLISHING')));
}

// Every camera tile of the page: login, local, speaking, focused, pinned.
const tilesOf = (p) => p.page.evaluate(() => [...document.querySelectorAll('#tiles .tile')].map((el) => ({
  login: el.dataset.login, local: el.classList.contains('local'), speaking: el.dataset.speaking,
  focused: el.dataset.focused, pinned: el.dataset.pinned, outline: getComputedStyle(el).outlineStyle,
})));

const framesWith = (p, needle) => p.frames.filter((f) => f.includes('←') && f.includes(needle));

test('web app and display: the loud participant\'s tile is highlighted and focused', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const room = 'speaker-web';
  await diag.withPages([
    () => openApp(loud, 'talker', '/'), () => openApp(silent, 'listener', '/'),
  ], async (talker, listener) => {
    // The listener is there first: nobody is highlighted until the talker comes and talks.
    await joinApp(listener, 'listener', room);
    let tiles = await tilesOf(listener);
    assert.ok(tiles.every((x) => x.speaking === 'false' && x.focused === 'false'), JSON.stringify(tiles));
    await joinApp(talker, 'talker', room);
    const published = Date.now();
    await until('the listener highlights the talker', async () => {
      tiles = await tilesOf(listener);
      return tiles.some((x) => x.login === 'talker' && x.speaking === 'true');
    }, HIGHLIGHT_TIMEOUT_MS);
    t.diagnostic(`listener highlighted the talker ${Date.now() - published} ms after the talker was publishing: ${JSON.stringify(tiles)}`);
    const remote = tiles.find((x) => x.login === 'talker');
    const own = tiles.find((x) => x.local);
    assert.equal(remote.focused, 'true', JSON.stringify(tiles));
    assert.equal(remote.outline, 'solid', 'the highlight is visible');
    assert.equal(own.speaking, 'false', `the silent one is not the speaker: ${JSON.stringify(tiles)}`);
    assert.equal(own.focused, 'false');
    const speakerFrames = framesWith(listener, '"ACTIVE_SPEAKER"');
    assert.ok(speakerFrames.length >= 1 && speakerFrames.length <= 2,
      `one ACTIVE_SPEAKER (two if the listener heard itself first): ${speakerFrames.join('\n')}`);
    assert.ok(speakerFrames.every((f) => f.includes('"login":"talker"')), speakerFrames.join('\n'));

    // Pinned, a tile keeps the focus; the highlight still follows the speaker.
    await listener.page.click('#tiles .tile.local .pin');
    tiles = await tilesOf(listener);
    assert.deepEqual(tiles.map((x) => [x.login, x.local, x.speaking, x.focused, x.pinned]).sort(), [
      ['listener', true, 'false', 'true', 'true'],
      ['talker', false, 'true', 'false', 'false'],
    ]);
    await listener.page.click('#tiles .tile.local .pin');
    tiles = await tilesOf(listener);
    assert.equal(tiles.find((x) => x.login === 'talker').focused, 'true', JSON.stringify(tiles));
    // Two tiles share the row; from three on, the focused one is large and first (CSS). A third
    // tile is stood in by an empty figure for the layout check only.
    const layout = () => listener.page.evaluate(() => {
      const s = getComputedStyle(document.querySelector('#tiles .tile[data-login="talker"]'));
      return { column: s.gridColumnStart, order: s.order };
    });
    assert.deepEqual(await layout(), { column: 'auto', order: '0' });
    await listener.page.evaluate(() => document.getElementById('tiles').append(Object.assign(document.createElement('figure'), { className: 'tile' })));
    assert.deepEqual(await layout(), { column: '1', order: '-1' });
    await listener.page.evaluate(() => document.querySelector('#tiles > figure.tile:not([data-login])').remove());

    // The room display of the room highlights the talker too (a viewer joining later hears the
    // current speaker right after its STATE).
    const display = await openApp(silent, 'display', `/display?room=${encodeURIComponent(room)}`);
    try {
      let shown;
      await until('the display highlights the talker', async () => {
        shown = await display.page.evaluate(() => [...document.querySelectorAll('#tiles .tile')]
          .map((el) => ({ login: el.dataset.login, speaker: el.dataset.speaker })));
        return shown.some((x) => x.login === 'talker' && x.speaker === 'true');
      }, HIGHLIGHT_TIMEOUT_MS);
      assert.ok(shown.every((x) => x.login === 'talker' || x.speaker === 'false'), JSON.stringify(shown));
      assertPageClean(display);
    } finally {
      await display.close();
    }
    for (const p of [talker, listener]) assertPageClean(p);
  });
});

test('an unmodified Flashphoner SDK page ignores ACTIVE_SPEAKER and keeps working', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const room = 'speaker-sdk';
  await diag.withPages([
    () => openApp(loud, 'talker', '/'),
    () => SdkPage.openChromium(silent, 'sdk', {
      origin: sdkStatic.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
      viewport: { width: 700, height: 500 }, frameLimit: 600, skipFrames: /"message":"(ping|pong)"/,
    }),
  ], async (talker, sdk) => {
    await joinApp(talker, 'talker', room);
    // The talker is the room's speaker before the SDK page comes in.
    await until('the talker hears itself named', async () => framesWith(talker, '"ACTIVE_SPEAKER"').length > 0,
      HIGHLIGHT_TIMEOUT_MS);
    await sdk.call('connect', `ws://${server.addr}/`, 'sdk');
    await sdk.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await sdk.call('join', room, {});
    const state = await sdk.waitFor('STATE', (e) => e.type === 'STATE');
    assert.deepEqual(state.participants, ['talker'], JSON.stringify(state));
    await until('ACTIVE_SPEAKER reaches the SDK page', async () => framesWith(sdk, '"ACTIVE_SPEAKER"').length > 0);
    const frames = sdk.frames.filter((f) => f.includes('←') && /"name":"(STATE|ACTIVE_SPEAKER)"/.test(f));
    assert.match(frames[0] ?? '', /"name":"STATE"/, `STATE comes first:\n${frames.join('\n')}`);
    assert.match(frames[1] ?? '', /"name":"ACTIVE_SPEAKER"/, frames.join('\n'));
    assert.match(frames[1], /"info":\{"login":"talker","name":"speaker-sdk-talker-/, frames[1]);

    // It keeps working: its own publish goes up, it plays the talker and hears it.
    const pub = await sdk.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(pub.status, 'PUBLISHING', JSON.stringify(pub));
    const playing = await sdk.waitFor('PLAYING talker',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'talker' && e.status !== 'PENDING');
    assert.equal(playing.status, 'PLAYING', JSON.stringify(playing));
    const heard = await sdk.pollUntil('the SDK page hearing the talker', 'playerStats', ['talker'],
      (s) => s?.audio?.totalAudioEnergy > ENERGY);
    t.diagnostic(`sdk ← talker: ${JSON.stringify(heard.audio)}`);
    // And the room still works both ways: the talker's page shows the SDK page's stream.
    await until('the talker plays the SDK page', () => talker.page.evaluate(
      () => window.__huddle.streams().some((s) => !s.published && s.name.includes('-sdk-') && s.status === 'PLAYING')));
    const evs = await sdk.events();
    const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
      ((e.type === 'PLAY_STATUS' || e.type === 'PUBLISH_STATUS') && e.status === 'FAILED'));
    assert.deepEqual(bad, [], 'no failure in the SDK page');
    for (const p of [talker, sdk]) assertPageClean(p);
  });
});

test('a Firefox publisher negotiates the audio levels and becomes the active speaker', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  let puppeteer;
  try {
    puppeteer = (await import('puppeteer-core')).default;
  } catch (e) {
    return t.skip(`puppeteer-core is not installed in tests/browser: ${e.message}`);
  }
  if (!fs.existsSync(FIREFOX)) return t.skip(`Firefox missing at ${FIREFOX}`);
  const firefox = await puppeteer.launch({
    browser: 'firefox', executablePath: FIREFOX, headless: true, timeout: 30_000,
    userDataDir: path.join(e2e.tmpDir, 'firefox-profile'), extraPrefsFirefox: FIREFOX_PREFS,
  });
  e2e.addBrowser(firefox, { timeout: 8_000, what: 'firefox close' });
  const local = ['data:', 'blob:', 'about:', 'chrome:', 'moz-extension:', 'resource:'];
  const room = 'speaker-fox';
  await diag.withPages([
    () => openApp(silent, 'listener', '/'),
    () => SdkPage.openFirefox(firefox, 'fox', {
      origin: sdkStatic.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS, frameLimit: 600,
      badRequest: (u) => isForeign(u, local), badSocket: (u) => isForeign(u, local),
    }),
  ], async (listener, fox) => {
    await joinApp(listener, 'listener', room);
    await fox.call('connect', `ws://${server.addr}/`, 'fox');
    await fox.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await fox.call('join', room, { constraints: { audio: true, video: false } });
    const pub = await fox.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(pub.status, 'PUBLISHING', JSON.stringify(pub));
    // The publish's peer connection (a closed one, e.g. a play refused for want of H.264 in this
    // Firefox, throws on its descriptions).
    const [offer, answer] = await fox.page.evaluate(() => {
      for (const pc of window.__pcs) {
        try {
          const local = pc.localDescription?.sdp ?? '';
          if (/a=sendonly/.test(local)) return [local, pc.remoteDescription?.sdp ?? ''];
        } catch { /* closed */ }
      }
      return ['', ''];
    });
    assert.match(offer, /a=extmap:\d+(\/\w+)? urn:ietf:params:rtp-hdrext:ssrc-audio-level/, `Firefox offers the extension:\n${offer}`);
    assert.match(answer, /a=extmap:\d+ urn:ietf:params:rtp-hdrext:ssrc-audio-level/, `the answer accepts it:\n${answer}`);
    let seen = [];
    await until('the listener names Firefox the active speaker', async () => {
      seen = framesWith(listener, '"ACTIVE_SPEAKER"');
      return seen.some((f) => f.includes('"login":"fox"'));
    }, HIGHLIGHT_TIMEOUT_MS);
    t.diagnostic(`listener: ${seen.join('\n')}`);
    await until('the listener highlights the Firefox tile', async () =>
      (await tilesOf(listener)).some((x) => x.login === 'fox' && x.speaking === 'true'));
    for (const h of [listener, fox]) assertPageClean(h);
  });
});
