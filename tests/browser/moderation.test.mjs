// End-to-end test of moderation in Huddle's own web app (web/*), in headless Debian Chromium with
// a fake camera/microphone, driven by playwright-core: the room's creator mutes, unmutes and
// removes a participant; everybody sees the mute badges; a non-moderator is refused; a removed
// page says so and does not rejoin.
//
// Run from the repository root:   node --test tests/browser/moderation.test.mjs
// Env: HUDDLE_BIN (default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 prints every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 the server log,
//      HUDDLE_E2E_SHOTS=<dir> where the screenshot goes (default /tmp).
//
// The pages come from Huddle itself when it serves this checkout's web/ files; otherwise from a
// throwaway static server serving the four web/ files, pointed at Huddle by ?ws=.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  REPO_ROOT, BrowserPage, E2eFile, CSS, HTML, JS, assertChromiumInstalled, assertPageClean, huddleConfig, sleep,
  waitFor,
} from './harness.mjs';

const WEB_DIR = path.join(REPO_ROOT, 'web');
const SHOTS_DIR = process.env.HUDDLE_E2E_SHOTS || os.tmpdir();
const WEB_FILES = {
  '/': ['index.html', HTML],
  '/app.js': ['app.js', JS],
  '/room-api.js': ['room-api.js', JS],
  '/style.css': ['style.css', CSS],
};

const ROOM = 'совет <директоров> 🎉';
// Борис's login holds HTML: it must show up as text, never as markup.
const [ALICE, BORIS] = ['alice', 'Борис <b>B</b> & co'];
const KICK_REASON_TEXT = 'You were removed from the room';
const NO_REJOIN_MS = 4_000;

const STEP_TIMEOUT_MS = 15_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 110_000;

const SERVER_CONFIG = huddleConfig();

// Small video: two Chromium participants share two cores with other builds.
function initScript() {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => gum({ ...c, video: c.video && { width: 320, height: 240, frameRate: 15 } });
}

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'moderation-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
let server;
let pageBase;
let browser;

const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 150, diagnostics: () => diag.text() });

async function choosePageBase() {
  const same = async ([urlPath, [file]]) => {
    const r = await fetch(`http://${server.addr}${urlPath}`, { signal: AbortSignal.timeout(3000) });
    return r.ok && (await r.text()) === (await fsp.readFile(path.join(WEB_DIR, file), 'utf8'));
  };
  try {
    if ((await Promise.all(Object.entries(WEB_FILES).map(same))).every(Boolean)) {
      return { origin: `http://${server.addr}`, query: '', servedBy: 'huddle' };
    }
  } catch { /* not served (yet) */ }
  const staticServer = await e2e.startStaticServer(Object.fromEntries(Object.entries(WEB_FILES)
    .map(([urlPath, [file, type]]) => [urlPath, { file: path.join(WEB_DIR, file), type }])));
  return { origin: staticServer.origin, query: `ws=${encodeURIComponent(`ws://${server.addr}/`)}`, servedBy: 'static' };
}

class Participant extends BrowserPage {
  static async open(label) {
    const p = await this.openChromium(browser, label, {
      viewport: { width: 1024, height: 720 }, initScript, diag, stepTimeout: STEP_TIMEOUT_MS,
      frameLimit: 400, skipFrames: /"message":"(ping|pong)"/,
      badRequest: (u) => {
        const { protocol, origin, pathname } = new URL(u);
        if (['data:', 'blob:'].includes(protocol)) return false;
        // The landing's read-only routes (device name, live rooms, records, QR code) too.
        return origin !== pageBase.origin || !(WEB_FILES[pathname] || pathname.startsWith('/client/'));
      },
      badSocket: (u) => u !== `ws://${server.addr}/`,
    });
    await p.page.goto(`${pageBase.origin}/?${pageBase.query}`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    return p;
  }

  async join(login, room) {
    await this.page.fill('#login', login);
    await this.page.fill('#room', room);
    await this.page.click('#join');
    await until(`${this.label}: in the room`, async () => (await this.page.getAttribute('#status', 'data-state')) === 'joined');
  }

  text(selector) { return this.page.locator(selector).textContent(); }

  // The camera tile of `login` (own or remote) and what it shows.
  tile(login) {
    return this.page.$$eval('#tiles .tile[data-kind="camera"]', (els, l) => {
      const el = els.find((e) => e.dataset.login === l);
      if (!el) return null;
      const visible = (sel) => {
        const x = el.querySelector(sel);
        return Boolean(x) && getComputedStyle(x).display !== 'none' && !x.hidden;
      };
      return {
        status: el.dataset.status, local: el.classList.contains('local'),
        label: el.querySelector('.name').textContent,
        audioOff: visible('.badge.audio-off'), videoOff: visible('.badge.video-off'),
        controls: visible('.mod'), markup: el.querySelectorAll('.name *').length,
        muteVideo: el.querySelector('.mod-video')?.textContent ?? null,
      };
    }, login);
  }

  // Frames this page sent with a given sendData command.
  sentCommands(command) {
    return this.frames.filter((f) => f.includes(' → ') && f.includes('"sendData"') && f.includes(`"command":"${command}"`)).length;
  }
}

before(async () => {
  await e2e.makeTmpDir('huddle-moderation-e2e-');
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: SERVER_CONFIG, startTimeout: SERVER_START_TIMEOUT_MS });
  pageBase = await choosePageBase();
  process.stderr.write(`[moderation-e2e] pages served by ${pageBase.servedBy} at ${pageBase.origin}\n`);
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 20_000 });

