// What this page asks of the server's per-viewer adaptation (`video_preference`,
// docs/protocol.md): how tall, in device pixels, it shows its largest video, whether the viewer
// chose "save data", and which videos it needs most (media.js's order). Sent
// after joining and again only when that height moves to another step (a phone turned, a
// window made larger) or the order changes, a second after it settles, never on every resize
// event. The hall
// screen always asks for the best (null). The "save data" choice is kept for the tab
// (sessionStorage), like the other viewing choices. Nothing here touches media; the server
// decides which layer each viewer gets.
import { el, state, stored, store } from './core.js';

const SAVE_KEY = 'kursrelay.save_data';
// Heights the layers are made for; a page asks for the smallest step that covers its picture.
const STEPS = [180, 360, 540, 720, 1080, 1440, 2160];
const SETTLE_MS = 1000;

let sent = null; // the last preference sent on this client: "height|save"
let sentFor = null; // the client it was sent on (a reconnect is a new client)
let timer = null;
let observer = null;

export function saveData() { return stored(SAVE_KEY, sessionStorage) === '1'; }

/** The step that covers a picture h device pixels tall: the smallest at or above h (or the top). */
export function step(h) {
  if (!(h > 0)) return null;
  return STEPS.find((s) => s >= h) || STEPS[STEPS.length - 1];
}

/** The tallest video this page shows from others, in device pixels (as painted). */
function largestVideo() {
  const dpr = window.devicePixelRatio || 1;
  let tallest = 0;
  for (const v of el.media.querySelectorAll('figure[data-track-id]:not([data-local]) video')) {
    if (v.offsetParent === null) continue;
    const r = v.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) continue;
    // object-fit: contain paints the picture inside the box; its height is what counts.
    const h = v.videoWidth && v.videoHeight
      ? Math.min(r.height, (r.width * v.videoHeight) / v.videoWidth) : r.height;
    tallest = Math.max(tallest, h);
  }
  if (!tallest) {
    // Nothing shown yet: the picture will fill the stage.
    const r = el.media.getBoundingClientRect();
    tallest = r.height;
  }
  return tallest * dpr;
}

/**
 * What to ask for now: { max_height, save_data, order }. `order`: the track ids of the videos
 * this page shows, most needed first (media.js decides it from the layout): on a line too weak
 * for all of them the server keeps these first.
 */
export function preference() {
  const kiosk = Boolean(state.view && state.view.kiosk);
  return {
    max_height: kiosk ? null : step(largestVideo()),
    save_data: !kiosk && saveData(),
    order: state.videoOrder || [],
  };
}

function send() {
  timer = null;
  const c = state.client;
  if (!c || state.page !== 'joined') return;
  const p = preference();
  const key = `${p.max_height}|${p.save_data}|${p.order.join(',')}`;
  if (sentFor === c && sent === key) return;
  if (c.videoPreference(p.max_height, p.save_data, p.order)) {
    sent = key;
    sentFor = c;
  }
}

/** Looks again, a moment after things settle (many calls make one message at most). */
export function update() {
  clearTimeout(timer);
  timer = setTimeout(send, SETTLE_MS);
}

/** After `joined`: say it at once, then follow the picture's size. */
export function joined() {
  clearTimeout(timer);
  send();
  if (!observer && window.ResizeObserver) {
    observer = new ResizeObserver(() => update());
    observer.observe(el.media);
  }
}

function render() {
  const on = saveData();
  el.saveData.setAttribute('aria-pressed', String(on));
}

/** The "save data" button in the viewer's settings; `changed` runs after each press. */
export function wireSaveData(changed) {
  render();
  el.saveData.addEventListener('click', () => {
    store(SAVE_KEY, saveData() ? null : '1', sessionStorage);
    render();
    changed();
    // A choice the viewer made goes out at once.
    clearTimeout(timer);
    send();
  });
}
