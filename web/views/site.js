// A site: the shared screen in a hospital room, unattended. It joins by itself and keeps
// trying; shows the lecture large, the interpreter at least a quarter of the screen, a caption
// band, the course's name and a truthful status — and no controls. The local adviser uses
// keys on the kiosk (K opens the panel; Tab reaches it too; H hand; + and − headcount;
// L sound check; F fullscreen). If the browser blocks sound, a very large button asks for
// one press.
import { t } from '../i18n.js';
import { el, state, stored, store, keys, requireClient, announce, showError } from '../core.js';
import { KursrelayError } from '../client.js';
import { wireHand, floor, controls as participantControls, publishFloor } from './participant.js';
import { isSoundBlocked } from '../media.js';

let lastHeadcount = null;

function setStatusLine() {
  const key = {
    connecting: 'site.status_connecting',
    reconnecting: 'site.status_reconnecting',
    joined: 'site.status_live',
    left: 'site.status_left',
  }[state.page];
  el.kioskStatus.hidden = !key;
  el.kioskStatus.textContent = key ? t(key) : '';
  el.kioskStatus.dataset.page = state.page;
}

function renderHeadcount() {
  const me = state.client && state.members.get(state.client.memberId);
  const n = me && typeof me.headcount === 'number' ? me.headcount : lastHeadcount;
  el.headcountState.textContent = typeof n === 'number' ? t('site.headcount_now', { n }) : t('site.headcount_none');
}

export async function setHeadcount(api, n) {
  const count = Number(n);
  if (!Number.isInteger(count) || count < 0 || count > 1000) {
    throw new KursrelayError('bad_request', 'A headcount is a whole number 0–1000', 'set_headcount');
  }
  const reply = await requireClient().setHeadcount(count);
  lastHeadcount = count;
  if (document.activeElement !== el.headcount) el.headcount.value = String(count);
  store(keys.headcount(state.token), count);
  renderHeadcount();
  announce('site.headcount_now', { n: count });
  return reply;
}

/**
 * Shows or hides the adviser's panel. Hidden, it is off the shared screen even if it held the
 * keyboard focus: the focus goes back to the page (the course area), so the next key is the
 * page's again and nothing invisible is focused.
 */
function openPanel(open) {
  el.adviser.classList.toggle('open', open);
  if (open) {
    const first = [...el.adviser.querySelectorAll('button, input')].find((e) => !e.hidden && !e.closest('[hidden]'));
    if (first && !el.adviser.contains(document.activeElement)) first.focus();
  } else if (el.adviser.contains(document.activeElement)) {
    document.getElementById('main').focus();
  }
}

/** Keys for the adviser on the kiosk's keyboard (none while typing in a field). */
function onKey(api, ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.toLowerCase();
  // Escape closes the panel from anywhere in it, the headcount field included.
  if (key === 'escape' && el.adviser.classList.contains('open')) {
    ev.preventDefault();
    openPanel(false);
    return;
  }
  const typing = ev.target && ev.target.matches && ev.target.matches('input, textarea, select');
  if (typing) return;
  if (isSoundBlocked() && (key === 'enter' || key === ' ')) return; // the big sound button takes it
  const action = {
    k: () => openPanel(!el.adviser.classList.contains('open')),
    escape: () => openPanel(false),
    h: () => el.hand.click(),
    '+': () => api.busy(el.headcount, () => setHeadcount(api, (lastHeadcount || 0) + 1)),
    '-': () => api.busy(el.headcount, () => setHeadcount(api, Math.max(0, (lastHeadcount || 0) - 1))),
    l: () => api.devices.playTone(),
    f: () => el.fullscreen.click(),
  }[key];
  if (!action) return;
  ev.preventDefault();
  action();
}

export default {
  role: 'site',
  sends: [],
  deviceTest: false,
  kiosk: true,
  setup(api) {
    wireHand(api);
    el.adviser.hidden = false;
    // The shared screen shows none of these; the adviser's panel holds them.
    el.adviserControls.append(el.hand, el.handPlace, el.floorPublish, el.mic, el.cam, el.leave);
    el.bar.hidden = true;
    el.side.hidden = true;
    el.roomName.hidden = false;
    addEventListener('keydown', (ev) => onKey(api, ev));
    el.adviserClose.addEventListener('click', () => openPanel(false));
    // Tab reaches the panel too: whatever gets the focus in it is shown.
    el.adviser.addEventListener('focusin', () => { if (!el.adviser.classList.contains('open')) openPanel(true); });
    el.siteTone.addEventListener('click', () => api.devices.playTone());
    el.headcountForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      api.busy(document.getElementById('headcount-set'), () => setHeadcount(api, el.headcount.value));
    });
  },
  page() { setStatusLine(); },
  joined(api, joined) {
    el.roomName.textContent = joined.name || '';
    el.roomName.title = joined.name || '';
    api.setStatus(null);
    const saved = stored(keys.headcount(state.token));
    lastHeadcount = saved !== null && saved !== '' ? Number(saved) : lastHeadcount;
    if (typeof lastHeadcount === 'number' && !Number.isNaN(lastHeadcount)) {
      el.headcount.value = String(lastHeadcount);
      // The room's count survives a reconnect.
      requireClient().setHeadcount(lastHeadcount).catch(() => {});
    }
    renderHeadcount();
  },
  roster() { renderHeadcount(); },
  rerender() { setStatusLine(); renderHeadcount(); },
  floor(api, granted) {
    floor(api, granted);
    // Given the floor, the room's controls open by themselves: someone must turn the room's
    // microphone on, and there are no buttons on the shared screen otherwise.
    openPanel(granted);
  },
  controls: participantControls,
  publishFloor,
  setHeadcount,
  showError,
};
