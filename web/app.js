// Huddle's own web app: join a room, publish the camera, play everybody else, chat, share a
// screen. Talks to the server through room-api.js. All text from the network is put into the
// page with textContent, never as HTML.
import { connect, randomHex } from './room-api.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// Served by Huddle, the WebSocket is on the page's own host and port; ?ws= points elsewhere.
const WS_URL = params.get('ws') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
const CAMERA = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24, max: 30 } };
const STATUS_TEXT = { NEW: 'starting…', PENDING: 'connecting…', PUBLISHING: 'live', PLAYING: 'live' };
// The meeting-room device's own participant (its [device] login): a room holding only the
// device is still a new room, and whoever joins it first is its creator.
// /client/info names it; ?device= overrides.
let DEVICE_LOGIN = params.get('device') || 'Room system';
// GET /client/info: {name, invite_base, https, max_name_chars}; null until answered (or when
// the page is not served by Huddle).
let deviceInfo = null;
let maxNameChars = 128;
// [media] simulcast_min_participants (from /client/info): the camera goes out in three
// layers when the room has at least this many people (0: never).
let simulcastFrom = 3;
const ROOMS_POLL_MS = 3000;
// Token mode: ?token=<JWT>, sent as custom.token; a payload with "moderator": true makes this
// page a moderator (the server decides; the page only chooses which controls to show).
const TOKEN = params.get('token') || '';
const KIND_TEXT = { audio: 'microphone', video: 'video' };
const OWN_BUTTON = { audio: ['mute-audio', 'audio'], video: ['mute-video', 'video'] };
// Close reasons of a session the server ended on purpose: no "connection lost", no rejoin.
const CLOSE_TEXT = {
  'Removed from the room by a moderator': 'You were removed from the room',
  'The room was closed': 'The room was closed',
};

let session = null;
let room = null;
let media = null; // Promise<{stream?, error?}> of the camera, started at the Join click
let camera = null; // own MediaStream
let cameraPub = null; // own camera Stream
let screenPub = null; // own screen share Stream
const participants = new Set(); // other members' logins: chat goes to each of them
const tiles = new Map(); // stream name -> {el, stream, login, muted: {audio, video}}
let moderator = false; // shows the moderation controls on the others' tiles
let forced = { audio: null, video: null }; // own track muted by a moderator: {by, wasEnabled}

// Handle for tests and debugging: the live Streams (each with .pc, .name, .status).
window.__huddle = { streams: () => (session ? [...session.streams.values()] : []) };

try { $('login').value = localStorage.getItem('huddle.login') || ''; } catch { /* storage disabled */ }
$('room').value = params.get('roomName') || `room-${randomHex(3)}`;

// The JWT's payload (base64url JSON), not verified: only the server's checks count.
function tokenClaims(token) {
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    return JSON.parse(json) ?? {};
  } catch { return {}; }
}
const TOKEN_MODERATOR = Boolean(TOKEN) && tokenClaims(TOKEN).moderator === true;

function setModerator(on) {
  moderator = on;
  document.body.dataset.moderator = String(on); // the CSS shows the tiles' moderation controls
}

function setStatus(state, text) {
  $('status').textContent = text;
  $('status').dataset.state = state; // colours the dot
}
function show(id, text) { Object.assign($(id), { textContent: text, hidden: !text }); }

