// ICE-TCP with a real browser: headless Chromium that may not use UDP at all (its profile's
// WebRTC IP handling policy is "disable_non_proxied_udp", the preference extensions and
// enterprise policies set: no UDP candidate is gathered and no UDP check is sent, as on a network
// that blocks UDP; the command-line switch --force-webrtc-ip-handling-policy is not honoured by
// Debian's headless Chromium, checked) publishes and plays through Huddle with the
// unmodified Flashphoner SDK (media-page.html). Huddle's answers carry its UDP candidate and a
// passive TCP one on [media] tcp_port (not set here: the UDP port's number); the browser connects
// over TCP (RFC 6544, RFC 4571 framing) and decodes. Proven by the browser's own getStats: every
// peer connection's selected candidate pair is TCP on both ends, to the server's TCP candidate,
// and video frames decode; and by the server's /metrics (ICE-TCP connections open).
//
// Run from the repository root:   node --test tests/browser/ice-tcp.test.mjs
// Env: see harness.mjs (HUDDLE_BIN, CHROMIUM, HUDDLE_E2E_FRAMES, HUDDLE_E2E_SERVER_LOG).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM, HERE, E2eFile, SdkPage, MEDIA_PAGE_READY, assertChromiumInstalled, assertPageClean,
  assertSdkBundleInstalled, chromiumArgs, huddleConfig, metricValue, sdkPageRoutes, waitForMedia,
} from './harness.mjs';

const PAGE_HTML = path.join(HERE, 'media-page.html');
const STEP_TIMEOUT_MS = 20_000;
const TEST_TIMEOUT_MS = 70_000;
const FILE_WATCHDOG_MS = 130_000;

const e2e = new E2eFile({ watchdogMs: FILE_WATCHDOG_MS, tag: 'ice-tcp' });
const { diag } = e2e;
let server;
let staticServer;
let context; // one persistent Chromium context (its profile carries the policy), a page per user

before(async () => {
  await e2e.makeTmpDir('huddle-icetcp-e2e-');
  assertSdkBundleInstalled();
  assertChromiumInstalled();
  server = await e2e.startHuddle({ config: huddleConfig(), startTimeout: 20_000 });
  staticServer = await e2e.startStaticServer(sdkPageRoutes(PAGE_HTML));
  const profile = path.join(e2e.tmpDir, 'chromium-profile');
  await fsp.mkdir(path.join(profile, 'Default'), { recursive: true });
  await fsp.writeFile(path.join(profile, 'Default', 'Preferences'),
    JSON.stringify({ webrtc: { ip_handling_policy: 'disable_non_proxied_udp' } }));
  context = e2e.addBrowser(await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, args: chromiumArgs(), timeout: 15_000,
  }));
}, { timeout: 40_000 });

after(() => e2e.teardown({ stop: { timeout: 10_000 } }), { timeout: 20_000 });

async function openPage(label) {
  const page = await context.newPage();
  await page.setViewportSize({ width: 640, height: 480 });
  const h = new SdkPage(label, {
    page, diag, stepTimeout: STEP_TIMEOUT_MS, frameLimit: 600,
    closeFn: () => page.close(),
    evalFn: (name, args) => page.evaluate(([n, a]) => window[n](...a), [name, args]),
  });
  return h.load({ origin: staticServer.origin, ready: MEDIA_PAGE_READY });
}

const metric = (name) => metricValue(server.addr, name);

// In the page: for every peer connection, its state, the selected candidate pair's local and
// remote candidates, every local candidate gathered and every pair that succeeded.
async function transports(h) {
  return h.page.evaluate(async () => Promise.all(window.__pcs.map(async (pc) => {
    const byId = {};
    (await pc.getStats()).forEach((r) => { byId[r.id] = r; });
    const all = Object.values(byId);
    const cand = (id) => {
      const c = byId[id];
      return c && { protocol: c.protocol, type: c.candidateType, address: c.address, port: c.port, tcpType: c.tcpType || null };
    };
    const transport = all.find((r) => r.type === 'transport');
    const pair = transport && byId[transport.selectedCandidatePairId];
    return {
      connectionState: pc.connectionState,
      selected: pair ? { local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId), state: pair.state } : null,
      localProtocols: [...new Set(all.filter((r) => r.type === 'local-candidate').map((r) => r.protocol))],
      succeeded: all.filter((r) => r.type === 'candidate-pair' && r.state === 'succeeded')
        .map((r) => [cand(r.localCandidateId)?.protocol, cand(r.remoteCandidateId)?.protocol]),
      remoteDescription: pc.remoteDescription && pc.remoteDescription.sdp,
    };
  })));
}

