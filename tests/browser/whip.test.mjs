// End to end: WHIP and WHEP from Chromium with no SDK (whip-page.html: RTCPeerConnection + fetch,
// the offer POSTed once ICE gathering is done, as OBS and the WHIP/WHEP web players do), seen by
// the unmodified Flashphoner Web SDK (media-page.html): the WHIP publisher JOINs and PUBLISHes
// `<room>-<login>-<4 hex>`, the SDK page plays and decodes it (framesDecoded grows, 320x240); a
// WHEP page decodes the SDK page's own stream; DELETE ends both (the SDK page's play of the WHIP
// stream stops, both leave). GStreamer's whipsink/whipclientsink/whepsrc are not in Debian 12's
// GStreamer 1.22, so Chromium is the real client here. A second test does WHIP/WHEP over HTTPS
// (the device's self-signed certificate) with bearer tokens minted by `huddle token`, as OBS is set up.
//
// Run from the repository root:   node --test tests/browser/whip.test.mjs
// Env: HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES=1, HUDDLE_E2E_SERVER_LOG=1 (see harness.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  HERE, HTML, HUDDLE_BIN, BrowserPage, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, sdkPageRoutes, waitFor, waitForMedia, startHuddle,
} from './harness.mjs';

const SDK_PAGE = path.join(HERE, 'media-page.html');
const WHIP_PAGE = path.join(HERE, 'whip-page.html');
const ROOM = 'stage';
const LOGIN = 'obs';
const STEP_TIMEOUT_MS = 20_000;
const SERVER_START_TIMEOUT_MS = 30_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 120_000;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'whip-e2e' });
const { diag } = e2e;
let staticServer;
let browser;
let tlsBrowser; // accepts any certificate: the device's self-signed one

before(async () => {
  await e2e.makeTmpDir('huddle-whip-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  staticServer = await e2e.startStaticServer({
    ...sdkPageRoutes(SDK_PAGE),
    '/whip.html': { file: WHIP_PAGE, type: HTML },
  });
  browser = await e2e.launchChromium({ timeout: 15_000 });
  tlsBrowser = await e2e.launchChromium({ timeout: 15_000, extraArgs: ['--ignore-certificate-errors'] });
}, { timeout: 40_000 });

after(async () => {
  await e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } });
}, { timeout: 20_000 });

