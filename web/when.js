// When the session starts, said the way the reader reads time: in the browser's own time zone
// (Europe/Oslo for nearly everyone) and the page's language — "i dag kl. 10:00", "i morgen,
// tirsdag 8. desember, kl. 10:00". The times come from /link-check (`starts_at`, `ends_at`,
// RFC 3339 UTC). Nothing here decides who may join: the server lets people in at any time.
import { t, getLang } from './i18n.js';

const LOCALES = { nb: ['nb-NO', 'no'], nn: ['nn-NO', 'nn', 'nb-NO'], en: ['en-GB'] };
const SOON_MS = 60 * 60 * 1000;

function locale() {
  const wanted = LOCALES[getLang()] || LOCALES.nb;
  return Intl.DateTimeFormat.supportedLocalesOf(wanted)[0] || wanted[0];
}

const dayNumber = (d) => Math.round(new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime() / 86400000);

/** "i dag kl. 10:00" / "tomorrow, Tuesday 8 December, at 10:00" for an RFC 3339 time. */
export function when(iso, now = new Date()) {
  const at = new Date(iso);
  if (!iso || Number.isNaN(at.getTime())) return null;
  const loc = locale();
  const time = new Intl.DateTimeFormat(loc, { hour: '2-digit', minute: '2-digit' }).format(at);
  const date = new Intl.DateTimeFormat(loc, {
    weekday: 'long', day: 'numeric', month: 'long',
    ...(at.getFullYear() !== now.getFullYear() ? { year: 'numeric' } : {}),
  }).format(at);
  const days = dayNumber(at) - dayNumber(now);
  if (days === 0) return t('when.today', { time });
  if (days === 1) return t('when.tomorrow', { date, time });
  return t('when.date', { date, time });
}

/**
 * Where the link's session stands: `later` (more than an hour before its start), `soon`
 * (within the hour before), or null (started, or no time known), with the start as words.
 */
export function schedule(link, now = new Date()) {
  if (!link || !link.starts_at) return null;
  const left = new Date(link.starts_at).getTime() - now.getTime();
  if (!(left > 0)) return null;
  return { phase: left > SOON_MS ? 'later' : 'soon', when: when(link.starts_at, now) };
}
