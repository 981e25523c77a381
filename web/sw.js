// The service worker keeps a copy of the page's own files (HTML, CSS, scripts, texts), so a
// hall screen whose browser starts before the server — after a power cut, say — still gets
// the course page instead of the browser's error page; the page then keeps trying by itself.
// Network first: whenever the server answers, its files are used (and the copy refreshed).
// Nothing else is cached: no API answer, no link check, no media, nothing personal.
const CACHE = 'kursrelay-page-v1';
const NEVER = ['/api/', '/ws', '/link-check', '/metrics', '/healthz'];

self.addEventListener('install', () => { self.skipWaiting(); });
self.addEventListener('activate', (ev) => { ev.waitUntil(self.clients.claim()); });

self.addEventListener('fetch', (ev) => {
  const req = ev.request;
  const url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin) return;
  if (NEVER.some((p) => url.pathname.startsWith(p))) return;
  ev.respondWith((async () => {
    try {
      const res = await fetch(req);
      if (res.ok && res.type === 'basic') {
        const copy = res.clone();
        caches.open(CACHE).then((c) => c.put(url.pathname, copy)).catch(() => {});
      }
      return res;
    } catch (err) {
      const cached = await caches.match(url.pathname);
      if (cached) return cached;
      throw err;
    }
  })());
});
