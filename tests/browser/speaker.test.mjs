// The device's speaker, heard from a real browser participant. alsa-lib's `file` plugin (over
// `null`) is the speaker (`[device] speaker = "spk"`, selected with ALSA_CONFIG_PATH): what Huddle
// plays lands in DIR/spk.raw as mono S16LE at 48 kHz, in real time. Headless Debian Chromium
// publishes audio only with the unmodified Flashphoner SDK (media-page.html); its fake microphone
// is a WAV file of a continuous 1 kHz sine at 0.3 of full scale (--use-file-for-fake-audio-capture,
// looped), published with Chromium's own processing off (no echo cancellation, noise suppression or
// gain control) so the level is kept. The device's own microphone is `tone` (440 Hz at 0.1).
//
// 1. With only the device in the room nothing is played (the card is not even opened).
// 2. From PUBLISHING, within 1 s (asserted: 3 s; the figure is logged) the newest 100 ms of the
//    speaker carry the 1 kHz tone; over the last full second its amplitude is within ±3 dB of
//    0.3 and 440 Hz (the device itself) is at least 40 dB below it.
// 3. The participant unpublishes and leaves: the newest audio has no 1 kHz any more (within ~1 s,
//    asserted 5 s) and the file stops growing (the speaker plays silence for 3 s after the last
//    stream, then lets the card go; asserted: stable for 1 s, at most 8 s after leaving).
// 4. Nowhere in the whole output (Hann-windowed 100 ms blocks, but those next to the tone starting
//    or stopping) is 440 Hz within 40 dB of the tone's level.
// 5. The server stops with exit code 0 and no panic (harness).
//
// Run from the repository root:   node --test tests/browser/speaker.test.mjs
// Env: HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES=1, HUDDLE_E2E_SERVER_LOG=1 (see harness.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  HERE, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean, assertSdkBundleInstalled,
  huddleConfig, sdkPageRoutes, sleep, waitFor, sineWav } from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const ROOM = 'r';
const RATE = 48_000;
const TONE_HZ = 1000;
const TONE_LEVEL = 0.3; // of full scale, in the WAV the browser captures
const DEVICE_HZ = 440; // the device's `tone` microphone, at 0.1

const STEP_TIMEOUT_MS = 20_000;
const FIRST_TONE_BOUND_MS = 3_000; // the issue says "within a second"; the figure is logged
const TONE_GONE_BOUND_MS = 5_000;
const STOPS_GROWING_BOUND_MS = 12_000; // 3 s of silence after the last stream, then the card goes
const TEST_TIMEOUT_MS = 90_000;
const FILE_WATCHDOG_MS = 150_000;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'speaker-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
let server;
let browser;
let spkRaw;

// ---------------------------------------------------------------------------------------------
// Signal analysis (as tests/speaker.rs)

// Amplitude of a sine of `freq` in `x` (Goertzel). With `hann`, the block is Hann-windowed first
// (gain-corrected), so a tone starting or stopping inside it does not leak far.
function amplitudeAt(x, freq, { hann = false } = {}) {
  const n = x.length;
  const coeff = 2 * Math.cos((2 * Math.PI * freq) / RATE);
  let s1 = 0;
  let s2 = 0;
  for (let i = 0; i < n; i++) {
    const w = hann ? 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1)) : 1;
    const s0 = x[i] * w + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
  return (2 * Math.sqrt(Math.max(power, 0))) / (n * (hann ? 0.5 : 1));
}

const db = (a, b) => 20 * Math.log10(a / b);

