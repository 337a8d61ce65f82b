// A small client for the Flashphoner WCS Room API as spoken by Huddle (see ROOM_PROTOCOL.md).
// Every frame is {message, data:[...]}; room commands go through sendData and are answered by
// a DataStatusEvent carrying the same operationId; room events arrive as OnDataEvent; media is
// WebRTC where the browser always offers and the server answers with setRemoteSDP.

const TERMINAL = new Set(['UNPUBLISHED', 'STOPPED', 'FAILED']);
const REQUEST_TIMEOUT_MS = 10_000;

// crypto.getRandomValues works on plain-http LAN pages too (crypto.randomUUID needs a secure
// context), and viewing a room must work there even though the camera cannot.
export const randomHex = (bytes) =>
  Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
const uuid = () => randomHex(16).replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');

// Opens the WebSocket and resolves with a Session once the server has sent getUserData.
// `token`: a JWT for servers in token mode, sent as custom.token.
export function connect(url, login, { token, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const session = new Session(url, login, token);
    const timer = setTimeout(() => { session.close(); reject(new Error('Server did not answer')); }, timeoutMs);
    session.addEventListener('established', () => { clearTimeout(timer); resolve(session); }, { once: true });
    session.addEventListener('closed', () => { clearTimeout(timer); reject(new Error('Cannot connect to the server')); }, { once: true });
  });
}

class Session extends EventTarget {
  constructor(url, login, token) {
    super();
    this.login = login;
    this.ops = new Map(); // operationId -> {resolve, reject} of a pending sendData
    this.rooms = new Map(); // room name -> Room
    this.streams = new Map(); // mediaSessionId -> Stream, until its terminal status
    this.ws = new WebSocket(url);
    this.ws.onopen = () => this.send('connection', {
      appKey: 'roomApp', mediaProviders: ['WebRTC'], clientVersion: '2.0',
      clientOSVersion: navigator.appVersion, clientBrowserVersion: navigator.userAgent, custom: token ? { login, token } : { login },
    });
    this.ws.onmessage = (e) => { if (typeof e.data === 'string') this.receive(JSON.parse(e.data)); };
    this.ws.onclose = (e) => this.closed(e);
  }

  send(message, arg) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ message, data: [arg] }));
  }

  receive({ message, data = [] }) {
    const [d] = data;
    switch (message) {
      case 'ping': this.send('pong', null); break;
      case 'getUserData': this.dispatchEvent(new Event('established')); break;
      case 'DataStatusEvent': {
        const op = this.ops.get(d.operationId);
        this.ops.delete(d.operationId);
        if (d.status === 'ACCEPTED') op?.resolve();
        else op?.reject(new Error(d.info || 'Request failed'));
        break;
      }
      case 'OnDataEvent': this.rooms.get(d.payload?.roomName)?.handle(d.payload); break;
      // setRemoteSDP has positional arguments: [mediaSessionId, sdp, isInitiator].
      case 'setRemoteSDP': this.streams.get(data[0])?.answer(data[1]); break;
      case 'notifyStreamStatusEvent': this.streams.get(d.mediaSessionId)?.setStatus(d.status, d.info); break;
      // Mute state of a stream (audioMuted, audioUnmuted, videoMuted, videoUnmuted), addressed to
      // the receiver's own player or publish; payload {streamName, login, by}.
      case 'notifyStreamEvent':
        this.streams.get(d.mediaSessionId)?.dispatchEvent(new CustomEvent('event', { detail: { type: d.type, ...d.payload } }));
        break;
      default: break; // getVersion, ...: nothing to do
    }
  }

  // A room command; resolves on ACCEPTED, rejects with the server's info text on FAILED.
  sendData(command, options) {
    const operationId = uuid();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.ops.delete(operationId); reject(new Error(`No answer to ${command}`)); }, REQUEST_TIMEOUT_MS);
      const done = (f) => (v) => { clearTimeout(timer); f(v); };
      this.ops.set(operationId, { resolve: done(resolve), reject: done(reject) });
      if (this.ws.readyState !== WebSocket.OPEN) this.ops.get(operationId).reject(new Error('Not connected'));
      else this.send('sendData', { operationId, payload: { command, options } });
    });
  }

  // Returns the Room at once so that handlers are in place before STATE can arrive.
  room(name) {
    const room = new Room(this, name);
    this.rooms.set(name, room);
    return room;
  }

  close() { this.ws.close(); }

  closed(e) {
    // As in the SDK: a lost socket fails every live stream and every pending command.
    for (const s of [...this.streams.values()]) s.setStatus('FAILED', 'Disconnected');
    for (const op of [...this.ops.values()]) op.reject(new Error('Disconnected'));
    this.ops.clear();
    this.dispatchEvent(new CustomEvent('closed', { detail: { code: e.code, reason: e.reason } }));
  }
}

// Room events are re-dispatched as CustomEvents named after the server's event (STATE, JOINED,
// LEFT, PUBLISHED, UNPUBLISHED, FAILED, MESSAGE) with the event's info as detail.
class Room extends EventTarget {
  constructor(session, name) { super(); this.session = session; this.name = name; }

  handle(payload) { this.dispatchEvent(new CustomEvent(payload.name, { detail: payload.info })); }

  join() { return this.session.sendData('join', { name: this.name, record: false }); }

  async leave() {
    try {
      await this.session.sendData('leave', { name: this.name });
    } finally {
      this.session.rooms.delete(this.name);
      for (const s of this.session.streams.values()) if (s.room === this) s.stop();
    }
  }

  // Moderation (the room's creator or a moderator's token): the promise rejects with the
  // server's reason, e.g. "Restricted access: ...".
  kick(login) { return this.session.sendData('kick', { name: this.name, login }); }

