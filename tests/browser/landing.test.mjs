// The landing page of Huddle's web app (web/index.html + app.js, served by Huddle) in headless
// Chromium with the fake camera and microphone: the device's name, the live rooms with their
// members and one-click join, the camera/microphone check (preview, level meter, device lists;
// a refused camera is said so), names checked with a visible message (whitespace-only refused,
// a 128-character CJK room name accepted and joined), and the invite link on the device's
// advertised HTTPS address with its QR code.
//
// Run from the repository root:   node --test tests/browser/landing.test.mjs
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { BrowserPage, E2eFile, assertChromiumInstalled, assertPageClean, huddleConfig, waitFor } from './harness.mjs';

const STEP_TIMEOUT_MS = 15_000;
const FILE_WATCHDOG_MS = 110_000;
const ROOM = 'landing 会议 🎉';
const CJK_ROOM = '会'.repeat(64) + '議'.repeat(64); // 128 characters, 384 bytes of UTF-8

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'landing-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
let server;
let origin; // http://127.0.0.1:PORT
let tlsPort;
let browser;

const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 150, diagnostics: () => diag.text() });

// Small video (two cores); camera = false refuses getUserMedia like a user's "Block".
function initScript({ camera }) {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => (camera
    ? gum({ ...c, video: c.video && { ...c.video, width: 320, height: 240, frameRate: 15 } })
    : Promise.reject(new DOMException('Permission denied', 'NotAllowedError')));
}

