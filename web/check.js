// The connectivity check (/check): tests, one line each, what a course needs from this
// computer and network, and sums it up in a short code for IT support. No join link needed.
//
// Lines: the WebSocket to the server; a real WebRTC connection straight to the media server's
// port over UDP, and (separately) over ICE-TCP on the same port number; the same through each
// kind of TURN relay the server hands out (UDP, and TLS/TCP as the fallback when UDP is
// blocked); camera and microphone; rough download speed and loss over the best connection
// that worked. The server end of each test connection is a check connection inside the media
// engine, on the media port a course uses (POST /check/offer?transport=udp|tcp: the server's
// answer names only that transport's candidates), that echoes pings and sends a burst on
// request; nothing is stored.
import './check-i18n.js';
import { t, initPicker, onLangChange, getLang } from './i18n.js';

const LINES = ['ws', 'udp', 'tcp', 'turn_udp', 'turn_tcp', 'devices', 'bandwidth'];
const LETTER = { ws: 'W', udp: 'U', tcp: 'I', turn_udp: 'R', turn_tcp: 'T', devices: 'K', bandwidth: 'B' };
const SYMBOL = { ok: '✓', warn: '!', fail: '✗', off: '–', running: '…', waiting: '…' };
const CONNECT_MS = 10000;
const GATHER_MS = 5000;
const PINGS = 20;
const PING_GAP_MS = 50;
const BURST_MESSAGES = 3000;
// Roughly what a participant needs: the lecture (camera or slides) and sound.
const GOOD_MBPS = 1.5;
const WEAK_MBPS = 0.5;

const $ = (id) => document.getElementById(id);
let results = {};
let running = null;
let last = null;

function render() {
  const list = $('checks');
  for (const id of LINES) {
    const r = results[id] || { state: 'waiting' };
    let li = list.querySelector(`li[data-line="${id}"]`);
    if (!li) {
      li = document.createElement('li');
      li.dataset.line = id;
      li.innerHTML = '<span class="state"></span><div><p class="what"></p><p class="detail"></p></div>';
      list.append(li);
    }
    li.dataset.state = r.state;
    li.querySelector('.state').textContent = `${SYMBOL[r.state]} ${t(`state.${r.state}`)}`;
    li.querySelector('.what').textContent = t(`line.${id}`);
    li.querySelector('.detail').textContent = r.key ? t(r.key, r.vars) : '';
  }
  const finished = LINES.every((id) => results[id] && !['running', 'waiting'].includes(results[id].state));
  $('code').textContent = finished ? code() : '–';
}

function set(id, state, key, vars, extra = {}) {
  results[id] = { state, key, vars, ...extra };
  render();
}

/**
 * W1-U1-I1-R1-T1-K1-B12-L0: W WebSocket, U UDP to the media port, I ICE-TCP to the media port,
 * R TURN over UDP, T TURN over TLS/TCP, K camera and microphone: 1 works, 0 does not, ! weak,
 * N not set up on the server; B download Mbit/s (whole numbers) and L loss % (BN: nothing to
 * measure over).
 */
export function code() {
  const mark = { ok: '1', fail: '0', warn: '!', off: 'N' };
  const parts = LINES.filter((id) => id !== 'bandwidth').map((id) => LETTER[id] + (mark[results[id]?.state] ?? '?'));
  const bw = results.bandwidth;
  // Whole Mbit/s: a code read aloud has no decimal point (nor a comma) to get wrong.
  if (bw && bw.mbps !== undefined) parts.push(`B${Math.round(bw.mbps)}`, `L${bw.loss}`);
  else parts.push('BN');
  return parts.join('-');
}

// ---- the tests ----

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

