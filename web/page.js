// Page logic shared by publish.html and watch.html (<body data-page="publish|watch">).
import { KursrelayClient } from './client.js';

const isPublish = document.body.dataset.page === 'publish';
const $ = (id) => document.getElementById(id);
const form = $('join-form');
const fields = $('join-fields');
const sessionInput = $('session');
const nameInput = $('name');
const roleSelect = $('role');
const controls = $('controls');
const leaveButton = $('leave');
const screenButton = $('screen'); // publish.html only
const preview = $('preview'); // publish.html only
const statusEl = $('status');
const alertEl = $('alert');
const membersEl = $('members');
const memberCount = $('member-count');
const mediaEl = $('media');
const noMedia = $('no-media');
const audioBox = $('audio');
const soundButton = $('sound');

const SESSION_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ROLE_TEXT = {
  leader: 'kursleder',
  representative: 'brukerrepresentant',
  participant: 'deltaker',
  site: 'sal',
  interpreter: 'tolk',
};
const SOURCE_TEXT = { camera: 'Kamera / Camera', screen: 'Skjerm / Screen' };
// [bokmål, English] for errors people can act on; everything else shows the server's message.
const ERROR_TEXT = {
  bad_request: ['Kurskoden eller navnet kan ikke brukes. Kurskoden kan bare ha bokstaver a–z, tall, - og _.',
    'The course code or name cannot be used.'],
  unsupported_version: ['Denne siden er for gammel. Last siden inn på nytt.', 'This page is out of date. Please reload.'],
  connect_failed: ['Fikk ikke kontakt med kursserveren. Sjekk nettet og prøv igjen.',
    'Could not reach the course server. Check your network and try again.'],
  timeout: ['Serveren svarte ikke. Prøv igjen.', 'The server did not answer. Please try again.'],
  peer_failed: ['Bilde- og lydforbindelsen brøt. Trykk «Forlat» og så «Start» for å prøve igjen.',
    'The audio/video connection failed. Press Leave, then Start to try again.'],
  NotAllowedError: ['Du må gi nettleseren lov til å bruke kamera og mikrofon.',
    'Please allow the browser to use your camera and microphone.'],
  NotFoundError: ['Fant ikke noe kamera eller mikrofon.', 'No camera or microphone was found.'],
  NotReadableError: ['Kameraet eller mikrofonen brukes av et annet program.',
    'The camera or microphone is in use by another program.'],
};
const CLOSE_TEXT = {
  peer_failed: ['Bilde- og lydforbindelsen brøt. Trykk «Start» for å bli med igjen.',
    'The audio/video connection failed. Press Start to join again.'],
  server_shutdown: ['Kursserveren ble stoppet.', 'The course server was stopped.'],
  rate_limited: ['Tilkoblingen ble stengt fordi siden sendte for mye.', 'The connection was closed (too many messages).'],
};

let client = null;
let localStream = null;
let screenTrack = null;
let members = new Map();

// ---- messages to the user ----

function setStatus(nb, en) {
  statusEl.replaceChildren(nb);
  if (en) {
    const span = document.createElement('span');
    span.lang = 'en';
    span.textContent = en;
    statusEl.append(document.createElement('br'), span);
  }
}

function showAlert([nb, en]) {
  const p = document.createElement('p');
  p.textContent = nb;
  const pe = document.createElement('p');
  pe.lang = 'en';
  pe.textContent = en;
  alertEl.replaceChildren(p, pe);
}

function showError(err) {
  const known = ERROR_TEXT[err.code] || ERROR_TEXT[err.name];
  showAlert(known || [`Noe gikk galt: ${err.message}`, `Something went wrong${err.code ? ` (${err.code})` : ''}.`]);
}

// ---- members and media ----

