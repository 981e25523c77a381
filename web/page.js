// The course page (course.html), opened from a join link: course.html#t=<token>.
//
// 1. The link is checked first (POST /link-check): a dead link gets a full-page message and no
//    camera prompt. 2. The role from that check picks the view (web/views/<role>.js). 3. Before
//    joining: who you join as, and a device test only for roles that send. 4. In the course.
// Whatever the role, a dropped connection or a restarted server brings the page back by itself
// with the same identity (an open link's rejoin credential is kept in localStorage), and what
// the role sends is sent again; only screen sharing needs a click (browsers require one).
import { KursrelayClient, KursrelayError } from './client.js';
import { t, has, initPicker, onLangChange, helpPhone, onConfig } from './i18n.js';
import { DeviceTest } from './devices.js';
import {
  $, el, state, linkToken, stored, store, keys, setStatus, showAlert, rerenderMessages, announce,
  showError, requireClient, request, busy, ask, displayName, roleText,
} from './core.js';
import {
  addRemoteTrack, removeTrack, clearMedia, layout, addLocalTrack, removeLocalTrack,
  toggleFullscreen, onSoundBlocked, unblockSound, isSoundBlocked, wireInterpSettings, setQuality,
  setSpeaking, speakingMark, isSpeaking, maySpeak,
} from './media.js';
import * as adapt from './adapt.js';
import { schedule } from './when.js';
import { addCaption, addChat, wireCaptionSettings, rerenderCaptions } from './captions.js';
import leaderView from './views/leader.js';
import representativeView from './views/representative.js';
import interpreterView from './views/interpreter.js';
import participantView from './views/participant.js';
import siteView from './views/site.js';
import { rtcConfig } from './ice.js';
import { checkLink as checkPageLink } from './check-i18n.js';

const VIEWS = {
  leader: leaderView,
  representative: representativeView,
  interpreter: interpreterView,
  participant: participantView,
  site: siteView,
};
// Goodbyes and join refusals after which the page does not try again by itself.
const TERMINAL = new Set(['left', 'removed', 'revoked', 'session_ended', 'denied', 'replaced',
  'bad_token', 'invite_revoked', 'no_token', 'locked', 'bad_request', 'forbidden']);
// Waits before each reconnect attempt: quick at first, then every few seconds, for ever.
const BACKOFF_MS = [500, 1000, 2000, 3000];
const CHECK_RETRY_MS = 2000;

const devices = new DeviceTest({
  video: $('preview'), meter: $('mic-meter'), meterText: $('meter-text'), message: $('device-msg'),
  cameraSelect: $('camera-select'), micSelect: $('mic-select'), speakerButton: $('test-speaker'),
});

let starting = null;
let viewChosen = null;
// Resolves once the link check has chosen the view (start() before that waits for it).
const ready = new Promise((resolve) => { viewChosen = resolve; });
let reconnectTimer = null;
let attempts = 0;
let screenWasShared = false;

// ---- screens ----

function setState(next) {
  state.page = next;
  document.body.dataset.state = next;
  const view = state.view;
  const kiosk = Boolean(view && view.kiosk);
  const coming = next === 'connecting' || next === 'reconnecting';
  const inStage = next === 'joined' || (coming && (state.wasIn === 'joined' || kiosk));
  el.checking.hidden = next !== 'checking';
  el.problem.hidden = next !== 'problem';
  el.prejoin.hidden = !(next === 'prejoin' || (coming && !state.wasIn && !kiosk));
  el.lobby.hidden = !(next === 'lobby' || (coming && state.wasIn === 'lobby'));
  el.stage.hidden = !inStage;
  el.ended.hidden = next !== 'left';
  el.join.disabled = coming;
  document.body.classList.toggle('in-course', inStage);
  if (view && view.page) view.page(next);
  layout();
}

function focusHeading(id) {
  const h = $(id);
  if (h && !h.closest('[hidden]')) h.focus();
}

// ---- the link check ----

/** The role in the token, unverified (the server decides; this only styles the page early). */
function peekRole(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4))).role || null;
  } catch {
    return null;
  }
}