  // `mute`: {audio?: bool, video?: bool}, true = muted, false = unmuted.
  mute(login, mute) { return this.session.sendData('mute', { name: this.name, login, ...mute }); }

  sendMessage(to, text) { return this.session.sendData('sendMessage', { roomConfig: { name: this.name }, to, text }); }

  // Name rule of the SDK's room module: <room>-<login>-<4 hex>[-suffix].
  // `simulcast`: the video goes out in three layers (rids q, h, f: quarter, half and full
  // size); the server gives each player one of them.
  publish(mediaStream, suffix, { simulcast = false } = {}) {
    const name = `${this.name}-${this.session.login}-${randomHex(2)}${suffix ? `-${suffix}` : ''}`;
    return new Stream(this, name, true, mediaStream, simulcast);
  }

  play(name) { return new Stream(this, name, false); }
}

// One publish or play: one RTCPeerConnection, one mediaSessionId. Fires 'status' events, and
// 'event' ({type, streamName, login, by}) for the stream's mute notices.
// Simulcast layers low -> high, as the server orders rids q/h/f.
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

class Stream extends EventTarget {
  constructor(room, name, published, mediaStream, simulcast = false) {
    super();
    Object.assign(this, { room, name, published, id: uuid(), status: 'NEW', info: '' });
    this.session = room.session;
    this.session.streams.set(this.id, this);
    // max-bundle: one transport for audio+video; fine against Huddle, which bundles everything.
    this.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
    if (published) {
      this.media = mediaStream;
      for (const track of mediaStream.getTracks()) {
        const init = { direction: 'sendonly', streams: [mediaStream] };
        if (simulcast && track.kind === 'video') init.sendEncodings = SIMULCAST.map((e) => ({ ...e }));
        this.pc.addTransceiver(track, init);
      }
    } else {
      // Explicit recvonly transceivers work in every browser (Safari ignores offerToReceive*).
      // Their receivers' tracks exist right away and start flowing once the answer is applied,
      // so the page can attach this MediaStream to a <video> immediately.
      // Both kinds are always offered: a stream without audio (a screen share) keeps an
      // audio m-line in the bundle that simply never carries anything.
      for (const kind of ['audio', 'video']) this.pc.addTransceiver(kind, { direction: 'recvonly' });
      this.media = new MediaStream(this.pc.getReceivers().map((r) => r.track));
    }
    this.pc.onconnectionstatechange = () => {
      if (this.pc.connectionState === 'failed') this.stop('FAILED', 'Media connection failed');
    };
    this.start().catch((e) => this.stop('FAILED', e.message));
  }

  describe() {
    const kinds = this.published ? this.media.getTracks().map((t) => t.kind) : ['audio', 'video'];
    return {
      mediaSessionId: this.id, name: this.name, published: this.published,
      hasVideo: kinds.includes('video'), hasAudio: kinds.includes('audio'),
      status: this.status, record: false, mediaProvider: 'WebRTC', custom: { name: this.room.name },
    };
  }

  async start() {
    // No trickle: the server is ICE-lite and learns our address from our connectivity checks,
    // so createOffer's SDP (no candidates) is all it needs.
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    if (TERMINAL.has(this.status)) return; // stopped meanwhile
    this.setStatus('PENDING');
    this.session.send(this.published ? 'publishStream' : 'playStream', { ...this.describe(), sdp: offer.sdp });
  }

  answer(sdp) {
    this.pc.setRemoteDescription({ type: 'answer', sdp }).then(() => {
      // A kind the stream lacks (no camera, no microphone) is answered inactive: its track
      // would never get media, and a <video> holding a video track that never delivers a
      // frame never starts playing, so the audio next to it would not be heard.
      // The page gets a MediaStream of the live kinds only ('media' event): an element
      // reloads on a new srcObject, not when a track leaves the one it has.
      if (this.published) return;
      const idle = this.pc.getTransceivers().filter((t) => !t.currentDirection?.includes('recv'));
      if (!idle.length) return;
      const gone = new Set(idle.map((t) => t.receiver.track));
      this.media = new MediaStream(this.media.getTracks().filter((t) => !gone.has(t)));
      this.dispatchEvent(new Event('media'));
    }, (e) => this.stop('FAILED', `Bad answer: ${e.message}`));
  }

  setStatus(status, info = '') {
    if (TERMINAL.has(this.status)) return; // exactly one terminal status per stream
    Object.assign(this, { status, info });
    if (TERMINAL.has(status)) { this.pc.close(); this.session.streams.delete(this.id); }
    this.dispatchEvent(new CustomEvent('status', { detail: { status, info } }));
  }

  // A play's simulcast layer: 'low' (a small tile), 'high' (the focused one), 'medium' or
  // 'auto' (as high as the bandwidth allows). Huddle's own sendData command.
  setLayer(layer) { return this.session.sendData('setLayer', { mediaSessionId: this.id, layer }); }

  // Mute notices (audioMuted, audioUnmuted, videoMuted, videoUnmuted) for the other side.
  event(type) { this.session.send('sendStreamEvent', { mediaSessionId: this.id, type }); }

  // Ends the stream on the server (if it knows it) and at once locally: the server's own
  // terminal status would close the pc too, but the media is freed without waiting for it.
  stop(status = this.published ? 'UNPUBLISHED' : 'STOPPED', info = 'Stopped by user') {
    if (TERMINAL.has(this.status)) return;
    if (this.status !== 'NEW') this.session.send(this.published ? 'unPublishStream' : 'stopStream', this.describe());
    this.setStatus(status, info);
  }
}