// The page's own origin when people reached the device over HTTPS by a name or address that is
// not loopback (it works for them, and its certificate fits); else the device's advertised
// address from /client/info (never 127.0.0.1/localhost of a page on the device's own screen, and
// HTTPS when it is on); the page's origin when the page is not served by Huddle.
const PAGE_IS_REACHABLE = location.protocol === 'https:' && !/^(localhost|127\.|\[::1\]$|\[::ffff:127\.)/i.test(location.hostname);
function inviteLink(name) {
  const own = `${location.origin}${location.pathname}`;
  const base = (!PAGE_IS_REACHABLE && deviceInfo?.invite_base) || own;
  let link = `${base}?roomName=${encodeURIComponent(name)}`;
  if (params.has('ws')) link += `&ws=${encodeURIComponent(WS_URL)}`; // keep a non-default server
  return link;
}

// Camera and microphone, else whichever of them exists. Never rejects: without devices (or
// without permission, or on a plain-http page) the user still joins to watch and chat.
async function getMedia() {
  const cam = $('camera-select').value;
  const mic = $('mic-select').value;
  if (cam === 'none' && mic === 'none') return { error: 'you chose to join without them' };
  if (!navigator.mediaDevices?.getUserMedia) return { error: 'the browser allows them only on HTTPS pages' };
  const video = cam === 'none' ? false : { ...CAMERA, ...(cam ? { deviceId: { exact: cam } } : {}) };
  const audio = mic === 'none' ? false : (mic ? { deviceId: { exact: mic } } : true);
  const tries = [{ audio, video }, { audio }, { video }].filter((c) => c.audio || c.video);
  let error;
  for (const c of tries) {
    try { return { stream: await navigator.mediaDevices.getUserMedia(c) }; } catch (e) {
      error = e;
      if (e.name === 'NotAllowedError' || e.name === 'SecurityError') break; // asking again will not help
    }
  }
  const reasons = { NotAllowedError: 'permission denied', NotFoundError: 'no device found', NotReadableError: 'device busy' };
  return { error: reasons[error.name] || error.message };
}

$('join-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const login = $('login').value.trim();
  const roomName = $('room').value.trim();
  const problem = nameProblem('your name', login) || nameProblem('the room name', roomName);
  if (problem) { show('error', problem); (nameProblem('your name', login) ? $('login') : $('room')).focus(); return; }
  stopCheck();
  try { localStorage.setItem('huddle.login', login); } catch { /* storage disabled */ }
  show('error', '');
  show('notice', '');
  show('mod-info', '');
  $('messages').replaceChildren();
  $('join').disabled = true;
  setStatus('connecting', 'Connecting…');
  media = getMedia(); // asked now, within the click, in parallel with the signalling
  try {
    session = await connect(WS_URL, login, { token: TOKEN || undefined });
    session.addEventListener('closed', onClosed);
    const r = session.room(roomName);
    room = r;
    for (const [name, handler] of Object.entries(roomEvents)) {
      r.addEventListener(name, (ev) => { if (room === r) handler(ev.detail); }); // ignore a left room
    }
    await room.join(); // STATE follows and does the rest
  } catch (err) {
    // e.g. "Room is full: at most 3 participants", "Room already has user with such login"
    show('error', `Cannot join: ${err.message}`);
    teardown('Not connected');
  }
});