test('Chromium without UDP publishes and plays over ICE-TCP and decodes', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const wsUrl = `ws://${server.addr}/`;
  const room = 'icetcp';
  await diag.withPages([() => openPage('alice'), () => openPage('bob')], async (alice, bob) => {
    await alice.call('connect', wsUrl, 'alice');
    await bob.call('connect', wsUrl, 'bob');
    await alice.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await bob.waitFor('session ESTABLISHED', (e) => e.type === 'ESTABLISHED');
    await alice.call('join', room, {});
    const alicePub = await alice.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(alicePub.status, 'PUBLISHING', JSON.stringify(alicePub));
    await bob.call('join', room, {});
    const bobPlay = await bob.waitFor('PLAYING alice',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'alice' && e.status !== 'PENDING');
    assert.equal(bobPlay.status, 'PLAYING', JSON.stringify(bobPlay));
    const bobPub = await bob.waitFor('own stream PUBLISHING', (e) => e.type === 'PUBLISH_STATUS');
    assert.equal(bobPub.status, 'PUBLISHING', JSON.stringify(bobPub));
    const alicePlay = await alice.waitFor('PLAYING bob',
      (e) => e.type === 'PLAY_STATUS' && e.login === 'bob' && e.status !== 'PENDING');
    assert.equal(alicePlay.status, 'PLAYING', JSON.stringify(alicePlay));

    // Both ways, decoded by the browser.
    const [bobSeesAlice, aliceSeesBob] = await Promise.all([waitForMedia(bob, 'alice'), waitForMedia(alice, 'bob')]);
    t.diagnostic(`bob decodes alice: ${JSON.stringify(bobSeesAlice.last.video)}`);
    t.diagnostic(`alice decodes bob: ${JSON.stringify(aliceSeesBob.last.video)}`);
    for (const s of [bobSeesAlice.last, aliceSeesBob.last]) {
      assert.ok(s.video.framesDecoded > 10 && s.video.frameWidth > 0, JSON.stringify(s.video));
    }

    // Every peer connection (a publish and a play per page) runs over TCP to the server's passive
    // TCP candidate; the browser never had a UDP candidate, and no UDP pair ever succeeded.
    for (const h of [alice, bob]) {
      const pcs = await transports(h);
      const summary = pcs.map(({ remoteDescription, ...rest }) => rest);
      t.diagnostic(`${h.label}: ${JSON.stringify(summary)}`);
      assert.equal(pcs.length, 2, `${h.label}: a publish and a play peer connection`);
      for (const pc of pcs) {
        const sdp = pc.remoteDescription || '';
        const tcpCand = /^a=candidate:\S+ 1 tcp \d+ 127\.0\.0\.1 (\d+) typ host tcptype passive( generation \d+)?\r?$/m.exec(sdp);
        const udpCand = /^a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host( generation \d+)?\r?$/m.exec(sdp);
        assert.ok(tcpCand && udpCand, `${h.label}: the answer offers UDP and passive TCP:\n${sdp}`);
        assert.equal(pc.connectionState, 'connected', JSON.stringify(pc.selected));
        assert.equal(pc.selected?.local?.protocol, 'tcp', `${h.label}: local side of the pair: ${JSON.stringify(pc.selected)}`);
        assert.equal(pc.selected?.remote?.protocol, 'tcp', `${h.label}: remote side of the pair: ${JSON.stringify(pc.selected)}`);
        assert.equal(String(pc.selected.remote.port), tcpCand[1], `${h.label}: to the server's TCP candidate`);
        assert.deepEqual(pc.localProtocols, ['tcp'], `${h.label}: no UDP candidate gathered`);
        assert.ok(pc.succeeded.length > 0 && pc.succeeded.every(([l, r]) => l === 'tcp' && r === 'tcp'),
          `${h.label}: succeeded pairs ${JSON.stringify(pc.succeeded)}`);
      }
    }
    assert.ok(await metric('huddle_ice_tcp_connections_open') >= 4, 'four ICE-TCP connections open');
    assert.equal(await metric('huddle_ice_tcp_closed_total{reason="invalid"}'), 0);
    for (const h of [alice, bob]) assertPageClean(h, { errorsHint: `\n${diag.text()}` });
  });
});