function renderMembers(list) {
  members = new Map(list.map((m) => [m.member_id, m]));
  membersEl.replaceChildren(...list.map((m) => {
    const li = document.createElement('li');
    const you = client && m.member_id === client.memberId ? ' (deg / you)' : '';
    li.textContent = `${m.name} – ${ROLE_TEXT[m.role] || m.role}${you}`;
    return li;
  }));
  memberCount.textContent = String(list.length);
  for (const fig of mediaEl.querySelectorAll('figure')) setCaption(fig);
}

function setCaption(fig) {
  const member = members.get(fig.dataset.memberId);
  const source = SOURCE_TEXT[fig.dataset.source] || fig.dataset.source;
  fig.querySelector('figcaption').textContent = member ? `${source} – ${member.name}` : source;
}

function play(el) {
  el.play().catch((err) => {
    if (err.name === 'NotAllowedError') soundButton.hidden = false;
  });
}

function addRemoteTrack(track, info) {
  if (track.kind === 'audio') {
    const audio = document.createElement('audio');
    audio.autoplay = true;
    audio.dataset.trackId = info.track_id;
    audio.srcObject = new MediaStream([track]);
    audioBox.append(audio);
    play(audio);
    return;
  }
  const fig = document.createElement('figure');
  fig.dataset.trackId = info.track_id;
  fig.dataset.memberId = info.member_id || '';
  fig.dataset.source = info.source;
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = true; // sound comes from the <audio> elements
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  fig.append(video, document.createElement('figcaption'));
  setCaption(fig);
  mediaEl.append(fig);
  noMedia.hidden = true;
  play(video);
}

function removeRemoteTrack(trackId) {
  for (const el of document.querySelectorAll('[data-track-id]')) {
    if (el.dataset.trackId !== trackId) continue;
    const media = el.matches('audio') ? el : el.querySelector('video');
    media.srcObject = null;
    el.remove();
  }
  noMedia.hidden = mediaEl.querySelector('figure') !== null;
}

function clearMedia() {
  for (const el of document.querySelectorAll('[data-track-id]')) removeRemoteTrack(el.dataset.trackId);
  soundButton.hidden = true;
  membersEl.replaceChildren();
  memberCount.textContent = '0';
}

// ---- start / leave ----

function setJoined(joined) {
  fields.disabled = joined;
  controls.hidden = !joined;
}

function teardown() {
  if (client) client.leave();
  client = null;
  if (screenTrack) screenTrack.stop();
  screenTrack = null;
  if (localStream) for (const t of localStream.getTracks()) t.stop();
  localStream = null;
  if (preview) preview.srcObject = null;
  if (screenButton) screenButton.textContent = 'Del skjerm / Share screen';
  clearMedia();
  setJoined(false);
}

