// The room display (/display): the device's own screen, opened by a kiosk browser. Joins the
// device's room as a viewer (publishes nothing, asks for no camera or microphone), shows every
// remote participant's stream with names (not the device's own), who is talking (from the
// device speaker's levels, GET /client/levels), the room's active speaker (the server's
// ACTIVE_SPEAKER room event: outlined, and large when there are more than two tiles), the chat,
// and the invite link with its QR code.
// Every media element is muted: the device's speaker plays the sound. Recovers by itself when
// the service restarts. All text from the network goes into the page with textContent.
import { connect } from './room-api.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const WS_URL = params.get('ws') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
const TOKEN = params.get('token') || '';
// The display's own login: not the device's ([device] login), so both can be in the room.
const LOGIN = params.get('login') || 'Room display';
const FIXED_ROOM = params.get('room'); // else the device's room
const ROOMS_POLL_MS = 2000;
const LEVELS_POLL_MS = 250;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];

let info = { name: 'Room system', invite_base: `${location.origin}/`, https: false };
let session = null;
let room = null;
let failures = 0; // consecutive failed connections (the backoff)
const tiles = new Map(); // stream name -> {el, stream, login}
const members = new Set(); // the others' logins (not the device, not this display)
let activeSpeaker = null; // login of the room's active speaker (ACTIVE_SPEAKER)