async function checkLink() {
  const token = state.token;
  let reply;
  try {
    const res = await fetch('/link-check', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    reply = await res.json();
  } catch {
    // The server is not there (yet): say so and try again, whatever the role.
    setStatus('status.waiting_server');
    setTimeout(checkLink, CHECK_RETRY_MS);
    return;
  }
  setStatus(null);
  state.link = reply;
  if (reply.state !== 'ok') {
    problem(`link.${reply.state}`);
    return;
  }
  if (reply.open && stored(keys.removed(token))) {
    problem('link.removed');
    return;
  }
  showTitles(reply);
  choose(reply.role);
}

/** A full-page message about the link, with the help number; nothing else happens. */
function problem(key) {
  el.problemHeading.dataset.key = key;
  setState('problem');
  renderProblem();
  focusHeading('problem-heading');
}

function renderProblem() {
  const key = el.problemHeading.dataset.key;
  if (!key) return;
  el.problemHeading.textContent = t(`${key}.heading`);
  el.problemText.textContent = t(`${key}.text`);
  const phone = helpPhone();
  el.problemHelp.replaceChildren();
  if (phone) {
    const a = document.createElement('a');
    a.href = `tel:${phone.replace(/[^+\d]/g, '')}`;
    a.className = 'help-phone';
    a.textContent = phone;
    el.problemHelp.append(t('help.call'), ' ', a);
  } else el.problemHelp.textContent = t('help.text');
  // Every error screen points to the connectivity check too.
  const check = document.createElement('p');
  check.append(checkPageLink(t));
  el.problemHelp.after(check);
  el.problemExtra?.remove();
  el.problemExtra = check;
}

function showTitles(link) {
  el.courseTitle.textContent = link.course_title || t('course.title');
  el.courseTitle.removeAttribute('data-i18n');
  el.courseTitle.title = link.course_title || '';
  el.sessionTitle.textContent = link.session_title || '';
  el.sessionTitle.title = link.session_title || '';
  el.sessionTitle.hidden = !link.session_title;
  renderDocTitle();
  renderSchedule();
}

let badge = 0;
/** The tab's title: "(2) Course – kursrelay" while the leader has people waiting or hands up. */
function setBadge(n) {
  badge = n;
  renderDocTitle();
}

function renderDocTitle() {
  const base = state.link && state.link.course_title
    ? `${state.link.course_title} – ${t('course.brand')}` : t('course.doc_title');
  document.title = badge > 0 ? `(${badge}) ${base}` : base;
}

// ---- before joining ----

function choose(role) {
  const view = VIEWS[role] || participantView;
  state.view = view;
  viewChosen();
  document.body.dataset.view = view.role;
  document.body.classList.toggle('kiosk', Boolean(view.kiosk));
  if (view.setup) view.setup(api);
  if (view.kiosk) {
    // An unattended room screen: no device test, no click; join at once and keep trying.
    setState('connecting');
    start().catch(() => {});
    return;
  }
  renderPrejoin();
  setState('prejoin');
  if (stored(keys.inCourse(state.token), sessionStorage)) {
    // A reload while in the course: straight back in, as the same person.
    start().catch(() => {});
    return;
  }
  if (view.deviceTest) {
    if (window.isSecureContext) devices.acquire(wantDevices());
    else {
      // Browsers give no camera to an insecure page: explain, instead of a black preview.
      el.insecure.hidden = false;
      el.cameraTest.hidden = true;
    }
  }
  const saved = stored(keys.name(state.token), sessionStorage);
  if (saved && !el.name.value) el.name.value = saved;
}

function wantDevices() {
  const sends = state.view ? state.view.sends : [];
  return { video: sends.includes('camera'), audio: sends.includes('microphone') };
}

function renderPrejoin() {
  const view = state.view;
  const link = state.link;
  if (!view || !link) return;
  el.prejoinHeading.textContent = t(view.deviceTest ? 'prejoin.heading_send' : 'prejoin.heading_watch');
  el.prejoinIntro.textContent = t(`prejoin.intro_${view.role}`);
  el.cameraTest.hidden = !view.deviceTest || !window.isSecureContext;
  // A site is always shown with its room's name; everyone else may choose, and need not.
  el.nameField.hidden = view.role === 'site';
  el.joinAs.hidden = !link.name;
  el.joinAs.textContent = link.name ? t('prejoin.join_as', { name: link.name, role: roleText(link.role) }) : '';
  el.nameLabel.textContent = t(link.name ? 'prejoin.name_change' : 'prejoin.name');
  el.nameHelp.textContent = t(link.name ? 'prejoin.name_help_invite'
    : link.open ? 'prejoin.name_help_open' : 'prejoin.name_help_role');
  el.insecure.textContent = t('prejoin.insecure');
}

/** When the course starts, where the person waits for it: before joining and in the lobby. */
function renderSchedule() {
  const s = schedule(state.link);
  el.schedule.hidden = !s;
  el.schedule.textContent = s ? t(`schedule.${s.phase}`, { when: s.when }) : '';
  // The lobby promises nothing it cannot keep: before the start it says when that is.
  el.lobbyText.textContent = s ? t('lobby.text_at', { when: s.when }) : t('lobby.text');
}

// ---- joining ----

function start(opts = {}) {
  if (!state.view && state.page !== 'problem') return ready.then(() => start(opts));
  if (starting) return starting;
  if (state.client) {
    // Already in (e.g. a kiosk that joined by itself): say where we are instead of failing.
    return Promise.resolve({ member_id: state.client.memberId, role: state.page === 'lobby' ? null : state.client.role, lobby: state.page === 'lobby' });
  }
  const run = doStart(opts);
  starting = run;
  run.then(() => { starting = null; }, () => { starting = null; });
  return run;
}

async function doStart({ name } = {}) {
  clearTimeout(reconnectTimer);
  const token = state.token;
  if (!token || !state.view) {
    const err = new KursrelayError('no_token', 'Open this page from the invitation link');
    showError(err);
    throw err;
  }
  const reconnecting = state.page === 'reconnecting';
  if (name !== undefined) el.name.value = name;
  const chosen = el.name.value.trim() || stored(keys.name(token), sessionStorage) || '';
  if (!reconnecting) {
    showAlert(null);
    setState('connecting');
    setStatus('status.connecting');
  }
  // Senders keep the tested camera and microphone; nobody else holds them.
  if (devices.pending) await devices.pending;
  const tested = state.view.sends.length ? devices.take() : null;
  devices.stop();

  // TURN servers with fresh credentials, asked for before every (re)connect.
  const c = new KursrelayClient(undefined, { rtcConfig: await rtcConfig() });
  state.client = c;
  const mine = (fn) => (...args) => { if (state.client === c) fn(...args); };
  c.onMessage = (msg) => { state.received.push(msg.type); };
  c.onSent = (msg) => { state.sent.push(sentCopy(msg)); };
  c.onVideoQuality = mine(onVideoQuality);
  c.onSpeaking = mine(onSpeaking);
  c.onRoster = mine(onRoster);
  c.onAdmitted = mine((msg) => {
    announce('lobby.admitted');
    admitted(c, msg, null).catch((err) => fail(c, err));
  });
  c.onHand = mine((raised) => { state.hand = raised; controls(); announce(raised ? 'hand.raised' : 'hand.lowered'); });
  c.onFloor = mine((granted) => state.view.floor && state.view.floor(api, granted));
  c.onMuted = mine(onMuted);
  // The server ended our publish connection (it failed) but kept us in: send the same
  // tracks again on a new one, as after a reconnect.
  c.onPublishClosed = mine((reason) => {
    if (reason === 'requested') return;
    const tracks = state.localStream ? state.localStream.getTracks().filter((tr) => tr.readyState === 'live') : [];
    const all = tracks.map((track) => ({ track, source: track.kind === 'video' ? 'camera' : 'microphone' }));
    if (state.screenTrack && state.screenTrack.readyState === 'live') all.push({ track: state.screenTrack, source: 'screen' });
    if (all.length) c.publish(all).catch(showError);
  });
  c.onChat = mine(addChat);
  c.onCaption = mine(addCaption);
  c.onTrack = mine(addRemoteTrack);
  c.onTrackGone = mine(removeTrack);
  c.onError = mine((err) => {
    if (err.code === 'bad_candidate') console.error('kursrelay:', err.code, err.message);
    else if (err.code === 'peer_failed') { teardown(); scheduleReconnect(); }
    else showError(err);
  });
  c.onClose = mine((reason) => {
    state.client = null;
    const was = state.page;
    teardown();
    if (['removed', 'revoked', 'session_ended'].includes(reason)) store(keys.rejoin(token), null, sessionStorage);
    if (reason === 'removed' && state.link && state.link.open) store(keys.removed(token), '1');
    if (!TERMINAL.has(reason) && (was === 'joined' || was === 'lobby' || was === 'reconnecting' || state.view.kiosk)) {
      scheduleReconnect();
      return;
    }
    ended(reason);
  });

  try {
    await c.connect();
    const rejoin = stored(keys.rejoin(token), sessionStorage);
    let reply;
    try {
      reply = await c.join(rejoin || token, chosen);
    } catch (err) {
      if (!rejoin || err.code !== 'bad_token') throw err;
      store(keys.rejoin(token), null, sessionStorage);
      reply = await c.join(token, chosen);
    }
    if (chosen) store(keys.name(token), chosen, sessionStorage);
    attempts = 0;
    if (reply.type === 'lobby') {
      if (tested) for (const tr of tested.getTracks()) tr.stop();
      state.wasIn = 'lobby';
      setState('lobby');
      setStatus(null);
      focusHeading('lobby-heading');
      return { member_id: reply.member_id, role: null, lobby: true };
    }
    await admitted(c, reply, tested);
    return { member_id: reply.member_id, role: reply.role, lobby: false };
  } catch (err) {
    if (tested) for (const tr of tested.getTracks()) tr.stop();
    fail(c, err);
    throw err;
  }
}

/** A failure while starting: try again unless it is hopeless, else say why. */
function fail(c, err) {
  if (state.client === c) teardown();
  const retry = !TERMINAL.has(err.code) && (state.wasIn || state.view.kiosk || state.page === 'reconnecting');
  if (retry) {
    scheduleReconnect();
    return;
  }
  if (err.code === 'closed') return; // onClose has already said why
  if (err.code === 'session_ended' || err.code === 'invite_revoked' || err.code === 'bad_token' || err.code === 'removed') {
    problem(`link.${{ session_ended: 'ended', invite_revoked: 'revoked', bad_token: 'invalid', removed: 'removed' }[err.code]}`);
    return;
  }
  setState(state.wasIn ? 'left' : 'prejoin');
  setStatus(null);
  showError(err);
  if (state.page === 'prejoin') {
    if (state.view.deviceTest && window.isSecureContext) devices.acquire(wantDevices());
    if (err.code === 'bad_request' && err.request === 'join') el.name.focus();
  }
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  setState('reconnecting');
  attempts += 1;
  setStatus(attempts > 2 ? 'status.reconnecting_long' : 'status.reconnecting');
  showAlert(null);
  const wait = BACKOFF_MS[Math.min(attempts - 1, BACKOFF_MS.length - 1)];
  reconnectTimer = setTimeout(() => { start().catch(() => {}); }, wait);
}

/** `joined`, at once or after the lobby: send what the role sends, then show the course. */
async function admitted(c, joined, tested) {
  state.joined = joined;
  if (joined.rejoin_token) store(keys.rejoin(state.token), joined.rejoin_token, sessionStorage);
  store(keys.inCourse(state.token), '1', sessionStorage);
  const again = state.wasIn === 'joined';
  state.wasIn = 'joined';
  setState('joined');
  showAlert(null);
  // The server says whether chat is on; the box shows only then (and follows the roster).
  setChat(Boolean(joined.chat_enabled), false);
  if (state.view.joined) state.view.joined(api, joined, again);
  controls();
  // What this page asks of the server's video goes out at once, before any camera is started.
  adapt.joined();
  const sends = state.view.sends;
  if (sends.length) await sendMedia(c, tested, sends);
  else if (tested) for (const tr of tested.getTracks()) tr.stop();
  if (screenWasShared) {
    screenWasShared = false;
    showAlert('media.screen_lost');
  }
  renderSelfStatus();
  controls();
  // Focus the (screen-reader) heading of the course view: the next Tab is its first button.
  if (!again && state.page === 'joined' && !el.stage.contains(document.activeElement)) focusHeading('stage-heading');
}

/** Camera and/or microphone for a role that sends: the tested ones, or asked for again. */
async function sendMedia(c, tested, sends) {
  const stream = tested || new MediaStream();
  for (const tr of stream.getTracks()) {
    const source = tr.kind === 'video' ? 'camera' : 'microphone';
    if (!sends.includes(source)) { tr.stop(); stream.removeTrack(tr); }
  }
  const missing = { video: sends.includes('camera') && !stream.getVideoTracks().length,
    audio: sends.includes('microphone') && !stream.getAudioTracks().length };
  if ((missing.video || missing.audio) && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
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
  if (state.client !== c) {
    for (const tr of stream.getTracks()) tr.stop();
    throw new KursrelayError('closed', 'Left while starting');
  }
  if (!stream.getTracks().length) {
    setStatus('status.joined_no_media');
    return;
  }
  state.localStream = stream;
  setStatus('status.sending');
  await c.publish(stream.getTracks().map((track) => ({
    track, source: track.kind === 'video' ? 'camera' : 'microphone',
  })));
  for (const tr of stream.getVideoTracks()) addLocalTrack(tr, 'camera');
  setStatus(null);
}

/** What you send, truthfully: "You are sending camera and microphone (and your screen)." */
function renderSelfStatus() {
  if (!state.client || state.page !== 'joined' || !state.view) return;
  const live = (list) => list.some((tr) => tr.readyState === 'live' && tr.enabled);
  const cam = state.localStream && live(state.localStream.getVideoTracks());
  const mic = state.localStream && live(state.localStream.getAudioTracks());
  const parts = [];
  if (cam) parts.push(t('self.camera'));
  if (mic) parts.push(t('self.microphone'));
  if (state.screenTrack) parts.push(t('self.screen'));
  const [key, vars] = parts.length ? ['self.sending', { what: parts.join(t('self.and')) }] : ['self.nothing', {}];
  el.selfStatus.textContent = t(key, vars);
  if (state.view.sends.length) setStatus(key, vars);
}

function ended(reason) {
  state.wasIn = null;
  store(keys.inCourse(state.token), null, sessionStorage);
  setState('left');
  setStatus(null);
  showAlert(null);
  // A removed open-link person: the link still works for others, not from this browser.
  const key = reason === 'removed' && state.link && state.link.open ? 'bye.removed_open' : `bye.${reason}`;
  el.endedText.dataset.key = has(key) ? key : 'bye.connection_lost';
  el.endedText.textContent = t(el.endedText.dataset.key);
  el.rejoin.hidden = ['removed', 'revoked', 'session_ended', 'denied'].includes(reason);
  if (state.view && state.view.ended) state.view.ended(api, reason);
  focusHeading('ended-heading');
}

/** Leaves at once (tests and the confirm dialog call this). */
function leave() {
  clearTimeout(reconnectTimer);
  if (!state.client && state.page !== 'reconnecting') return;
  teardown();
  ended('left');
}

async function askLeave() {
  if (await ask('leave.question', 'leave.yes', 'leave.no')) leave();
}

function teardown() {
  const c = state.client;
  state.client = null;
  if (c) c.leave();
  screenWasShared = screenWasShared || Boolean(state.screenTrack);
  stopLocal();
  state.floor = false;
  state.hand = false;
  clearMedia();
  state.roster = null;
  state.members = new Map();
  el.members.replaceChildren();
  controls();
}

function stopLocal() {
  if (state.screenTrack) { removeLocalTrack(state.screenTrack); state.screenTrack.stop(); }
  state.screenTrack = null;
  if (state.localStream) for (const tr of state.localStream.getTracks()) { removeLocalTrack(tr); tr.stop(); }
  state.localStream = null;
}

function backToPrejoin() {
  showAlert(null);
  if (state.view.kiosk) { setState('connecting'); start().catch(() => {}); return; }
  setState('prejoin');
  if (state.view.deviceTest && window.isSecureContext) devices.acquire(wantDevices());
  el.join.focus();
}

// ---- the roster (everyone's "who is here"; the leader's console is views/leader.js) ----

function onRoster(roster) {
  state.roster = roster;
  // The organisers may turn chat on or off during the course: every page follows at once.
  if (typeof roster.chat_enabled === 'boolean') setChat(roster.chat_enabled, true);
  const list = Array.isArray(roster.members) ? roster.members : [];
  state.members = new Map(list.map((m) => [m.member_id, m]));
  renderMembers();
  layout();
  if (state.view.roster) state.view.roster(api, roster);
  controls();
}

/** Shows or hides the chat box; `say`: tell a screen reader when it changes. */
function setChat(on, say) {
  const was = el.chatBox.dataset.refused === 'false';
  el.chatBox.dataset.refused = on ? 'false' : 'true';
  el.chatBox.hidden = !on;
  if (!on && el.chatBox.contains(document.activeElement)) focusHeading('stage-heading');
  if (say && was !== on && !(state.view && state.view.kiosk)) announce(on ? 'chat.turned_on' : 'chat.turned_off');
}

/** The server forwards less (or nothing) of a video to us now, or all of it again. */
function onVideoQuality(trackId, quality) {
  const paused = () => Boolean(el.media.querySelector('figure[data-quality="paused"]:not([data-local])'));
  const before = paused();
  setQuality(trackId, quality);
  const after = paused();
  if (!before && after) {
    const kiosk = Boolean(state.view && state.view.kiosk);
    announce(kiosk ? 'quality.paused_room' : adapt.saveData() ? 'quality.paused_saving' : 'quality.paused');
  }
  else if (before && !after) announce('quality.back');
}

/**
 * Someone started or stopped speaking: their pictures and their rows in the lists show it.
 * Nothing is said to screen readers: in a lively course this changes every few seconds, and a
 * live region that spoke each change would drown the captions, the chat and the leader's
 * alerts (the hand queue, the lobby) that a blind leader relies on. A screen-reader user
 * hears who speaks; the rows carry the word for whoever reads the list.
 */
function onSpeaking() {
  setSpeaking();
  markRows();
}

/** Each person's row (the leader's list, everyone's "who is here") follows their speaking. */
function markRows() {
  for (const li of document.querySelectorAll('#members li[data-member-id], #present li[data-member-id]')) {
    if (isSpeaking(li.dataset.memberId)) li.dataset.speaking = 'true';
    else delete li.dataset.speaking;
  }
}

/**
 * What the automated tests may read of a sent message: its type and settings, never a token,
 * an SDP, a candidate, a name or what someone wrote (chat, captions).
 */
function sentCopy(msg) {
  const copy = { ...msg };
  for (const k of ['token', 'sdp', 'candidate', 'name', 'text']) if (k in copy) copy[k] = '…';
  return copy;
}

function renderMembers() {
  const roster = state.roster;
  if (!roster) {
    el.membersHeading.textContent = t('roster.heading', { n: 0 });
    el.participantCount.textContent = t('roster.participants', { n: 0 });
    return;
  }
  const list = Array.isArray(roster.members) ? roster.members : [];
  el.membersHeading.textContent = t('roster.heading_people');
  el.participantCount.textContent = t('roster.participants', { n: roster.participant_count ?? 0 });
  el.rosterNote.hidden = roster.roster !== 'count';
  el.rosterNote.textContent = t('roster.count_only');
  const old = new Map([...el.members.children].map((li) => [li.dataset.memberId, li]));
  list.forEach((m, i) => {
    let li = old.get(m.member_id);
    old.delete(m.member_id);
    if (!li) {
      li = document.createElement('li');
      li.dataset.memberId = m.member_id;
      const span = document.createElement('span');
      span.className = 'member-text';
      li.append(span);
    }
    const text = memberText(m);
    const span = li.querySelector('.member-text');
    if (span.textContent !== text) span.textContent = text;
    // Room for the speaking mark only for those who may be heard (maySpeak).
    const mayspeak = maySpeak(m);
    const mark = li.querySelector('.row-speaking');
    if (mayspeak && !mark) li.append(' ', speakingMark('row-speaking'));
    else if (!mayspeak && mark) { mark.previousSibling.remove(); mark.remove(); }
    else if (mark) mark.querySelector('.speaking-word').textContent = t('speaking.mark');
    if (el.members.children[i] !== li) el.members.insertBefore(li, el.members.children[i] || null);
  });
  for (const li of old.values()) li.remove();
  markRows();
}

function memberText(m) {
  let text = `${displayName(m)} – ${roleText(m.role)}`;
  if (typeof m.headcount === 'number') text += `, ${t('roster.people', { n: m.headcount })}`;
  if (m.floor) text += ` – ${t('roster.has_floor')}`;
  if (state.client && m.member_id === state.client.memberId) text += ` ${t('roster.you')}`;
  return text;
}

// ---- controls every view shares ----

function controls() {
  const role = state.client && state.client.role;
  const mic = state.localStream && state.localStream.getAudioTracks().find((tr) => tr.readyState === 'live');
  const cam = state.localStream && state.localStream.getVideoTracks().find((tr) => tr.readyState === 'live');
  el.mic.hidden = !mic;
  el.cam.hidden = !cam;
  if (mic) el.mic.textContent = t(mic.enabled ? 'media.mic_off' : 'media.mic_on');
  if (cam) el.cam.textContent = t(cam.enabled ? 'media.cam_off' : 'media.cam_on');
  el.screen.hidden = !(role === 'leader' || role === 'representative');
  el.screen.textContent = t(state.screenTrack ? 'media.screen_stop' : 'media.screen_start');
  if (role === 'leader') el.chatBox.hidden = el.chatBox.dataset.refused === 'true';
  if (state.view && state.view.controls) state.view.controls(api);
}

function onMuted() {
  const mics = state.localStream ? state.localStream.getAudioTracks() : [];
  for (const tr of mics) {
    tr.stop();
    state.localStream.removeTrack(tr);
  }
  if (state.client && mics.length) state.client.removeTracks(mics).catch((err) => showError(err));
  controls();
  renderSelfStatus();
  announce('media.muted_by_leader');
  setStatus('media.muted_by_leader');
}

function toggleTrack(kind) {
  const tr = state.localStream && state.localStream.getTracks().find((x) => x.kind === kind && x.readyState === 'live');
  if (!tr) return;
  tr.enabled = !tr.enabled;
  controls();
  renderSelfStatus();
  announce(kind === 'audio' ? (tr.enabled ? 'media.mic_is_on' : 'media.mic_is_off')
    : (tr.enabled ? 'media.cam_is_on' : 'media.cam_is_off'));
}

async function screenShare() {
  const c = requireClient();
  if (state.screenTrack) return;
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  const track = stream.getVideoTracks()[0];
  state.screenTrack = track;
  track.addEventListener('ended', () => stopScreenShare().catch(showError));
  try {
    await c.addTrack(track, 'screen');
  } catch (err) {
    if (state.screenTrack === track) state.screenTrack = null;
    track.stop();
    throw err;
  }
  addLocalTrack(track, 'screen');
  showAlert(null);
  controls();
  renderSelfStatus();
  announce('media.screen_on');
}

async function stopScreenShare() {
  const track = state.screenTrack;
  if (!track) return;
  state.screenTrack = null;
  removeLocalTrack(track);
  track.stop();
  controls();
  renderSelfStatus();
  announce('media.screen_off');
  if (state.client) await state.client.removeTrack(track);
}

async function sendCaption(text) {
  const value = String(text ?? '').trim();
  if (!value) return null;
  return requireClient().caption(value);
}

// ---- language ----

function rerender() {
  rerenderMessages();
  devices.render();
  renderProblem();
  renderPrejoin();
  renderSchedule();
  renderDocTitle();
  if (state.link && state.link.course_title) el.courseTitle.textContent = state.link.course_title;
  if (el.endedText.dataset.key) el.endedText.textContent = t(el.endedText.dataset.key);
  renderMembers();
  layout();
  controls();
  renderSelfStatus();
  if (state.view && state.view.rerender) state.view.rerender(api);
  rerenderCaptions();
}

// ---- what the views may use ----

const api = {
  start, leave, askLeave, controls, setState, setStatus, showAlert, announce, request, busy,
  renderSelfStatus, stopLocal, devices, focusHeading, setBadge, scheduleReconnect,
  publish: async (stream) => {
    const c = requireClient();
    state.localStream = state.localStream || new MediaStream();
    for (const tr of stream.getTracks()) state.localStream.addTrack(tr);
    controls();
    await c.publish(stream.getTracks().map((track) => ({
      track, source: track.kind === 'video' ? 'camera' : 'microphone',
    })));
    for (const tr of stream.getVideoTracks()) addLocalTrack(tr, 'camera');
    renderSelfStatus();
  },
  unpublishAll: async () => {
    const tracks = state.localStream ? state.localStream.getTracks() : [];
    stopLocal();
    if (state.client && tracks.length) await state.client.removeTracks(tracks);
    renderSelfStatus();
  },
};

// ---- wiring ----

initPicker($('lang'));
onLangChange(rerender);
onConfig(() => { renderProblem(); if (state.view && state.view.rerender) state.view.rerender(api); });
wireCaptionSettings();
wireInterpSettings();
adapt.wireSaveData(layout);
// "Today at 10:00" becomes "the course has begun" by itself: the texts that name the start
// are looked at again every half minute.
setInterval(() => {
  if (!state.link || !state.link.starts_at) return;
  renderSchedule();
  layout();
}, 30000);
onSoundBlocked((blocked) => {
  const kiosk = Boolean(state.view && state.view.kiosk);
  el.sound.hidden = !blocked || kiosk;
  el.soundBig.hidden = !blocked || !kiosk;
  // On the hall screen any key or touch will do; the big button has the focus for Enter.
  if (blocked && kiosk) el.soundBig.focus();
});
// Keep the page's own files, so it opens even while the server is away (web/sw.js).
if ('serviceWorker' in navigator && window.isSecureContext) {
  navigator.serviceWorker.register('/sw.js').catch(() => {});
}
state.token = linkToken();
// Before the check answers (or while the server is away), a hall screen already looks like
// one: the token's role, unverified, chooses only the styling.
if (peekRole(state.token) === 'site') document.body.classList.add('kiosk');
setState('checking');
rerender();
if (!state.token) problem('link.missing');
else checkLink();
addEventListener('hashchange', () => { if (state.page === 'prejoin' || state.page === 'problem') location.reload(); });

el.join.addEventListener('click', () => start().catch(() => {}));
el.name.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') start().catch(() => {}); });
el.leave.addEventListener('click', askLeave);
el.lobbyLeave.addEventListener('click', askLeave);
el.rejoin.addEventListener('click', backToPrejoin);
const soundOn = () => {
  unblockSound();
  el.sound.hidden = true;
  el.soundBig.hidden = true;
};
el.sound.addEventListener('click', soundOn);
for (const type of ['keydown', 'pointerdown']) {
  addEventListener(type, () => { if (isSoundBlocked()) soundOn(); }, true);
}
el.soundBig.addEventListener('click', soundOn);
el.fullscreen.addEventListener('click', () => {
  toggleFullscreen().catch((err) => console.warn('kursrelay: fullscreen refused', err));
});
el.mic.addEventListener('click', () => toggleTrack('audio'));
el.cam.addEventListener('click', () => toggleTrack('video'));
el.screen.addEventListener('click', () => {
  el.screen.disabled = true;
  const action = state.screenTrack ? stopScreenShare() : screenShare();
  action.catch((err) => {
    if (err.name === 'NotAllowedError') setStatus('media.screen_cancelled');
    else showError(err);
  }).finally(() => { el.screen.disabled = false; });
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
  if (!text || !state.client) return;
  state.client.chat(text).then(() => { el.chatText.value = ''; }, (err) => {
    if (err.code === 'forbidden' || err.code === 'chat_disabled') {
      el.chatBox.dataset.refused = 'true';
      el.chatBox.hidden = true;
      showAlert('chat.off');
    } else if (err.code === 'rate_limited') {
      // The line stays in the box, to send again in a moment.
      showAlert('chat.slow_down');
    } else showError(err);
  });
});
addEventListener('pagehide', () => { if (state.client) state.client.leave(); });

const empty = { framesDecoded: 0, videoPacketsReceived: 0, audioPacketsReceived: 0, videoTracks: 0, audioTracks: 0 };
// The small surface the browser tests drive (tests/client_ui.rs).
window.kursrelay = {
  start,
  leave,
  stats: async () => (state.client ? state.client.stats() : { ...empty }),
  raiseHand: async () => requireClient().raiseHand(),
  lowerHand: async () => requireClient().lowerHand(),
  admit: (memberId) => request('admit', { member_id: memberId }),
  deny: (memberId) => request('deny', { member_id: memberId }),
  grantFloor: (memberId) => request('grant_floor', { member_id: memberId }),
  revokeFloor: (memberId) => request('revoke_floor', { member_id: memberId }),
  publishFloor: () => (state.view && state.view.publishFloor ? state.view.publishFloor(api) : Promise.reject(new Error('no floor here'))),
  roster: () => state.roster,
  // member_ids the server says are speaking now (`speaking`).
  speaking: () => (state.client ? [...state.client.speaking] : []),
  messages: () => state.received.slice(),
  // Messages this page sent (tokens, SDP and candidates left out), oldest first.
  sent: () => state.sent.slice(),
  // What the page asks the server for its video now ({max_height, save_data}).
  videoPreference: () => adapt.preference(),
  captions: () => state.captionTexts.slice(),
  sendCaption,
  setHeadcount: (n) => (state.view && state.view.setHeadcount ? state.view.setHeadcount(api, n) : Promise.reject(new Error('not a site'))),
  screenShare,
  stopScreenShare,
  state: () => state.page,
  link: () => state.link,
  memberId: () => (state.client ? state.client.memberId : null),
  get client() { return state.client; },
};
