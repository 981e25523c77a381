//! The media engine: one thread that owns every publish and subscribe connection (sans-IO
//! `rtc::RTCPeerConnection`s) and the media sockets — one UDP socket per bound address, all on
//! `media.udp_port`. The loop:
//!
//! ```text
//! epoll_wait(sockets, command eventfd; timeout = earliest connection deadline, ≤ 20 ms)
//!   → recvmmsg batch → mux (classify, address / ufrag, flood budget) → handle_read
//!   → service the connection: poll_write (batched into sendmmsg), poll_event, poll_read
//!       → RTP of a publisher's track: packet-major fan-out into every subscriber's rtc sender
//!   → commands (negotiation from member tasks), at most COMMANDS_PER_TURN per turn
//!   → due timers from the deadline heap; keyframe requests upstream (paced per track)
//! ```
//!
//! Nothing here awaits; member tasks talk to it through a bounded queue (`EngineHandle`) and
//! get their replies on oneshot channels; it talks back with `try_send` on their event queues.
//! How this scales past one core: run one engine per core, each with its own port (or its own
//! `SO_REUSEPORT` socket and a ufrag → engine map) and place a session's connections on one
//! engine, so forwarding never crosses threads (docs/ARCHITECTURE.md).

mod cache;
mod conn;
pub(crate) mod mux;
mod net;
mod session_harness;
pub(crate) mod srtp;
mod tcp;

pub use session_harness::MediaSessionHarness;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::oneshot;

use conn::Conn;
use conn::Feedback;
pub(crate) use conn::{source_of, ConnKey, PublishShared, TrackSpec};

use super::metrics::Metrics;
use super::{MediaSettings, PeerEvent, SfuError};
use crate::ids::MemberId;
use crate::protocol::{IceCandidate, Target};

/// Negotiation requests waiting for the engine. Full means the engine is far behind: the
/// caller gets an error instead of waiting.
const COMMAND_QUEUE: usize = 4096;
/// Commands handled per loop turn, so a burst of joins never stalls packets for long.
const COMMANDS_PER_TURN: usize = 32;
/// recvmmsg calls per socket per turn before the engine looks at commands and timers again.
const RECV_CALLS_PER_TURN: usize = 8;
/// The loop wakes at least this often (keyframe requests from other threads, closing).
const MAX_IDLE: Duration = Duration::from_millis(20);
/// Datagrams per second one remote address may send before the rest is dropped.
const FLOOD_LIMIT_PER_SECOND: u32 = 8000;
/// Cached GOP packets sent per newcomer per loop turn (turns come at least every 20 ms): a
/// whole keyframe (≈ 45–55 packets) fits, so the first picture is not delayed (at 24 the
/// storm's join → first keyframe p95 went from 139 to 267 ms); the rest of the GOP is spread.
const GOP_PACKETS_PER_TURN: usize = 64;
/// How often connections are checked for a silent client.
const LIVENESS_EVERY: Duration = Duration::from_millis(250);
/// Send buffers kept for reuse.
const POOL: usize = 256;

const TOKEN_WAKER: u64 = u64::MAX;

/// An answer and the payload type chosen for each sender asked about.
pub(crate) type AnswerAndTypes = (String, Vec<Option<u8>>);

