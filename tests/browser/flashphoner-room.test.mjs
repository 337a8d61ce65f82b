// Real-client end-to-end test of Huddle's Room API signalling (no media):
// the unmodified Flashphoner Web SDK (@flashphoner/websdk 2.0.276, flashphoner-room-api.js bundle)
// in headless Debian Chromium, driven by playwright-core.
//
// Run from the repository root:   node --test tests/browser/
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 to print every WebSocket frame.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import {
  HERE, E2eFile, SdkPage, ROOM_PAGE_READY, assertChromiumInstalled, assertPageClean, assertSdkBundleInstalled,
  huddleConfig, sdkPageRoutes, sleep,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'room-page.html');

const ROOM = 'комната-1 🎉';
const ALICE = 'alice';
const BORIS = 'Борис';
const TEXT_FROM_BORIS = 'Привет, 世界 👋 <b>&amp;</b>\nline2';
const TEXT_FROM_ALICE = '你好, 世界 🌏🇺🇦 👨‍👩‍👧 ありがとう 𝄞 "quotes" \\ \u00e9\u0301 \t tab';

const STEP_TIMEOUT_MS = 10_000;
const SERVER_START_TIMEOUT_MS = 20_000;
const SERVER_STOP_TIMEOUT_MS = 10_000;
const FILE_WATCHDOG_MS = 58_000;

// ---------------------------------------------------------------------------------------------
// Shared state

// Temp dir, server, static server, browser and pages (diag) of this file; its watchdog is a hard
// bound for the whole file: if anything hangs beyond the per-step timeouts, tear down and exit.
const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS });
const { diag } = e2e;
let server; // startHuddle(): { proc, addr, stderrLines, stop() }
let staticServer; // { server, origin, requests, close() }
let browser;

// ---------------------------------------------------------------------------------------------
// Helpers

// One browser context + page = one RoomApi session.
const openPage = (label) => SdkPage.openChromium(browser, label, {
  origin: staticServer.origin, ready: ROOM_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS, pollInterval: 50,
});

// Open one page per label, run `body(...pages)`, always close the pages afterwards.
const withPages = (labels, body) => diag.withPages(labels.map((label) => () => openPage(label)), body);

const diagnosticsAll = () => diag.text();

function assertClean(h) {
  assertPageClean(h, { errorsHint: ` (SDK threw on a server message?)\n${diagnosticsAll()}` });
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  await e2e.makeTmpDir('huddle-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: huddleConfig(), startTimeout: SERVER_START_TIMEOUT_MS });
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  browser = await e2e.launchChromium({ timeout: 15_000 });
}, { timeout: 40_000 });

// Pages, browser, static server; SIGTERM must stop the server with exit code 0, without a panic.
after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS } }), { timeout: 20_000 });

// ---------------------------------------------------------------------------------------------
// Tests

