// What is shown and heard: remote tracks as tiles (the lecture large, a screen with the
// speaker inset, the interpreter pinned beside it), the sender's own camera and screen placed
// the same way (so the leader sees what everyone sees), the fullscreen button, and blocked
// autoplay (a "press for sound" button only when the browser refuses to play sound).
import { t } from './i18n.js';
import { el, state, displayName, stored, store } from './core.js';
import { schedule } from './when.js';
import { update as adaptUpdate, saveData } from './adapt.js';

// The hall encoder (WHIP) is the lecture feed: ranked like the leader's camera.
const RANK = { encoder: 0, leader: 0, representative: 1, site: 3, participant: 3 };
let soundBlocked = false;
const soundListeners = [];

/** Calls fn(blocked) whenever the browser's refusal to play sound starts or ends. */
export function onSoundBlocked(fn) { soundListeners.push(fn); }

function setSoundBlocked(blocked) {
  if (soundBlocked === blocked) return;
  soundBlocked = blocked;
  for (const fn of soundListeners) fn(blocked);
}

export function isSoundBlocked() { return soundBlocked; }

function play(media) {
  if (!media) return;
  media.play().then(() => {
    if (media.tagName === 'AUDIO') setSoundBlocked(false);
  }, (err) => {
    if (err.name === 'NotAllowedError' && media.tagName === 'AUDIO') setSoundBlocked(true);
  });
}

/** After a click or key press: play everything again (the browser now allows sound). */
export function unblockSound() {
  for (const m of document.querySelectorAll('#stage audio, #stage video')) play(m);
}

export function addRemoteTrack(track, info) {
  if (track.kind === 'audio') {
    const audio = document.createElement('audio');
    audio.autoplay = true;
    audio.dataset.trackId = info.track_id;
    audio.srcObject = new MediaStream([track]);
    el.audio.append(audio);
    play(audio);
    return;
  }
  addTile(track, info, false);
}

/** The sender's own camera or screen, shown where everyone else sees it. */
export function addLocalTrack(track, source) {
  if (track.kind !== 'video') return;
  addTile(track, { track_id: `local-${track.id}`, member_id: state.client ? state.client.memberId : '', source }, true);
}

export function removeLocalTrack(track) {
  removeTrack(`local-${track.id}`);
}

function addTile(track, info, local) {
  const fig = document.createElement('figure');
  fig.className = 'tile';
  fig.dataset.trackId = info.track_id;
  fig.dataset.memberId = info.member_id || '';
  fig.dataset.source = info.source;
  if (local) fig.dataset.local = 'true';
  const video = document.createElement('video');
  video.autoplay = true;
  video.muted = true; // sound comes from the <audio> elements
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  // Its size is known once frames arrive: the page's ask of the server may change then.
  video.addEventListener('resize', adaptUpdate);
  video.addEventListener('resize', otherRow);
  // A calm word over the picture when the server pauses it for a weak line (video_quality).
  const note = document.createElement('p');
  note.className = 'quality-note';
  note.hidden = true;
  fig.append(video, document.createElement('figcaption'), note, speakingMark('tile-speaking'));
  if (sizes) sizes.observe(video);
  const quality = !local && state.client && state.client.quality.get(info.track_id);
  if (quality) fig.dataset.quality = quality;
  el.mainSlot.append(fig);
  play(video);
  if (!local) state.hadMedia = true;
  layout();
}

export function removeTrack(trackId) {
  for (const node of document.querySelectorAll('[data-track-id]')) {
    if (node.dataset.trackId !== trackId) continue;
    const media = node.matches('audio') ? node : node.querySelector('video');
    if (sizes && !node.matches('audio')) sizes.unobserve(media);
    media.srcObject = null;
    node.remove();
  }
  layout();
}

export function clearMedia({ keepLocal = false } = {}) {
  for (const node of [...document.querySelectorAll('[data-track-id]')]) {
    if (keepLocal && node.dataset.local) continue;
    removeTrack(node.dataset.trackId);
  }
}

// ---- the sign-language interpreter's size, chosen by the viewer ----

// small: beside the picture, a quarter of the width; equal: as large as the picture; large:
// the interpreter large, the picture small. Kept per tab (sessionStorage), like the rest of
// what this tab is. By default those who follow the course (participants at home) get the
// interpreter as large as the picture; those who teach or interpret, whose screen is busy with
// their own controls, get it small.
const INTERP_KEY = 'kursrelay.interp';
const INTERP_SIZES = ['small', 'equal', 'large'];
const TEACHING = new Set(['leader', 'representative', 'interpreter']);

