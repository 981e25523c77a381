// Page logic shared by publish.html and watch.html (<body data-page="publish|watch">).
// Both are opened from a join link: <page>.html#t=<token>. The role comes from the token
// (the server's `joined` is authoritative; the page only peeks at the token to choose a layout
// before joining). Screens: prejoin -> (lobby) -> joined -> left; a site kiosk reconnects by itself.
import { KursrelayClient, KursrelayError } from './client.js';
import { t, has, initPicker, onLangChange } from './i18n.js';
import { DeviceTest } from './devices.js';
import { rtcConfig } from './ice.js';
import { checkLink } from './check-i18n.js';

const isPublish = document.body.dataset.page === 'publish';
const $ = (id) => document.getElementById(id);
const el = {
  alert: $('alert'), status: $('status'), announce: $('announce'), roomName: $('room-name'),
  prejoin: $('prejoin'), lobby: $('lobby-screen'), stage: $('stage'), ended: $('ended'),
  name: $('name'), join: $('join'), lobbyLeave: $('lobby-leave'), rejoin: $('rejoin'),
  hand: $('hand'), floorPublish: $('floor-publish'), mic: $('mic-toggle'), cam: $('cam-toggle'),
  screen: $('screen'), sound: $('sound'), leave: $('leave'),
  headcountForm: $('headcount-form'), headcount: $('headcount'), headcountState: $('headcount-state'),
  noMedia: $('no-media'), media: $('media'), mainSlot: $('main-slot'), interpSlot: $('interp-slot'),
  others: $('others'), audio: $('audio'),
  captions: $('captions'), captionsEmpty: $('captions-empty'), captionForm: $('caption-form'),
  captionText: $('caption-text'), contrast: $('contrast'),
  chatBox: $('chat-box'), chatLog: $('chat-log'), chatForm: $('chat-form'), chatText: $('chat-text'),
  console: $('console'), sessionLine: $('session-line'), leaderActions: $('leader-actions'),
  lock: $('lock'), csv: $('csv'), end: $('end'),
  lobbyBox: $('lobby-box'), lobbyList: $('lobby'), handsBox: $('hands-box'), handsList: $('hands'),
  presentBox: $('present-box'), present: document.querySelector('#present tbody'),
  selfBox: $('self-box'), selfPreview: $('self-preview'),
  rosterBox: $('roster-box'), membersHeading: $('members-heading'), members: $('members'),
  participantCount: $('participant-count'),
};

// What each role sends from publish.html (docs/protocol.md, "What may be published").
const SENDS = { leader: ['camera', 'microphone'], representative: ['camera', 'microphone'], interpreter: ['camera'] };
// Join failures and goodbyes after which a kiosk does not try again.
const TERMINAL = new Set(['left', 'removed', 'revoked', 'session_ended', 'denied', 'replaced', 'bad_token', 'invite_revoked', 'no_token']);
const RECONNECT_MS = 2000;
const MAX_CAPTIONS = 100;

const devices = new DeviceTest({
  video: $('preview'), meter: $('mic-meter'), meterText: $('meter-text'), message: $('device-msg'),
  cameraSelect: $('camera-select'), micSelect: $('mic-select'), speakerButton: $('test-speaker'),
});

let client = null;
let pageState = 'prejoin';
let starting = null; // the running start() promise
let joinedMsg = null;
let kiosk = false; // a site: kiosk layout and automatic reconnection
let reconnectTimer = null;
let localStream = null; // what we publish (publish roles; floor media on watch.html)
let screenTrack = null;
let floorGranted = false;
let handRaised = false;
let lastRoster = null;
let memberInfo = new Map(); // member_id -> roster entry
let statusMsg = null; // [key, vars]
let alertMsg = null; // [key, vars]
let lastHeadcount = null;
const received = []; // every server message type, in order (for the automated tests)
const captionTexts = [];

// ---- the link ----

/** The token from the join link's fragment, #t=<token>; never sent anywhere but in `join`. */
function linkToken() {
  return (new URLSearchParams(location.hash.slice(1)).get('t') || '').trim();
}

/** The token's claims, unverified: only to choose a layout before `joined` says the role. */
function peek(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4))) || {};
  } catch {
    return {};
  }
}

const rejoinKey = (token) => `kursrelay.rejoin.${token}`;
const nameKey = (token) => `kursrelay.name.${token}`;
const headcountKey = (token) => `kursrelay.headcount.${token}`;
function stored(key, store = sessionStorage) {
  try { return store.getItem(key); } catch { return null; }
}
function store(key, value, where = sessionStorage) {
  try {
    if (value === null || value === undefined || value === '') where.removeItem(key);
    else where.setItem(key, String(value));
  } catch { /* storage disabled */ }
}

// ---- messages to the user (kept as keys so a language change re-renders them) ----

function setStatus(key, vars) {
  statusMsg = key ? [key, vars] : null;
  el.status.textContent = key ? t(key, vars) : '';
}

