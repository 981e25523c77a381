// kursrelay browser client: signalling protocol version 1 (see docs/protocol.md).
//
// One WebSocket to /ws and up to two RTCPeerConnections:
//   publish   - we send media; we offer (publish_offer), the server answers.
//   subscribe - we receive media; the server offers (subscribe_offer), we answer.

const PROTOCOL_VERSION = 1;
const REPLY_TIMEOUT_MS = 15000;
const LEAVE_CLOSE_MS = 2000;
// A camera's simulcast layers, lowest first (the order Chromium expects): about 320×180,
// 640×360 and 1280×720 from a 720p camera. The server forwards one of them to each viewer.
const SIMULCAST_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', maxBitrate: 1700000 },
];
// A screen share's layers, when the server takes simulcast: both at the screen's FULL size,
// the lower one at a few frames a second. A viewer whose line cannot carry the full layer gets
// sharp slides that change a little later, never a blurred small picture (issue 20). The
// rids name the lowest and the top layer for the server (`l` → 0, `h` → 2, see
// src/sfu/engine/conn.rs `layer_of`).
const SCREEN_LAYERS = [
  { rid: 'l', scaleResolutionDownBy: 1, maxFramerate: 5, maxBitrate: 200000 },
  { rid: 'h', scaleResolutionDownBy: 1, maxFramerate: 30, maxBitrate: 1500000 },
];
// Messages only newer servers know; an older one answers `unknown_type`, which is no error
// for the person (the page simply goes on without it).
const OPTIONAL = ['video_preference'];

export class KursrelayError extends Error {
  constructor(code, message, request) {
    super(message || code);
    this.name = 'KursrelayError';
    this.code = code;
    this.request = request;
  }
}

/** ws(s)://<same host>/ws */
export function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

/** Map of a=mid -> a=msid track id for every m-section of an SDP. */
function msidByMid(sdp) {
  const map = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section);
    const msid = /^a=msid:\S+ (\S+)/m.exec(section);
    if (mid && msid) map.set(mid[1], msid[1]);
  }
  return map;
}

function newConnection() {
  // remoteSet/localSent: candidates are held until the matching description exists.
  return { pc: null, remoteSet: false, remoteQueue: [], localSent: false, localQueue: [] };
}

export class KursrelayClient {
  constructor(url = defaultUrl(), { rtcConfig = {} } = {}) {
    this.url = url;
    this.rtcConfig = rtcConfig;
    this.memberId = null;
    this.role = null; // from `joined`; the server takes it from the token
    this.name = null;
    this.session = null; // session id from `joined`
    this.roster = null; // the last `roster` message
    this.server = null;

    // Callbacks; replace them before connect().
    this.onMessage = () => {}; // every server message, before it is handled
    this.onAdmitted = () => {}; // `joined` after waiting in the lobby
    this.onRoster = () => {};
    this.onFloor = () => {}; // (granted)
    this.onHand = () => {}; // (raised)
    this.onMuted = () => {};
    this.onChat = () => {}; // (chat message)
    this.onCaption = () => {}; // (caption message)
    this.onTrack = () => {};
    this.onTrackGone = () => {};
    this.onError = (err) => console.error(err);
    this.onClose = () => {};
    this.onPublishClosed = () => {}; // (reason) the server ended the publish connection
    this.onVideoQuality = () => {}; // (track_id, state) what the server forwards of a video now
    this.onSpeaking = () => {}; // (member_id, speaking) someone whose sound is forwarded started/stopped
    this.onSent = () => {}; // every message sent, after it went out (for the automated tests)

    // From `joined`: publish cameras in three simulcast layers (the server picks one per viewer).
    this.simulcast = false;
    // Message types the server answered `unknown_type` to (an older server): not sent again.
    this.unsupported = new Set();
    // track_id -> 'full' | 'reduced' | 'paused', as the server last said (video_quality).
    this.quality = new Map();
    // member_ids speaking now, as the server last said (`speaking`). Someone whose sound is no
    // longer sent to us (left, muted, floor taken back) is taken out here, as the server may
    // not say `false` then.
    this.speaking = new Set();

    this._ws = null;
    this._welcomed = false;
    this._closed = false;
    this._byeReason = null;
    this._leaveTimer = null;
    this._waiters = [];
    this._conn = { publish: newConnection(), subscribe: newConnection() };
    this._pubQueue = Promise.resolve();
    this._subQueue = Promise.resolve();
    this._pubStream = new MediaStream();
    this._pubSources = new Map(); // MediaStreamTrack -> source
    this._pubIds = new Map(); // MediaStreamTrack -> track_id told to the server
    this._remote = new Map(); // track_id -> {track, info} handed to onTrack
  }

