// End to end: the device's own camera and microphone in the rooms, seen by the unmodified
// Flashphoner Web SDK (flashphoner-room-api.js) in headless Debian Chromium.
//
// (1) [device] camera = "test-pattern", microphone = "tone": a browser joining a room finds the
//     device ("Room system") in STATE, idle until then; its stream is published within 3 s of the
//     join (capture on demand); the browser plays it, decodes its H.264 (framesDecoded
//     grows, the picture is not black and moves: the burnt-in clock) and its Opus (energy > 0).
// (2) A camera that stops mid-stream (a GStreamer pipeline that reaches end of stream after a few
//     seconds): the browser's player of the device stops, the server log names the camera and the
//     error, and after the retry delay the device publishes again and the video resumes.
//
// Run from the repository root:   node --test tests/browser/device.test.mjs
// Env: HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES=1, HUDDLE_E2E_SERVER_LOG=1 (see harness.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  HERE, SCREENSHOT_DIR, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, sdkPageRoutes, waitForMedia, startHuddle,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const DEVICE = 'Room system';
const STEP_TIMEOUT_MS = 20_000;
const SERVER_START_TIMEOUT_MS = 30_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 170_000;

// Small video keeps two cores free for Chromium: the test pattern at 320x240, 15 fps.
const FIXED_ROOM = 'huddle room ☕';
const TEST_PATTERN = huddleConfig({
  device: `camera = "test-pattern"
rooms = ["${FIXED_ROOM}"]
microphone = "tone"
width = 320
height = 240
framerate = 15
bitrate_kbps = 400
`,
});

// A camera that ends after 6 s (90 frames at 15 fps), retried 500 ms later.
const FLAKY_PIPELINE = 'videotestsrc is-live=true num-buffers=90 pattern=ball ! '
  + 'video/x-raw,width=320,height=240,framerate=15/1 ! videoconvert ! video/x-raw,format=I420 ! '
  + 'x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=300 ! '
  + 'video/x-h264,profile=constrained-baseline';
const FLAKY_CAMERA = huddleConfig({
  device: `pipeline = "${FLAKY_PIPELINE}"
microphone = "none"
retry_ms = 500
`,
});

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'device-e2e' });
const { diag } = e2e;
let staticServer;
let browser;

const openPage = (label) => SdkPage.openChromium(browser, label, {
  origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
  viewport: { width: 700, height: 500 }, frameLimit: 600,
});