const PROBLEM_BYES = new Set(['bye.connection_lost', 'bye.peer_failed', 'bye.server_shutdown', 'bye.rate_limited']);

function showAlert(key, vars) {
  alertMsg = key ? [key, vars] : null;
  el.alert.replaceChildren();
  if (key) {
    const p = document.createElement('p');
    p.textContent = t(key, vars);
    el.alert.append(p);
    // Every error and every lost connection points to the connectivity check.
    if (key.startsWith('err.') || PROBLEM_BYES.has(key)) el.alert.append(checkLink(t));
  }
}

function announce(key, vars) {
  // Clear first so the same text twice is still read out.
  el.announce.textContent = '';
  setTimeout(() => { el.announce.textContent = t(key, vars); }, 50);
}

function errorKey(err) {
  const code = err.code || err.name;
  if (code === 'bad_request' && err.request === 'join') return 'err.bad_name';
  const key = `err.${code}`;
  return has(key) ? key : null;
}

function showError(err) {
  const key = errorKey(err);
  if (key) showAlert(key);
  else showAlert('err.unknown', { code: err.code || err.name || '?' });
}

// ---- screens ----

function setState(next) {
  pageState = next;
  document.body.dataset.state = next;
  el.prejoin.hidden = next !== 'prejoin' && next !== 'connecting';
  el.lobby.hidden = next !== 'lobby';
  el.stage.hidden = !(next === 'joined' || (kiosk && next === 'reconnecting'));
  el.ended.hidden = next !== 'left';
  el.join.disabled = next === 'connecting' || !linkToken();
}

function focusHeading(id) {
  const h = $(id);
  if (h && !h.closest('[hidden]')) h.focus();
}

// ---- roster ----

const roleText = (role) => t(`role.${role}`);

function renderRoster(roster) {
  lastRoster = roster;
  const list = Array.isArray(roster.members) ? roster.members : [];
  memberInfo = new Map(list.map((m) => [m.member_id, m]));
  el.membersHeading.textContent = t('roster.heading', { n: list.length });
  el.participantCount.textContent = t('roster.participants', { n: roster.participant_count ?? 0 });
  // Update item by item, so nothing is rebuilt needlessly.
  const old = new Map([...el.members.children].map((li) => [li.dataset.memberId, li]));
  list.forEach((m, i) => {
    let li = old.get(m.member_id);
    old.delete(m.member_id);
    if (!li) {
      li = document.createElement('li');
      li.dataset.memberId = m.member_id;
    }
    const text = memberText(m);
    if (li.textContent !== text) li.textContent = text;
    if (el.members.children[i] !== li) el.members.insertBefore(li, el.members.children[i] || null);
  });
  for (const li of old.values()) li.remove();
  if (kiosk) renderKioskHeadcount();
  layoutVideos();
  renderConsole(roster, list);
}

function memberText(m) {
  let text = `${m.name} – ${roleText(m.role)}`;
  if (typeof m.headcount === 'number') text += `, ${t('roster.people', { n: m.headcount })}`;
  if (m.floor) text += ` – ${t('roster.has_floor')}`;
  if (client && m.member_id === client.memberId) text += ` ${t('roster.you')}`;
  return text;
}

// ---- media: the lecture large, screen share with the speaker inset, the interpreter pinned ----

function play(media) {
  media.play().catch((err) => {
    if (err.name === 'NotAllowedError') el.sound.hidden = false;
  });
}

function addRemoteTrack(track, info) {
  if (track.kind === 'audio') {
    const audio = document.createElement('audio');
    audio.autoplay = true;
    audio.dataset.trackId = info.track_id;
    audio.srcObject = new MediaStream([track]);
    el.audio.append(audio);
    play(audio);
    return;
  }
  const fig = document.createElement('figure');
  fig.className = 'tile';
  fig.dataset.trackId = info.track_id;
  fig.dataset.memberId = info.member_id || '';
  fig.dataset.source = info.source;
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = true; // sound comes from the <audio> elements
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  fig.append(video, document.createElement('figcaption'));
  el.others.append(fig);
  play(video);
  layoutVideos();
}

function removeRemoteTrack(trackId) {
  for (const node of document.querySelectorAll('[data-track-id]')) {
    if (node.dataset.trackId !== trackId) continue;
    const media = node.matches('audio') ? node : node.querySelector('video');
    media.srcObject = null;
    node.remove();
  }
  layoutVideos();
}

function clearMedia() {
  for (const node of document.querySelectorAll('[data-track-id]')) removeRemoteTrack(node.dataset.trackId);
  el.sound.hidden = true;
}

const RANK = { leader: 0, representative: 1, site: 3, participant: 3 };

