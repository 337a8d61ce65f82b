// Cross-browser end-to-end test: headless Debian Firefox ESR (driven over WebDriver BiDi by
// puppeteer-core) and headless Debian Chromium (playwright-core) join one Huddle room through the
// unmodified Flashphoner Web SDK (@flashphoner/websdk 2.0.276, flashphoner-room-api.js) on
// media-page.html, publish fake camera + microphone and decode each other's stream.
//
// Firefox here has no OpenH264 plugin (it is downloaded from Cisco at runtime, which is disabled /
// impossible offline), so Firefox offers and decodes only VP8/VP9/AV1 — no H.264.
//
// Run from the repository root:   node --test tests/browser/firefox.test.mjs
// Needs: apt-get install -y firefox-esr chromium;  puppeteer-core (24.x, Node >= 18) in tests/browser.
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      FIREFOX (default /usr/bin/firefox-esr), HUDDLE_E2E_SERVER_LOG=1 for the server log,
//      HUDDLE_E2E_FRAMES=1 for Chromium's WebSocket frames,
//      HUDDLE_E2E_SCREENSHOT_DIR (default: OS temp dir),
//      HUDDLE_E2E_REQUIRE_FIREFOX=1 to fail (instead of skip) when Firefox / puppeteer-core is missing.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  HERE, SCREENSHOT_DIR, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, isForeign, sdkPageRoutes, sleep, waitForMedia, withTimeout,
} from './harness.mjs';

const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
const PAGE_HTML = path.join(HERE, 'media-page.html');
const REQUIRE_FIREFOX = process.env.HUDDLE_E2E_REQUIRE_FIREFOX === '1';

const STEP_TIMEOUT_MS = 15_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const TEST_TIMEOUT_MS = 55_000;
const FILE_WATCHDOG_MS = 150_000;

// Firefox prefs: fake devices without a prompt, audible autoplay, and no traffic beyond 127.0.0.1
// (every non-local HTTP(S)/WS request goes to a dead proxy on 127.0.0.1:9; puppeteer's own
// automation profile already disables updates, telemetry, safebrowsing, remote settings...).
const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  // Huddle advertises only 127.0.0.1 here. Firefox gathers a loopback candidate (and so can pair
  // with 127.0.0.1) only with ice.loopback AND when the page counts as "actively capturing or has a
  // camera/mic permission" — fake streams with permission.disabled do not count, which leaves ICE in
  // default-address-only mode (one mDNS host candidate per default route, ICE fails). Granting the
  // permission by default fixes that.
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
  'network.dns.disablePrefetch': true,
  'network.predictor.enabled': false,
  'network.trr.mode': 5,
  'dom.push.connection.enabled': false,
  'browser.safebrowsing.provider.mozilla.updateURL': '',
  'extensions.blocklist.enabled': false,
  'toolkit.telemetry.enabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
};

// ---------------------------------------------------------------------------------------------
// Shared state

// Temp dir, server, static server, both browsers and pages (diag) of this file, under one watchdog.
const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS });
const { diag } = e2e;
let server;
let staticServer;
let chromiumBrowser;
let firefoxBrowser;
let skipReason = null;

// ---------------------------------------------------------------------------------------------
// Helpers

const LOCAL_PROTOCOLS = ['data:', 'blob:', 'about:', 'chrome:', 'moz-extension:', 'resource:'];

// One page = one RoomApi session, in either browser.
const pageOptions = () => ({
  origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
  viewport: { width: 700, height: 500 }, frameLimit: 600,
  badRequest: (url) => isForeign(url, LOCAL_PROTOCOLS), badSocket: (url) => isForeign(url, LOCAL_PROTOCOLS),
});
const openChromium = (label) => SdkPage.openChromium(chromiumBrowser, label, pageOptions());
const openFirefox = (label) => SdkPage.openFirefox(firefoxBrowser, label, pageOptions());

const withHarnesses = (openers, body) => diag.withPages(openers, body);

function assertClean(h) {
  assertPageClean(h);
}

async function connectAndJoin(h, login, room, publishOptions) {
  await h.call('connect', `ws://${server.addr}/`, login);
  await h.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
  await h.call('join', room, publishOptions);
  return h.waitFor('STATE', (e) => e.type === 'STATE');
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  let puppeteer;
  try {
    puppeteer = (await import('puppeteer-core')).default;
  } catch (e) {
    skipReason = `puppeteer-core is not installed in tests/browser (npm ci): ${e.message}`;
  }
  if (!skipReason && !fs.existsSync(FIREFOX)) skipReason = `Firefox missing at ${FIREFOX} (apt-get install -y firefox-esr)`;
  if (skipReason) {
    if (REQUIRE_FIREFOX) throw new Error(skipReason);
    return;
  }
  const tmpDir = await e2e.makeTmpDir('huddle-firefox-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  [chromiumBrowser, firefoxBrowser] = await Promise.all([
    e2e.launchChromium({ timeout: 20_000 }, { what: 'chromium close' }),
    puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX,
      headless: true,
      timeout: 30_000,
      extraPrefsFirefox: FIREFOX_PREFS,
      userDataDir: path.join(tmpDir, 'firefox-profile'),
    }).then((b) => e2e.addBrowser(b, { timeout: 8_000, what: 'firefox close' })),
  ]);
}, { timeout: 45_000 });

