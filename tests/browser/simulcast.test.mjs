// Simulcast with Huddle's own web app in headless Chromium: three participants publish their
// cameras in three layers (the room has as many people as `[media] simulcast_min_participants`
// asks), one of them pins another's tile (focused: large): the focused tile gets the highest
// layer, a small one the lowest (the frame widths the player decodes, from getStats).
//
// Run from the repository root:   node --test tests/browser/simulcast.test.mjs
// Env: as webapp.test.mjs (HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES, HUDDLE_E2E_SERVER_LOG).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  REPO_ROOT, BrowserPage, E2eFile, CSS, HTML, JS, assertChromiumInstalled, huddleConfig, waitFor,
} from './harness.mjs';

const WEB_DIR = path.join(REPO_ROOT, 'web');
const WEB_FILES = {
  '/': ['index.html', HTML],
  '/app.js': ['app.js', JS],
  '/room-api.js': ['room-api.js', JS],
  '/style.css': ['style.css', CSS],
};
const ROOM = 'simulcast';
const STEP_TIMEOUT_MS = 20_000;
// The full layer's size: the app asks 1280x720 for simulcast, the init script caps it (two
// cores for three Chromium encoders): layers 160x90, 320x180, 640x360.
const FULL = { width: 640, height: 360 };

// `[media] simulcast_min_participants` is 3 by default (pages served by the test's static
// server do not read /client/info and keep the app's default, 3, too).
const SERVER_CONFIG = huddleConfig();

// Runs in every page before the app: a small camera, also when the app asks for a bigger one.
function initScript(full) {
  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  md.getUserMedia = (c) => gum({ ...c, video: c.video && { width: full.width, height: full.height, frameRate: 15 } });
  const apply = MediaStreamTrack.prototype.applyConstraints;
  MediaStreamTrack.prototype.applyConstraints = function applyConstraints() {
    return apply.call(this, { width: full.width, height: full.height, frameRate: 15 });
  };
}

const e2e = new E2eFile({ watchdogMs: 150_000, tag: 'simulcast-e2e', watchdogDiagnostics: true });
const { diag } = e2e;
let server;
let origin;
let browser;

const until = (description, fn, timeout = STEP_TIMEOUT_MS) =>
  waitFor(fn, { what: description, timeout, interval: 250, diagnostics: () => diag.text() });

class Participant extends BrowserPage {
  static async open(label) {
    const p = await this.openChromium(browser, label, {
      viewport: { width: 1024, height: 720 }, initScript, initArg: FULL, diag, stepTimeout: STEP_TIMEOUT_MS,
      frameLimit: 400, skipFrames: /"message":"(ping|pong)"/,
      badRequest: (u) => {
        const { protocol, origin: o, pathname } = new URL(u);
        if (['data:', 'blob:'].includes(protocol)) return false;
        return o !== origin || !(WEB_FILES[pathname] || pathname.startsWith('/client/'));
      },
      badSocket: (u) => u !== `ws://${server.addr}/`,
    });
    await p.page.goto(`${origin}/?ws=${encodeURIComponent(`ws://${server.addr}/`)}`, { waitUntil: 'load', timeout: STEP_TIMEOUT_MS });
    return p;
  }

  async join(login) {
    await this.page.fill('#login', login);
    await this.page.fill('#room', ROOM);
    await this.page.click('#join');
  }

  // Per played stream: the decoded frame width and frames decoded (inbound-rtp video).
  widths() {
    return this.page.evaluate(async () => {
      const out = {};
      for (const s of window.__huddle.streams()) {
        if (s.published || s.status !== 'PLAYING') continue;
        (await s.pc.getStats()).forEach((r) => {
          if (r.type === 'inbound-rtp' && r.kind === 'video') out[s.name] = { width: r.frameWidth ?? 0, frames: r.framesDecoded ?? 0 };
        });
      }
      return out;
    });
  }

  // The rids this page's camera sends and their frame widths (outbound-rtp).
  sent() {
    return this.page.evaluate(async () => {
      const s = window.__huddle.streams().find((x) => x.published);
      if (!s) return {};
      const out = {};
      (await s.pc.getStats()).forEach((r) => {
        if (r.type === 'outbound-rtp' && r.kind === 'video' && r.rid) out[r.rid] = r.frameWidth ?? 0;
      });
      return out;
    });
  }
}

before(async () => {
  await e2e.makeTmpDir('huddle-simulcast-e2e-');
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: SERVER_CONFIG, startTimeout: 20_000 });
  const staticServer = await e2e.startStaticServer(Object.fromEntries(Object.entries(WEB_FILES)
    .map(([urlPath, [file, type]]) => [urlPath, { file: path.join(WEB_DIR, file), type }])));
  origin = staticServer.origin;
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 20_000 });

test('a focused tile gets the highest layer, a small one the lowest', { timeout: 140_000 }, async () => {
  const [alice, bob, carol] = [await Participant.open('alice'), await Participant.open('bob'), await Participant.open('carol')];
  // Everybody in first, then the cameras: with three people each page publishes simulcast.
  // (The app decides at its publish; joining one after another, the third one would.)
  await alice.join('alice');
  await until('alice in', async () => (await alice.page.getAttribute('#status', 'data-state')) === 'joined');
  await bob.join('bob');
  await until('bob in', async () => (await bob.page.getAttribute('#status', 'data-state')) === 'joined');
  await carol.join('carol');
  // Carol joined a room of three: her camera goes out in layers q, h, f (Chromium sends the
  // ones its encoder and bandwidth allow: at 640x360 typically q and h).
  const top = (s) => Math.max(0, ...Object.values(s));
  const layers = await until('carol sends simulcast layers', async () => {
    const s = await carol.sent();
    return Object.keys(s).length === 3 && s.q > 0 && top(s) > s.q && s;
  }, 40_000);
  process.stderr.write(`[simulcast-e2e] carol sends ${JSON.stringify(layers)}\n`);
  // Alice plays carol's camera; she pins carol's tile (focused: large): the highest layer.
  const carolStream = await until('alice plays carol', async () => Object.keys(await alice.widths()).find((n) => n.includes('-carol-')));
  await alice.page.click(`#tiles .tile[data-stream="${carolStream}"] .pin`);
  const focused = await until("alice decodes carol's highest layer", async () => {
    const [w, s] = [(await alice.widths())[carolStream], await carol.sent()];
    return w?.width > s.q && w.width === top(s) && w;
  }, 40_000);
  // Bob pins alice's tile (not simulcast: she joined an empty room): carol's small tile
  // on his page gets the quarter layer.
  const bobCarol = await until('bob plays carol', async () => Object.keys(await bob.widths()).find((n) => n.includes('-carol-')));
  const aliceStream = await until('bob plays alice', async () => Object.keys(await bob.widths()).find((n) => n.includes('-alice-')));
  await bob.page.click(`#tiles .tile[data-stream="${aliceStream}"] .pin`);
  const small = await until(`bob decodes carol's lowest layer (${layers.q} wide)`, async () => {
    const w = (await bob.widths())[bobCarol];
    return w?.width === layers.q && w;
  }, 40_000);
  assert.ok(small.width < focused.width, `${small.width} < ${focused.width}`);
  // Still decoding after the switch.
  await until('bob keeps decoding carol', async () => (await bob.widths())[bobCarol]?.frames > small.frames + 10);
});
