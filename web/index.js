// The start page: only the language picker (kept out of the HTML: the CSP allows no inline script).
import { initPicker } from './i18n.js';

initPicker(document.getElementById('lang'));
