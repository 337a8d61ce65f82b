// End to end: an RTMP publisher (Debian's ffmpeg: test pattern + tone, H.264 baseline + AAC) is a
// participant of a room, seen by the unmodified Flashphoner Web SDK (flashphoner-room-api.js) in
// headless Debian Chromium: it JOINs and PUBLISHes `<room>-<login>`, the page plays it and decodes
// its H.264 (framesDecoded grows, 320x240) and its audio, transcoded to Opus (energy > 0); when
// ffmpeg stops, it LEFT.
//
// Run from the repository root:   node --test tests/browser/rtmp.test.mjs
// Env: HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES=1, HUDDLE_E2E_SERVER_LOG=1 (see harness.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawn } from 'node:child_process';
import {
  HERE, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, sdkPageRoutes, waitForMedia, startHuddle,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const LOGIN = 'obs';
const ROOM = 'stage';
const STEP_TIMEOUT_MS = 20_000;
const SERVER_START_TIMEOUT_MS = 30_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 120_000;
const LISTENING_RTMP = /listening on rtmp:\/\/(127\.0\.0\.1:\d+)\//;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'rtmp-e2e' });
const { diag } = e2e;
let staticServer;
let browser;
let ffmpeg;

before(async () => {
  await e2e.makeTmpDir('huddle-rtmp-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(async () => {
  if (ffmpeg && ffmpeg.exitCode === null) ffmpeg.kill('SIGKILL');
  await e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } });
}, { timeout: 20_000 });

// ffmpeg publishing `seconds` of 320x240 test pattern and a sine tone; resolves its exit.
function publish(url, seconds) {
  const proc = spawn('ffmpeg', [
    '-hide_banner', '-loglevel', 'error', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=30',
    '-f', 'lavfi', '-i', 'sine=frequency=440', '-t', String(seconds),
    '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-profile:v', 'baseline', '-tune', 'zerolatency', '-g', '30',
    '-c:a', 'aac', '-f', 'flv', url,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr = [];
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => stderr.push(d));
  proc.done = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal, stderr: stderr.join('') })));
  return proc;
}

test('a browser sees an RTMP publisher join its room and decodes its H.264 and audio', { timeout: 90_000 }, async (t) => {
  const server = await startHuddle({ dir: e2e.tmpDir, config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  try {
    const rtmp = server.stderrLines.map((l) => LISTENING_RTMP.exec(l)).find(Boolean)?.[1];
    assert.ok(rtmp, `the server logs its RTMP address:\n${server.startupLog}`);
    const open = () => SdkPage.openChromium(browser, 'alice', {
      origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
      viewport: { width: 700, height: 500 }, frameLimit: 600,
    });
    await diag.withPages([open], async (alice) => {
      await alice.call('connect', `ws://${server.addr}/`, alice.label);
      await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
      await alice.call('join', ROOM, {});
      const state = await alice.waitFor('STATE', (e) => e.type === 'STATE');
      assert.deepEqual(state.participants, []);

      ffmpeg = publish(`rtmp://${rtmp}/${ROOM}/${LOGIN}`, 25);
      await alice.waitFor('the RTMP publisher JOINED', (e) => e.type === 'JOINED' && e.login === LOGIN);
      const published = await alice.waitFor('the RTMP publisher PUBLISHED', (e) => e.type === 'PUBLISHED' && e.login === LOGIN);
      assert.deepEqual(published.streams, [`${ROOM}-${LOGIN}`]);

      const { last } = await waitForMedia(alice, LOGIN);
      t.diagnostic(`RTMP stream in the browser: ${JSON.stringify({ video: last.video, audio: last.audio })}`);
      assert.equal(last.video.codec?.mimeType, 'video/H264');
      assert.match(last.video.codec?.sdpFmtpLine ?? '', /profile-level-id=42/, 'baseline, as ffmpeg sends it');
      assert.equal(last.audio.codec?.mimeType, 'audio/opus');
      assert.equal(last.video.frameWidth, 320);
      assert.equal(last.video.frameHeight, 240);
      const sample = await alice.call('sampleRemoteVideo', LOGIN, 1200);
      t.diagnostic(`RTMP video sample: ${JSON.stringify(sample)}`);
      assert.ok(sample.meanLuma > 20 && sample.nonBlackFraction > 0.3, `the video looks black: ${JSON.stringify(sample)}`);

      // The encoder stops: the publisher leaves the room.
      ffmpeg.kill('SIGINT');
      await alice.waitFor('the RTMP publisher LEFT', (e) => e.type === 'LEFT' && e.login === LOGIN);
      assertPageClean(alice, { errorsHint: `\n${diag.text()}` });
      assert.equal(await alice.call('leave'), 'resolved');
    });
  } finally {
    if (ffmpeg && ffmpeg.exitCode === null) ffmpeg.kill('SIGKILL');
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
  assert.ok(server.stderrLines.some((l) => l.includes('rtmp publisher "obs" in room "stage"') && l.includes('joined as session')),
    'the log names the RTMP publisher');
});

// Runs ffprobe/ffmpeg (bounded); resolves { code, stdout, stderr }.
function tool(cmd, args, limitMs) {
  return new Promise((resolve) => {
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => out.push(d));
    proc.stderr.on('data', (d) => err.push(d));
    const timer = setTimeout(() => proc.kill('SIGKILL'), limitMs);
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: out.join(''), stderr: err.join('') });
    });
  });
}