const authHeaders = () => (TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Handle for tests and debugging.
window.__display = { streams: () => (session ? [...session.streams.values()] : []), login: LOGIN };

function setStatus(state, text) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

const inviteLink = (name) => `${info.invite_base}?roomName=${encodeURIComponent(name)}`;
const qrUrl = (name) => `/client/qr.svg${name ? `?room=${encodeURIComponent(name)}` : ''}`;
const isOther = (login) => login !== info.name && login !== LOGIN;

async function getJson(path) {
  const r = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function showWaiting() {
  $('room-view').hidden = true;
  $('waiting').hidden = false;
  $('room-title').textContent = info.name;
  $('waiting-link').textContent = info.invite_base;
  $('waiting-qr').src = qrUrl('');
  $('waiting-qr').hidden = false;
}

// The room to show: ?room=, else the first live room the device is in with somebody else.
async function chooseRoom() {
  if (FIXED_ROOM) return FIXED_ROOM;
  try {
    const { rooms = [] } = await getJson('/client/rooms');
    const live = rooms.filter((r) => r.members.some(isOther));
    // The device's room; a device without camera and microphone is in none: any live room.
    return (live.find((r) => r.members.includes(info.name)) ?? live[0])?.name ?? null;
  } catch { return null; }
}

function addMessage(from, text) {
  const li = document.createElement('li');
  if (!from) li.className = 'system';
  if (from) li.append(Object.assign(document.createElement('span'), { className: 'from', textContent: from }));
  li.append(Object.assign(document.createElement('span'), { className: 'text', textContent: text }));
  $('messages').append(li);
  while ($('messages').children.length > 200) $('messages').firstElementChild.remove(); // bounded
  $('messages').scrollTop = $('messages').scrollHeight;
}

function play({ login, name }) {
  if (!room || tiles.has(name) || !isOther(login)) return;
  const stream = room.play(name);
  const el = document.importNode($('tile-template').content.firstElementChild, true);
  const screen = name.endsWith('-screenShare');
  const label = screen ? `${login} (screen)` : login;
  Object.assign(el.dataset, { login, stream: name, kind: screen ? 'screen' : 'camera' });
  el.querySelector('.name').textContent = label;
  const video = el.querySelector('video');
  video.muted = true; // the device's speaker plays the sound
  video.setAttribute('aria-label', `Video of ${label}`);
  video.srcObject = stream.media;
  stream.addEventListener('media', () => { video.srcObject = stream.media; });
  video.play().catch(() => {});
  const update = () => { el.dataset.status = stream.status; };
  update();
  stream.addEventListener('status', ({ detail: { status } }) => {
    update();
    if (['STOPPED', 'FAILED', 'UNPUBLISHED'].includes(status)) removeTile(name);
  });
  tiles.set(name, { el, stream, login });
  $('tiles').append(el);
  $('tiles').dataset.count = tiles.size;
  markSpeaker();
}

// The active speaker's camera tile: class 'speaker', data-speaker="true"; large (first, the
// whole row) when more than two tiles share the screen.
function markSpeaker() {
  for (const t of tiles.values()) {
    const on = t.login === activeSpeaker && t.el.dataset.kind === 'camera';
    t.el.classList.toggle('speaker', on);
    t.el.dataset.speaker = String(on);
  }
}

function removeTile(name) {
  const t = tiles.get(name);
  if (!t) return;
  tiles.delete(name);
  t.el.remove();
  $('tiles').dataset.count = tiles.size;
  t.stream.stop();
}

// Joins `name` and stays until the socket closes or nobody else is left; resolves then.
function stay(name) {
  return new Promise((resolve) => {
    let done = false;
    const finish = (why) => { if (!done) { done = true; resolve(why); } };
    session.addEventListener('closed', () => finish('closed'), { once: true });
    const r = session.room(name);
    room = r;
    const events = {
      STATE(state) {
        for (const entry of state) {
          if (typeof entry === 'string') { if (isOther(entry)) members.add(entry); } else {
            if (isOther(entry.login)) members.add(entry.login);
            play(entry);
          }
        }
        failures = 0;
        setStatus('joined', `${members.size} in the room`);
      },
      JOINED(login) { if (isOther(login)) { members.add(login); addMessage('', `${login} joined`); } },
      LEFT(login) {
        members.delete(login);
        for (const [n, t] of tiles) if (t.login === login) removeTile(n);
        if (isOther(login)) addMessage('', `${login} left`);
        // Nobody left to show: leave, so that the room can end; wait for the next one.
        if (!FIXED_ROOM && members.size === 0) finish('empty');
      },
      PUBLISHED(i) { play(i); },
      UNPUBLISHED(i) { removeTile(i.name); },
      FAILED(i) { removeTile(i.name); },
      MESSAGE({ from, text }) { addMessage(from, text); },
      ACTIVE_SPEAKER(i) { activeSpeaker = typeof i?.login === 'string' ? i.login : null; markSpeaker(); },
    };
    for (const [ev, handler] of Object.entries(events)) {
      r.addEventListener(ev, (e) => { if (room === r) handler(e.detail); });
    }
    $('room-title').textContent = name;
    $('invite-link').textContent = inviteLink(name);
    $('invite-qr').src = qrUrl(name);
    $('invite-qr').hidden = false;
    $('waiting').hidden = true;
    $('room-view').hidden = false;
    r.join().catch((e) => { setStatus('offline', `Cannot join: ${e.message}`); finish('refused'); });
  });
}

function reset() {
  for (const n of [...tiles.keys()]) removeTile(n);
  members.clear();
  activeSpeaker = null;
  const s = session;
  session = room = null;
  s?.close();
}

// Who is talking: the speaker path's levels, a few times a second.
async function pollLevels() {
  for (;;) {
    await sleep(LEVELS_POLL_MS);
    if (!tiles.size) continue;
    try {
      const { levels = [] } = await getJson('/client/levels');
      const talking = new Set(levels.filter((l) => l.talking).map((l) => l.stream));
      for (const [name, t] of tiles) {
        t.el.classList.toggle('talking', talking.has(name));
        t.el.dataset.talking = String(talking.has(name));
      }
    } catch { /* the service is restarting: the main loop notices */ }
  }
}

async function main() {
  for (;;) {
    try {
      info = { ...info, ...(await getJson('/client/info')) };
    } catch {
      setStatus('offline', 'Waiting for the service…');
      await sleep(BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)]);
      continue;
    }
    const name = await chooseRoom();
    if (!name) {
      showWaiting();
      setStatus('offline', 'Waiting for people');
      await sleep(ROOMS_POLL_MS);
      continue;
    }
    try {
      setStatus('connecting', 'Connecting…');
      session = await connect(WS_URL, LOGIN, { token: TOKEN || undefined });
    } catch {
      session = null;
      setStatus('offline', 'Connection lost: retrying…');
      await sleep(BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)]);
      continue;
    }
    const why = await stay(name);
    if (why === 'empty') {
      try { await room?.leave(); } catch { /* closing anyway */ }
    }
    reset();
    $('messages').replaceChildren();
    if (why !== 'empty') {
      setStatus('offline', 'Connection lost: retrying…');
      await sleep(BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)]);
    }
  }
}

pollLevels();
main();
