// Page logic shared by publish.html and watch.html (<body data-page="publish|watch">).
// Both are opened from a join link: <page>.html#t=<token>. The role comes from the token.
import { KursrelayClient, KursrelayError } from './client.js';

const isPublish = document.body.dataset.page === 'publish';
const $ = (id) => document.getElementById(id);
const form = $('join-form');
const fields = $('join-fields');
const nameInput = $('name');
const startButton = $('start');
const controls = $('controls');
const leaveButton = $('leave');
const statusEl = $('status');
const alertEl = $('alert');
const membersEl = $('members');
const memberCount = $('member-count');
const participantCount = $('participant-count');
const mediaEl = $('media');
const noMedia = $('no-media');
const audioBox = $('audio');
const soundButton = $('sound');
const preview = $('preview');
const previewBox = $('preview-box');
// publish.html only
const screenButton = $('screen');
const managePanel = $('manage');
const lobbyBox = $('lobby-box');
const lobbyList = $('lobby');
const handsBox = $('hands-box');
const handsList = $('hands');
const floorBox = $('floor-box');
const floorList = $('floor');
const leaderActions = $('leader-actions');
const lockButton = $('lock');
const lockState = $('lock-state');
const endButton = $('end');
const queueSummary = $('queue-summary');
// watch.html only
const handButton = $('hand');
const floorButton = $('floor-publish');