async function start({ session, name, role } = {}) {
  if (client) throw new Error('Already started');
  if (session !== undefined) sessionInput.value = session;
  if (name !== undefined) nameInput.value = name;
  if (role !== undefined) roleSelect.value = role;
  session = sessionInput.value.trim();
  name = nameInput.value.trim();
  role = roleSelect.value;
  alertEl.replaceChildren();
  if (!SESSION_RE.test(session) || !name || name.length > 64) {
    const err = Object.assign(new Error('Invalid session or name'), { code: 'bad_request' });
    showError(err);
    throw err;
  }

  fields.disabled = true;
  const c = new KursrelayClient();
  client = c;
  c.onMembers = (list) => { if (client === c) renderMembers(list); };
  c.onTrack = (track, info) => { if (client === c) addRemoteTrack(track, info); };
  c.onTrackGone = (trackId) => { if (client === c) removeRemoteTrack(trackId); };
  c.onError = (err) => {
    if (client !== c) return;
    // A refused trickled candidate (e.g. an mDNS .local name) is not fatal and not actionable.
    if (err.code === 'bad_candidate') console.error('kursrelay:', err.code, err.message);
    else showError(err);
  };
  c.onClose = (reason) => {
    if (client !== c) return;
    client = null; // already closed: nothing to send
    teardown();
    if (CLOSE_TEXT[reason]) showAlert(CLOSE_TEXT[reason]);
    else if (reason !== 'left') showAlert(ERROR_TEXT.connect_failed);
    setStatus('Du er ikke med i kurset nå.', 'You are not in the course now.');
  };

  try {
    if (isPublish) {
      setStatus('Ber om tilgang til kamera og mikrofon …', 'Asking for camera and microphone …');
      localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      preview.srcObject = localStream;
    }
    setStatus('Kobler til …', 'Connecting …');
    await c.connect();
    await c.join(session, name, role);
    if (isPublish) {
      setStatus('Sender kamera og mikrofon …', 'Sending camera and microphone …');
      await c.publish(localStream.getTracks().map((track) => ({
        track, source: track.kind === 'video' ? 'camera' : 'microphone',
      })));
      setStatus('Du sender nå. Kameraet ditt blir sendt til alle i kurset. Ingenting blir tatt opp.',
        'You are live. Your camera goes to everyone in the course. Nothing is recorded.');
    } else {
      setStatus('Du er med. Bilde og lyd kommer når forelesningen er i gang. Ingenting blir tatt opp.',
        'You have joined. Picture and sound appear when the lecture starts. Nothing is recorded.');
    }
    setJoined(true);
    (screenButton || leaveButton).focus();
    return { member_id: c.memberId };
  } catch (err) {
    if (client === c) teardown();
    showError(err);
    setStatus('Du er ikke med i kurset nå.', 'You are not in the course now.');
    throw err;
  }
}

function leave() {
  if (!client) return;
  teardown();
  setStatus('Du har forlatt kurset.', 'You have left the course.');
  $('start').focus();
}

// ---- screen share (publish.html) ----

async function screenShare() {
  if (!client || !isPublish) throw new Error('Not publishing');
  if (screenTrack) return;
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const track = stream.getVideoTracks()[0];
  screenTrack = track;
  track.addEventListener('ended', () => stopScreenShare().catch(showError)); // stopped from the browser's own bar
  try {
    await client.addTrack(track, 'screen');
  } catch (err) {
    if (screenTrack === track) screenTrack = null;
    track.stop();
    throw err;
  }
  screenButton.textContent = 'Slutt å dele skjerm / Stop sharing';
  setStatus('Du deler skjermen med alle i kurset.', 'You are sharing your screen with everyone in the course.');
}

async function stopScreenShare() {
  const track = screenTrack;
  if (!track) return;
  screenTrack = null;
  track.stop();
  screenButton.textContent = 'Del skjerm / Share screen';
  setStatus('Du deler ikke skjermen lenger.', 'You are no longer sharing your screen.');
  if (client) await client.removeTrack(track);
}

// ---- wiring ----

const params = new URLSearchParams(location.search);
if (SESSION_RE.test(params.get('session') || '')) sessionInput.value = params.get('session');

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  start().catch(() => {}); // already shown to the user
});
leaveButton.addEventListener('click', leave);
soundButton.addEventListener('click', () => {
  soundButton.hidden = true;
  for (const el of document.querySelectorAll('audio, video')) play(el);
});
if (screenButton) {
  screenButton.addEventListener('click', () => {
    screenButton.disabled = true;
    const action = screenTrack ? stopScreenShare() : screenShare();
    action.catch((err) => {
      if (err.name === 'NotAllowedError') setStatus('Skjermdeling ble avbrutt.', 'Screen sharing was cancelled.');
      else showError(err);
    }).finally(() => { screenButton.disabled = false; });
  });
}
addEventListener('pagehide', () => { if (client) client.leave(); });

const empty = { framesDecoded: 0, videoPacketsReceived: 0, audioPacketsReceived: 0, videoTracks: 0, audioTracks: 0 };
window.kursrelay = {
  start,
  leave,
  stats: async () => (client ? client.stats() : { ...empty }),
  get client() { return client; },
};
if (isPublish) Object.assign(window.kursrelay, { screenShare, stopScreenShare });
