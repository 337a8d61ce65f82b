// A participant without a camera must be heard (issue 10, finding 13). Headless Debian Chromium
// with the fake microphone (a beep) publishes audio only and other participants play it:
//
// 1. Flashphoner SDK pages (unmodified flashphoner-room-api.js on media-page.html):
//    `room.publish({constraints: {audio: true, video: false}})`; the other page's player must
//    reach PLAYING and its remote audio must carry energy (inbound-rtp totalAudioEnergy grows) —
//    packets arriving is not enough: the SDK attaches `event.streams[0]` of every `ontrack` to
//    its <video>, so a video track announced for a stream that has none replaced the audio.
// 2. Huddle's web app (web/): a member whose browser has no camera joins with the microphone only
//    (the app's getUserMedia fallback) and another member hears it.
// 3. Firefox ESR (when installed, as in firefox.test.mjs) plays the audio-only SDK publisher.
//
// Run from the repository root:   node --test tests/browser/audio-only.test.mjs
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      FIREFOX (default /usr/bin/firefox-esr), HUDDLE_E2E_SERVER_LOG=1, HUDDLE_E2E_FRAMES=1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  HERE, REPO_ROOT, BrowserPage, E2eFile, SdkPage, MEDIA_PAGE_READY, CSS, HTML, JS, assertChromiumInstalled,
  assertPageClean, assertSdkBundleInstalled, huddleConfig, isForeign, sdkPageRoutes, startStaticServer, waitFor,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const WEB_DIR = path.join(REPO_ROOT, 'web');
const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';

const STEP_TIMEOUT_MS = 15_000;
const TEST_TIMEOUT_MS = 50_000;
const FILE_WATCHDOG_MS = 170_000;
// totalAudioEnergy (seconds × level²) a second of the fake microphone's beep reaches easily;
// silence, or audio that is received but never played out, stays at 0.
const ENERGY = 0.001;

const AUDIO_ONLY = { constraints: { audio: true, video: false } };

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'audio-only-e2e' });
const { diag } = e2e;
let server;
let sdkStatic;
let webStatic;
let browser;