/// What member tasks ask of the engine.
pub(crate) enum Command {
    Open {
        target: Target,
        member: MemberId,
        id: super::ConnId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
        publish: Option<Arc<PublishShared>>,
        reply: oneshot::Sender<Result<ConnKey, SfuError>>,
    },
    /// Publish connection: the client's offer; the reply is our answer.
    Offer {
        conn: ConnKey,
        sdp: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    /// Subscribe connection: a track to send, negotiated with the next offer.
    AddTrack {
        conn: ConnKey,
        track: TrackSpec,
        reply: oneshot::Sender<Result<rtc::rtp_transceiver::RTCRtpSenderId, SfuError>>,
    },
    RemoveTrack {
        conn: ConnKey,
        sender: rtc::rtp_transceiver::RTCRtpSenderId,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    /// Subscribe connection: our offer.
    CreateOffer {
        conn: ConnKey,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    /// Subscribe connection: the client's answer; the reply is the payload type chosen for
    /// each sender asked about (None: the client refused the codec).
    Answer {
        conn: ConnKey,
        sdp: String,
        senders: Vec<(rtc::rtp_transceiver::RTCRtpSenderId, super::Codec)>,
        reply: oneshot::Sender<Result<Vec<Option<u8>>, SfuError>>,
    },
    /// Subscribe connection of a WHEP player: its offer; the reply is our answer and the
    /// payload type chosen for each sender asked about.
    AnswerOffer {
        conn: ConnKey,
        sdp: String,
        senders: Vec<(rtc::rtp_transceiver::RTCRtpSenderId, super::Codec)>,
        reply: oneshot::Sender<Result<AnswerAndTypes, SfuError>>,
    },
    Candidate {
        conn: ConnKey,
        candidate: IceCandidate,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Close {
        conn: ConnKey,
    },
}

/// The door into the engine: cheap to clone, shared by every member task.
#[derive(Clone)]
pub(crate) struct EngineHandle {
    tx: SyncSender<Command>,
    waker: Arc<net::Waker>,
    local: Arc<Vec<SocketAddr>>,
}

impl EngineHandle {
    /// Queues a command without waiting.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), SfuError> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(SfuError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SfuError::EngineStopped),
        }
    }

    /// Queues a close; if the queue is full, retries from a task so it is never lost.
    pub(crate) fn close(&self, conn: ConnKey) {
        match self.tx.try_send(Command::Close { conn }) {
            Ok(()) => self.waker.wake(),
            Err(TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                let waker = self.waker.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn_blocking(move || {
                        if tx.send(cmd).is_ok() {
                            waker.wake();
                        }
                    });
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub(crate) async fn call<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.send(build(tx))?;
        rx.await.map_err(|_| SfuError::EngineStopped)?
    }

    /// The media sockets' local addresses (one port, one per bound address).
    pub(crate) fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }
}

/// Binds the media sockets and starts the engine thread.
pub(crate) fn start(
    settings: MediaSettings,
    metrics: Arc<Metrics>,
) -> Result<EngineHandle, SfuError> {
    let (sockets, tcp) = bind_all(&settings)?;
    let local: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()
        .map_err(|e| SfuError::Bind(e.to_string()))?;
    let waker = Arc::new(net::Waker::new().map_err(|e| SfuError::Bind(e.to_string()))?);
    let poller = net::Poller::new().map_err(|e| SfuError::Bind(e.to_string()))?;
    poller
        .add(waker.fd(), TOKEN_WAKER)
        .map_err(|e| SfuError::Bind(e.to_string()))?;
    for (i, s) in sockets.iter().enumerate() {
        poller
            .add(s.as_raw_fd(), i as u64)
            .map_err(|e| SfuError::Bind(e.to_string()))?;
    }
    tcp.register(&poller)
        .map_err(|e| SfuError::Bind(e.to_string()))?;
    let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
    // Advertised addresses: the public ones for a server behind 1:1 NAT, else the bound ones.
    let advertised = advertised(&local, &settings.public_ips);
    let batches = (0..sockets.len()).map(|_| net::SendBatch::new()).collect();
    let engine = Engine {
        settings,
        metrics,
        out: Output {
            sockets,
            local: local.clone(),
            batches,
            pool: Vec::with_capacity(POOL),
            tcp,
            poller,
        },
        advertised,
        waker: waker.clone(),
        rx,
        conns: Vec::new(),
        free: Vec::new(),
        demux: mux::Demux::default(),
        flood: mux::FloodGuard::new(FLOOD_LIMIT_PER_SECOND),
        timers: BinaryHeap::new(),
        tcp_arena: Vec::with_capacity(64 * 1024),
        tcp_frames: Vec::with_capacity(64),
        publishers: Vec::new(),
        forwards: Vec::with_capacity(64),
        feedback: Feedback::default(),
        caches: HashMap::new(),
        catchups: Vec::new(),
        next_liveness: Instant::now(),
        backlog: false,
        epoch: Instant::now(),
    };
    std::thread::Builder::new()
        .name("kursrelay-media".into())
        .spawn(move || engine.run())
        .map_err(|e| SfuError::Bind(e.to_string()))?;
    Ok(EngineHandle {
        tx,
        waker,
        local: Arc::new(local),
    })
}

/// One UDP socket per address in `media.bind_ips`, all on `media.udp_port`, and (with ICE-TCP)
/// a TCP listener on the same address and port number. An unspecified address stands for every
/// interface address, each bound on its own so the local address of every datagram is known.
/// With port 0 the first socket picks a free port and the rest follow it (retried a few times
/// if that number is taken for TCP).
fn bind_all(settings: &MediaSettings) -> Result<(Vec<UdpSocket>, tcp::Tcp), SfuError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in &settings.bind_ips {
        if ip.is_unspecified() {
            let found = net::interface_addresses(ip.is_ipv6())
                .map_err(|e| SfuError::Bind(format!("cannot list interface addresses: {e}")))?;
            ips.extend(found);
        } else {
            ips.push(*ip);
        }
    }
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(SfuError::Bind(
            "media.bind_ips names no usable address".into(),
        ));
    }
    let attempts = if settings.udp_port == 0 { 20 } else { 1 };
    let mut last = String::new();
    for _ in 0..attempts {
        match bind_on(&ips, settings.udp_port, settings.ice_tcp) {
            Ok(x) => return Ok(x),
            Err(e) => last = e,
        }
    }
    Err(SfuError::Bind(last))
}

fn bind_on(ips: &[IpAddr], port: u16, ice_tcp: bool) -> Result<(Vec<UdpSocket>, tcp::Tcp), String> {
    let mut port = port;
    let mut sockets = Vec::with_capacity(ips.len());
    let mut tcp = tcp::Tcp::default();
    for ip in ips {
        let s = net::bind_udp(*ip, port).map_err(|e| {
            format!(
                "cannot bind UDP {} (media.bind_ips, media.udp_port): {e}",
                SocketAddr::new(*ip, port)
            )
        })?;
        let addr = s.local_addr().map_err(|e| e.to_string())?;
        port = addr.port();
        sockets.push(s);
        if ice_tcp {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                format!(
                    "cannot listen on TCP {addr} for ICE-TCP (media.ice_tcp, media.udp_port): {e}"
                )
            })?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            tcp.listeners.push((l, addr));
        }
    }
    Ok((sockets, tcp))
}