const toSamples = (buf) => {
  const out = new Float64Array(buf.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = buf.readInt16LE(2 * i) / 32768;
  return out;
};

const fileLen = (p) => {
  try { return fs.statSync(p).size; } catch { return 0; }
};

// The newest `n` samples of the speaker output (fewer if it is shorter).
async function lastSamples(p, n) {
  let fh;
  try {
    fh = await fsp.open(p, 'r');
  } catch {
    return new Float64Array(0);
  }
  try {
    const size = (await fh.stat()).size & ~1;
    const bytes = Math.min(size, 2 * n);
    const buf = Buffer.alloc(bytes);
    await fh.read(buf, 0, bytes, size - bytes);
    return toSamples(buf);
  } finally {
    await fh.close();
  }
}


// ---------------------------------------------------------------------------------------------

before(async () => {
  const dir = await e2e.makeTmpDir('huddle-speaker-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  spkRaw = path.join(dir, 'spk.raw');
  const asoundrc = path.join(dir, 'asoundrc');
  await fsp.writeFile(asoundrc, 'pcm.nullpb { type null }\n' +
    `pcm.spk { type file; slave.pcm "nullpb"; file "${spkRaw}"; format "raw" }\n`);
  const wav = path.join(dir, 'tone-1k.wav');
  await fsp.writeFile(wav, sineWav(TONE_HZ, TONE_LEVEL, 10));
  server = await e2e.startHuddle({
    config: huddleConfig({
      // always_on: the device publishes its own tone before anyone joins (capture on demand
      // would wait for company), so "never the device's own" covers the whole run.
      device: `camera = "none"\nmicrophone = "tone"\nspeaker = "spk"\nrooms = ["${ROOM}"]\njoin_new_rooms = false\nalways_on = true\n`,
    }),
    env: { ALSA_CONFIG_PATH: asoundrc },
    startTimeout: 30_000,
  });
  await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ extraArgs: [`--use-file-for-fake-audio-capture=${wav}`], timeout: 20_000 });
}, { timeout: 60_000 });

after(async () => {
  await e2e.teardown({ stop: { timeout: 10_000 } });
}, { timeout: 30_000 });

// Before the page's scripts: record every getUserMedia's constraints and its audio track's settings
// (the SDK's adapter.js calls the legacy callback navigator.webkitGetUserMedia in Chromium).
function recordGetUserMedia() {
  window.__gum = [];
  const note = (c, stream) => {
    const track = stream.getAudioTracks()[0];
    window.__gum.push({ constraints: JSON.parse(JSON.stringify(c)), audio: track ? track.getSettings() : null });
  };
  const proto = MediaDevices.prototype;
  const gum = proto.getUserMedia;
  proto.getUserMedia = async function getUserMedia(c) {
    const stream = await gum.call(this, c);
    note(c, stream);
    return stream;
  };
  for (const name of ['getUserMedia', 'webkitGetUserMedia']) {
    if (typeof navigator[name] !== 'function') continue;
    const legacy = navigator[name].bind(navigator);
    navigator[name] = (c, ok, fail) => legacy(c, (stream) => { note(c, stream); ok(stream); }, fail);
  }
}

const AUDIO_ONLY_RAW = {
  constraints: { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false }, video: false },
};