before(async () => {
  await e2e.makeTmpDir('huddle-audio-only-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: huddleConfig() });
  sdkStatic = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  const web = {
    '/': ['index.html', HTML], '/app.js': ['app.js', JS], '/room-api.js': ['room-api.js', JS], '/style.css': ['style.css', CSS],
  };
  webStatic = await startStaticServer(Object.fromEntries(Object.entries(web)
    .map(([p, [file, type]]) => [p, { file: path.join(WEB_DIR, file), type }])));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(async () => {
  await webStatic?.close();
  await e2e.teardown({ stop: { timeout: 10_000 } });
}, { timeout: 25_000 });

const sdkPage = (label) => SdkPage.openChromium(browser, label, {
  origin: sdkStatic.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
  viewport: { width: 700, height: 500 }, frameLimit: 600,
});

async function connectAndJoin(h, login, room, publishOptions) {
  await h.call('connect', `ws://${server.addr}/`, login);
  await h.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
  await h.call('join', room, publishOptions);
  return h.waitFor('STATE', (e) => e.type === 'STATE');
}

// The viewer's player of `publisher` reaches PLAYING and its audio carries energy that keeps
// growing; returns the last playerStats.
async function expectHeard(viewer, publisher) {
  const playing = await viewer.waitFor(`PLAYING ${publisher}`,
    (e) => e.type === 'PLAY_STATUS' && e.login === publisher && e.status !== 'PENDING');
  assert.equal(playing.status, 'PLAYING', JSON.stringify(playing));
  const first = await viewer.pollUntil(`${viewer.label} hearing ${publisher} (totalAudioEnergy > ${ENERGY})`,
    'playerStats', [publisher], (s) => s?.audio?.totalAudioEnergy > ENERGY);
  const last = await viewer.pollUntil(`${viewer.label}: ${publisher}'s audio energy to keep growing`,
    'playerStats', [publisher], (s) => s?.audio?.totalAudioEnergy > first.audio.totalAudioEnergy + ENERGY, 8_000);
  assert.equal(last.audio.codec?.mimeType?.toLowerCase(), 'audio/opus', JSON.stringify(last));
  assert.equal(last.element.muted, false, `the SDK unmutes the player: ${JSON.stringify(last.element)}`);
  return last;
}

function assertNoFailures(h, evs) {
  const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
    ((e.type === 'PLAY_STATUS' || e.type === 'PUBLISH_STATUS') && e.status === 'FAILED'));
  assert.deepEqual(bad, [], `${h.label}: unexpected failure events`);
  assertPageClean(h);
}

test('Flashphoner SDK: an audio-only publisher is heard by a camera publisher\'s page, and hears it', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await diag.withPages([() => sdkPage('mic'), () => sdkPage('cam')], async (mic, cam) => {
    await connectAndJoin(mic, 'mic', 'audio-only', AUDIO_ONLY);
    const micPub = await mic.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(micPub.status, 'PUBLISHING', JSON.stringify(micPub));
    const offer = await mic.page.evaluate(() => window.__pcs.map((pc) => pc.localDescription?.sdp).filter(Boolean)[0]);
    assert.ok(offer && !/^m=video /m.test(offer), `the audio-only publish offers no video:\n${offer}`);

    // cam joins, plays mic from STATE and publishes camera + microphone; mic plays cam.
    const state = await connectAndJoin(cam, 'cam', 'audio-only', {});
    assert.deepEqual(state.streams, [[micPub.name]]);
    const camHearsMic = await expectHeard(cam, 'mic');
    t.diagnostic(`cam ← mic (audio only): ${JSON.stringify(camHearsMic)}`);
    assert.equal(camHearsMic.video, null, 'no video is received for an audio-only stream');
    assert.deepEqual(camHearsMic.element.tracks, ['audio:live'], 'the player\'s element holds the audio track alone');
    await mic.waitFor('PUBLISHED cam', (e) => e.type === 'PUBLISHED' && e.login === 'cam');
    const micHearsCam = await expectHeard(mic, 'cam');
    assert.ok(micHearsCam.video?.framesDecoded > 0, `the audio-only member still sees cam: ${JSON.stringify(micHearsCam)}`);

    for (const h of [mic, cam]) assertNoFailures(h, await h.events());
  });
});

// ---------------------------------------------------------------------------------------------
// The web app: a member without a camera (getUserMedia with video refused as NotFoundError).

function webInit({ camera }) {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => (c.video && !camera
    ? Promise.reject(new DOMException('Requested device not found', 'NotFoundError'))
    : gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } }));
}

async function openWebApp(label, camera) {
  const query = `ws=${encodeURIComponent(`ws://${server.addr}/`)}&roomName=audio-only-web`;
  const p = await BrowserPage.openChromium(browser, label, {
    viewport: { width: 900, height: 600 }, initScript: webInit, initArg: { camera }, diag,
    stepTimeout: STEP_TIMEOUT_MS, frameLimit: 400, skipFrames: /"message":"(ping|pong)"/,
  });
  await p.page.goto(`${webStatic.origin}/?${query}`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  return p;
}

// Inbound audio of the web app's player of `login`'s stream, and its tile's <video>.
const webInbound = (p, login) => p.page.evaluate(async (who) => {
  const tile = [...document.querySelectorAll('#tiles .tile')].find((el) => el.dataset.login === who && !el.classList.contains('local'));
  const s = tile && window.__huddle.streams().find((x) => x.name === tile.dataset.stream && !x.published);
  if (!s) return null;
  const video = tile.querySelector('video');
  const out = {
    status: s.status, paused: video.paused, muted: video.muted, readyState: video.readyState,
    tracks: video.srcObject ? video.srcObject.getTracks().map((t) => `${t.kind}:${t.readyState}`) : [],
  };
  (await s.pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') out.audio = { packets: r.packetsReceived, totalAudioEnergy: r.totalAudioEnergy ?? 0 };
  });
  return out;
}, login);