const ROLE_TEXT = {
  leader: 'kursleder',
  representative: 'brukerrepresentant',
  participant: 'deltaker',
  site: 'sal',
  interpreter: 'tolk',
};
// What each role sends from publish.html (docs/protocol.md, "What may be published").
const SENDS = { leader: ['camera', 'microphone'], representative: ['camera', 'microphone'], interpreter: ['camera'] };
const SOURCE_TEXT = { camera: 'Kamera / Camera', screen: 'Skjerm / Screen' };
// [bokmål, English] for errors people can act on; everything else shows the server's message.
const ERROR_TEXT = {
  no_token: ['Denne siden må åpnes fra invitasjonslenken du fikk fra kursarrangøren.',
    'Please open this page from the invitation link the course organisers sent you.'],
  bad_token: ['Lenken virker ikke. Den kan være for gammel eller ikke kopiert helt. Be kursarrangøren om en ny.',
    'This link does not work. It may have expired or not been copied completely. Ask the course organisers for a new one.'],
  invite_revoked: ['Invitasjonen er trukket tilbake. Ta kontakt med kursarrangøren.',
    'This invitation has been withdrawn. Please contact the course organisers.'],
  session_ended: ['Kurset er avsluttet.', 'The course session has ended.'],
  locked: ['Kursleiaren har låst kurset, så ingen nye kan komme inn nå.',
    'The course leader has locked the session; nobody new can join now.'],
  removed: ['Kursleiaren har tatt deg ut av kurset. Lenken virker ikke lenger.',
    'The course leader removed you from the session. The link no longer works.'],
  forbidden: ['Det kan du ikke gjøre i din rolle nå.', 'Your role cannot do that now.'],
  unknown_member: ['Personen er ikke i kurset (lenger).', 'That person is not in the session (any more).'],
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
// Why the server said goodbye (bye.reason), or why the socket closed.
const CLOSE_TEXT = {
  denied: ['Kursleiaren slapp deg ikke inn denne gangen.', 'The course leader did not let you in.'],
  removed: ERROR_TEXT.removed,
  session_ended: ['Kurset er avsluttet. Takk for at du var med!', 'The session has ended. Thank you for taking part!'],
  replaced: ['Du ble med fra en annen fane eller enhet, så denne er koblet fra.',
    'You joined from another tab or device, so this one was disconnected.'],
  peer_failed: ['Bilde- og lydforbindelsen brøt. Trykk «Start» for å bli med igjen.',
    'The audio/video connection failed. Press Start to join again.'],
  server_shutdown: ['Kursserveren ble stoppet.', 'The course server was stopped.'],
  rate_limited: ['Tilkoblingen ble stengt fordi siden sendte for mye.', 'The connection was closed (too many messages).'],
};
const NOT_IN = ['Du er ikke med i kurset nå.', 'You are not in the course now.'];

let client = null;
let localStream = null; // publish.html: camera (+ microphone); watch.html: media while holding the floor
let screenTrack = null;
let floorGranted = false;
let lastRoster = null;
let memberNames = new Map();
const received = []; // every server message type, in order (for the automated test)

// ---- the link ----

/** The token from the join link's fragment, #t=<token>; never sent anywhere but in `join`. */
function linkToken() {
  return (new URLSearchParams(location.hash.slice(1)).get('t') || '').trim();
}

// Someone admitted from the lobby on an open link gets a rejoin token; a reload (same tab)
// uses it instead of the link's token. Open links need a name, so it is kept alongside.
const rejoinKey = (token) => `kursrelay.rejoin.${token}`;
const nameKey = (token) => `kursrelay.name.${token}`;
function stored(key) {
  try { return sessionStorage.getItem(key); } catch { return null; }
}
function storeRejoin(token, rejoin, name) {
  try {
    if (rejoin) {
      sessionStorage.setItem(rejoinKey(token), rejoin);
      if (name) sessionStorage.setItem(nameKey(token), name);
    } else {
      sessionStorage.removeItem(rejoinKey(token));
      sessionStorage.removeItem(nameKey(token));
    }
  } catch { /* storage disabled: the open link still works, via the lobby */ }
}

function checkLink() {
  if (client) return;
  const token = linkToken();
  const ok = Boolean(token);
  fields.disabled = !ok;
  if (ok && !nameInput.value) nameInput.value = stored(nameKey(token)) || '';
  if (!ok) showAlert(ERROR_TEXT.no_token);
  else if (alertEl.dataset.code === 'no_token') showAlert(null);
}

// ---- messages to the user ----

function setStatus([nb, en]) {
  statusEl.replaceChildren(nb);
  if (en) {
    const span = document.createElement('span');
    span.lang = 'en';
    span.textContent = en;
    statusEl.append(document.createElement('br'), span);
  }
}

function showAlert(text, code = '') {
  alertEl.dataset.code = code || (text === ERROR_TEXT.no_token ? 'no_token' : '');
  if (!text) {
    alertEl.replaceChildren();
    return;
  }
  const [nb, en] = text;
  const p = document.createElement('p');
  p.textContent = nb;
  const pe = document.createElement('p');
  pe.lang = 'en';
  pe.textContent = en;
  alertEl.replaceChildren(p, pe);
}

function showError(err) {
  if (err.code === 'bad_request') {
    // The server's message says what is wrong (for join: the name); it is in English.
    showAlert([err.request === 'join'
      ? 'Skriv inn navnet du vil at de andre skal se, og trykk «Start» igjen.'
      : 'Det gikk ikke.', err.message], err.code);
    return;
  }
  const known = ERROR_TEXT[err.code] || ERROR_TEXT[err.name];
  showAlert(known || [`Noe gikk galt: ${err.message}`, `Something went wrong${err.code ? ` (${err.code})` : ''}.`],
    err.code || err.name);
}

// ---- roster and media ----

function memberText(m) {
  let text = `${m.name} – ${ROLE_TEXT[m.role] || m.role}`;
  if (typeof m.headcount === 'number') text += `, ${m.headcount} ${m.headcount === 1 ? 'person' : 'personer'}`;
  if (m.floor) text += ' – har ordet';
  if (client && m.member_id === client.memberId) text += ' (deg / you)';
  return text;
}

function renderRoster(roster) {
  lastRoster = roster;
  const list = Array.isArray(roster.members) ? roster.members : [];
  memberNames = new Map(list.map((m) => [m.member_id, m.name]));
  // Update the live list item by item, so screen readers hear only what changed.
  const old = new Map([...membersEl.children].map((li) => [li.dataset.memberId, li]));
  list.forEach((m, i) => {
    let li = old.get(m.member_id);
    old.delete(m.member_id);
    if (!li) {
      li = document.createElement('li');
      li.dataset.memberId = m.member_id;
    }
    const text = memberText(m);
    if (li.textContent !== text) li.textContent = text;
    if (membersEl.children[i] !== li) membersEl.insertBefore(li, membersEl.children[i] || null);
  });
  for (const li of old.values()) li.remove();
  memberCount.textContent = String(list.length);
  participantCount.textContent = String(roster.participant_count ?? 0);
  for (const fig of mediaEl.querySelectorAll('figure')) setCaption(fig);
  if (managePanel) renderManage(roster, list);
}

function setCaption(fig) {
  const name = memberNames.get(fig.dataset.memberId);
  const source = SOURCE_TEXT[fig.dataset.source] || fig.dataset.source;
  fig.querySelector('figcaption').textContent = name ? `${source} – ${name}` : source;
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
  participantCount.textContent = '0';
  memberNames = new Map();
  for (const ul of [lobbyList, handsList, floorList]) if (ul) ul.replaceChildren();
  if (queueSummary) queueSummary.textContent = '';
}

// ---- the leader's and user representative's panel (publish.html) ----

/** Replace a list of people with buttons, keeping keyboard focus in the list when it was there. */
function renderList(ul, items, makeRow) {
  const active = document.activeElement;
  const had = ul.contains(active) ? active : null;
  const index = had ? [...ul.querySelectorAll('button')].indexOf(had) : -1;
  ul.replaceChildren(...(items.length ? items.map(makeRow) : [emptyRow()]));
  if (!had) return;
  const buttons = [...ul.querySelectorAll('button')];
  const same = buttons.find((b) => b.id === had.id);
  (same || buttons[Math.min(index, buttons.length - 1)] || $(ul.getAttribute('aria-labelledby'))).focus();
}

function emptyRow() {
  const li = document.createElement('li');
  li.className = 'hint';
  li.textContent = 'Ingen / Nobody';
  return li;
}

/** A person with action buttons; each button is named "<action> <person>" for screen readers. */
function personRow(prefix, memberId, name, actions) {
  const li = document.createElement('li');
  li.className = 'row';
  const span = document.createElement('span');
  span.id = `${prefix}-name-${memberId}`;
  span.textContent = name;
  li.append(span);
  for (const [label, type, cls] of actions) {
    const b = document.createElement('button');
    b.type = 'button';
    b.id = `${prefix}-${type}-${memberId}`;
    b.className = cls;
    b.textContent = label;
    b.setAttribute('aria-labelledby', `${b.id} ${span.id}`);
    b.addEventListener('click', () => busy(b, () => request(type, { member_id: memberId })));
    li.append(b);
  }
  return li;
}

/** Run action once at a time per button (aria-disabled keeps it focusable meanwhile). */
function busy(button, action) {
  if (button.getAttribute('aria-disabled') === 'true') return;
  button.setAttribute('aria-disabled', 'true');
  Promise.resolve().then(action).catch((err) => {
    if (err.code !== 'closed') showError(err);
  }).finally(() => button.removeAttribute('aria-disabled'));
}

function renderManage(roster, members) {
  const role = client && client.role;
  const leader = role === 'leader';
  managePanel.hidden = !(leader || role === 'representative');
  const lobby = Array.isArray(roster.lobby) ? roster.lobby : null;
  const hands = Array.isArray(roster.hands) ? roster.hands : null;

  lobbyBox.hidden = !lobby;
  renderList(lobbyList, lobby || [], (p) => personRow('lobby', p.member_id, p.name, leader
    ? [['Slepp inn / Admit', 'admit', 'primary'], ['Avvis / Deny', 'deny', 'danger']] : []));

  handsBox.hidden = !hands;
  renderList(handsList, hands || [], (id) => personRow('hands', id, memberNames.get(id) || '?', leader
    ? [['Gi ordet / Give the floor', 'grant_floor', 'primary']] : []));

  floorBox.hidden = !leader;
  renderList(floorList, members.filter((m) => m.floor), (m) => personRow('floor', m.member_id, m.name,
    [['Ta tilbake ordet / Take back the floor', 'revoke_floor', 'danger']]));

  leaderActions.hidden = !leader;
  lockButton.textContent = roster.locked ? 'Lås opp / Unlock' : 'Lås / Lock';
  lockState.textContent = roster.locked
    ? 'Kurset er låst: ingen nye slipper inn. / Locked: nobody new can join.'
    : 'Kurset er åpent. / The session is open.';

  const parts = [];
  if (lobby) parts.push(`${lobby.length} venter på å slippe inn / waiting to be let in`);
  if (hands) parts.push(`${hands.length} har rukket opp handa / raised hands`);
  const summary = parts.join('. ');
  if (queueSummary.textContent !== summary) queueSummary.textContent = summary;
}

// ---- start / leave ----

function requireClient() {
  if (!client) throw new KursrelayError('not_connected', 'Not started');
  return client;
}

/** A control request answered with ok {request}: admit, deny, grant_floor, lock, … */
async function request(type, fields) {
  return requireClient().control(type, fields);
}

function updateControls() {
  const role = client && client.role; // null while waiting in the lobby
  controls.hidden = !client;
  if (screenButton) screenButton.hidden = !(localStream && (role === 'leader' || role === 'representative'));
  if (managePanel && !(role === 'leader' || role === 'representative')) managePanel.hidden = true;
  if (handButton) handButton.hidden = !(role === 'participant' || role === 'site') || floorGranted;
  if (floorButton) {
    const live = (kind) => localStream && localStream.getTracks().some((t) => t.kind === kind && t.readyState === 'live');
    floorButton.hidden = !floorGranted || (live('audio') && live('video'));
  }
}

function focusMain() {
  const active = document.activeElement;
  if (active && active !== document.body && active !== leaveButton && active !== startButton) return;
  const first = [screenButton, handButton, leaveButton].find((b) => b && !b.hidden);
  first.focus();
}

function stopLocal() {
  if (screenTrack) screenTrack.stop();
  screenTrack = null;
  if (localStream) for (const t of localStream.getTracks()) t.stop();
  localStream = null;
  preview.srcObject = null;
  if (!isPublish) previewBox.hidden = true;
}

function teardown() {
  const c = client;
  client = null;
  if (c) c.leave();
  stopLocal();
  floorGranted = false;
  if (handButton) handButton.setAttribute('aria-pressed', 'false');
  if (screenButton) screenButton.textContent = 'Del skjerm / Share screen';
  clearMedia();
  if (managePanel) managePanel.hidden = true;
  fields.disabled = !linkToken();
  updateControls();
}

/** A failure while starting: leave and say why (a bye has already been shown by onClose). */
function fail(c, err) {
  if (client === c) teardown();
  if (err.code !== 'closed') showError(err);
  if (err.code === 'bad_request' && err.request === 'join') nameInput.focus();
  setStatus(NOT_IN);
}

async function start({ name } = {}) {
  if (client) throw new Error('Already started');
  const token = linkToken();
  if (!token) {
    const err = new KursrelayError('no_token', 'Open this page from the invitation link');
    showError(err);
    throw err;
  }
  if (name !== undefined) nameInput.value = name;
  name = nameInput.value.trim();
  showAlert(null);
  fields.disabled = true;

  const c = new KursrelayClient();
  client = c;
  c.onMessage = (msg) => { received.push(msg.type); };
  c.onRoster = (roster) => { if (client === c) renderRoster(roster); };
  c.onAdmitted = (msg) => { if (client === c) admitted(c, token, msg).catch((err) => fail(c, err)); };
  c.onHand = (raised) => { if (client === c) setHand(raised); };
  c.onFloor = (granted) => { if (client === c) onFloor(granted); };
  c.onMuted = () => { if (client === c) onMuted(); };
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
    if (reason === 'removed' || reason === 'session_ended') storeRejoin(token, null);
    if (CLOSE_TEXT[reason]) showAlert(CLOSE_TEXT[reason], reason);
    else if (reason !== 'left') showAlert(ERROR_TEXT.connect_failed, reason);
    setStatus(NOT_IN);
  };

  try {
    setStatus(['Kobler til …', 'Connecting …']);
    await c.connect();
    const rejoin = stored(rejoinKey(token));
    let reply;
    try {
      reply = await c.join(rejoin || token, name);
    } catch (err) {
      if (!rejoin || err.code !== 'bad_token') throw err;
      storeRejoin(token, null); // expired: the link itself (and the lobby) still works
      reply = await c.join(token, name);
    }
    updateControls();
    if (reply.type === 'lobby') {
      setStatus(['Du venter på at kursleiaren slepper deg inn.', 'Waiting for the course leader to let you in.']);
      focusMain();
      return { member_id: reply.member_id, role: null, lobby: true };
    }
    await admitted(c, token, reply);
    return { member_id: reply.member_id, role: reply.role, lobby: false };
  } catch (err) {
    fail(c, err);
    throw err;
  }
}

