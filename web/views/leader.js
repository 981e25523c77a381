// The course leader's console: the stage (what everyone sees, with the leader's own camera and
// screen in it) and, in a panel that stays in view, the lobby (admit, deny, admit all), the hand
// queue (give the floor, lower a hand) and everyone present (floor, mute, remove). New people
// waiting and new hands are announced by a banner, the tab's title and a sound that can be
// turned off. The attendance list can be downloaded during and after the course.
import { t } from '../i18n.js';
import { KursrelayError } from '../client.js';
import {
  el, state, stored, store, request, busy, ask, announce, displayName, roleText,
} from '../core.js';
import { speakingMark, isSpeaking, maySpeak } from '../media.js';

const SOUND_KEY = 'kursrelay.alert_sound';
let seenLobby = new Set();
let seenHands = new Set();
let seenDeclined = new Set();
let firstRoster = true;

function soundOn() { return stored(SOUND_KEY) !== '0'; }

/** A short two-note chime (no file needed). */
function chime() {
  if (!soundOn()) return;
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  const ctx = new Ctx();
  const now = ctx.currentTime;
  [660, 880].forEach((f, i) => {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = f;
    gain.gain.setValueAtTime(0, now + i * 0.18);
    gain.gain.linearRampToValueAtTime(0.25, now + i * 0.18 + 0.02);
    gain.gain.linearRampToValueAtTime(0, now + i * 0.18 + 0.16);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now + i * 0.18);
    osc.stop(now + i * 0.18 + 0.17);
  });
  setTimeout(() => ctx.close().catch(() => {}), 800);
}

function render(api, roster) {
  const members = Array.isArray(roster.members) ? roster.members : [];
  const lobby = Array.isArray(roster.lobby) ? roster.lobby : [];
  const hands = Array.isArray(roster.hands) ? roster.hands : [];
  el.console.hidden = false;
  el.rosterBox.hidden = true; // everything is in the console's lists
  const parts = [t(roster.locked ? 'console.locked' : 'console.open'),
    t('console.count', { n: roster.participant_count ?? 0 }),
    t('console.waiting', { n: lobby.length }),
    t('console.hands_n', { n: hands.length })];
  el.sessionLine.textContent = parts.join(' · ');
  el.lock.textContent = t(roster.locked ? 'console.unlock' : 'console.lock');
  // Automatic captions: the leader decides when speech goes to the local recogniser.
  const captioner = members.some((m) => m.role === 'captioner');
  el.autoCaptions.textContent = t(roster.auto_captions ? 'console.auto_captions_off' : 'console.auto_captions_on');
  el.autoCaptionsState.textContent = t(roster.auto_captions
    ? (captioner ? 'console.auto_captions_state_on' : 'console.auto_captions_state_on_none')
    : (captioner ? 'console.auto_captions_state_off' : 'console.auto_captions_state_off_none'));
  el.admitAll.hidden = lobby.length < 2;
  el.alertSound.setAttribute('aria-pressed', String(soundOn()));

  renderList(el.lobbyList, lobby, (p) => personRow('lobby', p.member_id, displayName(p), [],
    [['console.admit', 'admit', 'primary'], ['console.deny', 'deny', 'danger']]));
  renderList(el.handsList, hands, (id) => {
    const m = state.members.get(id) || {};
    return personRow('hands', id, displayName(m), [], [['console.grant', 'grant_floor', 'primary'], ['console.lower_hand', 'lower_hand', '']]);
  });
  renderList(el.present, members, (m) => {
    const me = state.client && m.member_id === state.client.memberId;
    const details = [roleText(m.role)];
    if (typeof m.headcount === 'number') details.push(t('roster.people', { n: m.headcount }));
    if (m.floor) details.push(t('roster.has_floor'));
    if (m.floor_declined) details.push(t(`console.declined_${m.floor_declined}`));
    if (me) details.push(t('roster.you'));
    const actions = [];
    if (!me) {
      if (m.role === 'participant' || m.role === 'site') {
        actions.push(m.floor ? ['console.revoke', 'revoke_floor', 'danger'] : ['console.grant', 'grant_floor', '']);
      }
      if (m.role === 'representative') actions.push(m.cohost ? ['console.cohost_off', 'set_cohost', '', false] : ['console.cohost_on', 'set_cohost', '', true]);
      if (['representative', 'participant', 'site', 'encoder'].includes(m.role)) actions.push(['console.mute', 'mute', '']);
      if (m.role !== 'leader') actions.push(['console.remove', 'remove', 'danger']);
    }
    const li = personRow('present', m.member_id, displayName(m), details, actions);
    // Who is speaking: an outline and "snakker" in the row (page.js follows changes).
    li.dataset.memberId = m.member_id;
    if (isSpeaking(m.member_id)) li.dataset.speaking = 'true';
    if (maySpeak(m)) li.querySelector('.who').append(' ', speakingMark('row-speaking'));
    return li;
  });
  alerts(api, lobby, hands, members.filter((m) => m.floor_declined));
}

