// The user representative: teaches with camera, microphone and screen, and sees the hand
// queue (never pseudonymous ids or attendance).
import { t } from '../i18n.js';
import { el, state, displayName } from '../core.js';

function renderHands(roster) {
  const hands = Array.isArray(roster.hands) ? roster.hands : [];
  el.console.hidden = false;
  el.leaderActions.hidden = true;
  el.lobbyBox.hidden = true;
  el.presentBox.hidden = true;
  el.sessionLine.textContent = t('console.hands_n', { n: hands.length });
  el.handsList.replaceChildren(...(hands.length ? hands.map((id) => {
    const li = document.createElement('li');
    li.textContent = displayName(state.members.get(id));
    return li;
  }) : [Object.assign(document.createElement('li'), { className: 'hint', textContent: t('console.nobody') })]));
}

export default {
  role: 'representative',
  sends: ['camera', 'microphone'],
  deviceTest: true,
  kiosk: false,
  roster(api, roster) { renderHands(roster); },
  rerender() { if (state.roster) renderHands(state.roster); },
  controls() {
    el.hand.hidden = true;
    el.floorPublish.hidden = true;
  },
};
