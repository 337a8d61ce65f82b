// The admin REST API (/api/v1, docs/api.md) end to end on a running service, with two
// Flashphoner Web SDK participants (the unmodified SDK on media-page.html) in headless Chromium:
// list rooms and streams (codecs), mute one's video server-side (the other's decoded frames stop
// growing; unmute: they grow again), kick one (the other sees LEFT, the kicked page's session
// ends), close the room (the other's session ends, the room is gone).
//
// Run from the repository root:   node --test tests/browser/admin.test.mjs
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  HERE, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertSdkBundleInstalled,
  huddleConfig, sdkPageRoutes, sleep, waitFor, waitForMedia,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const ROOM = 'board room/1';
const STEP_TIMEOUT_MS = 15_000;
const FILE_WATCHDOG_MS = 110_000;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS });
const { diag } = e2e;
let server;
let staticServer;
let browser;

const openPage = (label) => SdkPage.openChromium(browser, label, {
  origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
  viewport: { width: 700, height: 500 }, frameLimit: 600,
});

// One admin API call from this process (loopback: no key configured).
async function api(method, apiPath, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`http://${server.addr}/api/v1${apiPath}`, init);
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

const enc = encodeURIComponent;

// Frames decoded of `login`'s video on `page`.
const framesOf = async (page, login) => (await page.call('playerStats', login))?.video?.framesDecoded ?? 0;

before(async () => {
  await e2e.makeTmpDir('huddle-admin-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: huddleConfig(), startTimeout: 20_000 });
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 20_000 });

test('admin API: list, mute/unmute, kick, close with two SDK participants', { timeout: 90_000 }, async (t) => {
  const wsUrl = `ws://${server.addr}/`;
  await diag.withPages([() => openPage('alice'), () => openPage('bob')], async (alice, bob) => {
    await alice.call('connect', wsUrl, 'alice');
    await bob.call('connect', wsUrl, 'bob');
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await bob.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await alice.call('join', ROOM, {});
    await alice.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS' && e.status === 'PUBLISHING');
    await bob.call('join', ROOM, {});
    await bob.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS' && e.status === 'PUBLISHING');
    await Promise.all([waitForMedia(bob, 'alice'), waitForMedia(alice, 'bob')]);

    // Rooms: both members with their streams.
    const rooms = await api('GET', '/rooms');
    assert.equal(rooms.status, 200, rooms.text);
    const room = rooms.json.rooms.find((r) => r.name === ROOM);
    assert.ok(room, `room listed: ${rooms.text}`);
    assert.deepEqual(room.members.map((m) => m.login).sort(), ['alice', 'bob']);
    for (const m of room.members) {
      assert.equal(m.kind, 'webrtc');
      assert.equal(m.streams.length, 1, `${m.login}'s stream: ${JSON.stringify(m)}`);
    }
    const one = await api('GET', `/rooms/${enc(ROOM)}`);
    assert.equal(one.status, 200, one.text);

    // Streams: both with their codecs (stream_stats of the media engine).
    const streams = await waitFor(async () => {
      const s = await api('GET', '/streams');
      const mine = s.json?.streams?.filter((x) => x.room === ROOM) ?? [];
      return mine.length === 2 && mine.every((x) => x.video && x.audio) ? mine : null;
    }, { timeout: 10_000, what: 'both streams with codecs in GET /api/v1/streams' });
    t.diagnostic(`streams: ${JSON.stringify(streams)}`);
    for (const s of streams) {
      assert.equal(s.source, 'webrtc');
      assert.equal(s.state, 'publishing');
      assert.ok(['H264', 'VP8'].includes(s.video.codec), `video codec of ${s.name}: ${s.video.codec}`);
      assert.equal(s.audio.codec, 'opus');
      assert.equal(s.players, 1, `players of ${s.name}`);
    }
    const aliceStream = streams.find((s) => s.login === 'alice').name;
    const single = await api('GET', `/streams/${enc(aliceStream)}`);
    assert.equal(single.status, 200, single.text);

    // Mute alice's video: bob's decoded frames of alice stop growing; his page gets STREAM_EVENT.
    const mute = await api('POST', `/rooms/${enc(ROOM)}/participants/alice/mute`, { video: true });
    assert.equal(mute.status, 200, mute.text);
    assert.deepEqual(mute.json, { audio: false, video: true });
    await sleep(1_000); // frames in flight
    const m0 = await framesOf(bob, 'alice');
    await sleep(1_500);
    const m1 = await framesOf(bob, 'alice');
    assert.ok(m1 - m0 <= 2, `bob still decodes alice's video while it is muted: ${m0} → ${m1}`);
    // bob's own video still reaches alice.
    const a0 = await framesOf(alice, 'bob');
    await sleep(700);
    assert.ok((await framesOf(alice, 'bob')) > a0, 'alice keeps decoding bob');

    // Unmute: they grow again.
    const unmute = await api('POST', `/rooms/${enc(ROOM)}/participants/alice/mute`, { video: false });
    assert.deepEqual(unmute.json, { audio: false, video: false });
    await waitFor(async () => (await framesOf(bob, 'alice')) > m1 + 10,
      { timeout: 10_000, what: 'bob decoding alice again after the unmute' });

    // Kick alice: bob sees LEFT, alice's session is closed.
    const bobMark = (await bob.events()).length;
    const kick = await api('POST', `/rooms/${enc(ROOM)}/participants/alice/kick`);
    assert.equal(kick.status, 204, kick.text);
    const left = await bob.waitFor('LEFT alice', (e) => e.type === 'LEFT', { from: bobMark });
    assert.equal(left.login, 'alice');
    await alice.waitFor('alice\'s session closed', (e) => e.type === 'DISCONNECTED' || e.type === 'SESSION_FAILED');

    // Close the room: bob's session is closed, the room is gone.
    const close = await api('DELETE', `/rooms/${enc(ROOM)}`);
    assert.equal(close.status, 204, close.text);
    await bob.waitFor('bob\'s session closed', (e) => e.type === 'DISCONNECTED' || e.type === 'SESSION_FAILED');
    const gone = await api('GET', `/rooms/${enc(ROOM)}`);
    assert.equal(gone.status, 404, gone.text);
    assert.equal(gone.json.code, 'not_found');
    const remaining = await api('GET', '/streams');
    assert.deepEqual(remaining.json.streams.filter((s) => s.room === ROOM), []);
  });
});
