// A participant at home: watches, raises a hand, and only when given the floor is asked for
// camera and microphone (never before). If the browser refuses them, the leader is told.
import { t } from '../i18n.js';
import { el, state, requireClient, showError, setStatus, statusKey, announce, liveTrack } from '../core.js';
import { KursrelayError } from '../client.js';

// Set while we give the floor back ourselves (camera refused): that is no "taken back".
let declining = false;

async function decline(c, reason) {
  declining = true;
  await c.control('decline_floor', { reason }).catch(() => {});
}

/** Publishes camera and microphone while holding the floor (only what is not already on). */
export async function publishFloor(api) {
  const c = requireClient();
  if (!state.floor) throw new KursrelayError('forbidden', 'You do not have the floor');
  const want = { video: !liveTrack('video'), audio: !liveTrack('audio') };
  if (!want.video && !want.audio) return;
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    await decline(c, 'no_device');
    throw new KursrelayError('insecure', 'Camera and microphone need https');
  }
  setStatus('status.asking');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: want.video ? api.devices.constraints('video') : false,
      audio: want.audio ? api.devices.constraints('audio') : false,
    });
  } catch (err) {
    if (want.video && want.audio && err.name !== 'NotAllowedError') {
      // Perhaps only one of them exists: sound matters most.
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: api.devices.constraints('audio') });
      } catch (err2) { err = err2; }
    }
    if (!stream) {
      // Tell the leader, so they are not left waiting for a voice that cannot come.
      const reason = err.name === 'NotAllowedError' ? 'denied' : 'no_device';
      await decline(c, reason);
      throw err;
    }
  }
  if (state.client !== c || !state.floor) {
    for (const tr of stream.getTracks()) tr.stop();
    throw new KursrelayError('forbidden', 'The floor was taken back');
  }
  await api.publish(stream);
  if (state.floor) setStatus('floor.live');
}

export function floor(api, granted) {
  const focused = document.activeElement;
  state.floor = granted;
  if (granted) {
    state.hand = false; // the server lowers the hand
    api.controls();
    announce('floor.granted');
    setStatus('floor.granted');
    if (focused === el.hand || focused === document.body) el.floorPublish.focus();
  } else {
    api.unpublishAll().catch(showError);
    api.controls();
    if (declining) {
      declining = false;
      setStatus(null);
      return;
    }
    announce('floor.revoked');
    setStatus('floor.revoked');
    if (!el.hand.hidden && (!focused || focused === document.body || focused.hidden)) el.hand.focus();
  }
}

export function controls() {
  const place = handPlace();
  el.hand.hidden = !state.client || state.floor;
  el.hand.setAttribute('aria-pressed', String(state.hand));
  el.hand.textContent = t(state.hand ? 'hand.lower' : 'hand.raise');
  el.handPlace.hidden = !(state.hand && place);
  el.handPlace.textContent = place ? t('hand.place', { n: place }) : '';
  el.floorPublish.hidden = !(state.floor && !(liveTrack('audio') && liveTrack('video')));
  // The line under the title says what the hand button does now, not what it did.
  const watching = statusKey();
  if (watching === 'status.joined_watch' || watching === 'status.joined_hand_up') {
    setStatus(state.hand ? 'status.joined_hand_up' : 'status.joined_watch');
  }
}

/** My place in the hand queue (the server tells each member its own). */
function handPlace() {
  const r = state.roster;
  return r && typeof r.hand_position === 'number' ? r.hand_position : null;
}

export function wireHand(api) {
  el.hand.addEventListener('click', () => api.busy(el.hand, () => {
    const c = requireClient();
    return state.hand ? c.lowerHand() : c.raiseHand();
  }));
  el.floorPublish.addEventListener('click', () => api.busy(el.floorPublish, async () => {
    try {
      await publishFloor(api);
    } catch (err) {
      if (err.name === 'NotAllowedError') api.showAlert('floor.denied');
      else if (err.code === 'insecure') api.showAlert('floor.insecure');
      else if (err.name === 'NotFoundError' || err.name === 'NotReadableError') api.showAlert('floor.no_device');
      else throw err;
    }
  }));
}

export default {
  role: 'participant',
  sends: [],
  deviceTest: false,
  kiosk: false,
  setup(api) { wireHand(api); },
  joined(api) { setStatus('status.joined_watch'); },
  floor,
  controls,
  publishFloor,
};