test('the speaker plays a browser participant\'s tone at its level, never the device\'s own, and stops when it leaves', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await diag.withPages([() => SdkPage.openChromium(browser, 'tone', {
    origin: e2e.staticServer.origin, ready: MEDIA_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS, frameLimit: 600,
    initScript: recordGetUserMedia,
  })], async (h) => {
    // The device publishes its microphone in "r" from the start; nobody else is there, so the
    // speaker has nothing to play and does not open the card (checked before the page joins).
    await waitFor(() => server.stderrLines.some((l) => l.includes(`stream "${ROOM}-Room system": publishing in room "${ROOM}"`)), {
      timeout: STEP_TIMEOUT_MS, what: 'the device publishing its microphone', diagnostics: () => diag.text(),
    });
    await sleep(1_000);
    assert.equal(fileLen(spkRaw), 0, 'the speaker played something with only the device in the room');
    await h.call('connect', `ws://${server.addr}/`, 'tone');
    await h.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await h.call('join', ROOM, AUDIO_ONLY_RAW);
    const state = await h.waitFor('STATE', (e) => e.type === 'STATE');
    assert.deepEqual(state.participants, ['Room system'], JSON.stringify(state));

    const pub = await h.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(pub.status, 'PUBLISHING', JSON.stringify(pub));
    const published = pub.t; // the page's Date.now(): same clock as this process

    // What Chromium captures: the WAV, unprocessed. (The SDK sends it on through a WebAudio
    // destination, whose track settings say nothing about that: the capture's are recorded.)
    const gum = await h.page.evaluate(() => window.__gum.slice());
    const mic = gum.filter((g) => g.audio).pop();
    assert.ok(mic, `the SDK captured no microphone: ${JSON.stringify(gum)}`);
    assert.deepEqual([mic.audio.echoCancellation, mic.audio.noiseSuppression, mic.audio.autoGainControl], [false, false, false],
      `Chromium's processing of the captured microphone: ${JSON.stringify(mic)}`);
    const sent = await h.page.evaluate(() => window.__pcs.flatMap((pc) => pc.getSenders())
      .filter((x) => x.track).map((x) => `${x.track.kind} ${JSON.stringify(x.track.getSettings())}`));
    t.diagnostic(`captured ${JSON.stringify(mic)}; sending ${JSON.stringify(sent)}`);

    // Within a second of PUBLISHING the speaker's newest 100 ms carry the 1 kHz tone.
    let probe = { bytes: 0, level: 0 };
    const heardAt = await waitFor(async () => {
      const last = await lastSamples(spkRaw, RATE / 10);
      probe = { bytes: fileLen(spkRaw), level: last.length === RATE / 10 ? amplitudeAt(last, TONE_HZ) : 0 };
      return probe.level > TONE_LEVEL / 2 ? Date.now() : null;
    }, {
      timeout: FIRST_TONE_BOUND_MS + 2_000, interval: 20,
      message: () => `the speaker did not play the browser's tone; last probe ${JSON.stringify(probe)}\n${diag.text()}`,
    });
    const firstToneMs = heardAt - published;
    t.diagnostic(`1 kHz heard on the speaker ${firstToneMs} ms after PUBLISHING (newest 100 ms at ${probe.level.toFixed(3)})`);
    assert.ok(firstToneMs <= FIRST_TONE_BOUND_MS, `the tone took ${firstToneMs} ms to reach the speaker`);

    // A full second of it: the tone at its level, the device's own 440 Hz nowhere.
    await sleep(1_300);
    const second = await lastSamples(spkRaw, RATE);
    assert.equal(second.length, RATE, 'a full second of speaker output');
    const level = amplitudeAt(second, TONE_HZ);
    const own = amplitudeAt(second, DEVICE_HZ);
    const stats = await h.call('publisherStats');
    t.diagnostic(`last second: 1 kHz at ${level.toFixed(4)} (${db(level, TONE_LEVEL).toFixed(2)} dB re ${TONE_LEVEL}), ` +
      `440 Hz at ${own.toExponential(2)} (${db(own, level).toFixed(1)} dB re the tone); sender ${JSON.stringify(stats.audio)}`);
    assert.equal(stats.audio?.codec?.mimeType?.toLowerCase(), 'audio/opus', JSON.stringify(stats));
    assert.ok(Math.abs(db(level, TONE_LEVEL)) < 3, `the tone is played at ${level.toFixed(4)}, sent at ${TONE_LEVEL}`);
    assert.ok(db(own, level) < -40, `the device's own tone is in the speaker: 440 Hz at ${own.toExponential(2)}`);

    // The participant leaves: the tone goes, then the speaker lets the card go.
    // Figures are from the unpublish.
    const left = Date.now();
    await h.call('unpublish');
    await h.waitFor('UNPUBLISHED', (e) => e.type === 'PUBLISH_STATUS' && e.status === 'UNPUBLISHED');
    assert.equal(await h.call('leave'), 'resolved');
    let gone = { bytes: 0, level: 0 };
    await waitFor(async () => {
      const last = await lastSamples(spkRaw, RATE / 10);
      gone = { bytes: fileLen(spkRaw), level: amplitudeAt(last, TONE_HZ) };
      return gone.level < TONE_LEVEL / 20; // -26 dB
    }, {
      timeout: TONE_GONE_BOUND_MS, interval: 20,
      message: () => `the speaker still plays the tone after the participant left: ${JSON.stringify(gone)}\n${diag.text()}`,
    });
    const goneMs = Date.now() - left;
    let size = fileLen(spkRaw);
    let stableSince = Date.now();
    await waitFor(() => {
      const now = fileLen(spkRaw);
      if (now !== size) { size = now; stableSince = Date.now(); }
      return Date.now() - stableSince >= 1_000;
    }, {
      timeout: STOPS_GROWING_BOUND_MS, interval: 50,
      message: () => `the speaker output keeps growing after the participant left (${size} bytes)\n${diag.text()}`,
    });
    const stoppedMs = stableSince - left;
    t.diagnostic(`after unpublish + leave: no 1 kHz in the newest 100 ms after ${goneMs} ms, output stopped growing after ~${stoppedMs} ms`);
    assert.ok(stoppedMs <= 8_000, `the speaker kept playing for ${stoppedMs} ms after the participant unpublished and left`);
    await waitFor(() => server.stderrLines.some((l) => l.includes('device: speaker spk: nothing to play, closed')), {
      timeout: 5_000, what: 'the server logging that the speaker let the card go', diagnostics: () => diag.text(),
    });
    const tail = await lastSamples(spkRaw, RATE / 2);
    assert.ok(amplitudeAt(tail, TONE_HZ) < TONE_LEVEL / 100, `the speaker's output ends with the tone: ${amplitudeAt(tail, TONE_HZ)}`);

    // Nowhere in everything the speaker played is the device's own 440 Hz: Hann-windowed 100 ms
    // blocks, leaving out those next to a change of the 1 kHz tone's level (it starting or
    // stopping: a step inside a block spreads over the whole spectrum, up to ~2e-3 at 440 Hz).
    const all = toSamples(await fsp.readFile(spkRaw));
    const block = RATE / 10;
    const blocks = [];
    for (let i = 0; i + block <= all.length; i += block) {
      const x = all.subarray(i, i + block);
      blocks.push({ at: i / RATE, tone: amplitudeAt(x, TONE_HZ, { hann: true }), own: amplitudeAt(x, DEVICE_HZ, { hann: true }) });
    }
    const changes = (k) => [k - 1, k + 1].some((j) => blocks[j] && Math.abs(blocks[j].tone - blocks[k].tone) > level / 10);
    const checked = blocks.filter((b, k) => !changes(k));
    const skipped = blocks.filter((b, k) => changes(k)).map((b) => +b.at.toFixed(1));
    const worst = checked.reduce((w, b) => (b.own > w.own ? b : w), { at: -1, own: 0 });
    t.diagnostic(`whole output: ${(all.length / RATE).toFixed(2)} s; 440 Hz at most ${worst.own.toExponential(2)} ` +
      `(block at ${worst.at.toFixed(1)} s); blocks by a start/stop of the tone, not checked: ${JSON.stringify(skipped)}`);
    assert.ok(all.length >= 2 * RATE, `only ${all.length} samples played`);
    assert.ok(checked.length >= 20 && checked.length >= blocks.length / 2,
      `only ${checked.length} of ${blocks.length} blocks could be checked; left out: ${JSON.stringify(skipped)}`);
    assert.ok(db(worst.own, TONE_LEVEL) < -40,
      `the device's own tone appears in the speaker output at ${worst.at.toFixed(1)} s: ${worst.own.toExponential(2)}`);

    const evs = await h.events();
    const bad = evs.filter((e) => ['FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type) ||
      (e.type === 'PUBLISH_STATUS' && e.status === 'FAILED'));
    assert.deepEqual(bad, [], 'unexpected failure events');
    assertPageClean(h);
  });
});