const roomEvents = {
  async STATE(info) {
    const r = room;
    setStatus('joined', `In room “${r.name}” as ${session.login}`);
    $('join-form').hidden = $('landing').hidden = true;
    $('call').hidden = false;
    $('invite').value = inviteLink(r.name);
    if (deviceInfo) {
      $('invite-qr').src = `/client/qr.svg?room=${encodeURIComponent(r.name)}`;
      $('invite-qr').hidden = false;
      $('invite-note').hidden = deviceInfo.https;
    }
    // A member who publishes nothing is a bare login; one who does is a {login, name} per stream.
    // Nobody here but maybe the device: this page created the room.
    const logins = info.map((entry) => (typeof entry === 'string' ? entry : entry.login));
    setModerator(TOKEN_MODERATOR || logins.every((l) => l === DEVICE_LOGIN));
    for (const entry of info) {
      if (typeof entry === 'string') participants.add(entry);
      else { participants.add(entry.login); play(entry); }
    }
    const { stream, error } = await media;
    if (room !== r) { stream?.getTracks().forEach((t) => t.stop()); return; } // left meanwhile
    if (!stream) {
      show('notice', `No camera or microphone (${error}): you joined without sending video or sound; you can still watch and chat.`);
    } else {
      camera = stream;
      const people = new Set(logins).size + 1;
      const simulcast = simulcastFrom > 0 && people >= simulcastFrom;
      // Three layers need a picture worth dividing: ask the camera for 720p then.
      const track = simulcast && camera.getVideoTracks()[0];
      if (track) await track.applyConstraints({ width: { ideal: 1280 }, height: { ideal: 720 } }).catch(() => {});
      if (room !== r) { camera.getTracks().forEach((t) => t.stop()); camera = null; return; }
      cameraPub = r.publish(camera, undefined, { simulcast });
      addTile(cameraPub, 'You', { login: session.login, local: true });
    }
    $('mute-audio').disabled = !camera?.getAudioTracks().length || Boolean(forced.audio);
    $('mute-video').disabled = !camera?.getVideoTracks().length || Boolean(forced.video);
  },
  JOINED(login) { participants.add(login); addMessage('', `${login} joined`); },
  LEFT(login) {
    participants.delete(login);
    for (const [name, t] of tiles) if (t.login === login) removeTile(name);
    addMessage('', `${login} left`);
  },
  PUBLISHED(info) { play(info); },
  UNPUBLISHED(info) { removeTile(info.name); },
  FAILED(info) { removeTile(info.name); },
  MESSAGE({ from, text }) { addMessage(from, text); },
  ACTIVE_SPEAKER(info) { showSpeaker(info); },
};

// Camera and screen share of one member are separate streams, shown as separate tiles.
function play({ login, name }) {
  if (tiles.has(name) || !room) return;
  const isScreen = name.endsWith('-screenShare');
  addTile(room.play(name), isScreen ? `${login} (screen)` : login, { login, screen: isScreen });
}

function addTile(stream, label, { login, local = false, screen = false }) {
  // importNode, not cloneNode: a clone would belong to the template's inert document, where
  // Firefox refuses to play media.
  const el = document.importNode($('tile-template').content.firstElementChild, true);
  Object.assign(el.dataset, { login, stream: stream.name, kind: screen ? 'screen' : 'camera' });
  el.classList.toggle('local', local);
  el.querySelector('.name').textContent = label;
  const video = el.querySelector('video');
  video.setAttribute('aria-label', `Video of ${label}`);
  // Own preview: muted (no echo; and Safari autoplays only muted media), mirrored via CSS.
  video.muted = local;
  video.srcObject = stream.media;
  // A play of a stream without video (no camera) or audio: only the kinds it has.
  stream.addEventListener('media', () => { video.srcObject = stream.media; });
  video.play().catch((e) => {
    if (local || e.name !== 'NotAllowedError') return;
    // Autoplay with sound refused (no user gesture yet): play muted and offer a button.
    const button = el.querySelector('.unmute');
    video.muted = true;
    video.play().catch(() => {});
    button.hidden = false;
    button.onclick = () => { video.muted = false; video.play().catch(() => {}); button.hidden = true; };
  });
  const update = () => {
    el.dataset.status = stream.status;
    el.querySelector('.state').textContent = STATUS_TEXT[stream.status] ?? stream.status.toLowerCase();
  };
  update();
  stream.addEventListener('status', ({ detail: { status, info } }) => {
    update();
    if (status === 'FAILED' && local) show('error', `Sending ${screen ? 'your screen' : 'your video'} failed: ${info}`);
    if (status === 'FAILED' && !local) addMessage('', `Cannot show ${label}: ${info}`); // e.g. "No common codecs"
    if (['STOPPED', 'FAILED', 'UNPUBLISHED'].includes(status)) removeTile(stream.name);
  });
  const t = { el, stream, login, local, muted: { audio: false, video: false }, layer: null };
  // Another member's tile asks its simulcast layer once it plays (see applyLayers).
  if (!local) stream.addEventListener('status', ({ detail: { status } }) => { if (status === 'PLAYING') applyLayers(); });
  setupModeration(t, label, screen);
  stream.addEventListener('event', ({ detail }) => onStreamEvent(t, detail));
  tiles.set(stream.name, t);
  speakerTile(t);
  $('tiles')[local ? 'prepend' : 'append'](el); // own tiles first
  $('tiles').dataset.count = tiles.size; // the CSS picks a layout per count
}

