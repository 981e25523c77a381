// The user representative: teaches with camera, microphone and screen, and sees the hand
// queue by name (never pseudonymous ids or attendance). Made co-host by the leader, she also
// lets people in from the lobby and gives and takes the floor.
import { t } from '../i18n.js';
import { el, state, busy, displayName } from '../core.js';
import { renderList, personRow, admitAll } from './leader.js';

function render(roster) {
  const me = (state.client && state.members.get(state.client.memberId)) || {};
  const cohost = Boolean(me.cohost);
  const hands = Array.isArray(roster.hands) ? roster.hands : [];
  const lobby = Array.isArray(roster.lobby) ? roster.lobby : [];
  el.console.hidden = false;
  el.leaderActions.hidden = true;
  el.leaderMore.hidden = true;
  el.presentBox.hidden = true;
  el.lobbyBox.hidden = !cohost;
  el.admitAll.hidden = !cohost || lobby.length < 2;
  const parts = [t('console.hands_n', { n: hands.length })];
  if (cohost) parts.unshift(t('console.cohost_you'), t('console.waiting', { n: lobby.length }));
  el.sessionLine.textContent = parts.join(' · ');
  renderList(el.handsList, hands, (id) => personRow('hands', id, displayName(state.members.get(id)), [],
    cohost ? [['console.grant', 'grant_floor', 'primary'], ['console.lower_hand', 'lower_hand', '']] : []));
  if (cohost) {
    renderList(el.lobbyList, lobby, (p) => personRow('lobby', p.member_id, displayName(p), [],
      [['console.admit', 'admit', 'primary'], ['console.deny', 'deny', 'danger']]));
  }
}

export default {
  role: 'representative',
  sends: ['camera', 'microphone'],
  deviceTest: true,
  kiosk: false,
  setup() {
    el.admitAll.addEventListener('click', () => busy(el.admitAll, admitAll));
  },
  roster(api, roster) { render(roster); },
  rerender() { if (state.roster) render(state.roster); },
  controls() {
    el.hand.hidden = true;
    el.floorPublish.hidden = true;
  },
};
