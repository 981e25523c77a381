// Captions (from the interpreter, or automatic from the captioner's speech recognition, marked
// as such; shown in the band under the picture on every view, with size and contrast kept per
// browser) and chat (only when the session turns it on). A recogniser's partial line is shown
// as it grows but hidden from screen readers (the log would announce every change); the final
// line replaces it and is announced once.
import { t } from './i18n.js';
import { el, state, stored, store, displayName } from './core.js';

const MAX_CAPTIONS = 100;

export function addCaption(msg) {
  const text = String(msg.text || '');
  state.captionTexts.push(text);
  el.captionsEmpty.hidden = true;
  // A partial line from this member is replaced by whatever comes next from it.
  const pending = el.captions.querySelector(`p.partial[data-member-id="${CSS.escape(String(msg.member_id))}"]`);
  const p = pending || document.createElement('p');
  p.replaceChildren();
  p.dataset.memberId = String(msg.member_id);
  p.classList.toggle('partial', Boolean(msg.partial));
  if (msg.partial) p.setAttribute('aria-hidden', 'true');
  else p.removeAttribute('aria-hidden');
  if (msg.automatic) {
    p.classList.add('automatic');
    const tag = document.createElement('span');
    tag.className = 'auto-tag';
    tag.textContent = t('captions.automatic');
    p.append(tag, document.createTextNode(' '));
  }
  p.append(document.createTextNode(text));
  const m = state.members.get(msg.member_id);
  if (m) p.title = msg.automatic ? t('captions.automatic_title') : displayName(m);
  if (!pending) el.captions.append(p);
  while (el.captions.querySelectorAll('p:not(#captions-empty)').length > MAX_CAPTIONS) {
    el.captions.querySelector('p:not(#captions-empty)').remove();
  }
  el.captions.scrollTop = el.captions.scrollHeight;
}

export function addChat(msg) {
  el.chatBox.hidden = false;
  const p = document.createElement('p');
  const b = document.createElement('strong');
  const m = state.members.get(msg.member_id);
  // A participant's name may be hidden in this session: then just "a participant".
  b.textContent = `${msg.name || (m ? displayName(m) : t('chat.someone'))}: `;
  p.append(b, document.createTextNode(String(msg.text || '')));
  el.chatLog.append(p);
  el.chatLog.scrollTop = el.chatLog.scrollHeight;
}

export function applyCaptionPrefs() {
  const size = stored('kursrelay.capsize') || '2';
  const contrast = stored('kursrelay.contrast') === '1';
  for (const b of document.querySelectorAll('.capsize')) b.setAttribute('aria-pressed', String(b.dataset.size === size));
  el.captions.dataset.size = size;
  document.body.classList.toggle('high-contrast', contrast);
  el.contrast.setAttribute('aria-pressed', String(contrast));
  el.captions.scrollTop = el.captions.scrollHeight;
}

export function wireCaptionSettings() {
  for (const b of document.querySelectorAll('.capsize')) {
    b.addEventListener('click', () => { store('kursrelay.capsize', b.dataset.size); applyCaptionPrefs(); });
  }
  el.contrast.addEventListener('click', () => {
    store('kursrelay.contrast', el.contrast.getAttribute('aria-pressed') === 'true' ? '0' : '1');
    applyCaptionPrefs();
  });
  applyCaptionPrefs();
  // A new size (a phone turned, a window resized, fullscreen) keeps the newest line in view.
  if (window.ResizeObserver) {
    new ResizeObserver(() => { el.captions.scrollTop = el.captions.scrollHeight; }).observe(el.captions);
  }
}

/** After a language change: the "automatic" tags and the lines' titles in the new language. */
export function rerenderCaptions() {
  for (const tag of el.captions.querySelectorAll('.auto-tag')) tag.textContent = t('captions.automatic');
  for (const p of el.captions.querySelectorAll('p[data-member-id]')) {
    const m = state.members.get(p.dataset.memberId);
    if (m) p.title = p.classList.contains('automatic') ? t('captions.automatic_title') : displayName(m);
  }
}