// Pages, browsers (Firefox killed if it does not close), static server; SIGTERM must stop the
// server with exit code 0, without a panic.
after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 25_000 });

// ---------------------------------------------------------------------------------------------
// Tests

test('Firefox ESR and Chromium in one Flashphoner room decode each other (VP8, Opus)', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (skipReason) return t.skip(skipReason);
  const room = 'firefox-chromium';
  await withHarnesses([() => openFirefox('fox'), () => openChromium('chrome')], async (fox, chrome) => {
    const ua = await fox.call('eval', 'navigator.userAgent');
    assert.match(ua, /Firefox\//, 'the fox page really runs in Firefox');

    // Firefox joins first and publishes (its offer has no H.264 → server picks VP8).
    const foxState = await connectAndJoin(fox, 'fox', room, {});
    assert.deepEqual(foxState.participants, []);
    const foxPub = await fox.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(foxPub.status, 'PUBLISHING', `Firefox publish: ${JSON.stringify(foxPub)}`);

    // Chromium joins, plays fox's stream from STATE, publishes with H.264 stripped so Firefox can play it.
    const chromeState = await connectAndJoin(chrome, 'chrome', room, { stripCodecs: 'H264' });
    assert.deepEqual(chromeState.participants, ['fox']);
    assert.deepEqual(chromeState.streams, [[foxPub.name]]);
    const chromePlay = await chrome.waitFor('PLAYING fox', (e) => e.type === 'PLAY_STATUS' && e.status !== 'PENDING');
    assert.equal(chromePlay.status, 'PLAYING', JSON.stringify(chromePlay));
    const chromePub = await chrome.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(chromePub.status, 'PUBLISHING', JSON.stringify(chromePub));

    // Firefox gets PUBLISHED(chrome) and plays it.
    await fox.waitFor('PUBLISHED chrome', (e) => e.type === 'PUBLISHED' && e.login === 'chrome');
    const foxPlay = await fox.waitFor('PLAYING chrome', (e) => e.type === 'PLAY_STATUS' && e.status !== 'PENDING');
    assert.equal(foxPlay.status, 'PLAYING', JSON.stringify(foxPlay));

    const [chromeSeesFox, foxSeesChrome] = await Promise.all([waitForMedia(chrome, 'fox'), waitForMedia(fox, 'chrome')]);
    const [foxOut, chromeOut] = await Promise.all([fox.call('publisherStats'), chrome.call('publisherStats')]);
    t.diagnostic(`media stats: ${JSON.stringify({
      chromeSeesFox: { first: chromeSeesFox.first.video.framesDecoded, last: chromeSeesFox.last },
      foxSeesChrome: { first: foxSeesChrome.first.video.framesDecoded, last: foxSeesChrome.last },
      foxPublisher: foxOut, chromePublisher: chromeOut,
    })}`);
    for (const [who, s] of [['chrome←fox', chromeSeesFox.last], ['fox←chrome', foxSeesChrome.last]]) {
      assert.equal(s.video.codec?.mimeType?.toLowerCase(), 'video/vp8', `${who}: inbound video codec`);
      assert.equal(s.audio.codec?.mimeType?.toLowerCase(), 'audio/opus', `${who}: inbound audio codec`);
      assert.ok(s.element.videoWidth > 0, `${who}: <video> has dimensions`);
    }

    // Both rendered remote videos are not black; save a screenshot of each.
    for (const [viewer, pub] of [[chrome, 'fox'], [fox, 'chrome']]) {
      const sample = await viewer.call('sampleRemoteVideo', pub, 600);
      t.diagnostic(`${viewer.label}'s remote video (${pub}) sample: ${JSON.stringify(sample)}`);
      assert.ok(sample.meanLuma > 10 && sample.nonBlackFraction > 0.3, `${viewer.label}: remote video looks black: ${JSON.stringify(sample)}`);
      const id = await viewer.call('remoteVideoId', pub);
      const shot = path.join(SCREENSHOT_DIR, `huddle-${viewer.browserName}-sees-${pub}.png`);
      const el = viewer.browserName === 'chromium'
        ? viewer.page.locator(`video[id="${id}"]`)
        : await viewer.page.$(`video[id="${id}"]`);
      await withTimeout(el.screenshot({ path: shot }), STEP_TIMEOUT_MS, 'screenshot');
      t.diagnostic(`screenshot: ${shot}`);
    }

    // Firefox unpublishes: Chromium's player → STOPPED, the stream leaves Chromium's room view.
    const chromeMark = (await chrome.events()).length;
    await fox.call('unpublish');
    const unpub = await fox.waitFor('own stream UNPUBLISHED', (e) => e.type === 'PUBLISH_STATUS' && e.status !== 'PUBLISHING');
    assert.equal(unpub.status, 'UNPUBLISHED');
    const stopped = await chrome.waitFor('player of fox ended',
      (e) => e.type === 'PLAY_STATUS' && ['STOPPED', 'FAILED'].includes(e.status), { from: chromeMark });
    assert.equal(stopped.status, 'STOPPED');
    await chrome.pollUntil('fox\'s stream to disappear', 'participantStreams', ['fox'], (s) => Array.isArray(s) && s.length === 0);

    // Both leave; Chromium sees LEFT(fox).
    const chromeMark2 = (await chrome.events()).length;
    assert.equal(await fox.call('leave'), 'resolved');
    const left = await chrome.waitFor('LEFT fox', (e) => e.type === 'LEFT', { from: chromeMark2 });
    assert.equal(left.login, 'fox');
    assert.equal(await chrome.call('leave'), 'resolved');

    await sleep(300);
    for (const h of [fox, chrome]) {
      const evs = await h.events();
      const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
        ((e.type === 'PLAY_STATUS' || e.type === 'PUBLISH_STATUS') && e.status === 'FAILED'));
      assert.deepEqual(bad, [], `${h.label}: unexpected failure events`);
      assertClean(h);
    }
  });
});