function layoutVideos() {
  const figs = [...el.media.querySelectorAll('figure[data-track-id]')];
  const role = (f) => (memberInfo.get(f.dataset.memberId) || {}).role;
  const interp = figs.filter((f) => f.dataset.source !== 'screen' && role(f) === 'interpreter');
  const screens = figs.filter((f) => f.dataset.source === 'screen');
  const cams = figs.filter((f) => f.dataset.source !== 'screen' && !interp.includes(f))
    .sort((a, b) => (RANK[role(a)] ?? 2) - (RANK[role(b)] ?? 2));
  let main = null;
  let inset = null;
  if (screens.length) {
    main = screens[screens.length - 1];
    inset = cams.find((f) => f.dataset.memberId === main.dataset.memberId) || cams[0] || null;
  } else {
    main = cams[0] || null;
  }
  const place = (fig, slot, pos) => {
    if (fig.parentElement !== slot) {
      slot.append(fig);
      play(fig.querySelector('video')); // moving a media element may pause it
    }
    fig.dataset.pos = pos;
  };
  if (main) place(main, el.mainSlot, 'main');
  if (inset) place(inset, el.mainSlot, 'inset');
  if (interp[0]) place(interp[0], el.interpSlot, 'interp');
  for (const f of figs) if (f !== main && f !== inset && f !== interp[0]) place(f, el.others, 'other');
  el.interpSlot.hidden = !interp[0];
  el.media.classList.toggle('has-interp', Boolean(interp[0]));
  el.media.classList.toggle('has-main', Boolean(main));
  el.noMedia.hidden = figs.length > 0;
  for (const f of figs) setFigCaption(f, role(f));
}

function setFigCaption(fig, role) {
  const m = memberInfo.get(fig.dataset.memberId);
  const source = role === 'interpreter' ? t('source.interpreter') : t(`source.${fig.dataset.source}`);
  const text = m ? `${source} – ${m.name}` : source;
  const cap = fig.querySelector('figcaption');
  if (cap.textContent !== text) cap.textContent = text;
  fig.querySelector('video').setAttribute('aria-label', text);
}

// ---- captions and chat ----

function addCaption(msg) {
  const text = String(msg.text || '');
  captionTexts.push(text);
  el.captionsEmpty.hidden = true;
  const p = document.createElement('p');
  const m = memberInfo.get(msg.member_id);
  p.textContent = text;
  if (m) p.title = m.name;
  el.captions.append(p);
  while (el.captions.querySelectorAll('p:not(#captions-empty)').length > MAX_CAPTIONS) {
    el.captions.querySelector('p:not(#captions-empty)').remove();
  }
  el.captions.scrollTop = el.captions.scrollHeight;
}

function addChat(msg) {
  el.chatBox.hidden = false;
  const p = document.createElement('p');
  const b = document.createElement('strong');
  b.textContent = `${msg.name || '?'}: `;
  p.append(b, document.createTextNode(String(msg.text || '')));
  el.chatLog.append(p);
  el.chatLog.scrollTop = el.chatLog.scrollHeight;
}

function applyCaptionPrefs() {
  const size = stored('kursrelay.capsize', localStorage) || '2';
  const contrast = stored('kursrelay.contrast', localStorage) === '1';
  for (const b of document.querySelectorAll('.capsize')) b.setAttribute('aria-pressed', String(b.dataset.size === size));
  el.captions.dataset.size = size;
  document.body.classList.toggle('high-contrast', contrast);
  el.contrast.setAttribute('aria-pressed', String(contrast));
}

async function sendCaption(text) {
  const c = requireClient();
  const value = String(text ?? '').trim();
  if (!value) return null;
  return c.caption(value);
}

// ---- the leader's and user representative's console ----

function renderConsole(roster, members) {
  const role = client && client.role;
  const leader = role === 'leader';
  el.console.hidden = !(leader || role === 'representative');
  el.rosterBox.hidden = leader; // the leader sees everything in the console's table
  if (el.console.hidden) return;
  const lobby = Array.isArray(roster.lobby) ? roster.lobby : [];
  const hands = Array.isArray(roster.hands) ? roster.hands : [];
  el.leaderActions.hidden = !leader;
  el.lobbyBox.hidden = !leader;
  el.presentBox.hidden = !leader;

  const parts = [t(roster.locked ? 'console.locked' : 'console.open'),
    t('console.count', { n: roster.participant_count ?? 0 })];
  if (leader) parts.push(t('console.waiting', { n: lobby.length }));
  parts.push(t('console.hands_n', { n: hands.length }));
  el.sessionLine.textContent = parts.join(' · ');
  el.lock.textContent = t(roster.locked ? 'console.unlock' : 'console.lock');

  renderList(el.lobbyList, lobby, (p) => personRow('lobby', p.member_id, p.name,
    [['console.admit', 'admit', 'primary'], ['console.deny', 'deny', 'danger']]));
  renderList(el.handsList, hands, (id) => personRow('hands', id, (memberInfo.get(id) || {}).name || '?',
    leader ? [['console.grant', 'grant_floor', 'primary']] : []));
  if (leader) renderPresent(members);
}