// Which simulcast layer each played tile asks for: with a focused tile (the pinned one, else
// the active speaker's; see focusedName), 'high' for it and 'low' for the small ones;
// without, 'auto'. Streams without layers ignore it.
function applyLayers() {
  const focused = focusedName();
  for (const [name, t] of tiles) {
    if (t.local || t.stream.status !== 'PLAYING') continue;
    const layer = focused === null ? 'auto' : (name === focused ? 'high' : 'low');
    if (t.layer === layer) continue;
    t.layer = layer;
    t.stream.setLayer(layer).catch(() => { t.layer = null; });
  }
}

function removeTile(name) {
  const t = tiles.get(name);
  if (!t) return;
  tiles.delete(name);
  applyLayers();
  t.el.remove();
  $('tiles').dataset.count = tiles.size;
  t.stream.stop(); // no-op when the server ended it already
  if (t.stream === screenPub) endShare();
  if (t.stream === cameraPub) { // failed or ended: release the camera, nothing left to mute
    camera.getTracks().forEach((track) => track.stop());
    camera = cameraPub = null;
    $('mute-audio').disabled = $('mute-video').disabled = true;
  }
}

// Mute state from notifyStreamEvent: {type: audioMuted|audioUnmuted|videoMuted|videoUnmuted,
// streamName, login, by}; by = the moderator (or "administrator"), null = the member itself.
function onStreamEvent(t, { type, by }) {
  const m = /^(audio|video)(Muted|Unmuted)$/.exec(type ?? '');
  if (!m || tiles.get(t.stream.name) !== t) return;
  const [, kind, what] = m;
  const muted = what === 'Muted';
  setTileMuted(t, kind, muted);
  // Own camera muted or unmuted by somebody else: a notice and the own controls follow.
  if (t.stream === cameraPub && by != null) ownForced(kind, muted, String(by));
}

function setTileMuted(t, kind, muted) {
  t.muted[kind] = muted;
  t.el.dataset[`${kind}Muted`] = String(muted);
  t.el.querySelector(`.badge.${kind}-off`).hidden = !muted;
  const button = t.el.querySelector(`.mod-${kind}`);
  if (!button) return;
  const text = kind === 'audio' ? (muted ? 'Unmute mic' : 'Mute mic') : (muted ? 'Allow video' : 'Stop video');
  button.textContent = text;
  button.setAttribute('aria-label', `${text} of ${t.login}`);
  button.setAttribute('aria-pressed', String(muted));
}

// Moderation controls of another member's camera tile: hidden by the CSS unless this page
// is a moderator; the server checks again and may refuse.
function setupModeration(t, label, screen) {
  const box = t.el.querySelector('.mod');
  if (t.local || screen) { box.remove(); return; }
  box.setAttribute('aria-label', `Moderate ${label}`);
  for (const kind of ['audio', 'video']) {
    const button = box.querySelector(`.mod-${kind}`);
    button.onclick = () => moderate(t.login, kind === 'audio' ? 'mic' : 'video', { [kind]: !t.muted[kind] });
  }
  const kick = box.querySelector('.mod-kick');
  kick.setAttribute('aria-label', `Remove ${t.login} from the room`);
  kick.onclick = () => {
    if (!window.confirm(`Remove ${t.login} from the room?`)) return;
    moderate(t.login, 'removal', null);
  };
  for (const kind of ['audio', 'video']) setTileMuted(t, kind, false); // labels
}