// Chromium's default offer has H.264 and VP8 and Huddle prefers H.264 for the publish; this
// Firefox cannot decode H.264 (no OpenH264 plugin), so its playback of the Chromium stream cannot
// work without transcoding. The server must end it promptly and cleanly (FAILED "No common codecs",
// §8.8 step 2) rather than hang, and everything else in the room keeps working. If the server ever
// learns to pick a codec every room member can decode, PLAYING with decoded video is accepted too.
test('Chromium publishes H.264, Firefox without OpenH264 plays it: bounded, clean outcome', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  if (skipReason) return t.skip(skipReason);
  const room = 'firefox-chromium-h264';
  await withHarnesses([() => openFirefox('fox'), () => openChromium('chrome')], async (fox, chrome) => {
    await connectAndJoin(fox, 'fox', room, {});
    const foxPub = await fox.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(foxPub.status, 'PUBLISHING', JSON.stringify(foxPub));

    await connectAndJoin(chrome, 'chrome', room, {});
    const chromePub = await chrome.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(chromePub.status, 'PUBLISHING', JSON.stringify(chromePub));
    const chromePlay = await chrome.waitFor('PLAYING fox', (e) => e.type === 'PLAY_STATUS' && e.status !== 'PENDING');
    assert.equal(chromePlay.status, 'PLAYING', JSON.stringify(chromePlay));

    const foxPlay = await fox.waitFor('terminal or PLAYING status for chrome\'s H.264 stream',
      (e) => e.type === 'PLAY_STATUS' && e.status !== 'PENDING', { timeout: 10_000 });
    t.diagnostic(`Firefox playing Chromium's H.264 publish: ${foxPlay.status} (${foxPlay.info})`);
    if (foxPlay.status === 'FAILED') {
      assert.equal(foxPlay.info, 'No common codecs', `FAILED must say why: ${JSON.stringify(foxPlay)}`);
    } else {
      assert.equal(foxPlay.status, 'PLAYING', JSON.stringify(foxPlay));
      const { last } = await waitForMedia(fox, 'chrome');
      t.diagnostic(`Firefox decodes chrome with ${last.video.codec?.mimeType}`);
    }

    // Chromium still decodes Firefox (VP8) regardless.
    const { last } = await waitForMedia(chrome, 'fox');
    assert.equal(last.video.codec?.mimeType, 'video/VP8');
    t.diagnostic(`chrome←fox: ${JSON.stringify(last.video)}`);

    const chromeMark = (await chrome.events()).length;
    assert.equal(await fox.call('leave'), 'resolved');
    const left = await chrome.waitFor('LEFT fox', (e) => e.type === 'LEFT', { from: chromeMark });
    assert.equal(left.login, 'fox');
    const stopped = await chrome.waitFor('player of fox ended', (e) => e.type === 'PLAY_STATUS' &&
      ['STOPPED', 'FAILED'].includes(e.status), { from: chromeMark });
    assert.equal(stopped.status, 'STOPPED');
    assert.equal(await chrome.call('leave'), 'resolved');
    for (const h of [fox, chrome]) {
      const evs = await h.events();
      const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
        (e.type === 'PUBLISH_STATUS' && e.status === 'FAILED'));
      assert.deepEqual(bad, [], `${h.label}: unexpected failure events`);
      assertClean(h);
    }
  });
});
