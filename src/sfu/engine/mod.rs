//! The media engine: every publish and subscribe connection (sans-IO
//! `rtc::RTCPeerConnection`s) on one media port — one UDP socket per bound address, all on
//! `media.udp_port`, plus ICE-TCP on the same port number. Where a packet goes, file by file:
//!
//! ```text
//! shell.rs   epoll → recvmmsg ─────────────▶ core.handle_input(now, Datagram)
//! core.rs      flood budget, demux (mux.rs: RFC 7983, ufrag / bound address) → the connection
//! conn.rs      rtc: ICE-lite, DTLS, SRTP in; RTP of a published track → its Feed (forwarder.rs)
//! core.rs      fan_out: track cache (cache.rs) → per DownTrack: admit (seq, ROC, keyframe gate)
//!              → deliver: now, or held by the viewer's pacer (pacer.rs) until its line has
//!              room → seal_and_queue (srtp.rs: our own seal, pooled buffer) → poll_transmit
//! shell.rs   poll_transmit → sendmmsg batches (net.rs) or ICE-TCP frames (tcp.rs)
//! ```
//!
//! GOP catch-up for newcomers and NACK re-sends from the cache go through the same
//! `deliver` and `seal_and_queue`. The core (`core.rs`) has no I/O and reads no clock: time comes in with
//! every input, so tests drive it in simulated time (tests/media_sim.rs, `testing`). The shell
//! (`shell.rs`) owns the sockets, epoll, the command queue and the clock.
//!
//! Nothing here awaits; member tasks talk to it through a bounded queue (`EngineHandle`) and
//! get their replies on oneshot channels; it talks back with `try_send` on their event queues.
//! How this scales past one core: run one engine (core + shell) per core, each with its own
//! port (or its own `SO_REUSEPORT` socket and a ufrag → engine map) and place a session's
//! connections on one engine, so forwarding never crosses threads (docs/ARCHITECTURE.md).

mod cache;
pub(crate) mod check;
mod conn;
mod core;
pub(crate) mod mux;
mod net;
mod pacer;
mod resend;
mod shell;
pub(crate) mod srtp;
mod tcp;
#[doc(hidden)]
pub mod testing;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

pub(crate) use crate::sfu::conn_key::ConnKey;
pub(crate) use conn::{source_of, PublishShared, TrackSpec};

use super::metrics::Metrics;
use super::{MediaSettings, PeerEvent, SfuError};
use crate::ids::MemberId;
use crate::protocol::{IceCandidate, Target};

/// Negotiation requests waiting for the engine. Full means the engine is far behind: the
/// caller gets an error instead of waiting.
const COMMAND_QUEUE: usize = 4096;
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
    /// Subscribe connection: the viewer's own size cap and "save data" (`video_preference`).
    VideoPreference {
        conn: ConnKey,
        preference: crate::sfu::allocator::Preference,
    },
    /// A connectivity check (`/check`): the page's offer (a data channel), answered by a new
    /// check connection with the media port's UDP and/or ICE-TCP candidates.
    Check {
        sdp: String,
        udp: bool,
        tcp: bool,
        reply: oneshot::Sender<Result<String, SfuError>>,
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
        .add(waker.fd(), shell::TOKEN_WAKER)
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
    let shell = shell::Shell {
        core: core::Core::new(settings, metrics.clone(), advertised, Instant::now()),
        metrics,
        sockets,
        local: local.clone(),
        batches,
        tcp,
        poller,
        waker: waker.clone(),
        rx,
        tcp_arena: Vec::with_capacity(64 * 1024),
        tcp_frames: Vec::with_capacity(64),
    };
    std::thread::Builder::new()
        .name("kursrelay-media".into())
        .spawn(move || shell.run())
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
