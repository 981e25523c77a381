// The start page: only the language picker (kept out of the HTML: the CSP allows no inline script).
import './check-i18n.js'; // the "test your connection" link's text
import { initPicker } from './i18n.js';

initPicker(document.getElementById('lang'));
