// Real-client end-to-end test of Huddle's token access (`[auth] mode = "token"`): the unmodified
// Flashphoner Web SDK (@flashphoner/websdk 2.0.276, flashphoner-room-api.js bundle) in headless
// Debian Chromium, driven by playwright-core. The SDK sends `RoomApi.connect({token})` as
// `custom.token` of the `connection` message; the server answers a refused join with a
// DataStatusEvent FAILED whose info the SDK hands to ROOM_EVENT.FAILED(room, info).
//
// Tokens are minted with the server binary (`huddle --config FILE token ...`), except the
// expired one, which is crafted here (HS256 = HMAC-SHA256) because the server allows 30 s of
// leeway and `--ttl` cannot produce an `exp` in the past.
//
// Run from the repository root:   node --test tests/browser/token.test.mjs
// Env: HUDDLE_BIN (server binary, default target/debug/huddle), CHROMIUM (default /usr/bin/chromium),
//      HUDDLE_E2E_FRAMES=1 to print every WebSocket frame, HUDDLE_E2E_SERVER_LOG=1 for the server log.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  HERE, HUDDLE_BIN, E2eFile, SdkPage, ROOM_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, huddleConfig, sdkPageRoutes, sleep,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'room-page.html');

const ROOM = 'daily-стендап 🎉';
const OTHER_ROOM = 'board-room';

const STEP_TIMEOUT_MS = 8_000;
const MINT_TIMEOUT_MS = 8_000;
const SERVER_START_TIMEOUT_MS = 15_000;
const SERVER_STOP_TIMEOUT_MS = 8_000;
const FILE_WATCHDOG_MS = 39_000;

// A fresh random secret per run; the "forged" tokens are signed with a different one.
const SECRET = crypto.randomBytes(32).toString('base64url');
const WRONG_SECRET = crypto.randomBytes(32).toString('base64url');

const serverConfig = (secret) => huddleConfig({ extra: `[auth]
mode = "token"
secret = "${secret}"
` });

// ---------------------------------------------------------------------------------------------
// Shared state

// Temp dir, server, static server, browser and pages (diag) of this file; its watchdog is a hard
// bound for the whole file: if anything hangs beyond the per-step timeouts, tear down and exit.
const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS });
const { diag } = e2e;
let configPath; // the server's config (holds SECRET)
let wrongConfigPath; // same shape, WRONG_SECRET: mints tokens with a bad signature
let server; // startHuddle(): { proc, addr, stderrLines, stop() }
let staticServer; // { server, origin, requests, close() }
let browser;
const issuedTokens = []; // every token handed to a page: none may show up in the server log

// ---------------------------------------------------------------------------------------------
// Helpers

// `huddle --config FILE token --login LOGIN --room R [--room R2] [--ttl T] [--no-publish]` → the JWT.
function mintToken(config, login, rooms, { ttl = '1h', noPublish = false } = {}) {
  const args = ['--config', config, 'token', '--login', login];
  for (const r of rooms) args.push('--room', r);
  args.push('--ttl', ttl);
  if (noPublish) args.push('--no-publish');
  return new Promise((resolve, reject) => {
    execFile(HUDDLE_BIN, args, { timeout: MINT_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`huddle token ${args.slice(2).join(' ')} failed: ${err.message}\nstderr: ${stderr}`));
        return;
      }
      const token = stdout.trim();
      if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) {
        reject(new Error(`huddle token printed something that is not a JWT: ${JSON.stringify(stdout)}`));
        return;
      }
      issuedTokens.push(token);
      resolve(token);
    });
  });
}

// HS256 by hand: base64url(header) "." base64url(payload) "." base64url(HMAC-SHA256(secret, both)).
function craftHs256(claims, secret) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj), 'utf8').toString('base64url');
  const signingInput = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', secret).update(signingInput).digest('base64url');
  const token = `${signingInput}.${sig}`;
  issuedTokens.push(token);
  return token;
}

const nowUnix = () => Math.floor(Date.now() / 1000);

// One browser context + page = one RoomApi session.
const openPage = (label) => SdkPage.openChromium(browser, label, {
  origin: staticServer.origin, ready: ROOM_PAGE_READY, diag, stepTimeout: STEP_TIMEOUT_MS, pollInterval: 50,
});

// Open one page per label (in parallel), run `body(...pages)`, always close the pages afterwards.
const withPages = (labels, body) =>
  diag.withPages(labels.map((label) => () => openPage(label)), body, { parallel: true });

