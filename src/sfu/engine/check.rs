//! A check connection's data channel (`/check`): the page's test protocol, served by an engine
//! connection on the real media port (UDP or ICE-TCP), sans-IO like the rest of the core:
//!
//! - a message starting with `p` is echoed back unchanged (round trip and loss);
//! - `d` followed by a big-endian u32 `n` asks for `n` messages of `BURST_MESSAGE_BYTES`
//!   (`D`, u32 sequence number, filler), sent as fast as SCTP takes them (at most
//!   `BURST_WINDOW` bytes outstanding), for at most `BURST_LIMIT` (rough download bandwidth).
//!
//! A check connection has no tracks, no feeds and no down-tracks: fan-out never sees it. Its
//! messages are allocated per message (they are the test, not forwarded media).

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rtc::data_channel::RTCDataChannelId;
use rtc::peer_connection::RTCPeerConnection;

/// Size of one bandwidth-test message (fits one packet on any path).
pub const BURST_MESSAGE_BYTES: usize = 1100;
/// Most messages one `d` request may ask for (≈ 11 MB).
const BURST_MAX_MESSAGES: u32 = 10_000;
/// A burst stops after this even if not all was sent.
pub(crate) const BURST_LIMIT: Duration = Duration::from_secs(4);
/// Bytes a burst keeps handed to SCTP and not yet acknowledged: enough to fill a fast line
/// over a few tens of ms, little enough that a slow one is not flooded.
const BURST_WINDOW: usize = 256 * 1024;

/// What a check connection keeps besides its `rtc` connection.
pub(crate) struct CheckChannel {
    /// Closed by the engine at this time, whatever the browser does (`CHECK_LIFETIME`).
    pub(crate) expires: Instant,
    /// The page's channel, once open.
    channel: Option<RTCDataChannelId>,
    burst: Option<Burst>,
    /// The page closed its channel: the connection can go.
    pub(crate) done: bool,
}

struct Burst {
    next: u32,
    count: u32,
    until: Instant,
}

impl CheckChannel {
    pub(crate) fn new(expires: Instant) -> CheckChannel {
        CheckChannel {
            expires,
            channel: None,
            burst: None,
            done: false,
        }
    }

    pub(crate) fn opened(&mut self, id: RTCDataChannelId) {
        self.channel.get_or_insert(id);
    }

    pub(crate) fn closed(&mut self, id: RTCDataChannelId) {
        if self.channel == Some(id) {
            self.done = true;
        }
    }

    /// One message from the page.
    pub(crate) fn on_message(
        &mut self,
        pc: &mut RTCPeerConnection,
        now: Instant,
        id: RTCDataChannelId,
        data: BytesMut,
    ) {
        self.channel.get_or_insert(id);
        match data.first() {
            Some(b'p') => {
                if let Some(mut dc) = pc.data_channel(id) {
                    let _ = dc.send(now, data);
                }
            }
            Some(b'd') if data.len() >= 5 => {
                let n = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
                self.burst = Some(Burst {
                    next: 0,
                    count: n.min(BURST_MAX_MESSAGES),
                    until: now + BURST_LIMIT,
                });
                self.pump(pc, now);
            }
            _ => {} // not ours: ignored
        }
    }

    /// Hands SCTP the next burst messages while the window has room.
    pub(crate) fn pump(&mut self, pc: &mut RTCPeerConnection, now: Instant) {
        let (Some(b), Some(id)) = (self.burst.as_mut(), self.channel) else {
            return;
        };
        let Some(mut dc) = pc.data_channel(id) else {
            self.burst = None;
            return;
        };
        while b.next < b.count && now < b.until && dc.outstanding_bytes() < BURST_WINDOW {
            let mut msg = BytesMut::with_capacity(BURST_MESSAGE_BYTES);
            msg.put_u8(b'D');
            msg.put_u32(b.next);
            msg.resize(BURST_MESSAGE_BYTES, 0);
            if dc.send(now, msg).is_err() {
                b.next = b.count;
                break;
            }
            b.next += 1;
        }
        if b.next >= b.count || now >= b.until {
            self.burst = None;
        }
    }

    /// Whether a burst is still being sent (the engine then pumps it every turn).
    pub(crate) fn bursting(&self) -> bool {
        self.burst.is_some()
    }
}
