//! ICE over TCP (RFC 6544, passive) for networks that block UDP: a listener on the media port
//! number per bound address, and the accepted streams with RFC 4571 framing (a 16-bit length
//! before each STUN/DTLS/RTP/RTCP packet). Frames go through the same demultiplexing as
//! datagrams; a stream is keyed by its remote address like a UDP client.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::net::Poller;

/// Streams accepted at most (each costs two buffers); beyond it new ones are refused.
const MAX_STREAMS: usize = 4096;
/// A stream whose client has not passed an ICE check by then is closed.
pub(crate) const UNBOUND_STREAM_LIFETIME: Duration = Duration::from_secs(10);
/// Bytes queued for one stream before further packets to it are dropped.
const MAX_PENDING: usize = 1 << 20;
/// Largest RFC 4571 frame plus its length.
const READ_BUF: usize = 2 + 65535;

pub(crate) const LISTENER_TOKEN: u64 = 1 << 32;
pub(crate) const STREAM_TOKEN: u64 = 1 << 33;

struct Stream {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    rbuf: Box<[u8]>,
    rlen: usize,
    wbuf: Vec<u8>,
    opened: Instant,
}

#[derive(Default)]
pub(crate) struct Tcp {
    pub(crate) listeners: Vec<(TcpListener, SocketAddr)>,
    streams: Vec<Option<Stream>>,
    free: Vec<usize>,
    by_peer: HashMap<SocketAddr, usize>,
    /// Streams with bytes waiting to be written.
    pending: Vec<usize>,
    pub(crate) dropped: u64,
}

impl Tcp {
    /// Accepted streams still open.
    pub(crate) fn open_streams(&self) -> usize {
        self.by_peer.len()
    }

    pub(crate) fn register(&self, poller: &Poller) -> io::Result<()> {
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            poller.add(l.as_raw_fd(), LISTENER_TOKEN + i as u64)?;
        }
        Ok(())
    }

    /// Accepts what is waiting on listener `i`.
    pub(crate) fn accept(&mut self, i: usize, poller: &Poller, now: Instant) {
        let Some((listener, local)) = self.listeners.get(i) else {
            return;
        };
        let local = *local;
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "ICE-TCP accept failed");
                    return;
                }
            };
            if self.by_peer.len() >= MAX_STREAMS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let idx = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.streams.push(None);
                    self.streams.len() - 1
                }
            };
            if poller
                .add(stream.as_raw_fd(), STREAM_TOKEN + idx as u64)
                .is_err()
            {
                self.free.push(idx);
                continue;
            }
            self.streams[idx] = Some(Stream {
                stream,
                peer,
                local,
                rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
                rlen: 0,
                wbuf: Vec::new(),
                opened: now,
            });
            self.by_peer.insert(peer, idx);
        }
    }

    /// Reads stream `idx`; every complete frame's bytes are appended to `arena` and listed in
    /// `frames` as (local, peer, start, len). Both are the caller's, reused across calls.
    pub(crate) fn read(
        &mut self,
        idx: usize,
        poller: &Poller,
        arena: &mut Vec<u8>,
        frames: &mut Vec<(SocketAddr, SocketAddr, usize, usize)>,
    ) {
        let Some(Some(s)) = self.streams.get_mut(idx) else {
            return;
        };
        let mut closed = false;
        // Bounded per turn, so one busy stream cannot hold the engine.
        for _ in 0..16 {
            if s.rlen == s.rbuf.len() {
                break;
            }
            match s.stream.read(&mut s.rbuf[s.rlen..]) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => s.rlen += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            // Frames out as soon as they are whole, so the buffer never needs to grow.
            let mut start = 0;
            while s.rlen - start >= 2 {
                let len = u16::from_be_bytes([s.rbuf[start], s.rbuf[start + 1]]) as usize;
                if s.rlen - start < 2 + len {
                    break;
                }
                frames.push((s.local, s.peer, arena.len(), len));
                arena.extend_from_slice(&s.rbuf[start + 2..start + 2 + len]);
                start += 2 + len;
            }
            s.rbuf.copy_within(start..s.rlen, 0);
            s.rlen -= start;
        }
        if closed {
            self.close(idx, poller);
        }
    }

    /// Queues one packet for the stream of `peer`; false if there is none or it is too far
    /// behind (the packet is dropped).
    pub(crate) fn send(&mut self, peer: SocketAddr, data: &[u8]) -> bool {
        let Some(&idx) = self.by_peer.get(&peer) else {
            return false;
        };
        let Some(Some(s)) = self.streams.get_mut(idx) else {
            return false;
        };
        if s.wbuf.len() + data.len() + 2 > MAX_PENDING || data.len() > u16::MAX as usize {
            self.dropped += 1;
            return false;
        }
        let was_empty = s.wbuf.is_empty();
        s.wbuf.extend_from_slice(&(data.len() as u16).to_be_bytes());
        s.wbuf.extend_from_slice(data);
        if was_empty {
            self.pending.push(idx);
        }
        true
    }

    /// Writes what is queued, as far as each socket takes it.
    pub(crate) fn flush(&mut self, poller: &Poller) {
        let mut i = 0;
        while i < self.pending.len() {
            let idx = self.pending[i];
            let mut failed = false;
            let done = match self.streams.get_mut(idx) {
                Some(Some(s)) => {
                    let mut off = 0;
                    while off < s.wbuf.len() {
                        match s.stream.write(&s.wbuf[off..]) {
                            Ok(0) => {
                                failed = true;
                                break;
                            }
                            Ok(n) => off += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => {
                                failed = true;
                                break;
                            }
                        }
                    }
                    s.wbuf.drain(..off);
                    s.wbuf.is_empty() || failed
                }
                _ => true,
            };
            if failed {
                self.close(idx, poller);
            }
            if done {
                self.pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Closes streams whose client never passed a check, and those of `gone` peers.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        poller: &Poller,
        bound: impl Fn(&SocketAddr) -> bool,
    ) {
        let old: Vec<usize> = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .filter(|(_, s)| {
                now.saturating_duration_since(s.opened) > UNBOUND_STREAM_LIFETIME && !bound(&s.peer)
            })
            .map(|(i, _)| i)
            .collect();
        for i in old {
            self.close(i, poller);
        }
    }

    pub(crate) fn close_peer(&mut self, peer: &SocketAddr, poller: &Poller) {
        if let Some(&idx) = self.by_peer.get(peer) {
            self.close(idx, poller);
        }
    }

    fn close(&mut self, idx: usize, poller: &Poller) {
        if let Some(s) = self.streams.get_mut(idx).and_then(Option::take) {
            poller.remove(s.stream.as_raw_fd());
            self.by_peer.remove(&s.peer);
            self.pending.retain(|p| *p != idx);
            self.free.push(idx);
        }
    }
}