/** Replace a list's rows, keeping keyboard focus in the list when it was there. */
function renderList(container, items, makeRow, emptyTag = 'li') {
  const active = document.activeElement;
  const had = container.contains(active) ? active : null;
  const index = had ? [...container.querySelectorAll('button')].indexOf(had) : -1;
  if (items.length) container.replaceChildren(...items.map(makeRow));
  else {
    const row = document.createElement(emptyTag);
    row.className = 'hint';
    if (emptyTag === 'tr') {
      const td = document.createElement('td');
      td.colSpan = 5;
      td.textContent = t('console.nobody');
      row.append(td);
    } else row.textContent = t('console.nobody');
    container.replaceChildren(row);
  }
  if (!had) return;
  const buttons = [...container.querySelectorAll('button')];
  const same = buttons.find((b) => b.id === had.id);
  const target = same || buttons[Math.min(index, buttons.length - 1)];
  if (target) target.focus();
  else {
    const heading = container.closest('div') && container.closest('div').querySelector('h4');
    if (heading) heading.focus();
  }
}

const ACTION_NAME = { grant_floor: 'grant', revoke_floor: 'revoke' };

function actionButton(prefix, memberId, nameId, [labelKey, type, cls]) {
  const b = document.createElement('button');
  b.type = 'button';
  b.id = `${prefix}-${type}-${memberId}`;
  b.className = cls || '';
  // Stable hooks for tests: admit, deny, grant, revoke, mute, remove; the hand queue's
  // "give the floor" is grant-hand (the table's per-person one is grant).
  b.dataset.action = prefix === 'hands' ? 'grant-hand' : ACTION_NAME[type] || type;
  b.textContent = t(labelKey);
  // Named "<action> <person>" for screen readers.
  b.setAttribute('aria-labelledby', `${b.id} ${nameId}`);
  b.addEventListener('click', () => {
    if (type === 'remove' && !confirm(t('console.remove_confirm', { name: (memberInfo.get(memberId) || {}).name || '' }))) return;
    busy(b, () => request(type, { member_id: memberId }));
  });
  return b;
}

function personRow(prefix, memberId, name, actions) {
  const li = document.createElement('li');
  li.className = 'row';
  const span = document.createElement('span');
  span.id = `${prefix}-name-${memberId}`;
  span.textContent = name;
  li.append(span, ...actions.map((a) => actionButton(prefix, memberId, span.id, a)));
  return li;
}

function renderPresent(members) {
  renderList(el.present, members, (m) => {
    const tr = document.createElement('tr');
    const nameCell = document.createElement('th');
    nameCell.scope = 'row';
    nameCell.id = `present-name-${m.member_id}`;
    nameCell.textContent = m.name + (client && m.member_id === client.memberId ? ` ${t('roster.you')}` : '');
    const cells = [
      roleText(m.role),
      typeof m.headcount === 'number' ? String(m.headcount) : '–',
      m.floor ? t('console.floor_yes') : t('console.floor_no'),
    ].map((text) => { const td = document.createElement('td'); td.textContent = text; return td; });
    const actions = document.createElement('td');
    actions.className = 'cell-actions';
    if (!client || m.member_id !== client.memberId) {
      const list = [];
      if (m.role === 'participant' || m.role === 'site') {
        list.push(m.floor ? ['console.revoke', 'revoke_floor', 'danger'] : ['console.grant', 'grant_floor', '']);
      }
      if (m.role !== 'leader' && m.role !== 'interpreter') list.push(['console.mute', 'mute', '']);
      if (m.role !== 'leader') list.push(['console.remove', 'remove', 'danger']);
      actions.append(...list.map((a) => actionButton('present', m.member_id, nameCell.id, a)));
    }
    tr.append(nameCell, ...cells, actions);
    return tr;
  }, 'tr');
}

/** Run action once at a time per button (aria-disabled keeps it focusable meanwhile). */
function busy(button, action) {
  if (button.getAttribute('aria-disabled') === 'true') return;
  button.setAttribute('aria-disabled', 'true');
  Promise.resolve().then(action).catch((err) => {
    if (err.code !== 'closed') showError(err);
  }).finally(() => button.removeAttribute('aria-disabled'));
}