function interpSize() {
  const saved = stored(INTERP_KEY, sessionStorage);
  if (INTERP_SIZES.includes(saved)) return saved;
  return state.view && TEACHING.has(state.view.role) ? 'small' : 'equal';
}

export function wireInterpSettings() {
  for (const b of document.querySelectorAll('.interp-size')) {
    b.addEventListener('click', () => {
      store(INTERP_KEY, b.dataset.interp, sessionStorage);
      layout();
    });
  }
}

/**
 * Whom the hall screen shows large instead of the lecture: whoever has the floor (a person at
 * home or another room), never the room's own camera. The lecture stays, inset.
 */
function spotlight(cams) {
  return cams.find((f) => !f.dataset.local && (state.members.get(f.dataset.memberId) || {}).floor) || null;
}

/** Places every tile: main (screen or first camera), inset, interpreter, others hidden. */
export function layout() {
  const figs = [...el.media.querySelectorAll('figure[data-track-id]')];
  const kiosk = document.body.classList.contains('kiosk');
  const role = (f) => (state.members.get(f.dataset.memberId) || {}).role
    || (f.dataset.local && state.client ? state.client.role : undefined);
  const interp = figs.filter((f) => f.dataset.source !== 'screen' && role(f) === 'interpreter');
  const screens = figs.filter((f) => f.dataset.source === 'screen');
  const cams = figs.filter((f) => f.dataset.source !== 'screen' && !interp.includes(f))
    .sort((a, b) => (RANK[role(a)] ?? 2) - (RANK[role(b)] ?? 2));
  let main = null;
  let inset = null;
  const featured = kiosk ? spotlight(cams) : null;
  // Slides on the hall screen stay its main picture while someone has the floor: the person
  // with the floor and the user representative get a row of their own under the slides (the
  // black space 16:9 slides leave in their column), large, labelled, covering nothing.
  const floorRow = Boolean(featured && screens.length);
  if (floorRow) {
    main = screens[screens.length - 1];
    // The lecturer's own camera takes the representative's place in the row when there is no
    // representative; beside one it would halve the representative's picture, so it waits
    // (the lecturer's voice goes on, and the slides are the lecturer's).
    const rep = cams.some((f) => f !== featured && role(f) === 'representative');
    inset = rep ? null : cams.find((f) => f !== featured && f.dataset.memberId === main.dataset.memberId) || null;
  } else if (featured) {
    // No slides: the hall sees the person who has the floor as its main picture; the
    // lecturer's camera inset.
    main = featured;
    inset = screens[screens.length - 1] || cams.find((f) => f !== featured) || null;
  } else if (screens.length) {
    main = screens[screens.length - 1];
    inset = cams.find((f) => f.dataset.memberId === main.dataset.memberId) || cams[0] || null;
  } else {
    main = cams[0] || null;
    // Someone given the floor is shown inset beside the lecture.
    inset = cams.find((f) => f !== main && ['participant', 'site'].includes(role(f))) || null;
  }
  const place = (fig, slot, pos) => {
    if (fig.parentElement !== slot) {
      slot.append(fig);
      play(fig.querySelector('video')); // moving a media element may pause it
    }
    fig.dataset.pos = pos;
  };
  for (const f of figs) {
    if (f === featured) f.dataset.floor = 'true';
    else delete f.dataset.floor;
    markSpeaking(f);
  }
  if (main) place(main, el.mainSlot, 'main');
  if (inset) place(inset, el.mainSlot, 'inset');
  if (floorRow) place(featured, el.mainSlot, 'floor');
  el.media.classList.toggle('floor-row', floorRow);
  growFloor(floorRow ? featured.dataset.memberId : null);
  if (interp[0]) place(interp[0], el.interpSlot, 'interp');
  // One more camera (e.g. the user representative's) inset on the left; more are not shown.
  let others = 0;
  for (const f of figs) {
    if (f === main || f === inset || f === featured || f === interp[0]) continue;
    const lecturerWaits = floorRow && f.dataset.memberId === main.dataset.memberId;
    place(f, el.mainSlot, others === 0 && !lecturerWaits ? 'other' : 'extra');
    if (lecturerWaits) continue;
    others += 1;
  }
  el.media.classList.toggle('has-other', others > 0);
  el.interpSlot.hidden = !interp[0];
  el.media.classList.toggle('has-interp', Boolean(interp[0]));
  // The viewer's choice of the interpreter's size (the hall screen has its own, fixed).
  const size = interpSize();
  if (interp[0] && !kiosk) el.media.dataset.interp = size;
  else delete el.media.dataset.interp;
  el.interpSettings.hidden = !interp[0] || kiosk;
  for (const b of document.querySelectorAll('.interp-size')) b.setAttribute('aria-pressed', String(b.dataset.interp === size));
  el.media.classList.toggle('has-main', Boolean(main));
  state.videoOrder = videoOrder({ main, featured, inset, interp: interp[0], size, kiosk });
  el.noMedia.hidden = Boolean(main || interp[0]);
  // Fullscreen is offered only with a picture to show (it is not a kiosk control).
  if (!document.fullscreenElement) el.fullscreen.hidden = !(main || interp[0]);
  el.noMedia.textContent = t(...noMedia());
  otherRow();
  for (const f of figs) setFigCaption(f, role(f));
  adaptUpdate();
}