/** `joined`, at once or after the lobby: publish what the role sends, then say what is going on. */
async function admitted(c, token, joined) {
  if (joined.rejoin_token) storeRejoin(token, joined.rejoin_token, joined.name);
  updateControls();
  const sends = (isPublish && SENDS[joined.role]) || [];
  if (sends.length) {
    const audio = sends.includes('microphone');
    setStatus(audio ? ['Ber om tilgang til kamera og mikrofon …', 'Asking for camera and microphone …']
      : ['Ber om tilgang til kameraet …', 'Asking for the camera …']);
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio });
    if (client !== c) {
      for (const t of stream.getTracks()) t.stop();
      throw new KursrelayError('closed', 'Left while starting');
    }
    localStream = stream;
    preview.srcObject = stream;
    setStatus(['Sender …', 'Sending …']);
    await c.publish(stream.getTracks().map((track) => ({
      track, source: track.kind === 'video' ? 'camera' : 'microphone',
    })));
    updateControls();
    setStatus(audio
      ? ['Du sender nå. Kameraet og mikrofonen din går til alle i kurset. Ingenting blir tatt opp.',
        'You are live. Your camera and microphone go to everyone in the course. Nothing is recorded.']
      : ['Du sender nå. Kameraet ditt (uten lyd) går til alle i kurset. Ingenting blir tatt opp.',
        'You are live. Your camera (no sound) goes to everyone in the course. Nothing is recorded.']);
  } else if (isPublish) {
    setStatus(['Du er med, men lenken din er for å se på kurset. Kameraet ditt blir ikke sendt.',
      'You have joined, but your link is for watching. Your camera is not sent.']);
  } else if (joined.role === 'participant' || joined.role === 'site') {
    setStatus(['Du er med. Bilde og lyd kommer når forelesningen er i gang. Trykk «Rekk opp handa» hvis du vil si noe.',
      'You have joined. Picture and sound appear when the lecture starts. Press “Raise hand” to say something.']);
  } else {
    setStatus(['Du er med. Ingenting blir tatt opp.', 'You have joined. Nothing is recorded.']);
  }
  focusMain();
}

