// Real-client end-to-end test of Huddle's SFU media path: two Flashphoner RoomApi sessions
// (@flashphoner/websdk 2.0.276, unmodified flashphoner-room-api.js bundle) in headless Debian
// Chromium with fake camera/microphone publish and play each other through Huddle, exactly like
// the SDK's stock Conference example (publish on STATE, play participants' first stream on STATE
// and PUBLISHED). Media is proven by the browsers' own WebRTC stats (framesDecoded growing,
// totalAudioEnergy > 0, negotiated codec) and by sampling the rendered remote <video>.
//
// Run from the repository root:   node --test tests/browser/flashphoner-media.test.mjs
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 to print every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 for server stderr,
//      HUDDLE_E2E_SCREENSHOT_DIR (default: the OS temp dir) for the remote-video screenshots.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  HERE, SCREENSHOT_DIR, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, sdkPageRoutes, sleep, waitForMedia,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');

const STEP_TIMEOUT_MS = 15_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const TEST_TIMEOUT_MS = 55_000;
const FILE_WATCHDOG_MS = 150_000; // two tests + setup/teardown

// ---------------------------------------------------------------------------------------------
// Shared state

// Temp dir, server, static server, browser and pages (diag) of this file, under one watchdog.
const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS });
const { diag } = e2e;
let server; // startHuddle(): { proc, addr, stderrLines, stop() }
let staticServer; // { server, origin, requests, close() }
let browser;

// ---------------------------------------------------------------------------------------------
// Helpers

// One browser context + page = one RoomApi session; also keeps the publishStream / playStream
// requests it sent (full SDP offers).
class MediaPage extends SdkPage {
  constructor(label, opts) {
    super(label, opts);
    this.sentRequests = [];
  }

  pushFrame(dir, payload) {
    if (dir === '→' && typeof payload === 'string' && /"(publishStream|playStream)"/.test(payload)) {
      try {
        const m = JSON.parse(payload);
        this.sentRequests.push({ message: m.message, ...m.data[0] });
      } catch { /* not JSON */ }
    }
    super.pushFrame(dir, payload);
  }
}

const openPage = (label) => MediaPage.openChromium(browser, label, {
  origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
  viewport: { width: 700, height: 500 }, frameLimit: 600,
});

const withPages = (labels, body) => diag.withPages(labels.map((label) => () => openPage(label)), body);

function assertClean(h) {
  assertPageClean(h, { errorsHint: `\n${diag.text()}` });
}

const isStatus = (kind, status, extra = () => true) => (e) => e.type === kind && e.status === status && extra(e);

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  await e2e.makeTmpDir('huddle-media-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

// Pages, browser, static server; SIGTERM must stop the server with exit code 0, without a panic.
after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 20_000 });

// ---------------------------------------------------------------------------------------------
// The scenario, run once per codec variant.