/**
 * The videos this page shows, most needed first, as track ids (sent to the server in
 * `video_preference.order`; on a line too weak for all of them it keeps the first). The main
 * picture (the slides, or the lecturer), then whoever has the floor, then the interpreter, then
 * the small pictures. A viewer who shows the interpreter large relies on sign language: the
 * interpreter comes first. The viewer's own pictures and the hidden ones are not listed.
 */
function videoOrder({ main, featured, inset, interp, size, kiosk }) {
  const other = el.mainSlot.querySelector('figure[data-pos="other"]');
  const signFirst = interp && !kiosk && size === 'large';
  const figs = signFirst ? [interp, main, featured, inset, other] : [main, featured, interp, inset, other];
  const ids = [];
  for (const f of figs) {
    if (!f || f.dataset.local) continue;
    const id = f.dataset.trackId;
    if (id && !ids.includes(id)) ids.push(id);
  }
  return ids;
}

// The co-teacher's picture (the user representative's, `other`) is a small inset over the
// lecture when the lecture fills the picture area. At home, when the lecture leaves black
// space under it (beside an interpreter) or on an upright phone, it gets a row of its own
// under the lecture instead (data-other="row"): a picture large enough to see who it is and
// the name beside it, whole. Neither the lecture nor the interpreter gets smaller for it.
// CSS pixels under the lecture that the row needs: a 160×90 picture, its border and the gap.
const ROW_ROOM = 104;
const upright = window.matchMedia('(max-width: 760px) and (orientation: portrait)');

function otherRow() {
  const kiosk = document.body.classList.contains('kiosk');
  const slot = el.mainSlot;
  // The slot's own size does not depend on the row on a wide screen (the picture area sets
  // it), so measuring it cannot flip the choice back and forth. The lecture's own shape
  // counts (a 4:3 camera leaves less room under it than 16:9 slides).
  const v = slot.querySelector('figure[data-pos="main"] video');
  const shape = v && v.videoWidth && v.videoHeight ? v.videoHeight / v.videoWidth : 9 / 16;
  const spare = slot.clientHeight - slot.clientWidth * shape;
  const row = !kiosk && el.media.classList.contains('has-other') && (upright.matches || spare >= ROW_ROOM);
  if (row) el.media.dataset.other = 'row';
  else delete el.media.dataset.other;
  // The row's picture is no taller than that room (app.css), so the lecture keeps its size.
  el.media.style.setProperty('--row-room', `${Math.max(0, Math.floor(spare))}px`);
}

if (window.ResizeObserver) new ResizeObserver(otherRow).observe(el.media);
upright.addEventListener('change', otherRow);

/**
 * What the server forwards of a video now (`video_quality`): "paused" shows a calm notice over
 * that picture (the sound goes on), "reduced" a small word in its label, "full" neither.
 */
export function setQuality(trackId, quality) {
  for (const fig of el.media.querySelectorAll('figure[data-track-id]')) {
    if (fig.dataset.trackId !== trackId || fig.dataset.local) continue;
    if (quality === 'paused' || quality === 'reduced') fig.dataset.quality = quality;
    else delete fig.dataset.quality;
  }
  layout();
}

// ---- who is speaking (the server's `speaking`) ----

