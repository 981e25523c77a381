//! The engine's I/O shell: the thread that owns the media sockets, the ICE-TCP streams, the
//! command queue and the clock, and drives the core (`core.rs`) with them. It decides nothing
//! about media.
//!
//! ```text
//! epoll_wait(sockets, TCP, command eventfd; timeout = core.poll_timeout())
//!   → recvmmsg batch → core.handle_input(now, Datagram) each → drain poll_transmit into sendmmsg
//!   → commands (≤ COMMANDS_PER_TURN) → core.handle_input(now, Command)
//!   → core.handle_input(now, Timeout) → poll_event (ICE-TCP bookkeeping) → flush the batches
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Instant;

use rtc::shared::TransportProtocol;

use super::core::{Core, Datagram, Event, Input};
use super::{mux, net, tcp, Command};
use crate::sfu::metrics::Metrics;

/// Commands handled per loop turn, so a burst of joins never stalls packets for long.
const COMMANDS_PER_TURN: usize = 32;
/// recvmmsg calls per socket per turn before the engine looks at commands and timers again.
const RECV_CALLS_PER_TURN: usize = 8;

pub(super) const TOKEN_WAKER: u64 = u64::MAX;

pub(super) struct Shell {
    pub(super) core: Core,
    pub(super) metrics: Arc<Metrics>,
    pub(super) sockets: Vec<UdpSocket>,
    pub(super) local: Vec<SocketAddr>,
    /// One send batch per socket.
    pub(super) batches: Vec<net::SendBatch>,
    pub(super) tcp: tcp::Tcp,
    pub(super) poller: net::Poller,
    pub(super) waker: Arc<net::Waker>,
    pub(super) rx: Receiver<Command>,
    /// ICE-TCP frames read this turn (bytes and where they came from), reused.
    pub(super) tcp_arena: Vec<u8>,
    pub(super) tcp_frames: Vec<(SocketAddr, SocketAddr, usize, usize)>,
}

impl Shell {
    pub(super) fn run(mut self) {
        let mut recv = net::RecvBatch::new();
        let mut ready = Vec::with_capacity(16);
        let mut more_commands = false;
        tracing::info!(port = ?self.local.first().map(|a| a.port()), sockets = self.local.len(), ice_tcp = !self.tcp.listeners.is_empty(), "media engine running");
        loop {
            let now = Instant::now();
            let timeout = if more_commands {
                0
            } else {
                // Rounded up: waking early would only spin.
                self.core
                    .poll_timeout()
                    .saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000) as i32
            };
            self.poller.wait(timeout, &mut ready);
            for &token in &ready {
                if token == TOKEN_WAKER {
                    self.waker.reset();
                } else if token >= tcp::STREAM_TOKEN {
                    self.read_stream((token - tcp::STREAM_TOKEN) as usize);
                } else if token >= tcp::LISTENER_TOKEN {
                    let i = (token - tcp::LISTENER_TOKEN) as usize;
                    self.tcp.accept(i, &self.poller, Instant::now());
                } else if let Some(i) = usize::try_from(token)
                    .ok()
                    .filter(|i| *i < self.sockets.len())
                {
                    self.read_socket(i, &mut recv);
                }
            }
            match self.commands() {
                Ok(more) => more_commands = more,
                Err(()) => break,
            }
            self.core.handle_input(Instant::now(), Input::Timeout);
            self.drain();
            self.flush_all();
        }
        // Every handle is gone: close what is left.
        self.core.close_all();
        self.drain();
        self.flush_all();
        tracing::info!("media engine stopped");
    }

    /// Handles queued commands, at most COMMANDS_PER_TURN. Ok(true): more are waiting;
    /// Err: every handle is gone.
    fn commands(&mut self) -> Result<bool, ()> {
        for _ in 0..COMMANDS_PER_TURN {
            match self.rx.try_recv() {
                Ok(cmd) => {
                    self.core.handle_input(Instant::now(), Input::Command(cmd));
                    self.drain();
                }
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => return Err(()),
            }
        }
        Ok(true)
    }

    fn read_socket(&mut self, sock: usize, recv: &mut net::RecvBatch) {
        let fd = self.sockets[sock].as_raw_fd();
        let local = self.local[sock];
        // Set when the socket still has datagrams after this turn's budget.
        self.core.set_reads_pending(true);
        for _ in 0..RECV_CALLS_PER_TURN {
            let n = match recv.recv(fd) {
                Ok(0) => {
                    self.core.set_reads_pending(false);
                    return;
                }
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "media socket read failed");
                    return;
                }
            };
            let now = Instant::now();
            self.metrics
                .datagrams_received
                .fetch_add(n as u64, Ordering::Relaxed);
            for i in 0..n {
                match recv.get(i) {
                    Some((from, data)) => {
                        let d = Datagram {
                            local,
                            from,
                            proto: TransportProtocol::UDP,
                            data,
                        };
                        self.core.handle_input(now, Input::Datagram(d));
                        self.drain();
                    }
                    None => self.metrics.count_drop(mux::Drop::Unclassified),
                }
            }
            if n < net::BATCH {
                self.core.set_reads_pending(false);
                return;
            }
        }
    }

    fn read_stream(&mut self, idx: usize) {
        let mut arena = std::mem::take(&mut self.tcp_arena);
        let mut frames = std::mem::take(&mut self.tcp_frames);
        arena.clear();
        frames.clear();
        self.tcp.read(idx, &self.poller, &mut arena, &mut frames);
        let now = Instant::now();
        self.metrics
            .datagrams_received
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        for &(local, from, start, len) in &frames {
            let d = Datagram {
                local,
                from,
                proto: TransportProtocol::TCP,
                data: &arena[start..start + len],
            };
            self.core.handle_input(now, Input::Datagram(d));
            self.drain();
        }
        self.tcp_arena = arena;
        self.tcp_frames = frames;
    }

    /// Moves what the core produced into the send batches (a full batch goes out at once) and
    /// the TCP streams, then does what its events ask.
    fn drain(&mut self) {
        let mut dropped = 0u64;
        while let Some(t) = self.core.poll_transmit() {
            if t.proto == TransportProtocol::TCP {
                if !self.tcp.send(t.peer, &t.data) {
                    dropped += 1;
                }
                self.core.recycle(t.data);
                continue;
            }
            let sock = self.local.iter().position(|l| *l == t.local).unwrap_or(0);
            let batch = &mut self.batches[sock];
            batch.push(t.peer, t.data);
            if batch.is_full() {
                let before = batch.refused;
                batch.flush(self.sockets[sock].as_raw_fd(), self.core.pool());
                dropped += batch.refused - before;
            }
        }
        if dropped > 0 {
            self.metrics
                .packets_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::ClosePeer(peer) => self.tcp.close_peer(&peer, &self.poller),
                Event::Liveness { judged } => {
                    self.metrics
                        .tcp_streams
                        .store(self.tcp.open_streams() as i64, Ordering::Relaxed);
                    if judged {
                        let core = &self.core;
                        self.tcp
                            .expire(Instant::now(), &self.poller, |peer| core.is_bound(peer));
                    }
                }
            }
        }
    }

    /// Sends everything queued; datagrams the kernel refused are counted as dropped.
    fn flush_all(&mut self) {
        let mut refused = 0;
        for (i, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                let before = batch.refused;
                batch.flush(self.sockets[i].as_raw_fd(), self.core.pool());
                refused += batch.refused - before;
            }
        }
        self.tcp.flush(&self.poller);
        if refused > 0 {
            self.metrics
                .packets_dropped
                .fetch_add(refused, Ordering::Relaxed);
        }
    }
}