async function conferenceScenario({ room, publishOptions, expectVideoCodec, screenshotName }, t) {
  const wsUrl = `ws://${server.addr}/`;
  await withPages(['alice', 'bob'], async (alice, bob) => {
    await alice.call('connect', wsUrl, 'alice');
    await bob.call('connect', wsUrl, 'bob');
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await bob.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    // alice joins the empty room and publishes on STATE (Conference behaviour).
    await alice.call('join', room, publishOptions);
    const aliceState = await alice.waitFor('STATE', (e) => e.type === 'STATE');
    assert.deepEqual(aliceState.participants, []);
    const alicePub = await alice.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(alicePub.status, 'PUBLISHING', `alice's publish must reach PUBLISHING, got ${JSON.stringify(alicePub)}`);
    assert.ok(alicePub.name.startsWith(`${room}-alice-`), `room-module stream name: ${alicePub.name}`);

    // bob joins: STATE lists alice with her live stream; bob plays it (from STATE) and publishes.
    await bob.call('join', room, publishOptions);
    const bobState = await bob.waitFor('STATE', (e) => e.type === 'STATE');
    assert.deepEqual(bobState.participants, ['alice']);
    assert.deepEqual(bobState.streams, [[alicePub.name]], 'STATE must carry alice\'s published stream');
    const bobPlay = await bob.waitFor('PLAYING alice', (e) => e.type === 'PLAY_STATUS' && e.login === 'alice' && e.status !== 'PENDING');
    assert.equal(bobPlay.status, 'PLAYING', `bob's player of alice: ${JSON.stringify(bobPlay)}`);
    assert.equal(bobPlay.name, alicePub.name);
    const bobPub = await bob.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(bobPub.status, 'PUBLISHING', `bob's publish must reach PUBLISHING, got ${JSON.stringify(bobPub)}`);

    // alice: JOINED(bob), then PUBLISHED(bob) → plays bob's stream.
    await alice.waitFor('JOINED bob', (e) => e.type === 'JOINED' && e.login === 'bob');
    const published = await alice.waitFor('PUBLISHED bob', (e) => e.type === 'PUBLISHED' && e.login === 'bob');
    assert.deepEqual(published.streams, [bobPub.name]);
    const alicePlay = await alice.waitFor('PLAYING bob', (e) => e.type === 'PLAY_STATUS' && e.login === 'bob' && e.status !== 'PENDING');
    assert.equal(alicePlay.status, 'PLAYING', `alice's player of bob: ${JSON.stringify(alicePlay)}`);

    // What the SDK offered: publishers offer H264+VP8 unless stripped; players always offer both.
    const rtpmaps = (sdp, codec) => (sdp.match(new RegExp(`^a=rtpmap:\\d+ ${codec}/`, 'gm')) || []).length;
    for (const h of [alice, bob]) {
      const pub = h.sentRequests.find((r) => r.message === 'publishStream');
      const play = h.sentRequests.find((r) => r.message === 'playStream');
      assert.ok(pub && play, `${h.label}: publishStream and playStream were sent`);
      assert.ok(rtpmaps(pub.sdp, 'VP8') > 0, `${h.label}: publish offer has VP8`);
      assert.equal(rtpmaps(pub.sdp, 'H264') > 0, !publishOptions.stripCodecs,
        `${h.label}: publish offer ${publishOptions.stripCodecs ? 'must not' : 'must'} contain H264`);
      assert.ok(rtpmaps(play.sdp, 'VP8') > 0 && rtpmaps(play.sdp, 'H264') > 0, `${h.label}: play offer has H264 and VP8`);
    }

    // Media both ways, decoded by the browsers.
    const [bobSeesAlice, aliceSeesBob] = await Promise.all([waitForMedia(bob, 'alice'), waitForMedia(alice, 'bob')]);
    const [alicePubStats, bobPubStats] = await Promise.all([alice.call('publisherStats'), bob.call('publisherStats')]);
    const summary = {
      bobSeesAlice: { first: bobSeesAlice.first.video.framesDecoded, last: bobSeesAlice.last.video, audio: bobSeesAlice.last.audio },
      aliceSeesBob: { first: aliceSeesBob.first.video.framesDecoded, last: aliceSeesBob.last.video, audio: aliceSeesBob.last.audio },
      alicePublisher: alicePubStats,
      bobPublisher: bobPubStats,
    };
    t.diagnostic(`media stats: ${JSON.stringify(summary)}`);
    for (const [who, s] of [['bob←alice', bobSeesAlice.last], ['alice←bob', aliceSeesBob.last]]) {
      assert.equal(s.video.codec?.mimeType, expectVideoCodec, `${who}: inbound video codec`);
      assert.equal(s.audio.codec?.mimeType, 'audio/opus', `${who}: inbound audio codec`);
      assert.equal(s.element.muted, false, `${who}: the SDK must unmute the remote <video> (unmutePlayOnStart)`);
      assert.ok(s.element.videoWidth > 0 && s.element.videoHeight > 0, `${who}: <video> has dimensions`);
    }
    for (const [who, s] of [['alice', alicePubStats], ['bob', bobPubStats]]) {
      assert.equal(s.video?.codec?.mimeType, expectVideoCodec, `${who}: outbound video codec`);
    }

    // The rendered remote video is not black and moves (fake camera pattern).
    const sample = await bob.call('sampleRemoteVideo', 'alice', 600);
    t.diagnostic(`bob's remote video sample: ${JSON.stringify(sample)}`);
    assert.ok(sample.meanLuma > 20 && sample.nonBlackFraction > 0.3, `remote video looks black: ${JSON.stringify(sample)}`);
    assert.ok(sample.changedFraction > 0.001, `remote video does not move: ${JSON.stringify(sample)}`);
    const videoId = await bob.call('remoteVideoId', 'alice');
    const shot = path.join(SCREENSHOT_DIR, screenshotName);
    await bob.page.locator(`video[id="${videoId}"]`).screenshot({ path: shot, timeout: STEP_TIMEOUT_MS });
    t.diagnostic(`screenshot of bob's remote video (alice): ${shot}`);

    // alice unpublishes: her stream → UNPUBLISHED; bob's player → STOPPED; alice's stream disappears
    // from bob's participant list; alice stays in the room.
    let bobMark = (await bob.events()).length;
    await alice.call('unpublish');
    const unpub = await alice.waitFor('own stream UNPUBLISHED', isStatus('PUBLISH_STATUS', 'UNPUBLISHED'));
    assert.equal(unpub.name, alicePub.name);
    const stopped = await bob.waitFor('player of alice STOPPED',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'alice' && ['STOPPED', 'FAILED'].includes(e.status), { from: bobMark });
    assert.equal(stopped.status, 'STOPPED', `bob's player of alice must be STOPPED: ${JSON.stringify(stopped)}`);
    await bob.pollUntil('alice\'s stream to disappear from bob\'s room view', 'participantStreams', ['alice'],
      (s) => Array.isArray(s) && s.length === 0);
    // bob still decodes nothing new from alice but alice keeps decoding bob.
    const aliceStill = await alice.call('playerStats', 'bob');
    await sleep(500);
    const aliceStill2 = await alice.call('playerStats', 'bob');
    assert.ok(aliceStill2.video.framesDecoded > aliceStill.video.framesDecoded,
      'alice still decodes bob after her own unpublish');

    // alice leaves: bob gets LEFT(alice); alice's player of bob ends (leave cleanup stops it).
    bobMark = (await bob.events()).length;
    const aliceMark = (await alice.events()).length;
    assert.equal(await alice.call('leave'), 'resolved');
    const left = await bob.waitFor('LEFT alice', (e) => e.type === 'LEFT', { from: bobMark });
    assert.equal(left.login, 'alice');
    assert.deepEqual(left.participants, []);
    const aliceStopped = await alice.waitFor('player of bob STOPPED after leave',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'bob' && ['STOPPED', 'FAILED'].includes(e.status), { from: aliceMark });
    assert.equal(aliceStopped.status, 'STOPPED');

    // bob leaves too: his publish is stopped by the SDK's leave cleanup → UNPUBLISHED.
    const bobMark2 = (await bob.events()).length;
    assert.equal(await bob.call('leave'), 'resolved');
    const bobUnpub = await bob.waitFor('own stream UNPUBLISHED after leave', (e) => e.type === 'PUBLISH_STATUS', { from: bobMark2 });
    assert.equal(bobUnpub.status, 'UNPUBLISHED');

    await sleep(300);
    for (const h of [alice, bob]) {
      const evs = await h.events();
      const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
        ((e.type === 'PLAY_STATUS' || e.type === 'PUBLISH_STATUS') && e.status === 'FAILED'));
      assert.deepEqual(bad, [], `${h.label}: unexpected failure events`);
      assertClean(h);
    }
  });
}

test('Conference-style call, H.264 (server picks H.264 when offered): publish, play, decode both ways, unpublish, leave',
  { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await conferenceScenario({
      room: 'media-h264',
      publishOptions: {},
      expectVideoCodec: 'video/H264',
      screenshotName: 'huddle-media-h264-bob-sees-alice.png',
    }, t);
  });

test('Conference-style call, publishers strip H264 (stripCodecs) → VP8 end to end', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await conferenceScenario({
    room: 'media-vp8',
    publishOptions: { stripCodecs: 'H264' },
    expectVideoCodec: 'video/VP8',
    screenshotName: 'huddle-media-vp8-bob-sees-alice.png',
  }, t);
});
