// Shared parts of the course page: the elements, the page's state, messages to the person
// (kept as i18n keys so a language change re-renders them), storage, the confirm dialog, and
// small helpers every view uses. No view logic here; views live in web/views/.
import { t, has } from './i18n.js';
import { KursrelayError } from './client.js';
import { checkLink } from './check-i18n.js';

export const $ = (id) => document.getElementById(id);

export const el = {
  alert: $('alert'), status: $('status'), announce: $('announce'),
  courseTitle: $('course-title'), sessionTitle: $('session-title'), roomName: $('room-name'),
  kioskStatus: $('kiosk-status'),
  checking: $('checking'), problem: $('link-problem'), problemHeading: $('problem-heading'),
  problemText: $('problem-text'), problemHelp: $('problem-help'),
  prejoin: $('prejoin'), prejoinHeading: $('prejoin-heading'), prejoinIntro: $('prejoin-intro'), schedule: $('schedule'),
  insecure: $('insecure'), joinAs: $('join-as'), nameField: $('name-field'), nameLabel: $('name-label'),
  nameHelp: $('name-help'), name: $('name'), join: $('join'), cameraTest: $('camera-test'),
  lobby: $('lobby-screen'), lobbyText: $('lobby-text'), lobbyLeave: $('lobby-leave'),
  stage: $('stage'), ended: $('ended'), endedText: $('ended-text'), rejoin: $('rejoin'), csvAfter: $('csv-after'),
  banner: $('banner'), bannerText: $('banner-text'), bannerAdmitAll: $('banner-admit-all'), bannerShow: $('banner-show'),
  view: $('view'), media: $('media'), mainSlot: $('main-slot'), interpSlot: $('interp-slot'), noMedia: $('no-media'),
  fullscreen: $('fullscreen'), soundBig: $('sound-big'), audio: $('audio'),
  captions: $('captions'), captionsEmpty: $('captions-empty'),
  bar: $('bar'), hand: $('hand'), handPlace: $('hand-place'), floorPublish: $('floor-publish'),
  mic: $('mic-toggle'), cam: $('cam-toggle'), screen: $('screen'), sound: $('sound'), leave: $('leave'),
  adviser: $('adviser'), adviserControls: $('adviser-controls'), adviserClose: $('adviser-close'),
  headcountForm: $('headcount-form'), headcount: $('headcount'), headcountState: $('headcount-state'),
  siteTone: $('site-tone'),
  side: $('side'),
  console: $('console'), sessionLine: $('session-line'), selfStatus: $('self-status'),
  leaderActions: $('leader-actions'), leaderMore: $('leader-more'), lock: $('lock'), autoCaptions: $('auto-captions'), autoCaptionsState: $('auto-captions-state'), alertSound: $('alert-sound'), csv: $('csv'), end: $('end'),
  lobbyBox: $('lobby-box'), admitAll: $('admit-all'), lobbyList: $('lobby'),
  handsBox: $('hands-box'), handsList: $('hands'), presentBox: $('present-box'), present: $('present'),
  captionWriter: $('caption-writer'), captionForm: $('caption-form'), captionText: $('caption-text'),
  captionSettings: $('caption-settings'), contrast: $('contrast'), interpSettings: $('interp-settings'),
  dataSettings: $('data-settings'), saveData: $('save-data'),
  chatBox: $('chat-box'), chatLog: $('chat-log'), chatForm: $('chat-form'), chatText: $('chat-text'),
  rosterBox: $('roster-box'), membersHeading: $('members-heading'), members: $('members'),
  participantCount: $('participant-count'), rosterNote: $('roster-note'),
  confirm: $('confirm'), confirmText: $('confirm-text'), confirmYes: $('confirm-yes'), confirmNo: $('confirm-no'),
};

/** What the page knows now. Views read it; page.js and the views write it. */
export const state = {
  page: 'checking', // checking | problem | prejoin | connecting | lobby | joined | reconnecting | left
  client: null,
  token: '', // the join link's token (#t=…)
  link: null, // the /link-check reply
  view: null, // the view module for the role
  joined: null, // the last `joined` message
  roster: null,
  members: new Map(), // member_id -> roster entry
  localStream: null, // camera and microphone we send
  screenTrack: null,
  floor: false,
  hand: false,
  wasIn: false, // was in the course (or lobby) before a reconnect started
  hadMedia: false, // has seen someone's picture since the page opened
  received: [], // every server message type, in order (for the automated tests)
  sent: [], // every message sent, tokens and SDP left out (for the automated tests)
  captionTexts: [],
  videoOrder: [], // the track ids of the videos shown, most needed first (media.js, for adapt.js)
};

// ---- the link ----

/** The token from the join link's fragment, #t=<token>; never sent anywhere but in a body. */
export function linkToken() {
  return (new URLSearchParams(location.hash.slice(1)).get('t') || '').trim();
}