before(async () => {
  await e2e.makeTmpDir('huddle-device-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 20_000 });

// A second server in the same file: stopped by the test itself (exit 0, no panic).
async function withServer(config, body) {
  const server = await startHuddle({ dir: e2e.tmpDir, config, startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  try {
    await body(server);
  } finally {
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
}

async function joinRoom(server, page, room) {
  await page.call('connect', `ws://${server.addr}/`, page.label);
  await page.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
  await page.call('join', room, {});
  return page.waitFor('STATE', (e) => e.type === 'STATE');
}

test('a browser finds the device in the room and decodes its test pattern and tone', { timeout: 70_000 }, async (t) => {
  await withServer(TEST_PATTERN, async (server) => {
    await diag.withPages([() => openPage('alice')], async (alice) => {
      const room = FIXED_ROOM;
      const state = await joinRoom(server, alice, room);
      // The device is in its fixed room from the start, idle (capture on demand): alice's
      // join makes it capture, and its stream follows within 3 s (or is already in STATE).
      assert.deepEqual(state.participants, [DEVICE], `STATE: ${JSON.stringify(state)}`);
      if (!JSON.stringify(state.streams ?? []).includes(`${room}-${DEVICE}`)) {
        const published = await alice.waitFor('the device PUBLISHED',
          (e) => e.type === 'PUBLISHED' && e.login === DEVICE, { timeout: 3_000 });
        assert.deepEqual(published.streams, [`${room}-${DEVICE}`], 'the device participant has its stream');
      }
      const playing = await alice.waitFor('PLAYING the device',
        (e) => e.type === 'PLAY_STATUS' && e.login === DEVICE && e.status !== 'PENDING');
      assert.equal(playing.status, 'PLAYING', JSON.stringify(playing));

      const { last } = await waitForMedia(alice, DEVICE);
      t.diagnostic(`device stream in the browser: ${JSON.stringify({ video: last.video, audio: last.audio })}`);
      assert.equal(last.video.codec?.mimeType, 'video/H264');
      assert.match(last.video.codec?.sdpFmtpLine ?? '', /profile-level-id=42/, 'constrained baseline');
      assert.equal(last.audio.codec?.mimeType, 'audio/opus');
      assert.equal(last.video.frameWidth, 320);
      assert.equal(last.video.frameHeight, 240);

      const sample = await alice.call('sampleRemoteVideo', DEVICE, 1200);
      t.diagnostic(`device video sample: ${JSON.stringify(sample)}`);
      assert.ok(sample.meanLuma > 20 && sample.nonBlackFraction > 0.3, `the device's video looks black: ${JSON.stringify(sample)}`);
      assert.ok(sample.changedFraction > 0.0005, `the device's clock does not move: ${JSON.stringify(sample)}`);
      const shot = path.join(SCREENSHOT_DIR, 'huddle-device-test-pattern.png');
      const id = await alice.call('remoteVideoId', DEVICE);
      await alice.page.locator(`video[id="${id}"]`).screenshot({ path: shot, timeout: STEP_TIMEOUT_MS });
      t.diagnostic(`screenshot of the device tile: ${shot}`);

      assert.equal(await alice.call('leave'), 'resolved');
      assertPageClean(alice, { errorsHint: `\n${diag.text()}` });
    });
    assert.ok(server.stderrLines.some((l) => l.includes('camera test-pattern') && l.includes('H.264 Constrained Baseline')),
      'the log names the camera and its profile');
  });
});

test('a camera that stops mid-stream ends the stream; the device republishes and video resumes', { timeout: 80_000 }, async (t) => {
  await withServer(FLAKY_CAMERA, async (server) => {
    await diag.withPages([() => openPage('bob')], async (bob) => {
      const room = 'flaky';
      const state = await joinRoom(server, bob, room);
      // bob created the room; the device joins it right after and publishes.
      assert.deepEqual(state.participants, []);
      await bob.waitFor('the device JOINED', (e) => e.type === 'JOINED' && e.login === DEVICE);
      const published = await bob.waitFor('the device PUBLISHED', (e) => e.type === 'PUBLISHED' && e.login === DEVICE);
      assert.deepEqual(published.streams, [`${room}-${DEVICE}`]);
      assert.deepEqual(await bob.call('participantStreams', DEVICE), [`${room}-${DEVICE}`]);
      const framesOf = async () => (await bob.call('playerStats', DEVICE))?.video?.framesDecoded ?? 0;
      await bob.pollUntil('device video decoded', 'playerStats', [DEVICE], (s) => s?.video?.framesDecoded > 10);

      // The pipeline reaches end of stream: the player of the device stream stops.
      const isStop = (e) => e.type === 'PLAY_STATUS' && e.login === DEVICE && ['STOPPED', 'FAILED'].includes(e.status);
      const stopped = await bob.waitFor('the device player to stop', isStop, { timeout: 20_000 });
      t.diagnostic(`player end: ${JSON.stringify(stopped)}`);
      const stopAt = (await bob.events()).findIndex(isStop);
      // Events after the stop only: the first PUBLISHED came before it.
      assert.ok(stopAt >= 0);

      // Retry after 500 ms: PUBLISHED again, a new player, video decoding again.
      const republished = await bob.waitFor('the device publishing again',
        (e) => e.type === 'PUBLISHED' && e.login === DEVICE, { from: stopAt, timeout: 20_000 });
      assert.deepEqual(republished.streams, [`${room}-${DEVICE}`]);
      const replay = await bob.waitFor('PLAYING the device again',
        (e) => e.type === 'PLAY_STATUS' && e.login === DEVICE && e.status === 'PLAYING',
        { from: stopAt, timeout: 20_000 });
      t.diagnostic(`replay: ${JSON.stringify(replay)}`);
      await bob.pollUntil('video to resume', 'playerStats', [DEVICE],
        (s) => s?.status === 'PLAYING' && s?.video?.framesDecoded > 10, 20_000);
      t.diagnostic(`frames after recovery: ${await framesOf()}`);
      assertPageClean(bob, { errorsHint: `\n${diag.text()}` });
      // bob leaves: the device has nobody left in the room and leaves too; the room ends.
      assert.equal(await bob.call('leave'), 'resolved');
    });
    assert.ok(server.stderrLines.some((l) => l.includes('device: leaving room "flaky"')), 'the device left the empty room');
    const failure = server.stderrLines.find((l) => l.includes('camera pipeline failed'));
    assert.ok(failure, 'the log names the camera and why it failed');
    assert.match(failure, /end of stream/);
    assert.ok(server.stderrLines.some((l) => /camera pipeline: retrying in \d+ ms/.test(l)), 'the retry is logged');
  });
});
