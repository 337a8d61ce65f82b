// End to end: recording with the unmodified Flashphoner Web SDK in headless Debian Chromium.
// - A publish with `record: true` writes <records>/<stream>-<UTC start>.mp4 (fragmented MP4):
//   ffprobe reports h264 + opus, the duration matches, ffmpeg decodes it without errors, and
//   audio and video start together.
// - kill -9 of the service mid-recording leaves a file that opens and decodes (>= 3 s of video).
// - A room created with `record: true` is recorded whole: two browsers, the second joining ~3 s
//   later; when both leave, the mix appears with the room's duration, one tile before the second
//   joined and two after (measured from decoded frames), and the hook ran with the mix's path and
//   the room's name.
//
// Run from the repository root:   node --test tests/browser/record.test.mjs
// Env: HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES=1, HUDDLE_E2E_SERVER_LOG=1 (see harness.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  HERE, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertSdkBundleInstalled,
  huddleConfig, sdkPageRoutes, sleep, startHuddle, waitFor,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const STEP_TIMEOUT_MS = 20_000;
const SERVER_START_TIMEOUT_MS = 30_000;
const SERVER_STOP_TIMEOUT_MS = 15_000;
const FILE_WATCHDOG_MS = 300_000;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'record-e2e' });
const { diag } = e2e;
let staticServer;
let browser;

before(async () => {
  await e2e.makeTmpDir('huddle-record-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(async () => {
  await e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } });
}, { timeout: 30_000 });

const open = (label) => () => SdkPage.openChromium(browser, label, {
  origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
  viewport: { width: 700, height: 500 }, frameLimit: 600,
});