// whip-page.html in a context of its own (another origin than the server's: CORS).
async function openWhipPage(label, inBrowser = browser) {
  const h = await BrowserPage.openChromium(inBrowser, label, {
    diag, stepTimeout: STEP_TIMEOUT_MS, viewport: { width: 700, height: 500 },
  });
  await h.page.goto(`${staticServer.origin}/whip.html`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
  return h;
}

async function pollStats(h, fn, what, pred) {
  let last;
  let log = null;
  await waitFor(async () => {
    last = await h.call(fn);
    log = await h.page.evaluate(() => window.__log).catch(() => null);
    return pred(last);
  }, {
    timeout: STEP_TIMEOUT_MS,
    interval: 250,
    message: () => `${h.label}: timed out waiting for ${what}; last ${fn}(): ${JSON.stringify(last)}\n` +
      `log: ${JSON.stringify(log)}\n${diag.text()}`,
  });
  return last;
}

test('a WHIP publisher is seen and decoded by an SDK page, a WHEP player decodes a room stream, DELETE ends both', { timeout: 100_000 }, async (t) => {
  const server = await startHuddle({ dir: e2e.tmpDir, config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  try {
    const openSdk = () => SdkPage.openChromium(browser, 'alice', {
      origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
      viewport: { width: 700, height: 500 }, frameLimit: 600,
    });
    await diag.withPages([openSdk, () => openWhipPage('obs'), () => openWhipPage('viewer')], async (alice, obs, viewer) => {
      await alice.call('connect', `ws://${server.addr}/`, alice.label);
      await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
      await alice.call('join', ROOM, {});
      await alice.waitFor('STATE', (e) => e.type === 'STATE');
      const own = await alice.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
      assert.equal(own.status, 'PUBLISHING', JSON.stringify(own));

      // WHIP: the page publishes its fake camera and microphone.
      const whip = await obs.call('whipPublish', `http://${server.addr}/whip/${ROOM}/${LOGIN}`);
      t.diagnostic(`WHIP POST: ${JSON.stringify(whip)}`);
      assert.equal(whip.status, 201, JSON.stringify(whip));
      assert.equal(whip.contentType, 'application/sdp');
      assert.match(whip.location, new RegExp(`^/whip/${ROOM}/${LOGIN}/[0-9a-f]{32}$`));
      assert.ok(whip.candidates > 0, 'the answer carries its candidates');
      await pollStats(obs, 'outboundStats', 'the WHIP peer sending', (s) => s?.state === 'connected' && s.video?.framesEncoded > 10);

      await alice.waitFor('the WHIP publisher JOINED', (e) => e.type === 'JOINED' && e.login === LOGIN);
      const published = await alice.waitFor('the WHIP publisher PUBLISHED', (e) => e.type === 'PUBLISHED' && e.login === LOGIN);
      assert.equal(published.streams.length, 1);
      assert.match(published.streams[0], new RegExp(`^${ROOM}-${LOGIN}-[0-9a-f]{4}$`), 'named as the SDK names streams');
      const { last } = await waitForMedia(alice, LOGIN);
      t.diagnostic(`WHIP stream in the SDK page: ${JSON.stringify({ video: last.video, audio: last.audio })}`);
      assert.equal(last.video.frameWidth, 320);
      assert.equal(last.video.frameHeight, 240);

      // WHEP: another page plays alice's own (SDK-published) stream.
      const whep = await viewer.call('whepPlay', `http://${server.addr}/whep/${ROOM}/${encodeURIComponent(own.name)}`);
      t.diagnostic(`WHEP POST: ${JSON.stringify(whep)}`);
      assert.equal(whep.status, 201, JSON.stringify(whep));
      assert.ok(whep.location.startsWith(`/whep/${ROOM}/`), whep.location);
      const first = await pollStats(viewer, 'inboundStats', 'WHEP video decoding', (s) => s?.video?.framesDecoded > 0 && s.audio?.packetsReceived > 0);
      const grown = await pollStats(viewer, 'inboundStats', 'WHEP frames growing', (s) => s?.video?.framesDecoded >= first.video.framesDecoded + 10);
      t.diagnostic(`WHEP player: ${JSON.stringify(grown)}`);
      assert.equal(grown.video.frameWidth, 320);
      const whepJoined = await alice.waitFor('the WHEP player JOINED', (e) => e.type === 'JOINED' && /^WHEP player /.test(e.login));

      // DELETE ends the WHIP stream: the SDK page's play of it stops, the publisher leaves.
      assert.equal(await obs.call('stop'), 200);
      const stopped = await alice.waitFor('the play of the WHIP stream STOPPED',
        (e) => e.type === 'PLAY_STATUS' && e.login === LOGIN && e.status === 'STOPPED');
      assert.equal(stopped.info, 'Stopped by publisher stop');
      await alice.waitFor('the WHIP publisher LEFT', (e) => e.type === 'LEFT' && e.login === LOGIN);
      assert.equal(await alice.call('participantStreams', LOGIN), null);
      // The WHEP player's DELETE: it leaves; alice's stream goes on.
      assert.equal(await viewer.call('stop'), 200);
      await alice.waitFor('the WHEP player LEFT', (e) => e.type === 'LEFT' && e.login === whepJoined.login);
      const still = await alice.call('publisherStats');
      assert.ok(!still.error, JSON.stringify(still));
      assertPageClean(alice, { errorsHint: `\n${diag.text()}` });
      assertPageClean(obs);
      assertPageClean(viewer);
      assert.equal(await alice.call('leave'), 'resolved');
    });
  } finally {
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
  assert.ok(server.stderrLines.some((l) => l.includes(`whip publisher "${LOGIN}" in room "${ROOM}"`) && l.includes('joined as session')),
    'the log names the WHIP publisher');
});

// `huddle token` with the server's config: a JWT for `login` in `room`.
function mint(configPath, login, room, { noPublish = false } = {}) {
  const args = ['--config', configPath, 'token', '--login', login, '--room', room, '--ttl', '10m'];
  if (noPublish) args.push('--no-publish');
  return new Promise((resolve, reject) => {
    execFile(HUDDLE_BIN, args, { timeout: 8_000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`huddle token failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

test('over HTTPS with bearer tokens (as OBS is set up): WHIP publishes, WHEP decodes, a missing token is 401', { timeout: 100_000 }, async (t) => {
  const dir = path.join(e2e.tmpDir, 'tls-run');
  await fsp.mkdir(dir, { recursive: true });
  const secret = crypto.randomBytes(32).toString('base64url');
  const server = await startHuddle({
    dir,
    tls: true,
    startTimeout: SERVER_START_TIMEOUT_MS,
    config: huddleConfig({
      http: `tls = true\ntls_listen = "127.0.0.1:0"\ntls_dir = ${JSON.stringify(path.join(dir, 'tls'))}\n`,
      extra: `[auth]\nmode = "token"\nsecret = "${secret}"\n`,
    }),
  });
  diag.server = server;
  const tokens = [];
  try {
    const obsToken = await mint(server.configPath, LOGIN, ROOM);
    const viewerToken = await mint(server.configPath, 'carol', ROOM, { noPublish: true });
    tokens.push(obsToken, viewerToken);
    await diag.withPages([() => openWhipPage('obs-tls', tlsBrowser), () => openWhipPage('viewer-tls', tlsBrowser)], async (obs, viewer) => {
      const base = `https://${server.addr}`;
      const refused = await obs.call('whipPublish', `${base}/whip/${ROOM}/${LOGIN}`);
      assert.equal(refused.status, 401, JSON.stringify(refused));
      assert.match(refused.body, /token is required/);
      const whip = await obs.call('whipPublish', `${base}/whip/${ROOM}/${LOGIN}`, obsToken);
      t.diagnostic(`WHIP POST over HTTPS: ${JSON.stringify(whip)}`);
      assert.equal(whip.status, 201, JSON.stringify(whip));
      await pollStats(obs, 'outboundStats', 'the WHIP peer sending', (s) => s?.state === 'connected' && s.video?.framesEncoded > 10);
      // The stream's name, from the server's log (no SDK page in this test).
      let stream;
      await waitFor(() => {
        stream = server.stderrLines.map((l) => /publishing "(stage-obs-[0-9a-f]{4})" as resource/.exec(l)).find(Boolean)?.[1];
        return stream;
      }, { timeout: STEP_TIMEOUT_MS, what: 'the WHIP stream in the log' });
      const whep = await viewer.call('whepPlay', `${base}/whep/${ROOM}/${stream}`, viewerToken);
      assert.equal(whep.status, 201, JSON.stringify(whep));
      const first = await pollStats(viewer, 'inboundStats', 'WHEP video decoding', (s) => s?.video?.framesDecoded > 0);
      const grown = await pollStats(viewer, 'inboundStats', 'WHEP frames growing', (s) => s?.video?.framesDecoded >= first.video.framesDecoded + 10);
      t.diagnostic(`WHEP player over HTTPS: ${JSON.stringify(grown)}`);
      assert.equal(grown.video.frameWidth, 320);
      assert.equal(await viewer.call('stop'), 200);
      assert.equal(await obs.call('stop'), 200);
      assertPageClean(obs);
      assertPageClean(viewer);
    });
  } finally {
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
  const log = server.stderrLines.join('\n');
  for (const token of tokens) assert.ok(!log.includes(token), 'no token in the log');
  assert.ok(server.stderrLines.some((l) => l.includes('whep player "carol"') && l.includes('joined as session')),
    'the WHEP player is its token\'s login');
});