test('web app: a member without a camera joins with the microphone and is heard', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await diag.withPages([() => openWebApp('web-mic', false), () => openWebApp('web-cam', true)], async (mic, cam) => {
    await mic.page.fill('#login', 'nocam');
    await mic.page.click('#join');
    await waitFor(() => mic.page.evaluate(() => window.__huddle.streams().some((s) => s.published && s.status === 'PUBLISHING')),
      { timeout: STEP_TIMEOUT_MS, what: 'nocam publishing', diagnostics: () => diag.text() });
    await cam.page.fill('#login', 'withcam');
    await cam.page.click('#join');
    let last;
    await waitFor(async () => {
      last = await webInbound(cam, 'nocam');
      return last?.audio?.totalAudioEnergy > ENERGY;
    }, {
      timeout: STEP_TIMEOUT_MS, what: 'withcam hearing nocam',
      message: () => `withcam does not hear nocam (the member without a camera): ${JSON.stringify(last)}\n${diag.text()}`,
    });
    t.diagnostic(`withcam ← nocam: ${JSON.stringify(last)}`);
    assert.equal(last.paused, false);
    for (const h of [mic, cam]) assertPageClean(h);
  });
});

// ---------------------------------------------------------------------------------------------
// Firefox ESR plays an audio-only Chromium publisher (skipped without Firefox / puppeteer-core).

test('Firefox ESR hears an audio-only Chromium publisher', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  let puppeteer;
  try {
    puppeteer = (await import('puppeteer-core')).default;
  } catch (e) {
    return t.skip(`puppeteer-core is not installed in tests/browser: ${e.message}`);
  }
  if (!fs.existsSync(FIREFOX)) return t.skip(`Firefox missing at ${FIREFOX}`);
  const firefox = await puppeteer.launch({
    browser: 'firefox', executablePath: FIREFOX, headless: true, timeout: 30_000,
    userDataDir: path.join(e2e.tmpDir, 'firefox-profile'),
    extraPrefsFirefox: {
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.autoplay.default': 0,
      'media.autoplay.blocking_policy': 0,
      'media.peerconnection.ice.loopback': true,
      'permissions.default.camera': 1,
      'permissions.default.microphone': 1,
      'media.gmp-manager.updateEnabled': false,
      'network.proxy.type': 1,
      'network.proxy.http': '127.0.0.1',
      'network.proxy.http_port': 9,
      'network.proxy.share_proxy_settings': true,
      'network.proxy.allow_hijacking_localhost': false,
      'network.proxy.no_proxies_on': '127.0.0.1, localhost',
      'network.captive-portal-service.enabled': false,
      'network.connectivity-service.enabled': false,
      'network.trr.mode': 5,
    },
  });
  e2e.addBrowser(firefox, { timeout: 8_000, what: 'firefox close' });
  const local = ['data:', 'blob:', 'about:', 'chrome:', 'moz-extension:', 'resource:'];
  const opts = {
    origin: sdkStatic.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS, frameLimit: 600,
    badRequest: (u) => isForeign(u, local), badSocket: (u) => isForeign(u, local),
  };
  await diag.withPages([() => sdkPage('mic'), () => SdkPage.openFirefox(firefox, 'fox', opts)], async (mic, fox) => {
    await connectAndJoin(mic, 'mic', 'audio-only-fox', AUDIO_ONLY);
    const micPub = await mic.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(micPub.status, 'PUBLISHING', JSON.stringify(micPub));
    // fox plays mic from STATE; it publishes audio only too (its fake camera is not needed).
    await connectAndJoin(fox, 'fox', 'audio-only-fox', AUDIO_ONLY);
    const foxHearsMic = await expectHeard(fox, 'mic');
    t.diagnostic(`fox ← mic (audio only): ${JSON.stringify(foxHearsMic)}`);
    for (const h of [mic, fox]) assertNoFailures(h, await h.events());
  });
});