function ffprobeJson(file) {
  const r = spawnSync('ffprobe', ['-v', 'error', '-show_entries',
    'stream=codec_name,codec_type,start_time,duration,width,height:format=duration', '-of', 'json', file],
  { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `ffprobe ${file}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function decodeErrors(file) {
  const r = spawnSync('ffmpeg', ['-hide_banner', '-v', 'error', '-i', file, '-f', 'null', '-'],
    { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `ffmpeg decode ${file}: ${r.stderr}`);
  return r.stderr.trim();
}

// Decoded video frames of `file` from `seconds` on: count them (ffprobe -count_frames).
function videoFrames(file) {
  const r = spawnSync('ffprobe', ['-v', 'error', '-select_streams', 'v', '-count_frames', '-show_entries',
    'stream=nb_read_frames', '-of', 'csv=p=0', file], { encoding: 'utf8', timeout: 60_000 });
  return Number.parseInt(r.stdout.trim(), 10) || 0;
}

// Brightness (the mean of each pixel's largest RGB component) of bands of the frame at `t` s,
// scaled to 64x36: the top band, the left and right edges, a left and a right patch.
function bands(file, t) {
  const w = 64;
  const h = 36;
  const r = spawnSync('ffmpeg', ['-v', 'error', '-ss', String(t), '-i', file, '-frames:v', '1',
    '-vf', `scale=${w}:${h}`, '-pix_fmt', 'rgb24', '-f', 'rawvideo', '-'], { timeout: 60_000, maxBuffer: 1 << 20 });
  assert.equal(r.status, 0, `frame at ${t}: ${r.stderr}`);
  const px = r.stdout;
  assert.equal(px.length, w * h * 3, `a ${w}x${h} RGB frame at ${t} s`);
  const mean = (x0, x1, y0, y1) => {
    let sum = 0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = (y * w + x) * 3;
        sum += Math.max(px[i], px[i + 1], px[i + 2]);
      }
    }
    return sum / ((x1 - x0) * (y1 - y0));
  };
  return {
    top: mean(0, w, 0, 4),
    leftEdge: mean(0, 4, 10, 26),
    rightEdge: mean(w - 4, w, 10, 26),
    left: mean(8, 24, 12, 24),
    right: mean(40, 56, 12, 24),
  };
}

const records = (dir) => (fs.existsSync(dir) ? fs.readdirSync(dir) : []);
const sidecar = (dir, name) => JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8'));

async function session(page, server, room, options) {
  await page.call('connect', `ws://${server.addr}/`, page.label);
  await page.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
  await page.call('join', room, options);
  const pub = await page.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
  assert.equal(pub.status, 'PUBLISHING', JSON.stringify(pub));
  return pub;
}

test('a publish with record: true is a fragmented MP4 that ffprobe and ffmpeg accept', { timeout: 90_000 }, async (t) => {
  const server = await startHuddle({ config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  const dir = path.join(server.cwd, 'records');
  try {
    await diag.withPages([open('alice')], async (alice) => {
      const pub = await session(alice, server, 'rec', { record: true });
      await sleep(6_000);
      await alice.call('unpublish');
      await alice.waitFor('UNPUBLISHED', (e) => e.type === 'PUBLISH_STATUS' && e.status === 'UNPUBLISHED');
      const file = await waitFor(() => records(dir).find((n) => n.startsWith(`${pub.name.replace(/[^A-Za-z0-9._-]/g, '_')}-`) && n.endsWith('.mp4')
        && fs.existsSync(path.join(dir, `${n}.json`)) && sidecar(dir, n).ended),
      { timeout: 15_000, what: `the finished record of ${pub.name} in ${records(dir)}` });
      const meta = sidecar(dir, file);
      t.diagnostic(`record ${file}: ${JSON.stringify(meta)}`);
      assert.equal(meta.kind, 'stream');
      assert.equal(meta.room, 'rec');
      assert.equal(meta.stream, pub.name);
      const probe = ffprobeJson(path.join(dir, file));
      t.diagnostic(`ffprobe: ${JSON.stringify(probe)}`);
      const video = probe.streams.find((s) => s.codec_type === 'video');
      const audio = probe.streams.find((s) => s.codec_type === 'audio');
      assert.equal(video?.codec_name, 'h264');
      assert.equal(audio?.codec_name, 'opus');
      const duration = Number(probe.format.duration);
      assert.ok(Math.abs(duration - 6) <= 1, `duration ${duration} s`);
      assert.ok(Math.abs(Number(video.start_time) - Number(audio.start_time)) < 0.1,
        `audio and video start together: ${video.start_time} / ${audio.start_time}`);
      assert.equal(decodeErrors(path.join(dir, file)), '', 'no decoding errors');
    });
  } finally {
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
});

test('kill -9 mid-recording leaves a playable file', { timeout: 90_000 }, async (t) => {
  // A directory of the test's own: stop() (which removes the server's) is not called after a kill.
  const own = path.join(e2e.tmpDir, 'crash');
  fs.mkdirSync(own);
  const server = await startHuddle({ dir: own, config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  const dir = path.join(server.cwd, 'records');
  try {
    await diag.withPages([open('alice')], async (alice) => {
      await session(alice, server, 'crash', { record: true });
      await sleep(5_000);
      server.proc.kill('SIGKILL');
      await waitFor(() => server.proc.exitCode !== null || server.proc.signalCode !== null,
        { timeout: 5_000, what: 'the service to die' });
    });
    const file = records(dir).find((n) => n.endsWith('.mp4'));
    assert.ok(file, `a record in ${records(dir)}`);
    const probe = ffprobeJson(path.join(dir, file));
    const duration = Number(probe.format.duration);
    t.diagnostic(`after kill -9 at 5 s: ${file}, ${duration} s, ${videoFrames(path.join(dir, file))} frames`);
    assert.ok(duration >= 3, `at least 3 s survive: ${duration}`);
    assert.ok(probe.streams.some((s) => s.codec_name === 'h264'));
    assert.equal(decodeErrors(path.join(dir, file)), '', 'no decoding errors');
  } finally {
    if (server.proc.exitCode === null && server.proc.signalCode === null) server.proc.kill('SIGKILL');
  }
});

test('a recorded room is mixed when it ends: one tile, then two; the hook runs', { timeout: 180_000 }, async (t) => {
  const hookLog = path.join(e2e.tmpDir, 'hook.log');
  const hook = path.join(e2e.tmpDir, 'hook.sh');
  fs.writeFileSync(hook, `#!/bin/sh\nprintf '%s\\n%s\\n' "$1" "$2" > '${hookLog}'\n`, { mode: 0o755 });
  const extra = `[records]\non_room_record_hook = "${hook}"\n[records.mixer]\nwidth = 640\nheight = 360\nframe_rate = 15\n`;
  const server = await startHuddle({ config: huddleConfig({ extra }), startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  const dir = path.join(server.cwd, 'records');
  try {
    let life;
    await diag.withPages([open('alice'), open('bob')], async (alice, bob) => {
      const started = Date.now();
      await session(alice, server, 'board', { roomRecord: true });
      await sleep(3_000);
      await session(bob, server, 'board', {});
      await sleep(5_000);
      assert.equal(await bob.call('leave'), 'resolved');
      assert.equal(await alice.call('leave'), 'resolved');
      life = (Date.now() - started) / 1000;
    });
    const mix = await waitFor(() => records(dir).find((n) => n.startsWith('board-') && n.endsWith('-mix.mp4')),
      { timeout: 120_000, interval: 500, what: `the mix in ${records(dir)}` });
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, mix.replace(/-mix\.mp4$/, '.room.json')), 'utf8'));
    t.diagnostic(`manifest: ${JSON.stringify(manifest)}`);
    assert.equal(manifest.mix, 'done');
    assert.equal(manifest.streams.length, 2);
    const file = path.join(dir, mix);
    const probe = ffprobeJson(file);
    const duration = Number(probe.format.duration);
    t.diagnostic(`mix ${mix}: ${duration} s for a room of ~${life.toFixed(1)} s; ${JSON.stringify(probe.streams)}`);
    assert.ok(Math.abs(duration - manifest.duration_ms / 1000) <= 1, `the mix lasts the room's life: ${duration}`);
    assert.ok(Math.abs(duration - life) <= 2, `the room lived ~${life} s, the mix ${duration}`);
    assert.ok(probe.streams.some((s) => s.codec_name === 'h264'));
    const bobAt = manifest.streams[1].start_ms / 1000;
    const one = bands(file, Math.max(0.5, bobAt - 1.5));
    const two = bands(file, bobAt + 2);
    t.diagnostic(`before bob (${bobAt} s): ${JSON.stringify(one)}; after: ${JSON.stringify(two)}`);
    // Chromium's fake camera is 4:3. One tile fills the 16:9 frame's height: black pillars at
    // the left and right edges. Two tiles side by side fill its width (each half a 4:3 picture,
    // letterboxed): the edges are picture, the top band is black.
    const black = 40;
    assert.ok(one.leftEdge < black && one.rightEdge < black && one.left > black,
      `one tile, pillarboxed: ${JSON.stringify(one)}`);
    assert.ok(two.leftEdge > black && two.rightEdge > black && two.top < black,
      `two tiles side by side: ${JSON.stringify(two)}`);
    assert.ok(two.left > black && two.right > black, `two pictures: ${JSON.stringify(two)}`);
    await waitFor(() => fs.existsSync(hookLog), { timeout: 20_000, what: 'the hook to run' });
    const [hookPath, hookRoom] = fs.readFileSync(hookLog, 'utf8').split('\n');
    assert.equal(hookPath, file, 'the hook gets the absolute path of the mix');
    assert.equal(hookRoom, 'board');
  } finally {
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
});