/** Banner, tab title and chime for people who newly wait or raise a hand. */
function alerts(api, lobby, hands, declined) {
  const lobbyIds = new Set(lobby.map((p) => p.member_id));
  const newWaiting = lobby.filter((p) => !seenLobby.has(p.member_id));
  const newHands = hands.filter((id) => !seenHands.has(id));
  const newDeclined = declined.filter((m) => !seenDeclined.has(m.member_id));
  seenLobby = lobbyIds;
  seenHands = new Set(hands);
  seenDeclined = new Set(declined.map((m) => m.member_id));
  api.setBadge(lobby.length + hands.length);
  renderBanner(lobby, hands, declined);
  if (firstRoster) { firstRoster = false; return; }
  if (newWaiting.length || newHands.length || newDeclined.length) {
    chime();
    if (newWaiting.length) announce('console.alert_waiting', { name: displayName(newWaiting[0]), n: lobby.length });
    else if (newHands.length) announce('console.alert_hand', { name: displayName(state.members.get(newHands[0])) });
    else announce('console.alert_declined', { name: displayName(newDeclined[0]) });
  }
}

function renderBanner(lobby, hands, declined = []) {
  const texts = [];
  // Someone given the floor who cannot be heard: the leader should not wait for them.
  for (const m of declined) texts.push(t('console.banner_declined', { name: displayName(m), why: t(`console.declined_${m.floor_declined}`) }));
  if (lobby.length === 1) texts.push(t('console.banner_waiting_one', { name: displayName(lobby[0]) }));
  else if (lobby.length > 1) texts.push(t('console.banner_waiting', { n: lobby.length }));
  if (hands.length) texts.push(t('console.banner_hands', { n: hands.length, name: displayName(state.members.get(hands[0])) }));
  el.banner.hidden = !texts.length;
  el.bannerText.textContent = texts.join(' ');
  el.bannerAdmitAll.hidden = lobby.length === 0;
  el.bannerAdmitAll.textContent = t(lobby.length > 1 ? 'console.admit_all' : 'console.admit');
}

/** Replaces a list's rows, keeping keyboard focus in the list when it was there. */
export function renderList(container, items, makeRow) {
  const active = document.activeElement;
  const had = container.contains(active) ? active : null;
  const index = had ? [...container.querySelectorAll('button')].indexOf(had) : -1;
  if (items.length) container.replaceChildren(...items.map(makeRow));
  else {
    const li = document.createElement('li');
    li.className = 'hint';
    li.textContent = t('console.nobody');
    container.replaceChildren(li);
  }
  if (!had) return;
  const buttons = [...container.querySelectorAll('button')];
  const target = buttons.find((b) => b.id === had.id) || buttons[Math.min(index, buttons.length - 1)];
  if (target) target.focus();
  else {
    const heading = container.parentElement && container.parentElement.querySelector('h4');
    if (heading) heading.focus();
  }
}

// Stable hooks for tests: admit, deny, grant, revoke, mute, remove, lower-hand, cohost; the
// hand queue's "give the floor" is grant-hand (the list of people's is grant).
const ACTION_NAME = { grant_floor: 'grant', revoke_floor: 'revoke', lower_hand: 'lower-hand', set_cohost: 'cohost' };