/// Pairs each bound address with the address a client should use for it. With
/// `media.public_ips`, IPv4 sockets are advertised at the first public IPv4 address (same for
/// IPv6) — a loopback socket only at a loopback "public" address (so the usual 127.0.0.1 stays
/// as it is for local clients, and a test can put a relay in front of the port).
fn advertised(local: &[SocketAddr], public: &[IpAddr]) -> Vec<(SocketAddr, SocketAddr)> {
    local
        .iter()
        .map(|l| {
            let public_ip = public
                .iter()
                .find(|p| p.is_ipv4() == l.is_ipv4() && p.is_loopback() == l.ip().is_loopback());
            (*l, public_ip.map_or(*l, |p| SocketAddr::new(*p, l.port())))
        })
        .collect()
}

/// Connections live in slots; a key carries the slot's generation so a stale key (a closed
/// connection's down-track) never reaches the connection that reused the slot.
struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// Where datagrams and frames leave: the UDP sockets (batched) and the ICE-TCP streams. Kept
/// apart from the connections so a connection can be serviced while output is queued.
struct Output {
    sockets: Vec<UdpSocket>,
    local: Vec<SocketAddr>,
    /// One send batch per socket.
    batches: Vec<net::SendBatch>,
    pool: Vec<BytesMut>,
    tcp: tcp::Tcp,
    poller: net::Poller,
}

impl Output {
    /// Queues one outgoing packet; false if it was dropped (a full socket, a gone stream).
    fn emit(&mut self, out: TaggedBytesMut) -> bool {
        if out.transport.transport_protocol == TransportProtocol::TCP {
            return self.tcp.send(out.transport.peer_addr, &out.message);
        }
        let sock = self
            .local
            .iter()
            .position(|l| *l == out.transport.local_addr)
            .unwrap_or(0);
        let batch = &mut self.batches[sock];
        batch.push(out.transport.peer_addr, out.message);
        if batch.is_full() {
            let before = batch.refused;
            batch.flush(self.sockets[sock].as_raw_fd(), &mut self.pool);
            return batch.refused == before;
        }
        true
    }

    /// Seals one forwarded packet for one subscriber (its SSRC and payload type, the outgoing
    /// sequence number and rollover counter `admit` gave it) with its connection's own SRTP
    /// keys into a pooled buffer, and queues it. The one place where fan-out, GOP catch-up and
    /// NACK re-sends put forwarded media on the wire.
    #[allow(clippy::too_many_arguments)]
    fn seal_and_queue(
        &mut self,
        now: Instant,
        sealer: &srtp::Sealer,
        dest: TransportContext,
        down: &super::forwarder::DownTrack,
        (seq, roc): (u16, u32),
        marker: bool,
        timestamp: u32,
        payload: &[u8],
    ) -> Queued {
        let mut buf = self.pool.pop().unwrap_or_default();
        if !sealer.seal(
            &mut buf,
            marker,
            down.payload_type,
            seq,
            timestamp,
            down.ssrc,
            roc,
            payload,
        ) {
            return Queued::NotSealed;
        }
        if self.emit(TaggedBytesMut {
            now,
            transport: dest,
            message: buf,
        }) {
            Queued::Sent
        } else {
            Queued::Dropped
        }
    }

    /// Sends everything queued; returns how many datagrams the kernel refused.
    fn flush(&mut self) -> u64 {
        let mut refused = 0;
        for (i, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                let before = batch.refused;
                batch.flush(self.sockets[i].as_raw_fd(), &mut self.pool);
                refused += batch.refused - before;
            }
        }
        self.tcp.flush(&self.poller);
        refused
    }
}

/// What became of a packet given to `Output::seal_and_queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    Sent,
    /// Sealed, but the socket refused it (counted as dropped).
    Dropped,
    /// The sealer refused it (a payload too large for a datagram).
    NotSealed,
}

struct Engine {
    settings: MediaSettings,
    metrics: Arc<Metrics>,
    out: Output,
    advertised: Vec<(SocketAddr, SocketAddr)>,
    waker: Arc<net::Waker>,
    rx: Receiver<Command>,
    conns: Vec<Slot>,
    free: Vec<u32>,
    demux: mux::Demux<ConnKey>,
    flood: mux::FloodGuard,
    /// (deadline, connection): stale entries (the connection's deadline moved) are skipped.
    timers: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    /// ICE-TCP frames read this turn (bytes and where they came from), reused.
    tcp_arena: Vec<u8>,
    tcp_frames: Vec<(SocketAddr, SocketAddr, usize, usize)>,
    /// Publish connections (their feeds are checked for keyframe requests every turn).
    publishers: Vec<ConnKey>,
    /// Media taken from a publish connection, waiting for its fan-out (reused, no allocation).
    forwards: Vec<(Arc<super::forwarder::Feed>, rtc::rtp::Packet)>,
    /// NACKs and sender reports taken from a connection, waiting for the engine (reused).
    feedback: Feedback,
    /// Newcomers being sent a cached GOP, paced (`pace_catchups`).
    catchups: Vec<(
        Arc<super::forwarder::Feed>,
        Arc<super::forwarder::DownTrack>,
    )>,
    /// Per forwarded feed: its packet cache (NACKs, GOP joins), dropped when the feed ends.
    caches: HashMap<u64, (Arc<super::forwarder::Feed>, cache::TrackCache)>,
    next_liveness: Instant,
    /// The last socket read stopped at its budget with datagrams left.
    backlog: bool,
    epoch: Instant,
}