async function moderate(login, what, mute) {
  const r = room;
  if (!r) return;
  show('mod-info', '');
  try {
    await (mute ? r.mute(login, mute) : r.kick(login));
  } catch (err) {
    // e.g. "Restricted access: only the room's creator or a moderator may do this"
    if (room === r) show('mod-info', `${what === 'removal' ? 'Remove' : `Mute ${what}`} of ${login} refused: ${err.message}`);
  }
}

// A moderator (or the administrator) muted or unmuted this page's own microphone or video.
// While muted the server does not forward the track: the track is disabled here too, and the
// own button shows it and cannot undo it.
function ownForced(kind, muted, by) {
  const track = camera?.getTracks().find((x) => x.kind === kind);
  const [id] = OWN_BUTTON[kind];
  if (muted) {
    if (!forced[kind]) forced[kind] = { wasEnabled: track?.enabled ?? true };
    forced[kind].by = by;
    if (track) track.enabled = false;
  } else if (forced[kind]) {
    if (track) track.enabled = forced[kind].wasEnabled;
    forced[kind] = null;
    // Muted by oneself before the moderator did: still muted, the others must know.
    if (track && !track.enabled) cameraPub?.event(`${kind}Muted`);
  }
  setOwnButton(kind);
  $(id).disabled = !track || Boolean(forced[kind]);
  $(id).title = forced[kind] ? `Muted by ${by}` : '';
  show('notice', `Your ${KIND_TEXT[kind]} was ${muted ? 'muted' : 'unmuted'} by ${by}`);
}

function setOwnButton(kind) {
  const [id, word] = OWN_BUTTON[kind];
  const track = camera?.getTracks().find((x) => x.kind === kind);
  const muted = Boolean(track && !track.enabled);
  $(id).setAttribute('aria-pressed', String(muted));
  $(id).textContent = `${muted ? 'Unmute' : 'Mute'} ${word}`;
  const own = cameraPub && tiles.get(cameraPub.name);
  if (own) setTileMuted(own, kind, muted);
}

function addMessage(from, text) {
  const li = document.createElement('li');
  if (!from) li.className = 'system';
  if (from) li.append(Object.assign(document.createElement('span'), { className: 'from', textContent: from }));
  li.append(Object.assign(document.createElement('span'), { className: 'text', textContent: text }));
  $('messages').append(li);
  $('messages').scrollTop = $('messages').scrollHeight; // (scrollIntoView would scroll the page too)
}

// The server delivers a message to one addressee, so it is sent once per participant.
$('chat-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('chat-text').value;
  if (!text.trim() || !room) return;
  $('chat-text').value = '';
  addMessage(session.login, text);
  const r = room;
  const to = [...participants];
  const results = await Promise.allSettled(to.map((login) => r.sendMessage(login, text)));
  const lost = to.filter((_, i) => results[i].status === 'rejected');
  if (lost.length) addMessage('', `Not delivered to ${lost.join(', ')}`);
});
$('chat-text').addEventListener('keydown', (e) => {
  // Enter sends, Shift+Enter is a new line; not while an IME composes (CJK input).
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); $('chat-form').requestSubmit(); }
});

function toggleMute(kind, button) {
  const track = camera?.getTracks().find((t) => t.kind === kind);
  if (!track) return;
  if (!track || forced[kind]) return; // a moderator's mute is undone by a moderator only
  track.enabled = !track.enabled; // sends silence / black frames; the stream stays up
  const muted = !track.enabled;
  setOwnButton(kind);
  // After the track is off: the others' tiles show the badge.
  cameraPub?.event(`${kind}${muted ? 'Muted' : 'Unmuted'}`);
}
$('mute-audio').onclick = (e) => toggleMute('audio', e.currentTarget);
$('mute-video').onclick = (e) => toggleMute('video', e.currentTarget);