test('creator mutes, unmutes and removes a participant; badges everywhere; non-moderator refused; no rejoin', { timeout: 90_000 }, async () => {
  try {
    const alice = await Participant.open(ALICE);
    const boris = await Participant.open(BORIS);

    // alice creates the room: she is its moderator. Борис joins: he is not.
    await alice.join(ALICE, ROOM);
    await until('alice publishing', async () => (await alice.tile(ALICE))?.status === 'PUBLISHING');
    await boris.join(BORIS, ROOM);
    await until('Борис publishing', async () => (await boris.tile(BORIS))?.status === 'PUBLISHING');
    await until('alice plays Борис', async () => (await alice.tile(BORIS))?.status === 'PLAYING');
    await until('Борис plays alice', async () => (await boris.tile(ALICE))?.status === 'PLAYING');
    assert.equal(await alice.page.getAttribute('body', 'data-moderator'), 'true', 'the creator is a moderator');
    assert.equal(await boris.page.getAttribute('body', 'data-moderator'), 'false', 'a later member is not');
    const aliceSeesBoris = await alice.tile(BORIS);
    assert.equal(aliceSeesBoris.label, BORIS, 'login shown verbatim');
    assert.equal(aliceSeesBoris.markup, 0, 'login must not become HTML');
    assert.ok(aliceSeesBoris.controls, 'alice sees the moderation controls on Борис\'s tile');
    assert.equal(aliceSeesBoris.muteVideo, 'Stop video');
    assert.ok(!(await boris.tile(ALICE)).controls, 'Борис sees no moderation controls');
    assert.ok(!(await alice.tile(ALICE)).controls, 'no moderation controls on one\'s own tile');
    assert.equal(await alice.page.getByRole('button', { name: `Remove ${BORIS} from the room` }).count(), 1, 'labelled Remove button');

    // alice stops Борис's video: both pages show the badge, Борис is told by whom.
    await alice.page.getByRole('button', { name: `Stop video of ${BORIS}` }).click();
    await until('alice: Борис\'s video-off badge', async () => (await alice.tile(BORIS))?.videoOff);
    await until('Борис: his own video-off badge', async () => (await boris.tile(BORIS))?.videoOff);
    await until('Борис: "muted by" notice', async () => (await boris.text('#notice')) === `Your video was muted by ${ALICE}`);
    assert.ok(!(await alice.tile(BORIS)).audioOff, 'only the video is muted');
    const shot = path.join(SHOTS_DIR, 'huddle-moderation.png');
    await alice.page.screenshot({ path: shot });
    process.stderr.write(`[moderation-e2e] screenshot: ${shot}\n`);
    assert.equal((await alice.tile(BORIS)).muteVideo, 'Allow video');
    assert.equal(await boris.page.getAttribute('#mute-video', 'aria-pressed'), 'true', 'Борис\'s own button shows the mute');
    assert.ok(await boris.page.isDisabled('#mute-video'), 'a moderator\'s mute cannot be undone by the muted');
    assert.equal(await boris.page.evaluate(() => window.__huddle.streams().find((s) => s.published).media.getVideoTracks()[0].enabled), false);

    // alice allows it again: the badges go, Борис's controls are back.
    await alice.page.getByRole('button', { name: `Allow video of ${BORIS}` }).click();
    await until('alice: badge gone', async () => (await alice.tile(BORIS))?.videoOff === false);
    await until('Борис: badge gone', async () => (await boris.tile(BORIS))?.videoOff === false);
    await until('Борис: "unmuted by" notice', async () => (await boris.text('#notice')) === `Your video was unmuted by ${ALICE}`);
    assert.equal(await boris.page.getAttribute('#mute-video', 'aria-pressed'), 'false');
    assert.ok(!(await boris.page.isDisabled('#mute-video')));

    // Борис mutes his own microphone: alice sees the badge (sendStreamEvent → notifyStreamEvent).
    await boris.page.click('#mute-audio');
    await until('alice: Борис\'s mic-off badge', async () => (await alice.tile(BORIS))?.audioOff);
    assert.ok((await boris.tile(BORIS)).audioOff, 'own tile shows the own mute');
    await boris.page.click('#mute-audio');
    await until('alice: mic-off badge gone', async () => (await alice.tile(BORIS))?.audioOff === false);

    // Борис (not the creator) forces the controls visible and tries to mute alice: refused.
    await boris.page.evaluate(() => { document.body.dataset.moderator = 'true'; });
    await boris.page.getByRole('button', { name: `Mute mic of ${ALICE}` }).click();
    await until('Борис: refusal shown', async () => (await boris.page.isVisible('#mod-info')) && /Restricted access/.test(await boris.text('#mod-info')));
    assert.ok(!(await boris.tile(ALICE)).audioOff, 'alice is not muted');
    await boris.page.evaluate(() => { document.body.dataset.moderator = 'false'; });

    // alice removes Борис: declining the confirmation does nothing; accepting removes him.
    const joinsBefore = boris.sentCommands('join');
    alice.page.once('dialog', (d) => d.dismiss());
    await alice.page.getByRole('button', { name: `Remove ${BORIS} from the room` }).click();
    await sleep(300);
    assert.equal(alice.sentCommands('kick'), 0, 'no kick without confirmation');
    let question = '';
    alice.page.once('dialog', (d) => { question = d.message(); d.accept(); });
    await alice.page.getByRole('button', { name: `Remove ${BORIS} from the room` }).click();
    await until('Борис: removed notice', async () => (await boris.page.isVisible('#error')) && (await boris.text('#error')) === KICK_REASON_TEXT);
    assert.equal(question, `Remove ${BORIS} from the room?`);
    await until('alice: Борис\'s tile gone (LEFT)', async () => (await alice.tile(BORIS)) === null);
    await until('Борис: back at the join form', async () => boris.page.isVisible('#join-form'));
    assert.equal(await boris.page.getAttribute('#status', 'data-state'), 'offline');

    // ...and stays out: no new join, no new socket, alice sees no JOINED.
    const sockets = boris.sockets.length;
    await sleep(NO_REJOIN_MS);
    assert.equal(boris.sentCommands('join'), joinsBefore, 'Борис must not rejoin');
    assert.equal(boris.sockets.length, sockets, 'Борис must not reconnect');
    assert.equal(await alice.tile(BORIS), null);
    assert.equal(await boris.text('#error'), KICK_REASON_TEXT);
    assert.equal(await boris.page.locator('#tiles .tile').count(), 0, 'Борис\'s tiles are gone');
    for (const p of [alice, boris]) assertPageClean(p, { requestsHint: 'requests outside the four web files and the Huddle WebSocket' });
  } catch (e) {
    throw diag.annotate(e);
  } finally {
    await diag.closeAll();
  }
});