test('ffprobe and ffmpeg play a browser\'s stream over RTMP as H.264 and AAC', { timeout: 90_000 }, async (t) => {
  const server = await startHuddle({ dir: e2e.tmpDir, config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  diag.server = server;
  try {
    const rtmp = server.stderrLines.map((l) => LISTENING_RTMP.exec(l)).find(Boolean)?.[1];
    assert.ok(rtmp, `the server logs its RTMP address:\n${server.startupLog}`);
    const open = () => SdkPage.openChromium(browser, 'alice', {
      origin: staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS,
      viewport: { width: 700, height: 500 }, frameLimit: 600,
    });
    await diag.withPages([open], async (alice) => {
      await alice.call('connect', `ws://${server.addr}/`, alice.label);
      await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
      await alice.call('join', ROOM, {});
      await alice.waitFor('STATE', (e) => e.type === 'STATE');
      const pub = await alice.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
      assert.equal(pub.status, 'PUBLISHING', JSON.stringify(pub));
      const url = `rtmp://${rtmp}/${ROOM}/${encodeURIComponent(pub.name)}`;

      const probe = await tool('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_name,codec_type,width,height', '-of', 'json', url], 30_000);
      t.diagnostic(`ffprobe: ${probe.stdout.replace(/\s+/g, ' ')} ${probe.stderr}`);
      assert.equal(probe.code, 0, `ffprobe over RTMP: ${probe.stderr}`);
      // ffmpeg's RTMP client also lists a data stream for RTMP's own data messages.
      const codecs = JSON.parse(probe.stdout).streams
        .filter((s) => s.codec_type === 'audio' || s.codec_type === 'video').map((s) => s.codec_name).sort();
      assert.deepEqual(codecs, ['aac', 'h264']);
      const player = await alice.waitFor('the RTMP player JOINED', (e) => e.type === 'JOINED');
      assert.match(player.login, /^RTMP player /);

      const decode = await tool('ffmpeg', ['-hide_banner', '-v', 'error', '-i', url, '-t', '4', '-map', '0:v', '-f', 'framemd5', '-'], 40_000);
      const frames = decode.stdout.split('\n').filter((l) => /^0,/.test(l)).length;
      t.diagnostic(`ffmpeg decoded ${frames} frames of the browser's stream; errors: ${decode.stderr.trim() || 'none'}`);
      assert.equal(decode.code, 0, decode.stderr);
      assert.ok(frames >= 60, `${frames} frames decoded`);
      assert.equal(decode.stderr.trim(), '', 'no decoding errors');
      assertPageClean(alice, { errorsHint: `\n${diag.text()}` });
      assert.equal(await alice.call('leave'), 'resolved');
    });
  } finally {
    await server.stop({ timeout: SERVER_STOP_TIMEOUT_MS });
  }
});