impl Engine {
    fn run(mut self) {
        let mut recv = net::RecvBatch::new();
        let mut ready = Vec::with_capacity(16);
        let mut more_commands = false;
        tracing::info!(port = ?self.out.local.first().map(|a| a.port()), sockets = self.out.local.len(), ice_tcp = !self.out.tcp.listeners.is_empty(), "media engine running");
        loop {
            let now = Instant::now();
            let timeout = if more_commands {
                0
            } else {
                let next = self
                    .timers
                    .peek()
                    .map(|Reverse((t, _))| *t)
                    .unwrap_or(now + MAX_IDLE)
                    .min(now + MAX_IDLE);
                // Rounded up: waking early would only spin.
                next.saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000) as i32
            };
            self.out.poller.wait(timeout, &mut ready);
            for &token in &ready {
                if token == TOKEN_WAKER {
                    self.waker.reset();
                } else if token >= tcp::STREAM_TOKEN {
                    self.read_stream((token - tcp::STREAM_TOKEN) as usize);
                } else if token >= tcp::LISTENER_TOKEN {
                    let i = (token - tcp::LISTENER_TOKEN) as usize;
                    self.out.tcp.accept(i, &self.out.poller, now);
                } else if let Some(i) = usize::try_from(token)
                    .ok()
                    .filter(|i| *i < self.out.sockets.len())
                {
                    self.read_socket(i, &mut recv);
                }
            }
            match self.commands() {
                Ok(more) => more_commands = more,
                Err(()) => break,
            }
            self.timers_due(Instant::now());
            self.pace_catchups(Instant::now());
            self.keyframe_requests(Instant::now());
            self.liveness(Instant::now());
            self.flush_all();
        }
        // Every handle is gone: close what is left.
        let keys: Vec<ConnKey> = self.live_keys();
        for k in keys {
            self.close(k);
        }
        self.flush_all();
        tracing::info!("media engine stopped");
    }

    fn live_keys(&self) -> Vec<ConnKey> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| ConnKey {
                slot: i as u32,
                gen: s.gen,
            })
            .collect()
    }

    fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        let slot = self.conns.get_mut(key.slot as usize)?;
        if slot.gen != key.gen {
            return None;
        }
        slot.conn.as_mut()
    }

    fn read_socket(&mut self, sock: usize, recv: &mut net::RecvBatch) {
        let fd = self.out.sockets[sock].as_raw_fd();
        let local = self.out.local[sock];
        // Set when the socket still has datagrams after this turn's budget.
        self.backlog = true;
        for _ in 0..RECV_CALLS_PER_TURN {
            let n = match recv.recv(fd) {
                Ok(0) => {
                    self.backlog = false;
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
                        self.input(now, local, from, data, TransportProtocol::UDP)
                    }
                    None => self.metrics.count_drop(mux::Drop::Unclassified),
                }
            }
            if n < net::BATCH {
                self.backlog = false;
                return;
            }
        }
    }

    fn read_stream(&mut self, idx: usize) {
        let mut arena = std::mem::take(&mut self.tcp_arena);
        let mut frames = std::mem::take(&mut self.tcp_frames);
        arena.clear();
        frames.clear();
        self.out
            .tcp
            .read(idx, &self.out.poller, &mut arena, &mut frames);
        let now = Instant::now();
        self.metrics
            .datagrams_received
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        for &(local, peer, start, len) in &frames {
            self.input(
                now,
                local,
                peer,
                &arena[start..start + len],
                TransportProtocol::TCP,
            );
        }
        self.tcp_arena = arena;
        self.tcp_frames = frames;
    }

    /// One datagram (or ICE-TCP frame) in: flood budget, demultiplexing, the connection.
    fn input(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        proto: TransportProtocol,
    ) {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if !self.flood.allow(from, now_ms) {
            self.metrics.count_drop(mux::Drop::Flood);
            return;
        }
        let key = match self.demux.route(from, data) {
            Ok(k) => k,
            Err(why) => {
                self.metrics.count_drop(why);
                return;
            }
        };
        let ok = match self.conn_mut(key) {
            Some(c) => c.handle_datagram(now, local, from, data, proto),
            None => false,
        };
        if !ok {
            self.metrics.count_drop(mux::Drop::Rejected);
        }
        self.service(key, now);
    }

    /// Drains what one connection produced: datagrams (binding the addresses it answered),
    /// events, and received media (forwarded at once); then files its next deadline.
    fn service(&mut self, key: ConnKey, now: Instant) {
        let Some(slot) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if slot.gen != key.gen {
            return;
        }
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        // Output first: answering a check is what binds the check's address.
        while let Some(out) = conn.poll_write() {
            let to = out.transport.peer_addr;
            if !self.demux.is_bound(&to) && conn.answers_check(to, &out.message) {
                self.demux.bind(to, key);
            }
            self.out.emit(out);
        }
        let mut forwards = std::mem::take(&mut self.forwards);
        let mut feedback = std::mem::take(&mut self.feedback);
        let became_publisher = conn.poll_events(&self.metrics);
        conn.refresh_keys();
        conn.poll_reads(now, &self.metrics, &mut forwards, &mut feedback);
        let deadline = conn.next_deadline();
        if became_publisher && !self.publishers.contains(&key) {
            self.publishers.push(key);
        }
        if let Some(t) = deadline {
            self.timers.push(Reverse((t, key)));
        }
        for (feed, packet) in forwards.drain(..) {
            self.fan_out(&feed, packet, now);
        }
        self.forwards = forwards;
        for (feed, seq) in feedback.nacks.drain(..) {
            self.resend(key, feed, seq, now);
        }
        for (feed, ntp, rtp) in feedback.reports.drain(..) {
            self.sender_reports(&feed, ntp, rtp, now);
        }
        self.feedback = feedback;
    }

    /// A subscriber lost `seq` of `feed`: the same bytes again from the track cache (sealed
    /// with the same header, so the ciphertext repeats exactly — RFC 7714 nonce safety).
    fn resend(&mut self, key: ConnKey, feed: u64, seq: u16, now: Instant) {
        let Some((f, cache)) = self.caches.get(&feed) else {
            return;
        };
        let downs = f.downs.load();
        let Some(down) = downs.iter().find(|d| d.conn == key) else {
            return;
        };
        let Some((original, roc)) = down.incoming_of(seq) else {
            return;
        };
        let Some(c) = cache.get(original) else {
            self.metrics.nacks_missed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(Some(conn)) = self
            .conns
            .get(key.slot as usize)
            .filter(|s| s.gen == key.gen)
            .map(|s| s.conn.as_ref())
        else {
            return;
        };
        let Some((sealer, dest)) = conn.lean() else {
            return;
        };
        let queued = self.out.seal_and_queue(
            now,
            sealer,
            dest,
            down,
            (seq, roc),
            c.marker,
            c.timestamp,
            &c.payload,
        );
        if queued != Queued::NotSealed {
            self.metrics.nacks_answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A publisher's sender report, translated for every subscriber of the feed: same NTP and
    /// RTP time (timestamps are forwarded unchanged), the subscriber's own SSRC and counts.
    fn sender_reports(
        &mut self,
        feed: &Arc<super::forwarder::Feed>,
        ntp: u64,
        rtp: u32,
        now: Instant,
    ) {
        let downs = feed.downs.load();
        for down in downs.iter() {
            let Some(slot) = self.conns.get_mut(down.conn.slot as usize) else {
                continue;
            };
            if slot.gen != down.conn.gen {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if !conn.is_connected() || !down.has_started() {
                continue;
            }
            let report = rtc::rtcp::sender_report::SenderReport {
                ssrc: down.ssrc,
                ntp_time: ntp,
                rtp_time: rtp,
                packet_count: down.packets_sent.load(Ordering::Relaxed),
                octet_count: down.octets_sent.load(Ordering::Relaxed),
                ..Default::default()
            };
            if conn.write_sender_report(now, down.sender, report) {
                self.metrics.sender_reports.fetch_add(1, Ordering::Relaxed);
            }
            while let Some(out) = conn.poll_write() {
                self.out.emit(out);
            }
        }
    }

    /// Packet-major: this packet goes to every subscriber before the next packet is read.
    fn fan_out(
        &mut self,
        feed: &Arc<super::forwarder::Feed>,
        packet: rtc::rtp::Packet,
        now: Instant,
    ) {
        let downs = feed.downs.load();
        let keyframe = super::keyframe::starts_keyframe(feed.family, &packet.payload);
        let seq_in = packet.header.sequence_number;
        let (_, cache) = self
            .caches
            .entry(feed.id)
            .or_insert_with(|| (feed.clone(), cache::TrackCache::new()));
        cache.insert(
            seq_in,
            packet.header.timestamp,
            packet.header.marker,
            &packet.payload,
            keyframe,
        );
        if feed.family != super::keyframe::CodecFamily::Audio && !cache.has_gop() {
            // Keep a GOP ready for the next newcomer (paced like every request).
            feed.keyframes.request();
        }
        let (mut sent, mut sealed, mut dropped) = (0u64, 0u64, 0u64);
        for down in downs.iter() {
            let Some(slot) = self.conns.get_mut(down.conn.slot as usize) else {
                continue;
            };
            if slot.gen != down.conn.gen {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if !conn.is_connected() {
                continue;
            }
            // A newcomer starts from the cached GOP (the last keyframe and everything since)
            // instead of waiting for a keyframe request to come back. The GOP is paced out by
            // `pace_catchups`; until it has caught up, live packets reach it from the cache.
            if down.is_catching_up() {
                continue;
            }
            if !keyframe && down.is_newcomer() && conn.lean().is_some() {
                if let Some((start, _)) = self
                    .caches
                    .get(&feed.id)
                    .and_then(|(_, c)| c.gop_until(seq_in.wrapping_sub(1)))
                {
                    down.start_catchup(start);
                    self.catchups.push((feed.clone(), down.clone()));
                    self.metrics.gop_joins.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let Some((seq, roc)) = down.admit(seq_in, keyframe) else {
                continue;
            };
            down.count(packet.payload.len());
            if let Some((sealer, dest)) = conn.lean() {
                // Our own seal with the connection's keys: no rtc round, no allocation.
                match self.out.seal_and_queue(
                    now,
                    sealer,
                    dest,
                    down,
                    (seq, roc),
                    packet.header.marker,
                    packet.header.timestamp,
                    &packet.payload,
                ) {
                    Queued::Sent => sealed += 1,
                    Queued::Dropped => {
                        sealed += 1;
                        dropped += 1;
                    }
                    Queued::NotSealed => {
                        self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            } else {
                if !conn.write_rtp(now, down.sender, down.packet(&packet, seq)) {
                    down.lost();
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                while let Some(out) = conn.poll_write() {
                    if !self.out.emit(out) {
                        dropped += 1;
                    }
                }
            }
            sent += 1;
        }
        self.metrics
            .packets_received
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .packets_forwarded
            .fetch_add(sent, Ordering::Relaxed);
        self.metrics
            .packets_sealed
            .fetch_add(sealed, Ordering::Relaxed);
        if dropped > 0 {
            self.metrics
                .packets_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Newcomers starting from a cached GOP get at most GOP_PACKETS_PER_TURN of it per turn
    /// each (a 50 KB keyframe to many newcomers at once would otherwise be one burst); when
    /// one reaches the newest cached packet it goes on with the live stream.
    fn pace_catchups(&mut self, now: Instant) {
        if self.catchups.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.catchups);
        let mut sent = 0u64;
        list.retain(|(feed, down)| {
            let live = feed.downs.load().iter().any(|d| Arc::ptr_eq(d, down));
            let conn = self
                .conns
                .get(down.conn.slot as usize)
                .filter(|s| s.gen == down.conn.gen)
                .and_then(|s| s.conn.as_ref());
            let (Some(conn), Some((_, cache)), true) = (conn, self.caches.get(&feed.id), live)
            else {
                down.end_catchup();
                return false;
            };
            let Some((sealer, dest)) = conn.lean() else {
                down.end_catchup();
                return false;
            };
            for _ in 0..GOP_PACKETS_PER_TURN {
                let Some(next) = down.catchup_next() else {
                    return false;
                };
                let Some(c) = cache.get(next) else {
                    if cache
                        .latest()
                        .is_some_and(|l| l.wrapping_sub(next) >= 0x8000)
                    {
                        // Caught up: the next packet is the live one.
                        down.end_catchup();
                    } else {
                        // Pushed out of the cache before it was sent: start over at a keyframe.
                        down.end_catchup();
                        down.lost();
                    }
                    return false;
                };
                down.set_catchup_next(next.wrapping_add(1));
                let Some((seq, roc)) = down.admit(next, true) else {
                    continue;
                };
                down.count(c.payload.len());
                let queued = self.out.seal_and_queue(
                    now,
                    sealer,
                    dest,
                    down,
                    (seq, roc),
                    c.marker,
                    c.timestamp,
                    &c.payload,
                );
                if queued != Queued::NotSealed {
                    sent += 1;
                }
            }
            true
        });
        // Newcomers added while this ran (none: fan-out does not run here) and the rest.
        list.append(&mut self.catchups);
        self.catchups = list;
        self.metrics
            .packets_forwarded
            .fetch_add(sent, Ordering::Relaxed);
        self.metrics
            .packets_sealed
            .fetch_add(sent, Ordering::Relaxed);
    }

    fn flush_all(&mut self) {
        let refused = self.out.flush();
        if refused > 0 {
            self.metrics
                .packets_dropped
                .fetch_add(refused, Ordering::Relaxed);
        }
    }

    fn timers_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, key));
        }
        for (t, key) in due {
            let fire = match self.conn_mut(key) {
                Some(c) => c.timer_due(t, now),
                None => false,
            };
            if fire {
                self.service(key, now);
            }
        }
        // Stale entries pile up when deadlines move often; rebuild now and then.
        if self.timers.len() > 64 + 8 * self.conns.len() {
            let mut fresh = BinaryHeap::with_capacity(self.conns.len());
            for key in self.live_keys() {
                if let Some(t) = self.conn_mut(key).and_then(|c| c.deadline()) {
                    fresh.push(Reverse((t, key)));
                }
            }
            self.timers = fresh;
        }
    }

    /// Every LIVENESS_EVERY: connections whose client went silent for longer than the
    /// configured ICE timeouts (disconnected + failed) are reported failed.
    fn liveness(&mut self, now: Instant) {
        if now < self.next_liveness {
            return;
        }
        // Silence is only judged on an engine that keeps up: with datagrams still waiting in
        // a socket, or after the thread itself was held up (a loaded machine), "not heard"
        // may just mean "not read yet".
        let stalled = now.saturating_duration_since(self.next_liveness) > LIVENESS_EVERY * 4;
        self.next_liveness = now + LIVENESS_EVERY;
        let (ufrags, bound) = self.demux.len();
        let m = &self.metrics;
        m.ufrags.store(ufrags as i64, Ordering::Relaxed);
        m.bound_addresses.store(bound as i64, Ordering::Relaxed);
        m.tcp_streams
            .store(self.out.tcp.open_streams() as i64, Ordering::Relaxed);
        m.track_caches
            .store(self.caches.len() as i64, Ordering::Relaxed);
        if self.backlog || stalled {
            return;
        }
        let demux = &self.demux;
        self.out
            .tcp
            .expire(now, &self.out.poller, |peer| demux.is_bound(peer));
        self.caches.retain(|_, (feed, _)| !feed.is_ended());
        let limit = self.settings.ice_disconnected_timeout + self.settings.ice_failed_timeout;
        let mut connecting = Vec::new();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            if let Some(c) = slot.conn.as_mut() {
                c.check_silence(now, limit);
                if c.is_connecting() {
                    connecting.push(ConnKey {
                        slot: i as u32,
                        gen: slot.gen,
                    });
                }
            }
        }
        // Belt and braces for handshakes: a connection still setting up (ICE, DTLS with its
        // retransmissions) gets its timers run now and then even if a deadline was not filed.
        for key in connecting {
            if let Some(c) = self.conn_mut(key) {
                c.run_timers(now);
            }
            self.service(key, now);
        }
    }

    fn keyframe_requests(&mut self, now: Instant) {
        let interval = self.settings.keyframe_request_interval;
        let mut i = 0;
        while i < self.publishers.len() {
            let key = self.publishers[i];
            let Some(conn) = self.conn_mut(key) else {
                self.publishers.swap_remove(i);
                continue;
            };
            let sent = conn.send_keyframe_requests(now, interval);
            if sent > 0 {
                self.metrics
                    .keyframe_requests_sent
                    .fetch_add(sent, Ordering::Relaxed);
                self.service(key, now);
            }
            i += 1;
        }
    }

    /// Handles queued commands, at most COMMANDS_PER_TURN. Ok(true): more are waiting;
    /// Err: every handle is gone.
    fn commands(&mut self) -> Result<bool, ()> {
        for _ in 0..COMMANDS_PER_TURN {
            match self.rx.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => return Err(()),
            }
        }
        Ok(true)
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Open {
                target,
                member,
                id,
                events,
                publish,
                reply,
            } => {
                let result = Conn::new(
                    &self.settings,
                    &self.advertised,
                    target,
                    member,
                    id,
                    events,
                    publish,
                )
                .map(|conn| {
                    let slot = match self.free.pop() {
                        Some(s) => s,
                        None => {
                            self.conns.push(Slot { gen: 0, conn: None });
                            (self.conns.len() - 1) as u32
                        }
                    };
                    let entry = &mut self.conns[slot as usize];
                    entry.gen = entry.gen.wrapping_add(1);
                    let key = ConnKey {
                        slot,
                        gen: entry.gen,
                    };
                    self.demux.add_ufrag(conn.ufrag().to_owned(), key);
                    entry.conn = Some(conn);
                    self.metrics.peer_connections.fetch_add(1, Ordering::SeqCst);
                    key
                });
                let _ = reply.send(result);
            }
            Command::Offer { conn, sdp, reply } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.apply_offer(now, sdp),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::AddTrack { conn, track, reply } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.add_track(track),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
            }
            Command::RemoveTrack {
                conn,
                sender,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.remove_track(sender),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
            }
            Command::CreateOffer { conn, reply } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.create_offer(now),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::Answer {
                conn,
                sdp,
                senders,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.apply_answer(now, sdp, &senders),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::AnswerOffer {
                conn,
                sdp,
                senders,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c
                        .apply_offer(now, sdp)
                        .map(|answer| (answer, c.payload_types(&senders))),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::Candidate {
                conn,
                candidate,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.add_remote_candidate(candidate),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::Close { conn } => self.close(conn),
        }
    }

    fn close(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if slot.gen != key.gen {
            return;
        }
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        conn.close(&self.metrics);
        // Whatever closing produced (DTLS close_notify) still goes out.
        while let Some(out) = conn.poll_write() {
            self.out.emit(out);
        }
        for peer in self.demux.remove(key) {
            self.out.tcp.close_peer(&peer, &self.out.poller);
        }
        self.publishers.retain(|k| *k != key);
        self.free.push(key.slot);
        self.metrics.peer_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The media port's input path without sockets or thread, for the fuzz target and its smoke
/// run: the engine's flood guard and demultiplexer in front of one real ICE-lite publish
/// connection that has answered `offer_sdp`. `feed` does what the engine does with a datagram.
#[doc(hidden)]
pub struct MediaPortHarness {
    demux: mux::Demux<ConnKey>,
    flood: mux::FloodGuard,
    conn: Conn,
    key: ConnKey,
    local: SocketAddr,
    metrics: Metrics,
    forwards: Vec<(Arc<super::forwarder::Feed>, rtc::rtp::Packet)>,
    feedback: Feedback,
    _events: tokio::sync::mpsc::Receiver<PeerEvent>,
    epoch: Instant,
}

impl MediaPortHarness {
    pub fn new(offer_sdp: &str) -> Result<MediaPortHarness, SfuError> {
        let settings = MediaSettings {
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            udp_port: 0,
            public_ips: vec![],
            ice_tcp: true,
            udp_candidates: true,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(25),
            keyframe_request_interval: Duration::from_secs(1),
        };
        let local = SocketAddr::from(([127, 0, 0, 1], 50000));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut conn = Conn::new(
            &settings,
            &[(local, local)],
            Target::Publish,
            MemberId::new(),
            super::ConnId::next(),
            tx,
            Some(Arc::new(PublishShared::default())),
        )?;
        conn.apply_offer(Instant::now(), offer_sdp.to_owned())?;
        let key = ConnKey { slot: 0, gen: 1 };
        let mut demux = mux::Demux::default();
        demux.add_ufrag(conn.ufrag().to_owned(), key);
        Ok(MediaPortHarness {
            demux,
            flood: mux::FloodGuard::new(FLOOD_LIMIT_PER_SECOND),
            conn,
            key,
            local,
            metrics: Metrics::default(),
            forwards: Vec::new(),
            feedback: Feedback::default(),
            _events: rx,
            epoch: Instant::now(),
        })
    }

    /// Binds `addr` to the connection as if its ICE check had passed, so datagrams from it
    /// reach the connection's DTLS, SRTP and SRTCP handling (what an attacker on a client's
    /// path, spoofing its address, could send).
    pub fn bind_checked(&mut self, addr: SocketAddr) {
        self.demux.bind(addr, self.key);
    }

    /// The connection's ICE ufrag (for seeds that reach it).
    pub fn ufrag(&self) -> &str {
        self.conn.ufrag()
    }

    /// One datagram in, as the engine takes it (without the per-address flood budget, which
    /// would otherwise drop almost every fuzzed input; `route_only` keeps it). Returns whether
    /// the connection saw it.
    pub fn feed(&mut self, from: SocketAddr, data: &[u8], tcp: bool) -> bool {
        let now = Instant::now();
        if self.demux.route(from, data) != Ok(self.key) {
            return false;
        }
        let proto = if tcp {
            TransportProtocol::TCP
        } else {
            TransportProtocol::UDP
        };
        self.conn
            .handle_datagram(now, self.local, from, data, proto);
        while let Some(out) = self.conn.poll_write() {
            let to = out.transport.peer_addr;
            if !self.demux.is_bound(&to) && self.conn.answers_check(to, &out.message) {
                self.demux.bind(to, self.key);
            }
        }
        self.conn.poll_events(&self.metrics);
        self.conn.refresh_keys();
        self.conn
            .poll_reads(now, &self.metrics, &mut self.forwards, &mut self.feedback);
        self.forwards.clear();
        self.feedback.nacks.clear();
        self.feedback.reports.clear();
        if let Some(t) = self.conn.next_deadline() {
            if t <= now {
                self.conn.timer_due(t, now);
            }
        }
        true
    }

    /// Whether `addr` became bound (only a check that passed MESSAGE-INTEGRITY may do that).
    pub fn is_bound(&self, addr: &SocketAddr) -> bool {
        self.demux.is_bound(addr)
    }

    /// The flood budget, classifier and demultiplexer alone (cheap: the ≥ 1 M datagram part
    /// of the smoke).
    pub fn route_only(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if !self.flood.allow(from, now_ms) {
            return false;
        }
        mux::classify(data);
        mux::binding_request_ufrag(data);
        self.demux.route(from, data).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_replace_bound_ones_of_the_same_kind() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let local: Vec<SocketAddr> = ["127.0.0.1:50000", "10.0.0.5:50000", "[fd00::5]:50000"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let shown = |public: &[IpAddr]| -> Vec<String> {
            advertised(&local, public)
                .iter()
                .map(|(_, a)| a.to_string())
                .collect()
        };
        assert_eq!(
            shown(&[]),
            ["127.0.0.1:50000", "10.0.0.5:50000", "[fd00::5]:50000"]
        );
        assert_eq!(
            shown(&[ip("198.51.100.7")]),
            ["127.0.0.1:50000", "198.51.100.7:50000", "[fd00::5]:50000"]
        );
        assert_eq!(
            shown(&[ip("198.51.100.7"), ip("2001:db8::7"), ip("127.0.0.2")]),
            [
                "127.0.0.2:50000",
                "198.51.100.7:50000",
                "[2001:db8::7]:50000"
            ]
        );
    }
}