$('share').onclick = async () => {
  if (screenPub) { removeTile(screenPub.name); return; }
  if (!navigator.mediaDevices?.getDisplayMedia) { show('error', 'This browser cannot share the screen.'); return; }
  let screen;
  try {
    screen = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 15 } }, audio: false });
  } catch (e) {
    if (e.name !== 'NotAllowedError') show('error', `Cannot share the screen: ${e.message}`); // else: user cancelled
    return;
  }
  if (!room || screenPub) { screen.getTracks().forEach((t) => t.stop()); return; }
  screenPub = room.publish(screen, 'screenShare');
  addTile(screenPub, 'You (screen)', { login: session.login, local: true, screen: true });
  // The browser's own "Stop sharing" control ends the track: end the stream with it.
  screen.getVideoTracks()[0].addEventListener('ended', () => screenPub && removeTile(screenPub.name));
  $('share').textContent = 'Stop sharing';
  $('share').setAttribute('aria-pressed', 'true');
};
function endShare() {
  screenPub.media.getTracks().forEach((t) => t.stop());
  screenPub = null;
  $('share').textContent = 'Share screen';
  $('share').setAttribute('aria-pressed', 'false');
}

$('leave').onclick = async () => {
  $('leave').disabled = true;
  try { await room?.leave(); } catch { /* the client-side cleanup runs anyway */ }
  teardown('Left the room');
};

$('copy-invite').onclick = async () => {
  $('invite').select();
  try { await navigator.clipboard.writeText($('invite').value); show('notice', 'Invite link copied.'); } catch {
    show('notice', 'Copy the selected link.'); // clipboard API needs HTTPS
  }
};

function onClosed(e) {
  if (e.target !== session) return; // an old session we closed ourselves
  // Removed by a moderator or the room closed: said so, and never rejoined automatically.
  const { code, reason } = e.detail ?? {};
  const ended = code === 1000 && CLOSE_TEXT[reason];
  show('error', ended || 'Connection to the server lost.');
  teardown(ended || 'Disconnected');
}

function teardown(statusText) {
  for (const name of [...tiles.keys()]) removeTile(name);
  speaker = { login: null, pinned: null };
  media?.then(({ stream }) => stream?.getTracks().forEach((t) => t.stop()));
  const s = session;
  session = room = media = camera = cameraPub = null;
  s?.close();
  participants.clear();
  forced = { audio: null, video: null };
  setModerator(false);
  show('mod-info', '');
  $('call').hidden = true;
  $('join-form').hidden = $('landing').hidden = false;
  $('join').disabled = $('leave').disabled = false;
  refreshLanding();
  for (const [id, text] of [['mute-audio', 'Mute audio'], ['mute-video', 'Mute video']]) {
    $(id).textContent = text;
    $(id).setAttribute('aria-pressed', 'false');
    $(id).title = '';
  }
  setStatus('offline', statusText);
}

// ----- The landing page: names, the device check, live rooms, records --------------------------

// Characters as people count them (grapheme clusters), as the server counts.
function graphemes(text) {
  if (typeof Intl?.Segmenter !== 'function') return [...text].length;
  let n = 0;
  for (const _ of new Intl.Segmenter(undefined, { granularity: 'grapheme' }).segment(text)) n += 1;
  return n;
}

// A visible reason why `value` (already trimmed) cannot be a name, or ''.
function nameProblem(what, value) {
  if (!value) return `Please enter ${what}: it cannot be empty or only spaces.`;
  if (graphemes(value) > maxNameChars) return `${what[0].toUpperCase()}${what.slice(1)} is too long: at most ${maxNameChars} characters.`;
  return '';
}

// The camera and microphone check: a preview of the chosen camera, a level meter of the chosen
// microphone, the devices to choose from. Stopped at Join (the call asks for its own media).
let check = null; // {stream, ctx, raf}
function stopCheck() {
  if (!check) return;
  check.stream?.getTracks().forEach((t) => t.stop());
  cancelAnimationFrame(check.raf);
  check.ctx?.close().catch(() => {});
  check = null;
  $('preview').srcObject = null;
  $('mic-level').value = 0;
}

