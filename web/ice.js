// ICE servers for the course connections: the server's TURN servers with fresh time-limited
// credentials and its transport policy ("relay" makes every connection go through TURN), from
// /ice-servers.json. Fetched before each (re)connect, because the credentials expire.

/** The RTCConfiguration to use; without an answer, direct connections only. */
export async function rtcConfig() {
  try {
    const res = await fetch('/ice-servers.json', { cache: 'no-store' });
    if (res.ok) {
      const cfg = await res.json();
      return {
        iceServers: Array.isArray(cfg.iceServers) ? cfg.iceServers : [],
        iceTransportPolicy: cfg.iceTransportPolicy === 'relay' ? 'relay' : 'all',
      };
    }
  } catch (err) {
    console.warn('kursrelay: no ICE server list, connecting directly', err);
  }
  return { iceServers: [], iceTransportPolicy: 'all' };
}