async function testWebSocket() {
  set('ws', 'running');
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/ws`);
  try {
    await withTimeout(new Promise((resolve, reject) => {
      ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', version: 1 }));
      ws.onmessage = (ev) => {
        try {
          if (JSON.parse(ev.data).type === 'welcome') resolve();
        } catch { reject(new Error('not JSON')); }
      };
      ws.onerror = () => reject(new Error('websocket error'));
      ws.onclose = () => reject(new Error('closed'));
    }), 5000, 'websocket');
    set('ws', 'ok', 'ws.ok');
  } catch {
    set('ws', 'fail', 'ws.fail');
  } finally {
    ws.onclose = null;
    ws.close();
  }
}

async function iceConfig() {
  try {
    const r = await fetch('/ice-servers.json', { cache: 'no-store' });
    if (r.ok) return await r.json();
  } catch { /* no TURN then */ }
  return { iceServers: [] };
}

const isTcpTurn = (url) => url.startsWith('turns:') || /[?&]transport=tcp/.test(url);

/** "UDP 3478" or "TLS/TCP 443": what IT must let through for these servers. */
function portsText(servers, proto) {
  const ports = new Set();
  for (const s of servers) {
    for (const url of s.urls) {
      const m = /^turns?:(?:\[[^\]]*\]|[^:?]*)(?::(\d+))?/.exec(url);
      ports.add(m && m[1] ? m[1] : url.startsWith('turns:') ? '5349' : '3478');
    }
  }
  return `${proto} ${[...ports].join(', ')}`;
}

/** The TURN servers of `config` restricted to URLs that pass `keep`. */
function turnServers(config, keep) {
  return (config.iceServers || [])
    .filter((s) => s.username)
    .map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => u.startsWith('turn') && keep(u)) }))
    .filter((s) => s.urls.length);
}

/**
 * The selected candidate pair: its local side {type: host|srflx|prflx|relay, protocol} and
 * the server's side it reached {remotePort, remoteProtocol} (the media port, for direct paths).
 */
async function selectedPath(pc) {
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
  let pair = pairId && stats.get(pairId);
  if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) pair = s; });
  const local = pair && stats.get(pair.localCandidateId);
  if (!local) return null;
  const remote = stats.get(pair.remoteCandidateId);
  return {
    type: local.candidateType,
    protocol: local.relayProtocol || local.protocol,
    remotePort: remote ? remote.port : null,
    remoteProtocol: remote ? remote.protocol : null,
  };
}

/** The server's candidates in an answer: [{protocol: 'udp'|'tcp', ip, port}]. */
function serverCandidates(sdp) {
  const out = [];
  for (const line of sdp.split(/\r?\n/)) {
    // a=candidate:<foundation> <component> <protocol> <priority> <ip> <port> typ <type> …
    const f = line.startsWith('a=candidate:') ? line.split(' ') : null;
    if (f && f.length >= 8) out.push({ protocol: f[2].toLowerCase(), ip: f[4], port: Number(f[5]) });
  }
  return out;
}

/**
 * One test connection to a check connection on the media server; resolves once its data
 * channel is open. `transport` ('udp' or 'tcp') asks the server for only that transport's
 * candidates; `onAnswer` sees the server's candidates before the connection is tried.
 */
async function connect(rtcConfig, transport = null, onAnswer = () => {}) {
  const pc = new RTCPeerConnection(rtcConfig);
  try {
    const dc = pc.createDataChannel('check', { ordered: false, maxRetransmits: 0 });
    dc.binaryType = 'arraybuffer';
    const open = new Promise((resolve, reject) => {
      dc.onopen = resolve;
      pc.onconnectionstatechange = () => { if (pc.connectionState === 'failed') reject(new Error('ICE failed')); };
    });
    await pc.setLocalDescription(await pc.createOffer());
    // All our candidates go in the offer: the check has no trickle.
    await withTimeout(new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    }), GATHER_MS, 'gathering').catch(() => {});
    const res = await fetch(transport ? `/check/offer?transport=${transport}` : '/check/offer', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'offer', sdp: pc.localDescription.sdp }),
    });
    if (!res.ok) throw new Error(`check/offer: HTTP ${res.status}`);
    const answer = await res.json();
    onAnswer(serverCandidates(answer.sdp));
    await pc.setRemoteDescription(answer);
    await withTimeout(open, CONNECT_MS, 'connection');
    return { pc, dc, path: await selectedPath(pc) };
  } catch (err) {
    pc.close();
    throw err;
  }
}

/** Sends PINGS echo requests; returns {rtt (median ms), loss (%)}. */
async function ping(conn, count = PINGS) {
  const sentAt = new Map();
  const rtts = [];
  conn.dc.onmessage = (ev) => {
    const v = new DataView(ev.data);
    if (v.byteLength >= 5 && v.getUint8(0) === 0x70) {
      const at = sentAt.get(v.getUint32(1));
      if (at !== undefined) rtts.push(performance.now() - at);
    }
  };
  for (let seq = 0; seq < count; seq++) {
    const buf = new DataView(new ArrayBuffer(5));
    buf.setUint8(0, 0x70);
    buf.setUint32(1, seq);
    sentAt.set(seq, performance.now());
    conn.dc.send(buf.buffer);
    await new Promise((r) => setTimeout(r, PING_GAP_MS));
  }
  await new Promise((r) => setTimeout(r, 1000)); // late replies
  rtts.sort((a, b) => a - b);
  return {
    rtt: rtts.length ? Math.round(rtts[Math.floor(rtts.length / 2)]) : null,
    loss: Math.round((100 * (count - rtts.length)) / count),
  };
}

/** Asks for a burst and measures what arrives: Mbit/s. */
async function burst(conn) {
  let bytes = 0;
  let first = null;
  let last = null;
  let got = 0;
  const done = new Promise((resolve) => {
    let idle = null;
    conn.dc.onmessage = (ev) => {
      const v = new DataView(ev.data);
      if (v.byteLength < 5 || v.getUint8(0) !== 0x44) return;
      const now = performance.now();
      if (first === null) first = now;
      last = now;
      bytes += v.byteLength;
      got += 1;
      clearTimeout(idle);
      if (got >= BURST_MESSAGES) resolve();
      else idle = setTimeout(resolve, 1000);
    };
    setTimeout(resolve, 6000);
  });
  const req = new DataView(new ArrayBuffer(5));
  req.setUint8(0, 0x64);
  req.setUint32(1, BURST_MESSAGES);
  const asked = performance.now();
  conn.dc.send(req.buffer);
  await done;
  conn.dc.onmessage = null;
  if (!got) return 0;
  // From the request, so that a burst that arrives in one go is not counted as infinite.
  const seconds = Math.max((last - asked) / 1000, 0.05);
  return (bytes * 8) / seconds / 1e6;
}

async function testPath(id, rtcConfig, failVars) {
  set(id, 'running');
  try {
    const conn = await connect(rtcConfig);
    const { rtt } = await ping(conn, 5);
    set(id, 'ok', 'turn.ok', { rtt: rtt ?? '?' }, { path: conn.path });
    return conn;
  } catch {
    set(id, 'fail', 'turn.fail', failVars);
    return null;
  }
}

/**
 * Straight to the media server's port over one transport ('udp' or 'tcp'): the line says
 * which port was reached, or which port IT must open, to which address.
 */
async function testDirect(id, transport) {
  set(id, 'running');
  const started = performance.now();
  let offered = [];
  let answered = false;
  try {
    const conn = await connect({ iceServers: [], iceTransportPolicy: 'all' }, transport, (cands) => {
      answered = true;
      offered = cands.filter((c) => c.protocol === transport);
      // The server does not offer this transport (media.transports): nothing to test.
      if (!offered.length) throw new Error('not offered');
    });
    const { rtt } = await ping(conn, 5);
    const port = conn.path?.remotePort ?? offered[0].port;
    set(id, 'ok', `${id}.ok`, { rtt: rtt ?? '?', port }, { path: conn.path, ms: Math.round(performance.now() - started) });
    return conn;
  } catch {
    if (answered && !offered.length) {
      set(id, 'off', `${id}.off`);
      return null;
    }
    const ports = [...new Set(offered.map((c) => c.port))].join(', ');
    const what = `${transport.toUpperCase()} ${ports}`.trim();
    const ip = [...new Set(offered.map((c) => c.ip))].join(', ') || location.hostname;
    set(id, 'fail', `${id}.fail`, { what, ip }, { ms: Math.round(performance.now() - started) });
    return null;
  }
}

async function testDevices() {
  set('devices', 'running');
  if (!navigator.mediaDevices || !window.isSecureContext) {
    set('devices', 'fail', 'devices.insecure');
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    const video = stream.getVideoTracks().length;
    stream.getTracks().forEach((tr) => tr.stop());
    if (video) set('devices', 'ok', 'devices.ok');
    else set('devices', 'warn', 'devices.only_audio');
  } catch (err) {
    if (err.name === 'NotFoundError' || err.name === 'OverconstrainedError') {
      // Maybe only the camera is missing: try the microphone alone.
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
        stream.getTracks().forEach((tr) => tr.stop());
        set('devices', 'warn', 'devices.only_audio');
        return;
      } catch { /* neither */ }
    }
    const key = `devices.${err.name}`;
    if (['NotAllowedError', 'NotFoundError', 'NotReadableError'].includes(err.name)) set('devices', 'fail', key);
    else set('devices', 'fail', 'devices.other', { code: err.name || '?' });
  }
}

/** A number written as the page's language writes it ("5,3" in Norwegian), whenever shown. */
function inPageLanguage(n) {
  return { toString: () => n.toLocaleString(getLang() === 'en' ? 'en-GB' : 'nb-NO') };
}

async function testBandwidth(conn) {
  set('bandwidth', 'running');
  if (!conn) {
    set('bandwidth', 'fail', 'bandwidth.none');
    return;
  }
  const { loss } = await ping(conn);
  const raw = await burst(conn);
  const mbps = raw >= 10 ? Math.round(raw) : Math.round(raw * 10) / 10;
  const state = raw >= GOOD_MBPS && loss <= 3 ? 'ok' : raw >= WEAK_MBPS && loss <= 10 ? 'warn' : 'fail';
  set('bandwidth', state, `bandwidth.${state}`, { mbps: inPageLanguage(mbps), loss }, { mbps, loss });
}

async function runAll() {
  results = {};
  $('again').disabled = true;
  $('check-status').textContent = t('check.running');
  render();
  const config = await iceConfig();
  const conns = [];
  try {
    await testWebSocket();
    const udpTurn = turnServers(config, (u) => !isTcpTurn(u));
    const tcpTurn = turnServers(config, isTcpTurn);
    // A server that sends all media through TURN (turn.relay_only) never uses direct paths.
    const relayOnly = config.iceTransportPolicy === 'relay';
    // The four paths at once: each waits for its own timeouts.
    const [udp, tcp, relayUdp, relayTcp] = await Promise.all([
      relayOnly ? (set('udp', 'off', 'udp.relay_only'), null) : testDirect('udp', 'udp'),
      relayOnly ? (set('tcp', 'off', 'udp.relay_only'), null) : testDirect('tcp', 'tcp'),
      udpTurn.length
        ? testPath('turn_udp', { iceServers: udpTurn, iceTransportPolicy: 'relay' }, { what: portsText(udpTurn, 'UDP') })
        : (set('turn_udp', 'off', 'turn.off'), null),
      tcpTurn.length
        ? testPath('turn_tcp', { iceServers: tcpTurn, iceTransportPolicy: 'relay' }, { what: portsText(tcpTurn, 'TLS/TCP') })
        : null,
    ]);
    if (!tcpTurn.length) {
      if (udp || tcp || relayUdp) set('turn_tcp', 'off', 'turn.off');
      else set('turn_tcp', 'fail', 'turn.off_needed');
    }
    conns.push(udp, tcp, relayUdp, relayTcp);
    await testDevices();
    await testBandwidth(udp || tcp || relayUdp || relayTcp);
  } finally {
    for (const c of conns) if (c) c.pc.close();
    running = null;
    $('check-status').textContent = t(verdict());
    $('again').disabled = false;
    render();
  }
  return snapshot();
}

/** The sum of it: can a course work from here, and is anything to fix? */
function verdict() {
  const ok = (id) => results[id]?.state === 'ok';
  const media = ok('udp') || ok('tcp') || ok('turn_udp') || ok('turn_tcp');
  if (!ok('ws') || !media) return 'check.verdict_fail';
  const problems = LINES.some((id) => ['fail', 'warn'].includes(results[id]?.state));
  return problems ? 'check.verdict_partly' : 'check.verdict_ok';
}

function snapshot() {
  const out = { code: code(), verdict: running ? null : verdict() };
  for (const id of LINES) {
    const r = results[id] || {};
    out[id] = { state: r.state, text: r.key ? t(r.key, r.vars) : '', path: r.path || null, mbps: r.mbps, loss: r.loss, ms: r.ms };
  }
  return out;
}

function start() {
  if (!running) {
    running = runAll();
    last = running;
  }
  return running;
}

initPicker($('lang'));
onLangChange(render);
$('again').addEventListener('click', () => { start(); });
render();

// The surface the browser tests use.
window.kursrelay = {
  check: { start, done: () => last, results: snapshot, code },
};
start();