// After the server's "stopped" (itself 800 ms after the last word), a speaking floor-holder's
// picture stays large this much longer, so a pause for breath does not make the hall screen
// pump.
const FLOOR_HOLD_MS = 2000;
let floorGrown = null; // the member whose floor picture is large now
let floorShrink = null; // the timer that makes it small again

/**
 * A speaker mark: a loudspeaker drawn in SVG (no emoji font needed) and the word, for tiles
 * (`tile-speaking`) and lists (`row-speaking`). The word is the text; the drawing is hidden from
 * screen readers.
 */
export function speakingMark(cls) {
  const mark = document.createElement('span');
  mark.className = `speaking-mark ${cls}`;
  mark.hidden = cls === 'tile-speaking';
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const body = document.createElementNS(ns, 'path');
  body.setAttribute('d', 'M3 9h4l5-4v14l-5-4H3z');
  body.setAttribute('fill', 'currentColor');
  const waves = document.createElementNS(ns, 'path');
  waves.setAttribute('d', 'M15.5 8.5a5 5 0 0 1 0 7M18.5 5.5a9 9 0 0 1 0 13');
  waves.setAttribute('fill', 'none');
  waves.setAttribute('stroke', 'currentColor');
  waves.setAttribute('stroke-width', '2.2');
  waves.setAttribute('stroke-linecap', 'round');
  svg.append(body, waves);
  const word = document.createElement('span');
  word.className = 'speaking-word';
  word.textContent = t('speaking.mark');
  mark.append(svg, word);
  return mark;
}

/**
 * Roles whose sound is sent without being given the floor; everyone else speaks only with it.
 * Their rows in lists keep room for the speaking mark, so it comes and goes without moving
 * the list (it changes only with the floor, which changes the row anyway).
 */
const SPEAKS = new Set(['leader', 'representative', 'encoder']);

export function maySpeak(m) {
  return Boolean(m && (m.floor || SPEAKS.has(m.role) || isSpeaking(m.member_id)));
}

/** Whether the server says this member is speaking now (as far as this page hears them). */
export function isSpeaking(memberId) {
  return Boolean(memberId && state.client && state.client.speaking.has(memberId));
}

/**
 * A tile's outline and mark follow its member's speaking (the page's own camera too). A shared
 * screen is never marked: the slides do not speak, the person's camera does.
 */
function markSpeaking(fig) {
  const on = fig.dataset.source !== 'screen' && isSpeaking(fig.dataset.memberId);
  if (on) fig.dataset.speaking = 'true';
  else delete fig.dataset.speaking;
  const mark = fig.querySelector('.tile-speaking');
  if (mark) {
    mark.hidden = !on;
    const word = mark.querySelector('.speaking-word');
    if (word.textContent !== t('speaking.mark')) word.textContent = t('speaking.mark');
  }
}

/**
 * On the hall screen, the picture of someone with the floor (in the row under the slides)
 * grows while they speak and goes back FLOOR_HOLD_MS after they stop; the slides give up a
 * little height for it, the interpreter nothing. `memberId`: the floor-holder in the row now.
 */
function growFloor(memberId) {
  const speaking = Boolean(memberId) && isSpeaking(memberId);
  if (speaking) {
    clearTimeout(floorShrink);
    floorShrink = null;
    floorGrown = memberId;
  } else if (floorGrown && (floorGrown !== memberId || !memberId)) {
    // Someone else has the floor now, or nobody: no hold.
    clearTimeout(floorShrink);
    floorShrink = null;
    floorGrown = null;
  } else if (floorGrown && !floorShrink) {
    floorShrink = setTimeout(() => {
      floorShrink = null;
      floorGrown = null;
      el.media.classList.remove('floor-speaking');
    }, FLOOR_HOLD_MS);
  }
  el.media.classList.toggle('floor-speaking', Boolean(floorGrown));
}

/** The server says `memberId` started or stopped speaking: outlines, marks and the floor row. */
export function setSpeaking() {
  layout();
}

/** Why there is no picture, truthfully: [key, vars]. Before the start, when that is. */
function noMedia() {
  const leader = [...state.members.values()].find((m) => m.role === 'leader');
  if (state.page === 'reconnecting') return ['stage.media_reconnecting'];
  if (leader) return ['stage.no_media_leader_here'];
  if (state.hadMedia) return ['stage.media_coming_back'];
  const s = schedule(state.link);
  if (s) return [`stage.not_started_${s.phase}`, { when: s.when }];
  return ['stage.no_media'];
}