function leave() {
  if (!client) return;
  teardown();
  setStatus(['Du har forlatt kurset.', 'You have left the course.']);
  startButton.focus();
}

// ---- hand and floor (watch.html) ----

function setHand(raised) {
  if (!handButton) return;
  handButton.setAttribute('aria-pressed', String(raised));
  setStatus(raised
    ? ['Handa di er oppe. Kursleiaren ser det.', 'Your hand is raised. The course leader can see it.']
    : ['Handa di er nede.', 'Your hand is lowered.']);
}

async function raiseHand() { return requireClient().raiseHand(); }
async function lowerHand() { return requireClient().lowerHand(); }

function onFloor(granted) {
  if (!floorButton) return;
  const focused = document.activeElement;
  floorGranted = granted;
  if (granted) {
    handButton.setAttribute('aria-pressed', 'false'); // the server lowers the hand
    updateControls();
    setStatus(['Du har ordet – slå på mikrofonen.', 'You have the floor.']);
    if (focused === handButton || focused === document.body) floorButton.focus();
  } else {
    stopFloorMedia().catch((err) => showError(err));
    updateControls();
    setStatus(['Kursleiaren har tatt tilbake ordet. Mikrofonen og kameraet ditt er slått av.',
      'The course leader took back the floor. Your microphone and camera are off.']);
    if (focused === floorButton || focused === document.body) handButton.focus();
  }
}