// ---- storage (never throws: storage may be off) ----

export function stored(key, where = localStorage) {
  try { return where.getItem(key); } catch { return null; }
}
export function store(key, value, where = localStorage) {
  try {
    if (value === null || value === undefined || value === '') where.removeItem(key);
    else where.setItem(key, String(value));
  } catch { /* storage disabled */ }
}
/**
 * Per-link keys. The rejoin credential of an open link and the chosen name are kept per tab
 * (sessionStorage: they survive a reload and every reconnect; a new tab is a new person, so
 * two people on one computer with the same open link stay two). A removal and the site's
 * headcount are kept per browser (localStorage).
 */
export const keys = {
  rejoin: (token) => `kursrelay.rejoin.${token}`,
  removed: (token) => `kursrelay.removed.${token}`,
  name: (token) => `kursrelay.name.${token}`,
  headcount: (token) => `kursrelay.headcount.${token}`,
  // In this tab, in the course: a reload goes straight back in (sessionStorage).
  inCourse: (token) => `kursrelay.in.${token}`,
};

// ---- messages ----

let statusMsg = null;
let alertMsg = null;
let announceMsg = null;

/** The key of the status line's message now (null when empty). */
export function statusKey() { return statusMsg ? statusMsg[0] : null; }

export function setStatus(key, vars) {
  statusMsg = key ? [key, vars] : null;
  el.status.textContent = key ? t(key, vars) : '';
}

export function showAlert(key, vars) {
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

const PROBLEM_BYES = new Set(['bye.connection_lost', 'bye.peer_failed', 'bye.server_shutdown', 'bye.rate_limited', 'bye.unresponsive']);

export function rerenderMessages() {
  if (statusMsg) setStatus(...statusMsg);
  if (alertMsg) showAlert(...alertMsg);
  // The screen reader's live region speaks the new language too (what it last said, in it).
  if (announceMsg) el.announce.textContent = t(...announceMsg);
}

let announceTimer = null;
export function announce(key, vars) {
  announceMsg = [key, vars];
  // Cleared first so the same text twice is still read out.
  el.announce.textContent = '';
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => { el.announce.textContent = t(key, vars); }, 50);
}

export function errorKey(err) {
  const code = err.code || err.name;
  if (code === 'bad_request' && err.request === 'join') return 'err.bad_name';
  const key = `err.${code}`;
  return has(key) ? key : null;
}

export function showError(err) {
  const key = errorKey(err);
  if (key) showAlert(key);
  else showAlert('err.unknown', { code: err.code || err.name || '?' });
}

// ---- requests ----

export function requireClient() {
  if (!state.client) throw new KursrelayError('not_connected', 'Not started');
  return state.client;
}

export async function request(type, fields) {
  return requireClient().control(type, fields);
}

/** Runs action once at a time per button (aria-disabled keeps it focusable meanwhile). */
export function busy(button, action) {
  if (button.getAttribute('aria-disabled') === 'true') return Promise.resolve();
  button.setAttribute('aria-disabled', 'true');
  return Promise.resolve().then(action).catch((err) => {
    if (err.code !== 'closed') showError(err);
  }).finally(() => button.removeAttribute('aria-disabled'));
}

// ---- the confirm dialog: big buttons, "no" is the default ----

/** Asks a yes/no question in a modal dialog; resolves true for yes. */
export function ask(textKey, yesKey, noKey, vars) {
  const d = el.confirm;
  el.confirmText.textContent = t(textKey, vars);
  el.confirmYes.textContent = t(yesKey);
  el.confirmNo.textContent = t(noKey);
  return new Promise((resolve) => {
    const back = document.activeElement;
    const done = (yes) => {
      el.confirmYes.onclick = null;
      el.confirmNo.onclick = null;
      d.onclose = null;
      if (d.open) d.close();
      if (back && back.isConnected && !back.closest('[hidden]')) back.focus();
      resolve(yes);
    };
    el.confirmYes.onclick = () => done(true);
    el.confirmNo.onclick = () => done(false);
    d.onclose = () => done(false); // Escape
    d.showModal();
    el.confirmNo.focus();
  });
}

/** The name to show for a member: the one they chose, or e.g. "Deltaker 4" / "Kursleder". */
export function displayName(m) {
  if (!m) return '?';
  if (m.name) return m.name;
  if (typeof m.number === 'number' && (m.role === 'participant' || !m.role)) return t('roster.anon', { n: m.number });
  const role = t(`role.${m.role}`);
  return role.charAt(0).toUpperCase() + role.slice(1);
}

export const roleText = (role) => t(`role.${role}`);

export const liveTrack = (kind) => state.localStream
  && state.localStream.getTracks().find((tr) => tr.kind === kind && tr.readyState === 'live');