class Visitor extends BrowserPage {
  static async open(label, { camera = true, query = '' } = {}) {
    const p = await this.openChromium(browser, label, {
      viewport: { width: 1024, height: 800 }, initScript, initArg: { camera }, diag, stepTimeout: STEP_TIMEOUT_MS,
      frameLimit: 400, skipFrames: /"message":"(ping|pong)"/,
      badRequest: (u) => {
        const url = new URL(u);
        if (['data:', 'blob:'].includes(url.protocol)) return false;
        return url.origin !== origin;
      },
      badSocket: (u) => u !== `ws://${server.addr}/`,
    });
    await p.page.goto(`${origin}/${query}`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    return p;
  }

  async join(login, room) {
    await this.page.fill('#login', login);
    if (room !== undefined) await this.page.fill('#room', room);
    await this.page.click('#join');
  }

  joined() {
    return until(`${this.label} in the room`, async () => (await this.page.getAttribute('#status', 'data-state')) === 'joined');
  }
}

before(async () => {
  await e2e.makeTmpDir('huddle-landing-e2e-');
  assertChromiumInstalled();
  const tlsDir = path.join(e2e.tmpDir, 'tls');
  server = await e2e.startHuddle({
    config: huddleConfig({ http: `tls = true\ntls_listen = "127.0.0.1:0"\ntls_dir = ${JSON.stringify(tlsDir)}\n` }),
    startTimeout: 20_000,
  });
  origin = `http://${server.addr}`;
  await waitFor(() => server.stderrLines.some((l) => /listening on https:\/\/127\.0\.0\.1:\d+/.test(l)),
    { what: 'the HTTPS listener', timeout: 10_000 });
  const line = server.stderrLines.find((l) => /listening on https:\/\/127\.0\.0\.1:\d+/.test(l));
  tlsPort = Number(/listening on https:\/\/127\.0\.0\.1:(\d+)/.exec(line)[1]);
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 20_000 });

test('live rooms with their members, one-click join, invite link and QR code on the HTTPS address', { timeout: 60_000 }, async () => {
  const [ann, bob, eve] = await Promise.all([
    Visitor.open('ann', { camera: false }), Visitor.open('Борис', { camera: false }), Visitor.open('eve', { camera: false }),
  ]);
  try {
    assert.equal(await eve.page.textContent('#device-name'), 'Room system', 'the device\'s name is shown');
    await until('eve: "nobody is in a room"', async () => eve.page.isVisible('#no-rooms'));

    await ann.join('ann', ROOM);
    await ann.joined();
    await bob.join('Борис', ROOM);
    await bob.joined();

    // eve's landing lists the room with both members, within a few seconds (polling).
    const row = eve.page.locator('#rooms-list li', { hasText: ROOM });
    await until('eve: the room listed with ann and Борис', async () => {
      if (!(await row.count())) return false;
      const members = await row.locator('.members').textContent();
      return members.includes('ann') && members.includes('Борис');
    });
    assert.equal(await row.locator('.room-name').textContent(), ROOM);
    assert.equal(await eve.page.isVisible('#no-rooms'), false);

    // One click without a name: the room is filled in and the name asked for.
    await row.locator('button').click();
    assert.equal(await eve.page.inputValue('#room'), ROOM);
    assert.equal(await eve.page.evaluate(() => document.activeElement?.id), 'login');
    // With a name, one click joins.
    await eve.page.fill('#login', 'eve');
    await row.locator('button').click();
    await eve.joined();

    // The invite link: the device's HTTPS address (advertised 127.0.0.1 here), never the page's
    // plain-http origin; the QR code is Huddle's SVG of it.
    const invite = await eve.page.inputValue('#invite');
    const url = new URL(invite);
    assert.equal(url.protocol, 'https:', invite);
    assert.equal(url.host, `127.0.0.1:${tlsPort}`, invite);
    assert.equal(url.searchParams.get('roomName'), ROOM, invite);
    await until('eve: QR code shown', async () => eve.page.evaluate(() => {
      const img = document.getElementById('invite-qr');
      return !img.hidden && img.complete && img.naturalWidth > 0;
    }));
    const qrSrc = await eve.page.getAttribute('#invite-qr', 'src');
    assert.ok(qrSrc.startsWith('/client/qr.svg?room='), qrSrc);
    assert.equal(await eve.page.isVisible('#invite-note'), false, 'HTTPS is on: no note');
    for (const p of [ann, bob, eve]) assertPageClean(p);
  } finally {
    await diag.closeAll();
  }
});

test('names: whitespace-only refused with a visible message, a 128-character CJK room joined', { timeout: 40_000 }, async () => {
  const p = await Visitor.open('names', { camera: false });
  try {
    await p.page.fill('#login', '   ');
    await p.page.fill('#room', 'r');
    await p.page.click('#join');
    await until('the whitespace-only name refused on the page', async () => p.page.isVisible('#error'));
    assert.match(await p.page.textContent('#error'), /only spaces/);
    assert.equal(await p.page.getAttribute('#status', 'data-state'), 'offline');
    assert.deepEqual(p.sockets, [], 'nothing was sent');

    await p.page.fill('#login', 'cjk');
    await p.page.fill('#room', `${CJK_ROOM}会`);
    await p.page.click('#join');
    await until('129 characters refused', async () => /at most 128 characters/.test(await p.page.textContent('#error')));

    await p.join('cjk', CJK_ROOM);
    await p.joined();
    assert.ok((await p.page.textContent('#status')).includes(CJK_ROOM));
    assertPageClean(p);
  } finally {
    await diag.closeAll();
  }
});

test('camera and microphone check: preview, level meter, device lists; a refused camera is said so', { timeout: 40_000 }, async () => {
  const [p, blocked] = await Promise.all([Visitor.open('check'), Visitor.open('blocked', { camera: false })]);
  try {
    await p.page.click('#check-start');
    await until('check: the preview plays the fake camera', async () => p.page.evaluate(() => document.getElementById('preview').videoWidth > 0));
    await until('check: the meter moves with the fake microphone', async () => p.page.evaluate(() => document.getElementById('mic-level').value > 0.05));
    const options = await p.page.$$eval('#camera-select option', (os) => os.map((o) => o.value));
    assert.ok(options.length >= 3, `a fake camera listed: ${options}`);
    const mics = await p.page.$$eval('#mic-select option', (os) => os.map((o) => o.value));
    assert.ok(mics.length >= 3, `a fake microphone listed: ${mics}`);
    // The chosen devices are used by the join: the camera chosen, no microphone.
    await p.page.selectOption('#camera-select', options[2]);
    await p.page.selectOption('#mic-select', 'none');
    await p.join('check', 'check-room');
    await p.joined();
    await until('check: own camera published without audio', async () => p.page.evaluate(() => {
      const s = window.__huddle.streams().find((x) => x.published);
      return s?.status === 'PUBLISHING' && s.media.getAudioTracks().length === 0 && s.media.getVideoTracks().length === 1;
    }));

    await blocked.page.click('#check-start');
    await until('blocked: the refusal is said', async () => blocked.page.isVisible('#check-message'));
    assert.match(await blocked.page.textContent('#check-message'), /permission denied/);
    await blocked.join('blocked', 'check-room');
    await blocked.joined();
    for (const x of [p, blocked]) assertPageClean(x);
  } finally {
    await diag.closeAll();
  }
});