function assertClean(h) {
  assertPageClean(h, { errorsHint: ` (SDK threw on a server message?)\n${diag.text()}` });
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

before(async () => {
  const tmpDir = await e2e.makeTmpDir('huddle-e2e-token-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  configPath = path.join(tmpDir, 'huddle.toml');
  wrongConfigPath = path.join(tmpDir, 'wrong-secret.toml');
  await fsp.writeFile(configPath, serverConfig(SECRET));
  await fsp.writeFile(wrongConfigPath, serverConfig(WRONG_SECRET));
  // The token check in after() reads the whole log: no stderrLimit.
  [server, staticServer, browser] = await Promise.all([
    e2e.startHuddle({ configPath, startTimeout: SERVER_START_TIMEOUT_MS, stderrLimit: Infinity }),
    e2e.startStaticServer(sdkPageRoutes(PAGE_HTML)),
    e2e.launchChromium({ timeout: 15_000 }),
  ]);
}, { timeout: 25_000 });

// auth.rs: "the token itself is never logged" — not even at debug level.
function assertNoTokenLogged(stderrLines) {
  const log = stderrLines.join('\n');
  for (const t of issuedTokens) {
    const sig = t.split('.')[2];
    assert.ok(!log.includes(sig), `the server log contains a token (signature ${sig.slice(0, 12)}…)`);
  }
}

// Pages, browser, static server; SIGTERM must stop the server with exit code 0, without a panic,
// and no token in its log.
after(() => e2e.teardown({ stop: { timeout: SERVER_STOP_TIMEOUT_MS, check: assertNoTokenLogged } }), { timeout: 15_000 });

// ---------------------------------------------------------------------------------------------
// Tests

test('valid tokens: alice and bob join the room and chat', { timeout: 20_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  const [aliceToken, bobToken] = await Promise.all([
    mintToken(configPath, 'alice', [ROOM]),
    mintToken(configPath, 'bob', [OTHER_ROOM, ROOM], { noPublish: true }),
  ]);
  await withPages(['alice', 'bob'], async (alice, bob) => {
    await alice.call('connect', wsUrl, 'alice', aliceToken);
    await bob.call('connect', wsUrl, 'bob', bobToken);
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await bob.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');

    // The SDK really sent the token as custom.token of the connection message.
    const conn = alice.frames.find((f) => f.includes('"message":"connection"'));
    assert.ok(conn && conn.includes(`"token":"${aliceToken}"`), `alice's connection message must carry custom.token: ${conn}`);

    await alice.call('join', ROOM);
    const aliceState = await alice.waitFor('STATE after joining', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(aliceState.type, 'STATE', `alice's join must succeed: ${JSON.stringify(aliceState)}`);
    assert.equal(aliceState.room, ROOM);
    assert.deepEqual(aliceState.participants, []);

    await bob.call('join', ROOM);
    const bobState = await bob.waitFor('STATE after joining', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(bobState.type, 'STATE', `bob's join must succeed (token lists two rooms): ${JSON.stringify(bobState)}`);
    assert.deepEqual(bobState.participants, ['alice']);
    const joined = await alice.waitFor('JOINED for bob', (e) => e.type === 'JOINED');
    assert.equal(joined.login, 'bob');

    // Chat both ways.
    const aliceMark = (await alice.events()).length;
    await bob.call('sendMessage', 'alice', 'hi alice — 👋');
    const toAlice = await alice.waitFor('MESSAGE from bob', (e) => e.type === 'MESSAGE', { from: aliceMark });
    assert.equal(toAlice.text, 'hi alice — 👋');
    assert.equal(toAlice.login, 'bob');
    const bobMark = (await bob.events()).length;
    await alice.call('sendMessage', 'bob', 'hello bob');
    const toBob = await bob.waitFor('MESSAGE from alice', (e) => e.type === 'MESSAGE', { from: bobMark });
    assert.equal(toBob.text, 'hello bob');
    assert.equal(toBob.login, 'alice');

    await sleep(200); // let any stray frames arrive
    const bad = (evs) => evs.filter((e) => ['FAILED', 'SEND_FAILED', 'SESSION_FAILED', 'DISCONNECTED'].includes(e.type));
    assert.deepEqual(bad(await alice.events()), [], 'alice: unexpected failure events');
    assert.deepEqual(bad(await bob.events()), [], 'bob: unexpected failure events');
    assertClean(alice);
    assertClean(bob);
  });
});

test('refused tokens: each join gets room FAILED with the server\'s reason', { timeout: 25_000 }, async () => {
  const wsUrl = `ws://${server.addr}/`;
  const exp = (s) => nowUnix() + s;
  const [forged, aliceToken, otherRoom, hostToken] = await Promise.all([
    mintToken(wrongConfigPath, 'dave', [ROOM]),
    mintToken(configPath, 'alice', [ROOM]),
    mintToken(configPath, 'erin', [OTHER_ROOM]),
    mintToken(configPath, 'host', ['*']),
  ]);
  // Crafted here: exp an hour in the past (well beyond the server's 30 s leeway), and a control
  // crafted the same way but valid, proving the refusal is about `exp` and not the crafting.
  const expired = craftHs256({ sub: 'frank', rooms: [ROOM], publish: true, exp: exp(-3600) }, SECRET);
  const craftedOk = craftHs256({ sub: 'grace', rooms: [ROOM], publish: true, exp: exp(600) }, SECRET);

  const cases = [
    { label: 'frank (expired)', login: 'frank', token: expired, reason: 'Restricted access: the token has expired' },
    { label: 'dave (wrong secret)', login: 'dave', token: forged, reason: "Restricted access: the token's signature is not valid" },
    { label: 'mallory (alice\'s token)', login: 'mallory', token: aliceToken, reason: 'Restricted access: the token was issued for another login' },
    { label: 'erin (other room)', login: 'erin', token: otherRoom, reason: `Restricted access: the token does not allow room '${ROOM}'` },
    { label: 'nobody (no token)', login: 'nobody', token: undefined, reason: 'Restricted access: a token is required (custom.token)' },
  ];

  await withPages(['host', 'grace (crafted, valid)', ...cases.map((c) => c.label)], async (host, grace, ...refused) => {
    // A member already in the room: no refused joiner may ever reach it.
    await host.call('connect', wsUrl, 'host', hostToken);
    await host.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await host.call('join', ROOM);
    const hostState = await host.waitFor('STATE', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(hostState.type, 'STATE', `host (rooms "*") must join: ${JSON.stringify(hostState)}`);
    const hostMark = (await host.events()).length;

    await Promise.all(cases.map((c, i) => refused[i].call('connect', wsUrl, c.login, c.token)));
    for (const h of refused) await h.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    for (const h of refused) await h.call('join', ROOM);

    for (const [i, c] of cases.entries()) {
      const h = refused[i];
      const ev = await h.waitFor('room FAILED', (e) => e.type === 'FAILED' || e.type === 'STATE');
      assert.equal(ev.type, 'FAILED', `${c.label}: the join must be refused, got ${JSON.stringify(ev)}`);
      assert.equal(ev.room, ROOM, `${c.label}: FAILED must be for the joined room`);
      assert.equal(typeof ev.info, 'string', `${c.label}: FAILED must carry the reason text`);
      assert.ok(ev.info.includes(c.reason), `${c.label}: expected reason ${JSON.stringify(c.reason)}, got ${JSON.stringify(ev.info)}`);
      assert.ok(ev.info.startsWith('Restricted access: '), `${c.label}: ${JSON.stringify(ev.info)}`);
    }

    // The crafted-but-valid token is accepted.
    await grace.call('connect', wsUrl, 'grace', craftedOk);
    await grace.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await grace.call('join', ROOM);
    const graceState = await grace.waitFor('STATE', (e) => e.type === 'STATE' || e.type === 'FAILED');
    assert.equal(graceState.type, 'STATE', `grace (hand-crafted valid HS256 token) must join: ${JSON.stringify(graceState)}`);
    assert.deepEqual(graceState.participants, ['host'], 'only host is in the room: no refused joiner got in');
    const joined = await host.waitFor('JOINED for grace', (e) => e.type === 'JOINED', { from: hostMark });
    assert.equal(joined.login, 'grace');

    await sleep(200); // let any stray frames arrive
    const hostJoins = (await host.events()).slice(hostMark).filter((e) => e.type === 'JOINED').map((e) => e.login);
    assert.deepEqual(hostJoins, ['grace'], 'host must see JOINED only for grace, never for a refused login');
    for (const [i, c] of cases.entries()) {
      const evs = await refused[i].events();
      assert.equal(evs.filter((e) => e.type === 'FAILED').length, 1, `${c.label}: exactly one FAILED`);
      assert.equal(evs.filter((e) => e.type === 'STATE').length, 0, `${c.label}: no STATE`);
      assertClean(refused[i]);
    }
    assertClean(host);
    assertClean(grace);
  });
});