  /** Open the WebSocket, send hello, resolve with the welcome message. */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this._ws = ws;
      ws.onopen = () => {
        this._request({ type: 'hello', version: PROTOCOL_VERSION }, 'welcome').then((msg) => {
          this._welcomed = true;
          this.server = msg.server || null;
          resolve(msg);
        }, reject);
      };
      ws.onmessage = (ev) => this._onMessage(ev.data);
      ws.onclose = (ev) => {
        if (!this._welcomed) reject(new KursrelayError('connect_failed', 'Could not reach the server'));
        const codeReason = { 1008: 'rate_limited', 1009: 'too_large' }[ev.code];
        this._shutdown(this._byeReason || codeReason || 'connection_lost');
      };
    });
  }

  /**
   * Send join with the link's token; resolve with the first reply, `joined` or `lobby`.
   * After `lobby`, a later `joined` goes to onAdmitted (or the socket closes with bye denied).
   */
  join(token, name) {
    const msg = { type: 'join', token };
    if (name) msg.name = name;
    return this._request(msg, ['joined', 'lobby']);
  }

  raiseHand() { return this._request({ type: 'raise_hand' }, 'hand'); }
  lowerHand() { return this._request({ type: 'lower_hand' }, 'hand'); }

  /** A leader's or site's request answered with `ok {request}`: admit, deny, grant_floor, … */
  control(type, fields = {}) {
    return this._request({ type, ...fields }, 'ok');
  }

  /** An interpreter's caption, relayed to everyone as `caption`; resolves on `ok`. */
  caption(text) { return this.control('caption', { text }); }

  /** The leader turns automatic captions (the captioner's speech recognition) on or off. */
  setAutoCaptions(on) { return this.control('set_auto_captions', { on: Boolean(on) }); }

  /** A chat line (only if the session enables chat; otherwise rejects with `forbidden`). */
  chat(text) { return this.control('chat', { text }); }

  /** A site's headcount (0–1000). */
  setHeadcount(count) { return this.control('set_headcount', { count }); }

  /**
   * Tells the server how large this page shows video (device pixels; null: always the best)
   * and whether the viewer asked to save data. No reply is awaited. A server that does not
   * know the message answers `unknown_type` once; it is then not sent again (false).
   */
  videoPreference(maxHeight, saveData, order = []) {
    if (this.unsupported.has('video_preference')) return false;
    const msg = { type: 'video_preference', max_height: maxHeight, save_data: Boolean(saveData) };
    if (order.length) msg.order = order.slice(0, 16);
    return this._send(msg);
  }

  /** Publish tracks ([{track, source}]) on the publish connection; resolves once the answer is applied. */
  publish(tracks) {
    return this._publishStep(async () => {
      for (const { track, source } of tracks) await this._addSender(track, source);
      await this._negotiatePublish();
    });
  }

  /** Add one more track (e.g. source "screen") and renegotiate. */
  addTrack(track, source) {
    return this.publish([{ track, source }]);
  }

  /** Unpublish a track, remove its sender and renegotiate. */
  removeTrack(track) {
    return this.removeTracks([track]);
  }

  /** Unpublish tracks, remove their senders and renegotiate once. */
  removeTracks(tracks) {
    return this._publishStep(async () => {
      const pc = this._conn.publish.pc;
      let removed = 0;
      for (const track of tracks) {
        const sender = pc && pc.getSenders().find((s) => s.track === track);
        if (!sender) continue;
        const trackId = this._pubIds.get(track);
        if (trackId) {
          try {
            await this._request({ type: 'unpublish', track_id: trackId }, 'unpublished');
          } catch (err) {
            // The server may have stopped it already (floor taken back, muted).
            if (err.code !== 'unknown_track') throw err;
          }
        }
        pc.removeTrack(sender);
        this._pubStream.removeTrack(track);
        this._pubSources.delete(track);
        this._pubIds.delete(track);
        removed += 1;
      }
      if (removed) await this._negotiatePublish();
    });
  }

  /** Say goodbye; the server answers bye and closes the socket (onClose("left")). */
  leave() {
    if (this._closed) return;
    this._send({ type: 'leave' });
    this._closePeers();
    clearTimeout(this._leaveTimer);
    this._leaveTimer = setTimeout(() => this._ws && this._ws.close(1000), LEAVE_CLOSE_MS);
  }

  /** Sums over the subscribe connection's inbound-rtp stats, plus the remote tracks currently
   * shown, plus where each connection's media goes (the server's address, port and protocol
   * of the selected candidate pair: the connectivity tests read it). `video` is how received
   * video fares (loss, repair requests, freezes); `sent` the publish side's video (summed over its simulcast layers; `layers` and
   * `framesEncodedOneLayer`, the busiest layer's frames, say what one viewer could get). `inbound`
   * has one entry per received track (by track_id): for video its frame rate, size, freezes
   * and frames decoded, for audio its concealment, plus `quality`, what the server last said
   * it forwards of that video (video_quality: full, reduced or paused). `senders` has one
   * entry per video this page sends (`source`: camera or screen) with its `encodings`: each
   * layer's rid, scaleResolutionDownBy, maxFramerate and maxBitrate as asked of the browser,
   * and the frameWidth, frameHeight, framesPerSecond, framesEncoded and bytesSent it makes. */
  async stats() {
    const out = { framesDecoded: 0, videoPacketsReceived: 0, audioPacketsReceived: 0, videoTracks: 0, audioTracks: 0, transports: [], inbound: [] };
    const video = { packetsLost: 0, nackCount: 0, pliCount: 0, framesDropped: 0, keyFramesDecoded: 0, freezeCount: 0, totalFreezesDuration: 0, jitterBufferDelay: 0, jitterBufferEmittedCount: 0 };
    const sent = { framesEncoded: 0, packetsSent: 0, retransmittedPacketsSent: 0, nackCount: 0, pliCount: 0 };
    sent.layers = 0;
    sent.framesEncodedOneLayer = 0;
    out.video = video;
    out.sent = sent;
    const add = (into, s) => { for (const k of Object.keys(into)) into[k] += s[k] || 0; };
    const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
    for (const target of ['publish', 'subscribe']) {
      const conn = this._conn[target];
      if (conn && conn.pc) out.transports.push({ target, ...(await selectedRemote(conn.pc)) });
    }
    out.senders = [];
    const pub = this._conn.publish.pc;
    if (pub) {
      const byMid = new Map();
      (await pub.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && (s.kind || s.mediaType) === 'video') {
          add(sent, s);
          // With simulcast each layer (rid) is an entry of its own and framesEncoded sums
          // them; the frames of the busiest layer are what one viewer can get.
          sent.layers += 1;
          sent.framesEncodedOneLayer = Math.max(sent.framesEncodedOneLayer, s.framesEncoded || 0);
          if (s.mid !== undefined) {
            if (!byMid.has(s.mid)) byMid.set(s.mid, []);
            byMid.get(s.mid).push(s);
          }
        }
      });
      // Each video sent, by source: the layers asked of the encoder (rid, scale, frame-rate
      // and bit-rate caps) and what each layer sends now (size, frames a second).
      for (const t of pub.getTransceivers()) {
        const track = t.sender.track;
        if (!track || track.kind !== 'video') continue;
        const stats = byMid.get(t.mid) || [];
        out.senders.push({
          source: this._pubSources.get(track) || 'camera',
          encodings: (t.sender.getParameters().encodings || []).map((e) => {
            const s = stats.find((x) => (x.rid || null) === (e.rid || null)) || stats.length === 1 && stats[0] || {};
            return {
              rid: e.rid || null, scaleResolutionDownBy: e.scaleResolutionDownBy || 1,
              maxFramerate: e.maxFramerate || null, maxBitrate: e.maxBitrate || null, active: e.active !== false,
              frameWidth: num(s.frameWidth), frameHeight: num(s.frameHeight),
              framesPerSecond: num(s.framesPerSecond), framesEncoded: num(s.framesEncoded), bytesSent: num(s.bytesSent),
            };
          }),
        });
      }
    }
    for (const { track } of this._remote.values()) {
      if (track.kind === 'video') out.videoTracks += 1;
      else if (track.kind === 'audio') out.audioTracks += 1;
    }
    const pc = this._conn.subscribe.pc;
    if (!pc) return out;
    const report = await pc.getStats();
    const byTrack = new Map([...this._remote].map(([trackId, { track }]) => [track.id, trackId]));
    report.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const kind = s.kind || s.mediaType;
      const trackId = byTrack.get(s.trackIdentifier) || null;
      if (kind === 'video') {
        out.framesDecoded += s.framesDecoded || 0;
        out.videoPacketsReceived += s.packetsReceived || 0;
        add(video, s);
        // A video not shown now (no track_id) is left out: its numbers say nothing of today.
        if (trackId) {
          out.inbound.push({
            track_id: trackId, kind,
            framesPerSecond: num(s.framesPerSecond), frameWidth: num(s.frameWidth), frameHeight: num(s.frameHeight),
            freezeCount: num(s.freezeCount), totalFreezesDuration: num(s.totalFreezesDuration),
            framesDecoded: num(s.framesDecoded), quality: this.quality.get(trackId) || 'full',
          });
        }
      } else if (kind === 'audio') {
        out.audioPacketsReceived += s.packetsReceived || 0;
        if (trackId) {
          out.inbound.push({
            track_id: trackId, kind,
            concealedSamples: num(s.concealedSamples), totalSamplesReceived: num(s.totalSamplesReceived),
            concealmentEvents: num(s.concealmentEvents),
          });
        }
      }
    });
    return out;
  }

  // ---- signalling ----

  _send(msg) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(msg));
    try {
      this.onSent(msg);
    } catch (err) {
      console.error(err);
    }
    return true;
  }

  /**
   * Send msg and wait for a reply whose type is replyType (a string or a list), or an error
   * naming msg.type. An `ok` reply must also name msg.type.
   */
  _request(msg, replyType) {
    return new Promise((resolve, reject) => {
      if (this._closed || !this._ws || this._ws.readyState !== WebSocket.OPEN) {
        reject(new KursrelayError('not_connected', 'Not connected', msg.type));
        return;
      }
      const replyTypes = [].concat(replyType);
      const waiter = { replyTypes, request: msg.type, resolve, reject };
      waiter.timer = setTimeout(() => {
        this._waiters = this._waiters.filter((w) => w !== waiter);
        reject(new KursrelayError('timeout', `No ${replyTypes.join(' or ')} from the server`, msg.type));
      }, REPLY_TIMEOUT_MS);
      this._waiters.push(waiter);
      this._send(msg);
    });
  }

  /** Remove and return the first waiter matching pred, or null. */
  _takeWaiter(pred) {
    const i = this._waiters.findIndex(pred);
    if (i < 0) return null;
    const [waiter] = this._waiters.splice(i, 1);
    clearTimeout(waiter.timer);
    return waiter;
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.onError(new KursrelayError('bad_json', 'The server sent something that is not JSON'));
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    try {
      this.onMessage(msg);
    } catch (err) {
      console.error(err);
    }
    switch (msg.type) {
      case 'welcome':
      case 'lobby':
      case 'joined':
      case 'hand':
      case 'ok':
      case 'publish_answer':
      case 'unpublished': {
        if (msg.type === 'lobby' || msg.type === 'joined') this.memberId = msg.member_id;
        if (msg.type === 'joined') {
          this.role = msg.role;
          this.name = msg.name;
          this.session = msg.session || this.session;
          this.simulcast = msg.simulcast === true;
        }
        const waiter = this._takeWaiter((w) => w.replyTypes.includes(msg.type)
          && (msg.type !== 'ok' || w.request === msg.request));
        if (waiter) waiter.resolve(msg);
        else if (msg.type === 'joined') this.onAdmitted(msg);
        if (msg.type === 'hand') this.onHand(Boolean(msg.raised));
        break;
      }
      case 'publish_closed': {
        // The server ended our publish connection (it failed, or we replaced it): the next
        // publish starts a new one. Our tracks stay with the page, which may publish again.
        const c = this._conn.publish;
        if (c.pc) c.pc.close();
        this._conn.publish = newConnection();
        this._pubStream = new MediaStream();
        this._pubSources.clear();
        this._pubIds.clear();
        this.onPublishClosed(msg.reason);
        break;
      }
      case 'roster':
        this.roster = msg;
        this.onRoster(msg);
        break;
      case 'floor':
        this.onFloor(Boolean(msg.granted));
        break;
      case 'muted':
        this.onMuted();
        break;
      case 'chat':
        this.onChat(msg);
        break;
      case 'caption':
        this.onCaption(msg);
        break;
      case 'subscribe_offer':
        this._subQueue = this._subQueue
          .then(() => this._onSubscribeOffer(msg))
          .catch((err) => this.onError(err));
        break;
      case 'ice_candidate':
        this._onRemoteCandidate(msg.target, msg.candidate);
        break;
      case 'video_quality':
        if (typeof msg.track_id !== 'string' || !['full', 'reduced', 'paused'].includes(msg.state)) break;
        if (msg.state === 'full') this.quality.delete(msg.track_id);
        else this.quality.set(msg.track_id, msg.state);
        this.onVideoQuality(msg.track_id, msg.state);
        break;
      case 'speaking':
        if (typeof msg.member_id !== 'string' || !msg.member_id || typeof msg.speaking !== 'boolean') break;
        this._setSpeaking(msg.member_id, msg.speaking);
        break;
      case 'bye':
        this._byeReason = msg.reason || 'left';
        break;
      case 'error': {
        const err = new KursrelayError(msg.code, msg.message, msg.request);
        // An older server does not know an optional message (it names the type in its text;
        // the reply has no `request` then): remember not to send it again, tell nobody.
        const optional = OPTIONAL.find((type) => msg.request === type
          || (msg.code === 'unknown_type' && !msg.request && String(msg.message || '').includes(`"${type}"`)));
        if (optional) {
          this.unsupported.add(optional);
          console.info(`kursrelay: this server does not take ${optional}`);
          break;
        }
        const waiter = msg.request && this._takeWaiter((w) => w.request === msg.request);
        if (waiter) waiter.reject(err);
        else this.onError(err);
        break;
      }
      default:
        break; // newer server message types are ignored
    }
  }

  _shutdown(reason) {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._leaveTimer);
    for (const w of this._waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new KursrelayError('closed', `Connection closed (${reason})`, w.request));
    }
    this._closePeers();
    if (this._welcomed) this.onClose(reason);
  }

  _closePeers() {
    for (const target of ['publish', 'subscribe']) {
      const c = this._conn[target];
      if (c.pc) c.pc.close();
      this._conn[target] = newConnection();
    }
    this._remote.clear();
    this.quality.clear();
    for (const id of [...this.speaking]) this._setSpeaking(id, false);
  }

  /** Keeps `speaking` and tells onSpeaking of a change (only of a change). */
  _setSpeaking(memberId, on) {
    if (this.speaking.has(memberId) === on) return;
    if (on) this.speaking.add(memberId);
    else this.speaking.delete(memberId);
    try {
      this.onSpeaking(memberId, on);
    } catch (err) {
      console.error(err);
    }
  }

  // ---- peer connections and ICE ----

  _peer(target) {
    const c = this._conn[target];
    if (!c.pc) {
      const pc = new RTCPeerConnection(this.rtcConfig);
      pc.onicecandidate = ({ candidate }) => {
        if (!candidate || !candidate.candidate) return; // end of candidates: nothing to send
        const json = candidate.toJSON();
        if (c.localSent) this._send({ type: 'ice_candidate', target, candidate: json });
        else c.localQueue.push(json);
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === 'failed') {
          this.onError(new KursrelayError('peer_failed', `The ${target} media connection failed`, target));
        }
      };
      c.pc = pc;
    }
    return c.pc;
  }

  /** Our offer/answer for target went out: release held local candidates. */
  _localSent(target) {
    const c = this._conn[target];
    c.localSent = true;
    for (const candidate of c.localQueue.splice(0)) this._send({ type: 'ice_candidate', target, candidate });
  }

  /** The remote description for target is set: apply held remote candidates. */
  _remoteSet(target) {
    const c = this._conn[target];
    c.remoteSet = true;
    for (const candidate of c.remoteQueue.splice(0)) this._applyCandidate(c.pc, candidate);
  }

  _onRemoteCandidate(target, candidate) {
    const c = this._conn[target];
    if (!c || !candidate || !candidate.candidate) return;
    if (c.pc && c.remoteSet) this._applyCandidate(c.pc, candidate);
    else c.remoteQueue.push(candidate);
  }

  _applyCandidate(pc, candidate) {
    pc.addIceCandidate(candidate).catch((err) => console.error('kursrelay: ICE candidate not applied', err));
  }

  // ---- publish ----

  /** Run publish-side steps one at a time; errors go to the caller, the queue keeps going. */
  _publishStep(fn) {
    const run = this._pubQueue.then(fn);
    this._pubQueue = run.catch(() => {});
    return run;
  }

  async _addSender(track, source) {
    const pc = this._peer('publish');
    this._pubStream.addTrack(track);
    // A transceiver whose track was taken off (floor taken back, screen share stopped) is used
    // again, so m-lines do not pile up with every turn at the floor.
    // A camera goes out in three layers when the server takes simulcast, a screen share in
    // two at full size (a low frame rate and a full one); everything is one layer when the
    // server does not take simulcast. The number of layers of a transceiver cannot change
    // later, so only one with the same number is used again.
    const kind = source || 'camera';
    let layers = null;
    if (track.kind === 'video' && this.simulcast) {
      if (kind === 'camera') layers = SIMULCAST_LAYERS;
      else if (kind === 'screen') layers = SCREEN_LAYERS;
    }
    // Slides are text: the browser keeps their size and gives up frame rate when short of
    // bits, rather than the other way round.
    if (track.kind === 'video' && kind === 'screen' && 'contentHint' in track && !track.contentHint) {
      track.contentHint = 'detail';
    }
    const count = layers ? layers.length : 1;
    const free = pc.getTransceivers().find((t) => !t.stopped && !t.sender.track
      && t.receiver.track && t.receiver.track.kind === track.kind
      && (track.kind !== 'video' || (t.sender.getParameters().encodings || [1]).length === count));
    if (free) {
      await free.sender.replaceTrack(track);
      free.sender.setStreams(this._pubStream);
      free.direction = 'sendonly';
    } else {
      const init = { direction: 'sendonly', streams: [this._pubStream] };
      if (layers) init.sendEncodings = layers.map((l) => ({ ...l }));
      pc.addTransceiver(track, init);
    }
    this._pubSources.set(track, source || (track.kind === 'video' ? 'camera' : 'microphone'));
  }

  async _negotiatePublish() {
    const pc = this._conn.publish.pc;
    await pc.setLocalDescription(await pc.createOffer());
    const sdp = pc.localDescription.sdp;
    const msids = msidByMid(sdp);
    const tracks = [];
    for (const t of pc.getTransceivers()) {
      const track = t.sender.track;
      if (!track) continue;
      const trackId = (t.mid !== null && msids.get(t.mid)) || track.id;
      this._pubIds.set(track, trackId);
      tracks.push({ track_id: trackId, source: this._pubSources.get(track) });
    }
    const reply = this._request({ type: 'publish_offer', sdp, tracks }, 'publish_answer');
    this._localSent('publish');
    let answer;
    try {
      answer = await reply;
    } catch (err) {
      if (pc.signalingState === 'have-local-offer') {
        await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      }
      throw err;
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    this._remoteSet('publish');
  }

  // ---- subscribe ----

  async _onSubscribeOffer(msg) {
    const pc = this._peer('subscribe');
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    this._remoteSet('subscribe');
    await pc.setLocalDescription(await pc.createAnswer());
    this._send({ type: 'subscribe_answer', sdp: pc.localDescription.sdp });
    this._localSent('subscribe');
    this._syncRemoteTracks(pc, msg.sdp, Array.isArray(msg.tracks) ? msg.tracks : []);
  }

  /** Report tracks missing from the offer as gone, and new ones via onTrack (each track_id once). */
  _syncRemoteTracks(pc, sdp, tracks) {
    const listed = new Map(tracks.map((t) => [t.track_id, t]));
    for (const [trackId, { info }] of [...this._remote]) {
      if (!listed.has(trackId)) {
        this._remote.delete(trackId);
        this.quality.delete(trackId);
        this.onTrackGone(trackId);
        // Their sound is no longer sent to us: they are not heard speaking here any more.
        const sound = [...this._remote.values()].some((r) => r.info.kind === 'audio' && r.info.member_id === info.member_id);
        if (info.kind === 'audio' && !sound) this._setSpeaking(info.member_id, false);
      }
    }
    const msids = msidByMid(sdp);
    for (const t of pc.getTransceivers()) {
      if (t.currentDirection !== 'recvonly' && t.currentDirection !== 'sendrecv') continue;
      const track = t.receiver.track;
      const trackId = (t.mid !== null && msids.get(t.mid)) || track.id;
      const listedTrack = listed.get(trackId);
      if (!listedTrack || this._remote.has(trackId)) continue;
      const info = {
        track_id: trackId,
        member_id: listedTrack.member_id,
        kind: listedTrack.kind || track.kind,
        source: listedTrack.source || (track.kind === 'video' ? 'camera' : 'microphone'),
      };
      this._remote.set(trackId, { track, info });
      this.onTrack(track, info);
    }
  }
}

/** The remote candidate of a connection's selected pair: { address, port, protocol }. */
async function selectedRemote(pc) {
  const report = await pc.getStats();
  let pair = null;
  let srtpCipher;
  report.forEach((s) => {
    if (s.type === 'transport') {
      if (s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
      srtpCipher = s.srtpCipher;
    }
  });
  if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  const remote = pair && report.get(pair.remoteCandidateId);
  return remote ? { address: remote.address, port: remote.port, protocol: remote.protocol, srtpCipher } : {};
}