/** Publish camera and microphone while holding the floor (only what is not already on). */
async function publishFloor() {
  const c = requireClient();
  if (!floorGranted) throw new KursrelayError('forbidden', 'You do not have the floor');
  const live = (kind) => localStream && localStream.getTracks().some((t) => t.kind === kind && t.readyState === 'live');
  const want = { video: !live('video'), audio: !live('audio') };
  if (!want.video && !want.audio) return;
  setStatus(['Ber om tilgang til kamera og mikrofon …', 'Asking for camera and microphone …']);
  const stream = await navigator.mediaDevices.getUserMedia(want);
  if (client !== c || !floorGranted) {
    for (const t of stream.getTracks()) t.stop();
    throw new KursrelayError('forbidden', 'The floor was taken back');
  }
  localStream = localStream || new MediaStream();
  for (const t of stream.getTracks()) localStream.addTrack(t);
  preview.srcObject = localStream;
  previewBox.hidden = false;
  await c.publish(stream.getTracks().map((track) => ({
    track, source: track.kind === 'video' ? 'camera' : 'microphone',
  })));
  updateControls();
  if (floorGranted) {
    setStatus(['Mikrofonen og kameraet ditt er på. Alle i kurset ser og hører deg.',
      'Your microphone and camera are on. Everyone in the course sees and hears you.']);
  }
}