async function fillDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [id, kind, word] of [['camera-select', 'videoinput', 'Camera'], ['mic-select', 'audioinput', 'Microphone']]) {
    const select = $(id);
    const chosen = select.value;
    const keep = [...select.options].filter((o) => o.value === '' || o.value === 'none');
    const found = devices.filter((d) => d.kind === kind && d.deviceId && d.deviceId !== 'default');
    select.replaceChildren(...keep, ...found.map((d, i) => Object.assign(document.createElement('option'), {
      value: d.deviceId, textContent: d.label || `${word} ${i + 1}`,
    })));
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }
}

async function startCheck() {
  stopCheck();
  show('check-message', '');
  if (!navigator.mediaDevices?.getUserMedia) {
    show('check-message', 'The browser allows the camera and microphone only on HTTPS pages: you can still join to watch and chat.');
    return;
  }
  const mine = {};
  check = mine;
  const { stream, error } = await getMedia();
  if (check !== mine) { stream?.getTracks().forEach((t) => t.stop()); return; }
  if (!stream) {
    check = null;
    show('check-message', `No camera or microphone (${error}): you can still join without them, to listen, watch and chat.`);
    return;
  }
  mine.stream = stream;
  try { await fillDevices(); } catch { /* the lists stay as they are */ }
  if (!stream.getVideoTracks().length) show('check-message', 'No camera: you will join with sound only.');
  else if (!stream.getAudioTracks().length) show('check-message', 'No microphone: you will join with video only.');
  $('preview').srcObject = stream.getVideoTracks().length ? new MediaStream(stream.getVideoTracks()) : null;
  if (stream.getAudioTracks().length) {
    const ctx = new AudioContext();
    mine.ctx = ctx;
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (check !== mine) return;
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const x of samples) sum += x * x;
      const rms = Math.sqrt(sum / samples.length);
      // -60 dBFS .. 0 dBFS as 0..1, like the device's own meter.
      $('mic-level').value = rms > 1e-6 ? Math.min(1, Math.max(0, (20 * Math.log10(rms) + 60) / 60)) : 0;
      mine.raf = requestAnimationFrame(tick);
    };
    ctx.resume().catch(() => {});
    tick();
  }
}
$('check-start').onclick = () => { startCheck(); };
for (const id of ['camera-select', 'mic-select']) $(id).addEventListener('change', () => { if (check) startCheck(); });

// Live rooms with who is in them; a click joins (or fills the room and asks for a name).
function renderRooms(rooms) {
  const items = rooms.map((r) => {
    const li = document.createElement('li');
    li.dataset.room = r.name;
    const name = Object.assign(document.createElement('span'), { className: 'room-name', textContent: r.name });
    const members = Object.assign(document.createElement('span'), { className: 'members', textContent: r.members.join(', ') });
    const button = Object.assign(document.createElement('button'), { type: 'button', textContent: 'Join' });
    button.setAttribute('aria-label', `Join ${r.name}`);
    button.onclick = () => {
      $('room').value = r.name;
      if ($('login').value.trim()) $('join-form').requestSubmit();
      else { $('login').focus(); show('notice', 'Enter your name to join.'); }
    };
    li.append(name, members, button);
    return li;
  });
  $('rooms-list').replaceChildren(...items);
  $('no-rooms').hidden = items.length > 0;
}

const authHeaders = () => (TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {});

async function refreshRooms() {
  try {
    const r = await fetch('/client/rooms', { headers: authHeaders(), cache: 'no-store' });
    if (!r.ok) { $('live').hidden = true; return; }
    const { rooms } = await r.json();
    $('live').hidden = false;
    renderRooms(Array.isArray(rooms) ? rooms : []);
  } catch { $('live').hidden = true; }
}