function setFigCaption(fig, role) {
  const m = state.members.get(fig.dataset.memberId);
  let text;
  if (fig.dataset.local) text = t(fig.dataset.source === 'screen' ? 'source.your_screen' : 'source.your_camera');
  else if (fig.dataset.floor) text = t('source.floor', { name: displayName(m) });
  else {
    const source = role === 'interpreter' ? t('source.interpreter')
      : role === 'encoder' ? t(`source.hall_${fig.dataset.source === 'microphone' ? 'microphone' : 'camera'}`)
        : t(`source.${fig.dataset.source}`);
    text = m ? `${source} – ${displayName(m)}` : source;
  }
  const quality = fig.dataset.quality;
  const kiosk = document.body.classList.contains('kiosk');
  const cap = fig.querySelector('figcaption');
  // With "save data" on, the lower picture may be the viewer's own choice: say both.
  const saving = saveData() && !kiosk;
  const hint = quality === 'reduced' ? t(saving ? 'quality.reduced_saving' : 'quality.reduced') : '';
  const drawn = `${kiosk}|${text}|${hint}`;
  if (cap.dataset.drawn !== drawn) {
    cap.dataset.drawn = drawn;
    if (kiosk) {
      // On the hall screen labels wrap, but only between words: each word is a box of its
      // own that may hyphenate (the page's lang) or, too long for the tile, end in "…". The
      // whole label stays in the text (screen readers) and in the title.
      cap.replaceChildren(...text.split(/(\s+)/).filter(Boolean).map((part) => {
        if (/^\s+$/.test(part)) return document.createTextNode(' ');
        const w = document.createElement('span');
        w.className = 'w';
        w.textContent = part;
        return w;
      }));
    } else cap.textContent = text;
    if (hint) {
      const h = document.createElement('span');
      h.className = 'quality-hint';
      h.textContent = hint;
      cap.append(' ', h);
    }
    cap.title = text;
  }
  renderNote(fig);
  const said = quality === 'paused' ? `${text} – ${t(saving ? 'quality.paused_saving' : 'quality.paused_label')}`
    : quality === 'reduced' ? `${text} – ${hint}` : text;
  fig.querySelector('video').setAttribute('aria-label', said);
}

/**
 * The paused picture's notice, as large as its picture allows: the whole sentence, or "Picture
 * paused" in a small picture, or a pause sign in a thumbnail (the video's label says it all).
 */
function renderNote(fig) {
  const note = fig.querySelector('.quality-note');
  if (!note) return;
  const size = fig.dataset.size; // from the tile's own size (sizes below)
  const kiosk = document.body.classList.contains('kiosk');
  const saving = saveData() && !kiosk;
  // A hall screen speaks to a room ("the line here", "you all"), not to one person.
  const text = fig.dataset.quality !== 'paused' ? ''
    : t(size ? 'quality.paused_short' : kiosk ? 'quality.paused_room' : saving ? 'quality.paused_saving' : 'quality.paused');
  note.hidden = !text;
  note.classList.toggle('small', Boolean(size));
  note.classList.toggle('tiny', size === 'tiny');
  if (note.textContent !== text) note.textContent = text;
}

// Each tile's size class, from its picture's box (a tile in the representative's row also
// holds the name beside the picture), followed as it changes (window, layout, fullscreen):
// "small" below 340×170 CSS pixels, "tiny" (a thumbnail) below 140 wide or 80 high.
const sizes = window.ResizeObserver ? new ResizeObserver((entries) => {
  for (const e of entries) {
    const fig = e.target.closest('figure');
    const { width, height } = e.contentRect;
    if (!fig || !width || !height) continue;
    const size = width < 140 || height < 80 ? 'tiny' : width < 340 || height < 170 ? 'small' : '';
    if ((fig.dataset.size || '') === size) continue;
    if (size) fig.dataset.size = size;
    else delete fig.dataset.size;
    renderNote(fig);
  }
}) : null;

// ---- fullscreen: the view (video and captions together) ----

export function toggleFullscreen() {
  if (document.fullscreenElement) return document.exitFullscreen();
  if (!el.view.requestFullscreen) return Promise.resolve();
  return el.view.requestFullscreen();
}

document.addEventListener('fullscreenchange', () => {
  const on = document.fullscreenElement === el.view;
  el.fullscreen.textContent = t(on ? 'view.fullscreen_exit' : 'view.fullscreen');
});