async function stopFloorMedia() {
  const tracks = localStream ? localStream.getTracks() : [];
  stopLocal();
  if (client && tracks.length) await client.removeTracks(tracks);
}

function onMuted() {
  const mics = localStream ? localStream.getAudioTracks() : [];
  for (const t of mics) {
    t.stop();
    localStream.removeTrack(t);
  }
  if (client && mics.length) client.removeTracks(mics).catch((err) => showError(err));
  updateControls();
  setStatus(['Kursleiaren har slått av mikrofonen din.', 'The course leader turned off your microphone.']);
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
  setStatus(['Du deler skjermen med alle i kurset.', 'You are sharing your screen with everyone in the course.']);
}

async function stopScreenShare() {
  const track = screenTrack;
  if (!track) return;
  screenTrack = null;
  track.stop();
  screenButton.textContent = 'Del skjerm / Share screen';
  setStatus(['Du deler ikke skjermen lenger.', 'You are no longer sharing your screen.']);
  if (client) await client.removeTrack(track);
}

// ---- wiring ----

checkLink();
addEventListener('hashchange', checkLink);
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
      if (err.name === 'NotAllowedError') setStatus(['Skjermdeling ble avbrutt.', 'Screen sharing was cancelled.']);
      else showError(err);
    }).finally(() => { screenButton.disabled = false; });
  });
}
if (lockButton) {
  lockButton.addEventListener('click', () => busy(lockButton,
    () => request(lastRoster && lastRoster.locked ? 'unlock' : 'lock')));
  endButton.addEventListener('click', () => {
    if (!confirm('Avslutte kurset for alle? Lenkene slutter å virke.\nEnd the session for everyone? The links stop working.')) return;
    busy(endButton, () => request('end_session'));
  });
}
if (handButton) {
  handButton.addEventListener('click', () => busy(handButton,
    () => (handButton.getAttribute('aria-pressed') === 'true' ? lowerHand() : raiseHand())));
  floorButton.addEventListener('click', () => busy(floorButton, publishFloor));
}
addEventListener('pagehide', () => { if (client) client.leave(); });

const empty = { framesDecoded: 0, videoPacketsReceived: 0, audioPacketsReceived: 0, videoTracks: 0, audioTracks: 0 };
window.kursrelay = {
  start,
  leave,
  stats: async () => (client ? client.stats() : { ...empty }),
  raiseHand,
  lowerHand,
  admit: (memberId) => request('admit', { member_id: memberId }),
  deny: (memberId) => request('deny', { member_id: memberId }),
  grantFloor: (memberId) => request('grant_floor', { member_id: memberId }),
  revokeFloor: (memberId) => request('revoke_floor', { member_id: memberId }),
  publishFloor,
  roster: () => lastRoster,
  messages: () => received.slice(),
  get client() { return client; },
};
if (isPublish) Object.assign(window.kursrelay, { screenShare, stopScreenShare });