async function refreshRecords() {
  try {
    const r = await fetch('/client/records', { headers: { Accept: 'application/json', ...authHeaders() }, cache: 'no-store' });
    if (!r.ok) { $('records').hidden = true; return; }
    const { records = [] } = await r.json();
    const items = records.slice(0, 5).map((rec) => {
      const li = document.createElement('li');
      const a = Object.assign(document.createElement('a'), { href: rec.url, textContent: `${rec.room} — ${rec.stream ?? 'room'} (${rec.started})` });
      li.append(a);
      return li;
    });
    $('records-list').replaceChildren(...items);
    $('records').hidden = items.length === 0;
  } catch { $('records').hidden = true; }
}

function refreshLanding() {
  if (!$('landing').hidden) { refreshRooms(); refreshRecords(); }
}

async function loadInfo() {
  try {
    const r = await fetch('/client/info', { cache: 'no-store' });
    if (!r.ok) return;
    const info = await r.json();
    deviceInfo = info;
    if (!params.get('device') && info.name) DEVICE_LOGIN = info.name;
    if (info.name) { $('device-name').textContent = info.name; document.title = `${info.name} — Huddle`; }
    if (Number.isInteger(info.max_name_chars)) maxNameChars = info.max_name_chars;
    if (Number.isInteger(info.simulcast_min_participants)) simulcastFrom = info.simulcast_min_participants;
  } catch { /* not served by Huddle: the page's own origin */ }
}

if (!params.has('ws')) { // served by Huddle (else these routes are another server's)
  loadInfo();
  refreshLanding();
  setInterval(() => { if (!$('landing').hidden) refreshRooms(); }, ROOMS_POLL_MS);
} else {
  $('live').hidden = true;
}

// ----- The active speaker: the server's ACTIVE_SPEAKER room event ------------------------------
// {login, name}: the room's dominant speaker (from the audio levels of every publisher) and the
// stream it talks in. Its camera tile is highlighted (data-speaking) and, unless the user pinned
// a tile, focused: shown large first (data-focused; a remote tile only, never one's own preview).
let speaker = { login: null, pinned: null }; // pinned: the stream name of the pinned tile

function showSpeaker({ login } = {}) {
  speaker.login = typeof login === 'string' ? login : null;
  for (const t of tiles.values()) speakerTile(t);
  applyLayers();
}

function focusedName() {
  if (speaker.pinned && tiles.has(speaker.pinned)) return speaker.pinned;
  const t = [...tiles.values()].find((x) => !x.local && x.login === speaker.login && x.el.dataset.kind === 'camera');
  return t?.stream.name ?? null;
}

// Marks one tile (called for every tile when the speaker or the pin changes, and for a new one).
function speakerTile(t) {
  const { el } = t;
  if (!el.querySelector('.pin')) {
    const pin = Object.assign(document.createElement('button'), { type: 'button', className: 'pin', textContent: 'Pin' });
    pin.setAttribute('aria-pressed', 'false');
    pin.setAttribute('aria-label', `Pin ${el.querySelector('.name').textContent}`);
    pin.onclick = () => {
      speaker.pinned = speaker.pinned === t.stream.name ? null : t.stream.name;
      for (const x of tiles.values()) speakerTile(x);
      applyLayers();
    };
    el.append(pin);
  }
  const speaking = t.login === speaker.login && el.dataset.kind === 'camera';
  el.dataset.speaking = String(speaking);
  el.classList.toggle('speaking', speaking);
  const focused = focusedName();
  el.dataset.focused = String(focused === t.stream.name);
  el.dataset.pinned = String(speaker.pinned === t.stream.name);
  el.querySelector('.pin').setAttribute('aria-pressed', String(speaker.pinned === t.stream.name));
  el.querySelector('.pin').textContent = speaker.pinned === t.stream.name ? 'Unpin' : 'Pin';
}
