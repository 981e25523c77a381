//! A webrtc `Runtime` whose UDP sockets count RTP from the (cleartext) SRTP header and drop it
//! before the WebRTC stack would decrypt it. ICE, DTLS and RTCP pass through untouched, so the
//! connection is real; only the per-packet decrypt is skipped. This is what lets one core of
//! generator drive hundreds of subscribers.
//!
//! A counting subscriber can sit behind a bandwidth cap (`--capped`): every datagram it is sent
//! goes through a token bucket with a drop-tail queue (`Shaper`, shared with the tests'
//! `netsim`), one per subscriber across its sockets. What the queue drops is neither counted
//! nor handed on (a loss, as on a weak home line); RTP that passes is counted at the time it
//! leaves the queue. What passes and is not RTP (ICE, DTLS, RTCP) is handed on at once, not
//! after its wait in the queue: an approximation that keeps the socket simple.

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::shaper::{Rate, Shaper, Verdict};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Receive buffer asked for on every generator socket (the kernel caps it at rmem_max).
const RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Per-SSRC receive statistics of one subscriber.
#[derive(Debug, Clone, Copy)]
pub struct StreamStats {
    pub ssrc: u32,
    pub payload_type: u8,
    pub first_arrival: Instant,
    pub received: u64,
    /// Extended (wrap-counted) highest sequence number seen, and the first one.
    pub highest: u64,
    pub first: u64,
    pub out_of_order: u64,
}

impl StreamStats {
    /// Packets the SFU sent between the first and the highest one seen.
    pub fn expected(&self) -> u64 {
        self.highest - self.first + 1
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    pub streams: Vec<StreamStats>,
}

impl Counters {
    fn on_rtp(&mut self, now: Instant, pt: u8, seq: u16, ssrc: u32) {
        let s = match self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            Some(s) => s,
            None => {
                self.streams.push(StreamStats {
                    ssrc,
                    payload_type: pt,
                    first_arrival: now,
                    received: 1,
                    highest: seq as u64,
                    first: seq as u64,
                    out_of_order: 0,
                });
                return;
            }
        };
        s.received += 1;
        // Extend the 16-bit sequence number relative to the highest seen.
        let base = s.highest & !0xffff;
        let mut ext = base | seq as u64;
        if ext + 0x8000 < s.highest {
            ext += 0x10000;
        } else if ext > s.highest + 0x8000 && ext >= 0x10000 {
            ext -= 0x10000;
        }
        if ext > s.highest {
            s.highest = ext;
        } else {
            s.out_of_order += 1;
        }
    }
}

/// Shared by every socket one subscriber's connection opens.
pub type SharedCounters = Arc<Mutex<Counters>>;

/// RFC 5761 demultiplexing: RTP or RTCP has version 2; RTCP packet types are 192–223.
fn rtp_header(d: &[u8]) -> Option<(u8, u16, u32)> {
    if d.len() < 12 || d[0] >> 6 != 2 || (192..=223).contains(&d[1]) {
        return None;
    }
    Some((
        d[1] & 0x7f,
        u16::from_be_bytes([d[2], d[3]]),
        u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
    ))
}

#[derive(Debug)]
pub struct CountingRuntime {
    counters: Option<SharedCounters>,
    cap: Option<Arc<Mutex<Shaper>>>,
}

impl CountingRuntime {
    /// `None` counts nothing and only raises socket buffers (for decrypting sample peers).
    pub fn shared(counters: Option<SharedCounters>) -> Arc<dyn Runtime> {
        Self::capped(counters, None)
    }

    /// Counting behind a bandwidth cap of `rate` (ignored without `counters`).
    pub fn capped(counters: Option<SharedCounters>, rate: Option<Rate>) -> Arc<dyn Runtime> {
        let now = tokio::time::Instant::now();
        let cap = rate.map(|r| Arc::new(Mutex::new(Shaper::new(now, r))));
        Arc::new(CountingRuntime { counters, cap })
    }
}

impl Runtime for CountingRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(RECV_BUFFER);
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        Ok(match &self.counters {
            Some(c) => Arc::new(CountingSocket {
                inner,
                counters: c.clone(),
                cap: self.cap.clone(),
            }),
            None => inner,
        })
    }

    fn wrap_tcp_listener(&self, l: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(l)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(d)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }
}

#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    counters: SharedCounters,
    cap: Option<Arc<Mutex<Shaper>>>,
}

impl AsyncUdpSocket for CountingSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }

    /// Receives, counts RTP, and hands on only what is not RTP. Loops until something is left
    /// to hand on or the socket has nothing more (then the waker is registered by `inner`).
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let now = Instant::now();
            let mut kept = 0;
            {
                let mut counters = self.counters.lock().expect("counters lock");
                let mut cap = self.cap.as_ref().map(|c| c.lock().expect("cap lock"));
                for i in 0..n {
                    let m = meta[i];
                    let stride = m.stride.max(1);
                    let data = &bufs[i][..m.len];
                    let mut all_rtp = true;
                    let mut dropped = false;
                    for seg in data.chunks(stride) {
                        // Through the cap, if any: when this datagram leaves its queue.
                        let at = match cap.as_mut() {
                            None => Some(now),
                            Some(c) => {
                                match c.offer(tokio::time::Instant::from_std(now), seg.len()) {
                                    Verdict::Leaves(at) => Some(at.into_std()),
                                    Verdict::Dropped => None,
                                }
                            }
                        };
                        match (rtp_header(seg), at) {
                            (Some((pt, seq, ssrc)), Some(at)) => counters.on_rtp(at, pt, seq, ssrc),
                            (Some(_), None) => {}
                            (None, at) => {
                                all_rtp = false;
                                dropped |= at.is_none();
                            }
                        }
                    }
                    if all_rtp || dropped {
                        continue; // counted (or lost on the capped line); the stack never sees it
                    }
                    // Keep this message (rarely mixed with RTP; the stack then drops the RTP).
                    if kept != i {
                        let (head, tail) = bufs.split_at_mut(i);
                        head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                        meta[kept] = m;
                    }
                    kept += 1;
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_and_sequence_extension() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96 | 0x80;
        assert_eq!(rtp_header(&rtp), Some((96, 0, 0)));
        let mut rtcp = rtp;
        rtcp[1] = 200;
        assert_eq!(rtp_header(&rtcp), None);
        assert_eq!(
            rtp_header(&[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        ); // DTLS

        let mut c = Counters::default();
        let now = Instant::now();
        for seq in [65534u16, 65535, 0, 2, 1, 3] {
            c.on_rtp(now, 96, seq, 7);
        }
        let s = c.streams[0];
        assert_eq!((s.received, s.expected(), s.out_of_order), (6, 6, 1));
    }
}