async function downloadAttendance() {
  const c = requireClient();
  const session = c.session || peek(linkToken()).sid;
  const res = await fetch(`/api/sessions/${encodeURIComponent(session)}/attendance?format=csv`, {
    headers: { Authorization: `Bearer ${linkToken()}` },
  });
  if (!res.ok) throw new KursrelayError('csv_failed', `HTTP ${res.status}`);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = `${t('console.csv_file')}-${new Date().toISOString().slice(0, 10)}.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  announce('console.csv_done');
}

// ---- controls ----

function requireClient() {
  if (!client) throw new KursrelayError('not_connected', 'Not started');
  return client;
}

async function request(type, fields) {
  return requireClient().control(type, fields);
}

const liveTrack = (kind) => localStream && localStream.getTracks().find((tr) => tr.kind === kind && tr.readyState === 'live');

function updateControls() {
  const role = client && client.role;
  const watcher = role === 'participant' || role === 'site';
  el.hand.hidden = !watcher || floorGranted;
  el.hand.setAttribute('aria-pressed', String(handRaised));
  el.hand.textContent = t(handRaised ? 'hand.lower' : 'hand.raise');
  el.floorPublish.hidden = !(watcher && floorGranted && !(liveTrack('audio') && liveTrack('video')));
  const mic = liveTrack('audio');
  const cam = liveTrack('video');
  el.mic.hidden = !mic;
  el.cam.hidden = !cam;
  if (mic) el.mic.textContent = t(mic.enabled ? 'media.mic_off' : 'media.mic_on');
  if (cam) el.cam.textContent = t(cam.enabled ? 'media.cam_off' : 'media.cam_on');
  el.screen.hidden = !(isPublish && (role === 'leader' || role === 'representative'));
  el.screen.textContent = t(screenTrack ? 'media.screen_stop' : 'media.screen_start');
  el.captionForm.hidden = role !== 'interpreter';
  el.headcountForm.hidden = !(kiosk && role === 'site');
  el.selfBox.hidden = !(localStream && localStream.getVideoTracks().length);
  if (el.selfPreview.srcObject !== localStream) el.selfPreview.srcObject = localStream;
  if (role === 'leader') el.chatBox.hidden = el.chatBox.dataset.refused === 'true';
}

function renderKioskHeadcount() {
  const me = client && memberInfo.get(client.memberId);
  const n = me && typeof me.headcount === 'number' ? me.headcount : lastHeadcount;
  el.headcountState.textContent = typeof n === 'number' ? t('site.headcount_now', { n }) : t('site.headcount_none');
}

async function setHeadcount(n) {
  const count = Number(n);
  if (!Number.isInteger(count) || count < 0 || count > 1000) {
    throw new KursrelayError('bad_request', 'A headcount is a whole number 0–1000', 'set_headcount');
  }
  const reply = await requireClient().setHeadcount(count);
  lastHeadcount = count;
  if (document.activeElement !== el.headcount) el.headcount.value = String(count);
  store(headcountKey(linkToken()), count, localStorage);
  renderKioskHeadcount();
  announce('site.headcount_now', { n: count });
  return reply;
}

// ---- start / leave ----

function teardown() {
  const c = client;
  client = null;
  if (c) c.leave();
  stopLocal();
  floorGranted = false;
  handRaised = false;
  clearMedia();
  lastRoster = null;
  memberInfo = new Map();
  el.members.replaceChildren();
  el.console.hidden = true;
  updateControls();
}

function stopLocal() {
  if (screenTrack) screenTrack.stop();
  screenTrack = null;
  if (localStream) for (const tr of localStream.getTracks()) tr.stop();
  localStream = null;
  el.selfPreview.srcObject = null;
}

function start(opts = {}) {
  if (starting) return starting;
  if (client) {
    // Already in (e.g. a kiosk joined by itself): report where we are instead of failing.
    const role = pageState === 'lobby' ? null : client.role;
    return Promise.resolve({ member_id: client.memberId, role, lobby: pageState === 'lobby' });
  }
  const run = doStart(opts);
  starting = run;
  run.then(() => { starting = null; }, () => { starting = null; });
  return run;
}

async function doStart({ name } = {}) {
  clearTimeout(reconnectTimer);
  const token = linkToken();
  if (!token) {
    const err = new KursrelayError('no_token', 'Open this page from the invitation link');
    showError(err);
    throw err;
  }
  if (name !== undefined) el.name.value = name;
  name = el.name.value.trim() || stored(nameKey(token)) || '';
  if (pageState !== 'reconnecting') {
    showAlert(null);
    setState('connecting');
    setStatus('status.connecting');
  }

  // Publish roles keep the tested camera and microphone; the others switch them off now
  // (the chosen devices are remembered for when the leader gives them the floor).
  if (devices.pending) await devices.pending;
  const tested = isPublish ? devices.take() : null;
  if (!isPublish) devices.stop();

  const c = new KursrelayClient(undefined, { rtcConfig: await rtcConfig() });
  client = c;
  c.onMessage = (msg) => { received.push(msg.type); };
  c.onRoster = (roster) => { if (client === c) renderRoster(roster); };
  c.onAdmitted = (msg) => {
    if (client !== c) return;
    announce('lobby.admitted');
    admitted(c, token, msg, null).catch((err) => fail(c, err));
  };
  c.onHand = (raised) => { if (client === c) setHand(raised); };
  c.onFloor = (granted) => { if (client === c) onFloor(granted); };
  c.onMuted = () => { if (client === c) onMuted(); };
  c.onChat = (msg) => { if (client === c) addChat(msg); };
  c.onCaption = (msg) => { if (client === c) addCaption(msg); };
  c.onTrack = (track, info) => { if (client === c) addRemoteTrack(track, info); };
  c.onTrackGone = (trackId) => { if (client === c) removeRemoteTrack(trackId); };
  c.onError = (err) => {
    if (client !== c) return;
    if (err.code === 'bad_candidate') console.error('kursrelay:', err.code, err.message);
    else if (err.code === 'peer_failed' && kiosk) { teardown(); scheduleReconnect(); }
    else showError(err);
  };
  c.onClose = (reason) => {
    if (client !== c) return;
    client = null;
    teardown();
    if (reason === 'removed' || reason === 'revoked' || reason === 'session_ended') store(rejoinKey(token), null);
    if (kiosk && !TERMINAL.has(reason)) {
      scheduleReconnect();
      return;
    }
    ended(reason);
  };

  try {
    await c.connect();
    const rejoin = stored(rejoinKey(token));
    let reply;
    try {
      reply = await c.join(rejoin || token, name);
    } catch (err) {
      if (!rejoin || err.code !== 'bad_token') throw err;
      store(rejoinKey(token), null);
      reply = await c.join(token, name);
    }
    if (reply.type === 'lobby') {
      if (tested) for (const tr of tested.getTracks()) tr.stop();
      setState('lobby');
      setStatus(null);
      focusHeading('lobby-heading');
      return { member_id: reply.member_id, role: null, lobby: true };
    }
    await admitted(c, token, reply, tested);
    return { member_id: reply.member_id, role: reply.role, lobby: false };
  } catch (err) {
    if (tested) for (const tr of tested.getTracks()) tr.stop();
    fail(c, err);
    throw err;
  }
}

/** A failure while starting: leave and say why (a kiosk tries again unless it is hopeless). */
function fail(c, err) {
  if (client === c) teardown();
  if (kiosk && !TERMINAL.has(err.code)) {
    scheduleReconnect();
    return;
  }
  if (err.code === 'closed') return; // onClose has already said why
  setState(pageState === 'joined' || pageState === 'lobby' ? 'left' : 'prejoin');
  setStatus(null);
  showError(err);
  if (pageState === 'prejoin') {
    devices.acquire(wantDevices());
    if (err.code === 'bad_request' && err.request === 'join') el.name.focus();
  }
}

function scheduleReconnect() {
  setState('reconnecting');
  setStatus('status.reconnecting');
  showAlert(null);
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => { start().catch(() => {}); }, RECONNECT_MS);
}

/** `joined`, at once or after the lobby: publish what the role sends, then show the course. */
async function admitted(c, token, joined, tested) {
  joinedMsg = joined;
  if (joined.rejoin_token) {
    store(rejoinKey(token), joined.rejoin_token);
    if (joined.name) store(nameKey(token), joined.name);
  }
  kiosk = joined.role === 'site' && !isPublish;
  document.body.classList.toggle('kiosk', kiosk);
  el.roomName.hidden = !kiosk;
  el.roomName.textContent = kiosk ? joined.name || '' : '';
  setState('joined');
  showAlert(null);
  // The server says whether chat is on; the box shows only then.
  el.chatBox.dataset.refused = joined.chat_enabled ? 'false' : 'true';
  el.chatBox.hidden = !joined.chat_enabled;
  updateControls();
  const sends = (isPublish && SENDS[joined.role]) || [];
  if (!sends.length && tested) for (const tr of tested.getTracks()) tr.stop();

  if (sends.length) {
    let stream = tested || new MediaStream();
    // Keep only what this role sends (an interpreter sends no sound).
    for (const tr of stream.getTracks()) {
      const source = tr.kind === 'video' ? 'camera' : 'microphone';
      if (!sends.includes(source)) { tr.stop(); stream.removeTrack(tr); }
    }
    const missing = { video: sends.includes('camera') && !stream.getVideoTracks().length,
      audio: sends.includes('microphone') && !stream.getAudioTracks().length };
    if (missing.video || missing.audio) {
      setStatus('status.asking');
      try {
        const more = await navigator.mediaDevices.getUserMedia({
          video: missing.video ? devices.constraints('video') : false,
          audio: missing.audio ? devices.constraints('audio') : false,
        });
        for (const tr of more.getTracks()) stream.addTrack(tr);
      } catch (err) {
        showAlert(err.name === 'NotAllowedError' ? 'dev.denied_joined' : 'dev.none_joined');
      }
    }
    if (client !== c) {
      for (const tr of stream.getTracks()) tr.stop();
      throw new KursrelayError('closed', 'Left while starting');
    }
    if (stream.getTracks().length) {
      localStream = stream;
      updateControls();
      setStatus('status.sending');
      await c.publish(stream.getTracks().map((track) => ({
        track, source: track.kind === 'video' ? 'camera' : 'microphone',
      })));
      setStatus(stream.getAudioTracks().length ? 'status.live' : 'status.live_video');
    } else {
      setStatus('status.joined_no_media');
    }
  } else if (isPublish) {
    setStatus('status.watch_link');
  } else if (kiosk) {
    setStatus(null);
    const saved = stored(headcountKey(token), localStorage);
    lastHeadcount = saved !== null && saved !== '' ? Number(saved) : lastHeadcount;
    if (typeof lastHeadcount === 'number' && !Number.isNaN(lastHeadcount)) {
      el.headcount.value = String(lastHeadcount);
      c.setHeadcount(lastHeadcount).catch(() => {}); // the room's count survives a reconnect
    }
    renderKioskHeadcount();
  } else if (joined.role === 'participant') {
    setStatus('status.joined_watch');
  } else {
    setStatus('status.joined');
  }
  updateControls();
  // Focus the (screen-reader) heading of the course view: the next Tab is its first button.
  if (pageState === 'joined' && !el.stage.contains(document.activeElement)) focusHeading('stage-heading');
}

function ended(reason) {
  setState('left');
  setStatus(null);
  const key = `bye.${reason}`;
  if (has(key)) showAlert(key);
  else if (reason !== 'left') showAlert('err.connect_failed');
  else showAlert('bye.left');
  el.rejoin.hidden = reason === 'removed' || reason === 'revoked' || reason === 'session_ended' || reason === 'denied';
  focusHeading('ended-heading');
}

function leave() {
  clearTimeout(reconnectTimer);
  if (!client && pageState !== 'reconnecting') return;
  teardown();
  ended('left');
}

function wantDevices() {
  const role = peek(linkToken()).role;
  return { video: true, audio: role !== 'interpreter' };
}

function backToPrejoin() {
  showAlert(null);
  setState('prejoin');
  devices.acquire(wantDevices());
  el.join.focus();
}

// ---- hand and floor (watch.html) ----

function setHand(raised) {
  handRaised = raised;
  updateControls();
  announce(raised ? 'hand.raised' : 'hand.lowered');
}

async function raiseHand() { return requireClient().raiseHand(); }
async function lowerHand() { return requireClient().lowerHand(); }

function onFloor(granted) {
  const focused = document.activeElement;
  floorGranted = granted;
  if (granted) {
    handRaised = false; // the server lowers the hand
    updateControls();
    announce('floor.granted');
    setStatus('floor.granted');
    if (focused === el.hand || focused === document.body) el.floorPublish.focus();
  } else {
    stopFloorMedia().catch((err) => showError(err));
    updateControls();
    announce('floor.revoked');
    setStatus('floor.revoked');
    if (!el.hand.hidden && (!focused || focused === document.body || focused.hidden || el.stage.contains(focused))) el.hand.focus();
  }
}

/** Publish camera and microphone while holding the floor (only what is not already on). */
async function publishFloor() {
  const c = requireClient();
  if (!floorGranted) throw new KursrelayError('forbidden', 'You do not have the floor');
  const want = { video: !liveTrack('video'), audio: !liveTrack('audio') };
  if (!want.video && !want.audio) return;
  setStatus('status.asking');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: want.video ? devices.constraints('video') : false,
      audio: want.audio ? devices.constraints('audio') : false,
    });
  } catch (err) {
    if (want.video && want.audio && err.name !== 'NotAllowedError') {
      // Perhaps only one of them exists: sound matters most.
      stream = await navigator.mediaDevices.getUserMedia({ audio: devices.constraints('audio') });
    } else throw err;
  }
  if (client !== c || !floorGranted) {
    for (const tr of stream.getTracks()) tr.stop();
    throw new KursrelayError('forbidden', 'The floor was taken back');
  }
  localStream = localStream || new MediaStream();
  for (const tr of stream.getTracks()) localStream.addTrack(tr);
  updateControls();
  await c.publish(stream.getTracks().map((track) => ({
    track, source: track.kind === 'video' ? 'camera' : 'microphone',
  })));
  updateControls();
  if (floorGranted) setStatus('floor.live');
}

async function stopFloorMedia() {
  if (isPublish) return;
  const tracks = localStream ? localStream.getTracks() : [];
  stopLocal();
  if (client && tracks.length) await client.removeTracks(tracks);
}

function onMuted() {
  const mics = localStream ? localStream.getAudioTracks() : [];
  for (const tr of mics) {
    tr.stop();
    localStream.removeTrack(tr);
  }
  if (client && mics.length) client.removeTracks(mics).catch((err) => showError(err));
  updateControls();
  announce('media.muted_by_leader');
  setStatus('media.muted_by_leader');
}

function toggleTrack(kind) {
  const tr = liveTrack(kind);
  if (!tr) return;
  tr.enabled = !tr.enabled;
  updateControls();
  announce(kind === 'audio' ? (tr.enabled ? 'media.mic_is_on' : 'media.mic_is_off')
    : (tr.enabled ? 'media.cam_is_on' : 'media.cam_is_off'));
}

// ---- screen share (publish.html) ----

async function screenShare() {
  if (!client || !isPublish) throw new Error('Not publishing');
  if (screenTrack) return;
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const track = stream.getVideoTracks()[0];
  screenTrack = track;
  track.addEventListener('ended', () => stopScreenShare().catch(showError));
  try {
    await client.addTrack(track, 'screen');
  } catch (err) {
    if (screenTrack === track) screenTrack = null;
    track.stop();
    throw err;
  }
  updateControls();
  setStatus('media.screen_on');
}

async function stopScreenShare() {
  const track = screenTrack;
  if (!track) return;
  screenTrack = null;
  track.stop();
  updateControls();
  setStatus('media.screen_off');
  if (client) await client.removeTrack(track);
}

// ---- language ----

function rerender() {
  if (statusMsg) setStatus(...statusMsg);
  if (alertMsg) showAlert(...alertMsg);
  devices.render();
  updateControls();
  if (lastRoster) renderRoster(lastRoster);
  else {
    el.membersHeading.textContent = t('roster.heading', { n: 0 });
    el.participantCount.textContent = t('roster.participants', { n: 0 });
  }
  layoutVideos();
  if (kiosk) renderKioskHeadcount();
}

// ---- wiring ----

initPicker($('lang'));
onLangChange(rerender);
applyCaptionPrefs();
setState('prejoin');
rerender();

{
  const token = linkToken();
  const claims = token ? peek(token) : {};
  if (!token) {
    showAlert('err.no_token');
  } else if (claims.role === 'site' && !isPublish) {
    // An unattended room screen: no device test, no click; join at once and keep trying.
    kiosk = true;
    document.body.classList.add('kiosk');
    setTimeout(() => { if (pageState === 'prejoin') start().catch(() => {}); }, 0);
  } else {
    devices.acquire(wantDevices());
    if (claims.open) el.name.required = true;
  }
  const savedName = token ? stored(nameKey(token)) : null;
  if (savedName) el.name.value = savedName;
}
addEventListener('hashchange', () => { if (pageState === 'prejoin') location.reload(); });

el.join.addEventListener('click', () => start().catch(() => {}));
el.name.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') start().catch(() => {}); });
el.leave.addEventListener('click', leave);
el.lobbyLeave.addEventListener('click', leave);
el.rejoin.addEventListener('click', backToPrejoin);
el.sound.addEventListener('click', () => {
  el.sound.hidden = true;
  for (const m of document.querySelectorAll('#stage audio, #stage video')) play(m);
});
el.hand.addEventListener('click', () => busy(el.hand, () => (handRaised ? lowerHand() : raiseHand())));
el.floorPublish.addEventListener('click', () => busy(el.floorPublish, publishFloor));
el.mic.addEventListener('click', () => toggleTrack('audio'));
el.cam.addEventListener('click', () => toggleTrack('video'));
el.screen.addEventListener('click', () => {
  el.screen.disabled = true;
  const action = screenTrack ? stopScreenShare() : screenShare();
  action.catch((err) => {
    if (err.name === 'NotAllowedError') setStatus('media.screen_cancelled');
    else showError(err);
  }).finally(() => { el.screen.disabled = false; });
});
el.lock.addEventListener('click', () => busy(el.lock, () => request(lastRoster && lastRoster.locked ? 'unlock' : 'lock')));
el.end.addEventListener('click', () => {
  if (!confirm(t('console.end_confirm'))) return;
  busy(el.end, () => request('end_session'));
});
el.csv.addEventListener('click', () => busy(el.csv, downloadAttendance));
el.headcountForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const b = $('headcount-set');
  busy(b, () => setHeadcount(el.headcount.value));
});
el.captionForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = el.captionText.value;
  busy($('caption-send'), async () => {
    await sendCaption(text);
    if (el.captionText.value === text) el.captionText.value = '';
  });
});
el.captionText.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    el.captionForm.requestSubmit();
  }
});
el.chatForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = el.chatText.value.trim();
  if (!text || !client) return;
  client.chat(text).then(() => { el.chatText.value = ''; }, (err) => {
    if (err.code === 'forbidden') {
      el.chatBox.dataset.refused = 'true';
      el.chatBox.hidden = true;
      showAlert('chat.off');
    } else showError(err);
  });
});
for (const b of document.querySelectorAll('.capsize')) {
  b.addEventListener('click', () => { store('kursrelay.capsize', b.dataset.size, localStorage); applyCaptionPrefs(); });
}
el.contrast.addEventListener('click', () => {
  store('kursrelay.contrast', el.contrast.getAttribute('aria-pressed') === 'true' ? '0' : '1', localStorage);
  applyCaptionPrefs();
});
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
  captions: () => captionTexts.slice(),
  sendCaption,
  setHeadcount,
  state: () => pageState,
  get client() { return client; },
};
if (isPublish) Object.assign(window.kursrelay, { screenShare, stopScreenShare });