test('two Flashphoner RoomApi clients: join, STATE/JOINED, Unicode chat both ways, LEFT', { timeout: 30_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  await withPages([ALICE, BORIS], async (alice, boris) => {
    // Both sessions become ESTABLISHED.
    await alice.call('connect', wsUrl, ALICE);
    await boris.call('connect', wsUrl, BORIS);
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await boris.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    // alice joins the (new) room first: STATE with no participants.
    await alice.call('join', ROOM);
    const aliceState = await alice.waitFor('STATE after joining', (e) => e.type === 'STATE');
    assert.equal(aliceState.room, ROOM, 'STATE routed to the room with the exact (non-Latin) name');
    assert.deepEqual(aliceState.participants, [], 'first joiner must get STATE with 0 participants (self excluded)');

    // Борис joins: his STATE lists alice; alice gets JOINED for Борис.
    await boris.call('join', ROOM);
    const borisState = await boris.waitFor('STATE after joining', (e) => e.type === 'STATE');
    assert.deepEqual(borisState.participants, [ALICE], 'second joiner must get STATE listing exactly alice');
    const joined = await alice.waitFor(`JOINED for ${BORIS}`, (e) => e.type === 'JOINED');
    assert.equal(joined.login, BORIS, 'JOINED must carry the joiner login byte-exact');
    assert.deepEqual(joined.participants, [BORIS]);

    // Борис → alice, Unicode + HTML-ish + newline, via participant.sendMessage.
    let aliceMark = (await alice.events()).length;
    await boris.call('sendMessage', ALICE, TEXT_FROM_BORIS);
    const msgToAlice = await alice.waitFor('MESSAGE from Борис', (e) => e.type === 'MESSAGE', { from: aliceMark });
    assert.equal(msgToAlice.text, TEXT_FROM_BORIS, 'chat text must arrive unchanged');
    assert.equal(msgToAlice.login, BORIS, 'MESSAGE.from must resolve to participant Борис');

    // alice → Борис, CJK/emoji (astral plane, ZWJ sequence, flags, combining marks).
    const borisMark = (await boris.events()).length;
    await alice.call('sendMessage', BORIS, TEXT_FROM_ALICE);
    const msgToBoris = await boris.waitFor('MESSAGE from alice', (e) => e.type === 'MESSAGE', { from: borisMark });
    assert.equal(msgToBoris.text, TEXT_FROM_ALICE, 'chat text must arrive unchanged');
    assert.equal(msgToBoris.login, ALICE, 'MESSAGE.from must resolve to participant alice');

    // Борис leaves: his leave promise resolves (ACCEPTED); alice gets LEFT for Борис.
    aliceMark = (await alice.events()).length;
    const leaveResult = await boris.call('leave');
    assert.equal(leaveResult, 'resolved', 'leave must be ACCEPTED (promise resolved)');
    const left = await alice.waitFor(`LEFT for ${BORIS}`, (e) => e.type === 'LEFT', { from: aliceMark });
    assert.equal(left.login, BORIS, 'LEFT must name Борис');
    assert.deepEqual(left.participants, [], 'alice has no participants after Борис left');

    // Nothing unexpected along the way.
    await sleep(300); // let any stray frames arrive
    const aEv = await alice.events();
    const bEv = await boris.events();
    const bad = (evs) => evs.filter((e) => ['FAILED', 'SEND_FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type));
    assert.deepEqual(bad(aEv), [], `alice: unexpected failure events\n${diagnosticsAll()}`);
    assert.deepEqual(bad(bEv), [], `Борис: unexpected failure events\n${diagnosticsAll()}`);
    assert.equal(aEv.filter((e) => e.type === 'STATE').length, 1, 'alice: exactly one STATE');
    assert.equal(bEv.filter((e) => e.type === 'STATE').length, 1, 'Борис: exactly one STATE');
    assert.equal(aEv.filter((e) => e.type === 'MESSAGE').length, 1, 'alice: exactly one MESSAGE (no echo of her own)');
    assert.equal(bEv.filter((e) => e.type === 'MESSAGE').length, 1, 'Борис: exactly one MESSAGE (no echo of his own)');
    assert.equal(aEv.filter((e) => e.type === 'JOINED').length, 1, 'alice: exactly one JOINED');
    assert.equal(bEv.filter((e) => e.type === 'JOINED' || e.type === 'LEFT').length, 0, 'Борис: no JOINED/LEFT about himself');
    assertClean(alice);
    assertClean(boris);
  });
});

test('leave → join 20 times in a row on one session never fails', { timeout: 30_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  const LOGIN = 'carol-кэрол';
  const ITERATIONS = 20;
  await withPages([LOGIN], async (carol) => {
    await carol.call('connect', wsUrl, LOGIN);
    await carol.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    await carol.call('join', ROOM);
    await carol.waitFor('STATE after first join', (e) => e.type === 'STATE');

    const leaveResults = [];
    for (let i = 0; i < ITERATIONS; i++) {
      leaveResults.push(await carol.call('leave'));
      await carol.call('join', ROOM);
    }

    // Every join gets its STATE (1 + ITERATIONS in total), and no FAILED ever.
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    let evs = await carol.events();
    while (Date.now() < deadline && evs.filter((e) => e.type === 'STATE').length < ITERATIONS + 1 &&
      !evs.some((e) => e.type === 'FAILED')) {
      await sleep(50);
      evs = await carol.events();
    }
    const failed = evs.filter((e) => e.type === 'FAILED' || e.type === 'SESSION_FAILED' || e.type === 'DISCONNECTED');
    assert.deepEqual(failed, [], `room FAILED during leave→join loop (e.g. "Room already has user with such login")\n${carol.diagnostics(60)}`);
    assert.deepEqual(leaveResults, Array(ITERATIONS).fill('resolved'), 'every leave must be ACCEPTED');
    const states = evs.filter((e) => e.type === 'STATE');
    assert.equal(states.length, ITERATIONS + 1, `expected ${ITERATIONS + 1} STATE events, got ${states.length}\n${carol.diagnostics(60)}`);
    for (const s of states) {
      assert.ok(!s.participants.includes(LOGIN), `STATE must not list the joiner itself: ${JSON.stringify(s)}`);
    }

    // Leave cleanly at the end; the room is still usable.
    assert.equal(await carol.call('leave'), 'resolved');
    assertClean(carol);
  });
});
