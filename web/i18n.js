// Languages: every user-visible string lives in i18n/<lang>.js (a flat object key -> string).
// Static text in the HTML carries data-i18n="key" (text), data-i18n-label="key" (aria-label)
// or data-i18n-placeholder="key"; dynamic text is rendered with t(key, vars).
import nb from './i18n/nb.js';
import nn from './i18n/nn.js';
import en from './i18n/en.js';

export const LANGS = { nb, nn, en };
const KEY = 'kursrelay.lang';

function initial() {
  try {
    const saved = localStorage.getItem(KEY);
    if (saved && LANGS[saved]) return saved;
  } catch { /* storage disabled */ }
  return 'nb';
}

let lang = initial();
const listeners = [];

export function getLang() { return lang; }

/** Whether key has a text (used for optional keys such as err.<code>). */
export function has(key) { return LANGS[lang][key] !== undefined; }

/** The string for key in the current language; {name} placeholders are filled from vars. */
export function t(key, vars = {}) {
  const dict = LANGS[lang];
  let s = dict[key];
  if (s === undefined) {
    console.warn(`kursrelay: no ${lang} text for ${key}`);
    s = key;
  }
  return s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] !== undefined ? String(vars[k]) : m));
}

/** The help phone number the server is configured with (web.help_phone), if any. */
let phone = '';
const configListeners = [];

export function helpPhone() { return phone; }

/** Calls fn once the server's client settings (/client-config.json) have arrived. */
export function onConfig(fn) { configListeners.push(fn); }

/** Fill every data-i18n* element under root. */
export function apply(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  if (phone) showHelpPhone(root);
}

/** The footer's help line with the number as a tel: link (big, so it is easy to tap). */
function showHelpPhone(root) {
  for (const p of root.querySelectorAll('footer.help [data-i18n="help.text"]')) {
    const a = document.createElement('a');
    a.href = 'tel:' + phone.replace(/[^+\d]/g, '');
    a.textContent = phone;
    a.className = 'help-phone';
    p.replaceChildren(t('help.call') + ' ', a);
  }
}

/** Optional branding: the hospital's name, logo and accent colour (checked by the server). */
function showBranding(cfg) {
  const brand = document.getElementById('brand');
  if (!brand) return;
  const name = typeof cfg.brand_name === 'string' ? cfg.brand_name.trim() : '';
  const logo = typeof cfg.brand_logo === 'string' ? cfg.brand_logo.trim() : '';
  if (!name && !logo) return;
  document.getElementById('brand-name').textContent = name;
  const img = document.getElementById('brand-logo');
  if (logo) { img.src = logo; img.hidden = false; }
  brand.hidden = false;
  if (typeof cfg.accent === 'string' && /^#[0-9a-fA-F]{6}$/.test(cfg.accent)) {
    document.documentElement.style.setProperty('--accent', cfg.accent);
  }
}

// Ask the server once for its settings; pages without them keep the generic text.
fetch('/client-config.json')
  .then((r) => (r.ok ? r.json() : {}))
  .then((cfg) => {
    if (!cfg) return;
    if (typeof cfg.help_phone === 'string' && cfg.help_phone.trim()) {
      phone = cfg.help_phone.trim();
      showHelpPhone(document);
    }
    showBranding(cfg);
    for (const fn of configListeners) fn(cfg);
  })
  .catch(() => {});

export function setLang(next) {
  if (!LANGS[next]) return;
  lang = next;
  try { localStorage.setItem(KEY, next); } catch { /* storage disabled */ }
  document.documentElement.lang = next;
  apply();
  for (const fn of listeners) fn(next);
}

export function onLangChange(fn) { listeners.push(fn); }

/** Wire a <select> as the language picker. */
export function initPicker(select) {
  document.documentElement.lang = lang;
  apply();
  if (!select) return;
  select.value = lang;
  select.addEventListener('change', () => setLang(select.value));
}