function actionButton(prefix, memberId, nameId, [labelKey, type, cls, value]) {
  const b = document.createElement('button');
  b.type = 'button';
  b.id = `${prefix}-${type}-${memberId}`;
  b.className = cls || '';
  b.dataset.action = prefix === 'hands' && type === 'grant_floor' ? 'grant-hand' : ACTION_NAME[type] || type;
  b.textContent = t(labelKey);
  // Named "<action> <person>" for screen readers.
  b.setAttribute('aria-labelledby', `${b.id} ${nameId}`);
  b.addEventListener('click', () => busy(b, async () => {
    if (type === 'remove') {
      const name = displayName(state.members.get(memberId));
      if (!(await ask('console.remove_confirm', 'console.remove_yes', 'confirm.no', { name }))) return;
    }
    const fields = { member_id: memberId };
    if (type === 'set_cohost') fields.cohost = value;
    await request(type, fields);
  }));
  return b;
}

export function personRow(prefix, memberId, name, details, actions) {
  const li = document.createElement('li');
  li.className = 'row';
  const who = document.createElement('span');
  who.className = 'who';
  const span = document.createElement('span');
  span.id = `${prefix}-name-${memberId}`;
  span.className = 'name';
  span.textContent = name;
  who.append(span);
  if (details.length) {
    const d = document.createElement('span');
    d.className = 'details';
    d.textContent = ` (${details.join(', ')})`;
    who.append(d);
  }
  const buttons = document.createElement('span');
  buttons.className = 'row-actions';
  buttons.append(...actions.map((a) => actionButton(prefix, memberId, span.id, a)));
  li.append(who, buttons);
  return li;
}

export async function admitAll() {
  const lobby = (state.roster && state.roster.lobby) || [];
  for (const p of lobby) await request('admit', { member_id: p.member_id }).catch((err) => { if (err.code !== 'unknown_member') throw err; });
}

async function downloadAttendance() {
  const session = (state.joined && state.joined.session) || '';
  if (!session) throw new KursrelayError('csv_failed', 'No session');
  const res = await fetch(`/api/sessions/${encodeURIComponent(session)}/attendance?format=csv`, {
    headers: { Authorization: `Bearer ${state.token}` },
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
  // The browser test reads what was downloaded, byte-order mark included.
  window.kursrelayLastCsv = new TextDecoder('utf-8', { ignoreBOM: true }).decode(await blob.arrayBuffer());
}

export default {
  role: 'leader',
  sends: ['camera', 'microphone'],
  deviceTest: true,
  kiosk: false,
  setup(api) {
    el.lock.addEventListener('click', () => busy(el.lock, () => request(state.roster && state.roster.locked ? 'unlock' : 'lock')));
    el.autoCaptions.addEventListener('click', () => busy(el.autoCaptions, async () => {
      const on = !(state.roster && state.roster.auto_captions);
      await request('set_auto_captions', { on });
      announce(on ? 'console.auto_captions_state_on' : 'console.auto_captions_state_off');
    }));
    el.alertSound.addEventListener('click', () => {
      store(SOUND_KEY, soundOn() ? '0' : '1');
      el.alertSound.setAttribute('aria-pressed', String(soundOn()));
    });
    el.csv.addEventListener('click', () => busy(el.csv, downloadAttendance));
    el.csvAfter.addEventListener('click', () => busy(el.csvAfter, downloadAttendance));
    el.end.addEventListener('click', () => busy(el.end, async () => {
      if (!(await ask('console.end_confirm', 'console.end_yes', 'confirm.no'))) return;
      await request('end_session');
    }));
    for (const b of [el.admitAll, el.bannerAdmitAll]) b.addEventListener('click', () => busy(b, admitAll));
    el.bannerShow.addEventListener('click', () => {
      const lobby = (state.roster && state.roster.lobby) || [];
      const hands = (state.roster && state.roster.hands) || [];
      api.focusHeading(lobby.length ? 'lobby-list-heading' : hands.length ? 'hands-heading' : 'present-heading');
    });
  },
  joined() {
    firstRoster = true;
    el.rosterBox.hidden = true;
  },
  roster: render,
  rerender(api) { if (state.roster) render(api, state.roster); },
  controls() {
    el.hand.hidden = true;
    el.floorPublish.hidden = true;
  },
  ended(api, reason) {
    // The list stays downloadable after the course ends.
    el.csvAfter.hidden = !(state.joined && state.joined.session);
    api.setBadge(0);
    el.banner.hidden = true;
    if (reason === 'session_ended') {
      el.endedText.dataset.key = 'bye.session_ended_leader';
      el.endedText.textContent = t('bye.session_ended_leader');
    }
  },
};
