//! Test entry points into the engine's core, for tests/, benches/ and the fuzz targets. Not
//! part of the server: nothing in src/ uses this module.
//!
//! Everything here drives the real `Core` (`core.rs`) — its demultiplexer, connections,
//! fan-out, pool and track caches — in simulated time: no socket, no thread, no sleep. What a
//! harness adds is only what the shell would do (hand datagrams in, take them out) and, where
//! a test needs one, a real webrtc-rs client (sans-IO `rtc`) on the other side, connected in
//! memory.
//!
//! - `Fanout`: N subscribers whose connections are up with known SRTP keys (no handshake),
//!   one feed; `forward` puts a packet through the core's own fan-out, seal, pool and
//!   transmit queue (benches/forward.rs, tests/allocations.rs).
//! - `MediaPortHarness`: one real ICE-LITE publish connection behind the core's flood guard
//!   and demultiplexer (fuzz target `media`).
//! - `MediaSessionHarness`: a webrtc-rs client publishing VP8 and Opus, connected through
//!   the core (ICE, DTLS, SRTP for real), then fed fuzzed RTP/RTCP encrypted with the
//!   client's own keys (fuzz target `media_session`).
//! - `Sim`: a publishing client and a subscribing client, both real, connected through the
//!   core, the subscription negotiated with the engine's own commands (tests/media_sim.rs).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::oneshot;

use super::core::{Core, Datagram, Input};
use super::{mux, srtp, Command, ConnKey, PublishShared};
use crate::ids::{MemberId, TrackId};
use crate::protocol::{MediaKind, Target};
use crate::sfu::forwarder::{DownTrack, Feed};
use crate::sfu::keyframe::{CodecFamily, KeyframeRequester};
use crate::sfu::{Codec, ConnId, MediaSettings, Metrics, PeerEvent, SfuError};

/// The media port's address in every harness.
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 50000);

/// Simulated time per datagram fed by the fuzz harnesses: 4 000 datagrams per simulated
/// second, half the flood budget, so the guard is in the path but never trips.
const FUZZ_STEP: Duration = Duration::from_micros(250);

fn settings(ice_tcp: bool) -> MediaSettings {
    MediaSettings {
        bind_ips: vec![LOCAL.ip()],
        udp_port: 0,
        public_ips: vec![],
        ice_tcp,
        udp_candidates: true,
        ice_disconnected_timeout: Duration::from_secs(5),
        ice_failed_timeout: Duration::from_secs(25),
        keyframe_request_interval: Duration::from_secs(1),
        simulcast: true,
        pacer: true,
        // Off only to compare (`KURSRELAY_SIM_PROBES=false`, BENCHMARKS.md).
        probes: std::env::var("KURSRELAY_SIM_PROBES").map_or(true, |v| v != "false"),
    }
}

/// A connection inside the core, to look at.
fn conn(core: &Core, key: ConnKey) -> Option<&super::conn::Conn> {
    core.conns
        .get(key.slot as usize)
        .filter(|s| s.gen == key.gen)
        .and_then(|s| s.conn.as_ref())
}

/// Sends a command into the core and takes its reply (the core answers at once).
fn call<T>(
    core: &mut Core,
    now: Instant,
    build: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
) -> Result<T, SfuError> {
    let (tx, mut rx) = oneshot::channel();
    core.handle_input(now, Input::Command(build(tx)));
    rx.try_recv().map_err(|_| SfuError::EngineStopped)?
}

fn open(
    core: &mut Core,
    now: Instant,
    target: Target,
    events: tokio::sync::mpsc::Sender<PeerEvent>,
) -> Result<ConnKey, SfuError> {
    let publish = (target == Target::Publish).then(|| Arc::new(PublishShared::default()));
    call(core, now, |reply| Command::Open {
        target,
        member: MemberId::new(),
        id: ConnId::next(),
        events,
        publish,
        reply,
    })
}

fn host(addr: SocketAddr) -> Result<rtc::peer_connection::transport::RTCIceCandidateInit, String> {
    super::conn::host_candidate(addr, false).map_err(|e| e.to_string())
}

fn client_track(
    kind: RtpCodecKind,
    ssrc: u32,
    mime: &str,
    clock_rate: u32,
    channels: u16,
) -> MediaStreamTrack {
    let id = format!("{ssrc:x}");
    MediaStreamTrack::new(
        "client".into(),
        id.clone(),
        id,
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: mime.into(),
                clock_rate,
                channels,
                ..Default::default()
            },
            ..Default::default()
        }],
    )
}

/// A webrtc-rs client (full ICE, default interceptors) at `addr`.
fn client(now: Instant, addr: SocketAddr) -> Result<RTCPeerConnection, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut me = MediaEngine::default();
    me.register_default_codecs().map_err(|x| e(&x))?;
    let registry = register_default_interceptors(Registry::new(), &mut me).map_err(|x| e(&x))?;
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
                .build(),
        )
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(|x| e(&x))?;
    pc.add_local_candidate(host(addr)?).map_err(|x| e(&x))?;
    Ok(pc)
}

/// The client's own outgoing SRTP context and, for GCM, its bare session key and salt.
type ClientSrtp = (
    rtc::srtp::context::Context,
    Option<(ring::aead::LessSafeKey, [u8; 12])>,
);

/// The client's outgoing SRTP keys as a context (and, for GCM, the bare session key and salt).
fn client_srtp(pc: &RTCPeerConnection) -> Result<ClientSrtp, String> {
    let keys = pc
        .srtp_keying_export()
        .ok_or("the client has no SRTP keys after connecting")?;
    use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
    use rtc::srtp::protection_profile::ProtectionProfile;
    let profile = match keys.profile {
        P::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
        P::Srtp_Aes128_Cm_Hmac_Sha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        other => return Err(format!("unexpected SRTP profile {other:?}")),
    };
    let mut gcm = None;
    if matches!(profile, ProtectionProfile::AeadAes128Gcm) {
        let mk: [u8; 16] = keys.local_master_key[..]
            .try_into()
            .map_err(|_| "a GCM master key of 16 bytes")?;
        let key = srtp::derive(&mk, &keys.local_master_salt, 0, 0);
        let mut salt = [0u8; 12];
        salt.copy_from_slice(&srtp::derive(&mk, &keys.local_master_salt, 2, 0)[..12]);
        gcm = Some((
            ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key)
                    .map_err(|_| "an AES-128-GCM key")?,
            ),
            salt,
        ));
    }
    let ctx = rtc::srtp::context::Context::new(
        &keys.local_master_key,
        &keys.local_master_salt,
        profile,
        None,
        None,
        &rtc::crypto::providers::RingCrypto,
    )
    .map_err(|e| e.to_string())?;
    Ok((ctx, gcm))
}

fn tagged(now: Instant, to: SocketAddr, from: SocketAddr, data: &[u8]) -> TaggedBytesMut {
    TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: to,
            peer_addr: from,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        },
        message: BytesMut::from(data),
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out through the core.

/// The core's fan-out for `n` subscribers of one VP8 feed, without a network or a handshake:
/// each subscriber's connection is opened by the engine's own `Open` command and then given
/// fixed SRTP keys and a destination, as a finished DTLS handshake would. `forward` is what
/// the engine does with a packet read from a publisher: track cache, per subscriber admit,
/// `seal_and_queue` into a pooled buffer, the transmit queue — then takes the datagrams out
/// and gives the buffers back, as the shell does after `sendmmsg` (the syscall is not run).
#[doc(hidden)]
pub struct Fanout {
    core: Core,
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
    now: Instant,
    /// Simulated time between two packets (`paced`: the pacer's budget refills with time).
    step: Duration,
    /// Bytes taken out so far (keeps the work observable).
    pub bytes: u64,
    _events: tokio::sync::mpsc::Receiver<PeerEvent>,
}

impl Fanout {
    /// Subscribers on AEAD_AES_128_GCM (what the server prefers; browsers get it).
    pub fn new(subscribers: usize) -> Fanout {
        Self::with_profile(subscribers, srtp::Profile::AeadAes128Gcm)
    }

    /// Subscribers on AES128_CM_HMAC_SHA1_80 (a client that offers no GCM).
    pub fn new_aes_cm(subscribers: usize) -> Fanout {
        Self::with_profile(subscribers, srtp::Profile::Aes128CmHmacSha1_80)
    }

    /// As `new`, the feed a simulcast track with three layers; subscriber `i` wants layer
    /// `i % 3` (`retarget` moves them), so packets of every layer are forwarded.
    pub fn simulcast(subscribers: usize) -> Fanout {
        let f = Self::with_profile(subscribers, srtp::Profile::AeadAes128Gcm);
        for layer in 0..crate::sfu::keyframe::MAX_LAYERS as u8 {
            f.feed.add_layer(layer);
        }
        f.retarget(0);
        f
    }

    /// As `new`, every subscriber's pacer on (as transport-cc turns it on) with room for what
    /// is forwarded (a 1 Gbit/s estimate): the pacer's budget is kept per packet, nothing is
    /// held.
    pub fn paced(subscribers: usize) -> Fanout {
        let mut f = Self::with_profile(subscribers, srtp::Profile::AeadAes128Gcm);
        for d in f.feed.downs.load().iter() {
            if let Some(p) = f.core.conn_mut(d.conn).and_then(|c| c.pacer()) {
                p.update(Some(1e9), 0.5);
            }
        }
        // A feed of 1 000 packets a second (≈ 8.5 Mbit/s of 1 064-byte datagrams per viewer).
        f.step = Duration::from_millis(1);
        f
    }

    /// Subscriber `i` now wants layer `(i + shift) % 3`: it switches at that layer's next
    /// keyframe.
    pub fn retarget(&self, shift: usize) {
        for (i, d) in self.feed.downs.load().iter().enumerate() {
            d.set_target_layer(((i + shift) % crate::sfu::keyframe::MAX_LAYERS) as u8);
        }
    }

    /// Layer switches so far.
    pub fn layer_switches(&self) -> u64 {
        self.metrics.layer_switches.load(Ordering::Relaxed)
    }

    fn with_profile(subscribers: usize, profile: srtp::Profile) -> Fanout {
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let mut core = Core::new(settings(false), metrics.clone(), vec![(LOCAL, LOCAL)], now);
        let (tx, rx) = tokio::sync::mpsc::channel(4 * subscribers + 16);
        let feed = Feed::new(
            now,
            MemberId::new(),
            MediaKind::Video,
            "camera".into(),
            Codec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                fmtp: String::new(),
            },
        );
        let salt: &[u8] = match profile {
            srtp::Profile::AeadAes128Gcm => &[3; 12],
            srtp::Profile::Aes128CmHmacSha1_80 => &[3; 14],
        };
        let mut downs = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            let key = open(&mut core, now, Target::Subscribe, tx.clone())
                .expect("a subscribe connection");
            let conn = core
                .conn_mut(key)
                .expect("the connection just opened is there");
            conn.connected = true;
            conn.sealer = Some(srtp::Sealer::new(profile, &[7; 16], salt).expect("a 16-byte key"));
            conn.media_dest = Some(TransportContext {
                local_addr: LOCAL,
                peer_addr: SocketAddr::from(([127, 0, 0, 2], 10_000 + i as u16)),
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            });
            downs.push(down_track(
                key,
                RTCRtpSenderId::default(),
                1000 + i as u32,
                96,
                CodecFamily::Vp8,
                feed.keyframes.clone(),
                false,
            ));
        }
        feed.downs.store(Arc::new(downs));
        Fanout {
            core,
            metrics,
            feed,
            now,
            step: Duration::ZERO,
            bytes: 0,
            _events: rx,
        }
    }

    /// One packet through the core's fan-out; returns how many datagrams it produced.
    pub fn forward(&mut self, packet: &rtp::Packet) -> u64 {
        self.forward_layer(0, packet)
    }

    /// One packet of simulcast `layer` through the core's fan-out; returns how many datagrams
    /// it produced.
    pub fn forward_layer(&mut self, layer: u8, packet: &rtp::Packet) -> u64 {
        self.now += self.step;
        self.core
            .fan_out(&self.feed, layer, packet.clone(), self.now);
        let mut n = 0;
        while let Some(t) = self.core.poll_transmit() {
            n += 1;
            self.bytes = self.bytes.wrapping_add(t.data.len() as u64);
            self.core.recycle(t.data);
        }
        n
    }
}

/// A down-track as `Subscriber` builds it once the answer fixed the payload type.
fn down_track(
    conn: ConnKey,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: u8,
    codec: CodecFamily,
    keyframes: KeyframeRequester,
    waiting_keyframe: bool,
) -> Arc<DownTrack> {
    let down = DownTrack::new(
        MemberId::new(),
        TrackId::new(),
        codec,
        ssrc,
        payload_type,
        conn,
        sender,
        keyframes,
    );
    down.waiting_keyframe
        .store(waiting_keyframe, Ordering::Relaxed);
    Arc::new(down)
}

// ---------------------------------------------------------------------------------------------
// The media port for the fuzz target `media`.

/// The media port's input path as the core runs it — flood budget, classifier,
/// demultiplexer, one real ICE-lite publish connection that has answered `offer_sdp` — in
/// simulated time.
#[doc(hidden)]
pub struct MediaPortHarness {
    core: Core,
    key: ConnKey,
    now: Instant,
    _events: tokio::sync::mpsc::Receiver<PeerEvent>,
}

impl MediaPortHarness {
    pub fn new(offer_sdp: &str) -> Result<MediaPortHarness, SfuError> {
        let now = Instant::now();
        let mut core = Core::new(
            settings(true),
            Arc::new(Metrics::default()),
            vec![(LOCAL, LOCAL)],
            now,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let key = open(&mut core, now, Target::Publish, tx)?;
        let sdp = offer_sdp.to_owned();
        call(&mut core, now, |reply| Command::Offer {
            conn: key,
            sdp,
            reply,
        })?;
        let mut h = MediaPortHarness {
            core,
            key,
            now,
            _events: rx,
        };
        h.drain();
        Ok(h)
    }

    /// Binds `addr` to the connection as if its ICE check had passed, so datagrams from it
    /// reach the connection's DTLS, SRTP and SRTCP handling (what an attacker on a client's
    /// path, spoofing its address, could send).
    pub fn bind_checked(&mut self, addr: SocketAddr) {
        self.core.demux.bind(addr, self.key);
    }

    /// The connection's ICE ufrag (for seeds that reach it).
    pub fn ufrag(&self) -> &str {
        conn(&self.core, self.key).map_or("", |c| c.ufrag())
    }

    /// One datagram in, as the engine takes it. Returns whether it was routed to the
    /// connection.
    pub fn feed(&mut self, from: SocketAddr, data: &[u8], tcp: bool) -> bool {
        self.now += FUZZ_STEP;
        let routed = self.core.demux.route(from, data) == Ok(self.key);
        let proto = if tcp {
            TransportProtocol::TCP
        } else {
            TransportProtocol::UDP
        };
        let d = Datagram {
            local: LOCAL,
            from,
            proto,
            data,
        };
        self.core.handle_input(self.now, Input::Datagram(d));
        if self.core.poll_timeout() <= self.now {
            self.core.handle_input(self.now, Input::Timeout);
        }
        self.drain();
        routed
    }

    fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.core.recycle(t.data);
        }
        while self.core.poll_event().is_some() {}
    }

    /// Whether `addr` became bound (only a check that passed MESSAGE-INTEGRITY may do that).
    pub fn is_bound(&self, addr: &SocketAddr) -> bool {
        self.core.is_bound(addr)
    }

    /// The flood budget, classifier and demultiplexer alone (cheap: the ≥ 1 M datagram part
    /// of the smoke).
    pub fn route_only(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        self.now += FUZZ_STEP;
        if !self.core.flood_allows(self.now, from) {
            return false;
        }
        mux::classify(data);
        mux::binding_request_ufrag(data);
        self.core.demux.route(from, data).is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// An established publish session for the fuzz target `media_session`.

/// The client's SSRCs (what the seeds use).
pub const VIDEO_SSRC: u32 = 0x1111_1111;
pub const AUDIO_SSRC: u32 = 0x2222_2222;

/// An *established* publish connection for the fuzz target `media_session` (issue 14): a
/// webrtc-rs client (publishing VP8 and Opus) connects in memory, in simulated time, to a real
/// connection inside the core — ICE, DTLS and SRTP keys for real — and then fuzzed plaintext
/// RTP and RTCP is encrypted with the client's own SRTP keys and fed to the core, so it passes
/// authentication and reaches what a participant with a valid link can reach: rtc's RTP and
/// RTCP parsing, its interceptors, and the core's handling of tracks, fan-out, NACKs,
/// keyframe requests and sender reports.
#[doc(hidden)]
pub struct MediaSessionHarness {
    core: Core,
    key: ConnKey,
    now: Instant,
    client_addr: SocketAddr,
    client: RTCPeerConnection,
    /// The client's outgoing SRTP context: encrypts what the fuzzer writes.
    srtp: rtc::srtp::context::Context,
    /// The same keys as a bare AES-GCM session key and salt (for headers rtc-srtp cannot
    /// encrypt).
    gcm: Option<(ring::aead::LessSafeKey, [u8; 12])>,
    metrics: Arc<Metrics>,
    _events: tokio::sync::mpsc::Receiver<PeerEvent>,
    /// Datagrams the server connection has sent (to the client), and the client to it.
    pub sent_by_server: u64,
    pub from_client: u64,
}

impl MediaSessionHarness {
    /// Connects the client and the engine connection (ICE + DTLS, in memory, simulated
    /// time); an error if they are not connected within 10 simulated seconds.
    pub fn new() -> Result<MediaSessionHarness, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let mut core = Core::new(settings(false), metrics.clone(), vec![(LOCAL, LOCAL)], now);
        let client_addr = SocketAddr::from(([127, 0, 0, 9], 41000));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let key = open(&mut core, now, Target::Publish, tx).map_err(|x| e(&x))?;
        let mut client = client(now, client_addr)?;
        client
            .add_track(client_track(
                RtpCodecKind::Video,
                VIDEO_SSRC,
                "video/VP8",
                90_000,
                0,
            ))
            .map_err(|x| e(&x))?;
        client
            .add_track(client_track(
                RtpCodecKind::Audio,
                AUDIO_SSRC,
                "audio/opus",
                48_000,
                2,
            ))
            .map_err(|x| e(&x))?;
        let offer = client.create_offer(None).map_err(|x| e(&x))?;
        client
            .set_local_description(now, offer.clone())
            .map_err(|x| e(&x))?;
        let answer = call(&mut core, now, |reply| Command::Offer {
            conn: key,
            sdp: offer.sdp,
            reply,
        })
        .map_err(|x| e(&x))?;
        client
            .set_remote_description(
                now,
                RTCSessionDescription::answer(answer).map_err(|x| e(&x))?,
            )
            .map_err(|x| e(&x))?;
        client
            .add_remote_candidate(host(LOCAL)?)
            .map_err(|x| e(&x))?;
        let mut h = MediaSessionHarness {
            core,
            key,
            now,
            client_addr,
            client,
            srtp: rtc::srtp::context::Context::new(
                &[0; 16],
                &[0; 12],
                rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm,
                None,
                None,
                &rtc::crypto::providers::RingCrypto,
            )
            .map_err(|x| e(&x))?,
            gcm: None,
            metrics,
            _events: rx,
            sent_by_server: 0,
            from_client: 0,
        };
        let deadline = now + Duration::from_secs(10);
        let mut client_up = false;
        while !(client_up && h.is_connected()) {
            now += Duration::from_millis(1);
            h.now = now;
            if now > deadline {
                return Err(format!(
                    "not connected in 10 s (client {client_up}, server {}; {} datagrams to the client, {} from it)",
                    h.is_connected(),
                    h.sent_by_server,
                    h.from_client,
                ));
            }
            if h.client.poll_timeout().is_some_and(|t| t <= now) {
                let _ = h.client.handle_timeout(now);
            }
            let mut out = Vec::new();
            while let Some(d) = h.client.poll_write() {
                h.from_client += 1;
                if d.transport.peer_addr == LOCAL {
                    out.push(d.message);
                }
            }
            for d in out {
                h.input(&d);
            }
            h.turn();
            while let Some(ev) = h.client.poll_event() {
                if matches!(
                    ev,
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        RTCPeerConnectionState::Connected
                    )
                ) {
                    client_up = true;
                }
            }
            while h.client.poll_read().is_some() {}
        }
        let (srtp, gcm) = client_srtp(&h.client)?;
        h.srtp = srtp;
        h.gcm = gcm;
        Ok(h)
    }

    fn input(&mut self, data: &[u8]) {
        let d = Datagram {
            local: LOCAL,
            from: self.client_addr,
            proto: TransportProtocol::UDP,
            data,
        };
        self.core.handle_input(self.now, Input::Datagram(d));
        self.drain();
    }

    /// The core's periodic work if it is due.
    fn turn(&mut self) {
        if self.core.poll_timeout() <= self.now {
            self.core.handle_input(self.now, Input::Timeout);
        }
        self.drain();
    }

    /// What the core sends goes to the client.
    fn drain(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.sent_by_server += 1;
            if t.peer == self.client_addr {
                let _ = self
                    .client
                    .handle_read(tagged(self.now, self.client_addr, LOCAL, &t.data));
            }
            self.core.recycle(t.data);
        }
        while self.core.poll_event().is_some() {}
    }

    /// One datagram from the client's address, as the engine takes it; the server's answers
    /// go to the client. False if it was not routed to the connection.
    pub fn feed_raw(&mut self, data: &[u8]) -> bool {
        self.now += FUZZ_STEP;
        let routed = self.core.demux.route(self.client_addr, data) == Ok(self.key);
        self.input(data);
        self.turn();
        routed
    }

    /// Plaintext RTP, encrypted with the client's keys (an error from the encryption, e.g. an
    /// unparseable header, sends it as it is).
    pub fn feed_rtp(&mut self, plain: &[u8]) -> bool {
        // rtc-srtp 0.21.1's `encrypt_rtp` panics ("mid > len") when a header re-marshals to
        // more bytes than it was parsed from (found by this target, RELIABILITY.md); that is
        // the attacker's side here, so such input goes in as it is (and meets the server's
        // decryption, which must cope with it).
        use rtc::rtp::header::Header;
        use rtc::shared::marshal::{MarshalSize, Unmarshal};
        let mut rest = plain;
        let Ok(header) = Header::unmarshal(&mut rest) else {
            return self.feed_raw(plain);
        };
        let header_len = plain.len() - rest.len();
        if header.marshal_size() != header_len {
            // Sealed the way another SRTP stack would: the header exactly as written is the
            // additional data. So the server's decryption meets a header that parses to a
            // different length than it has, from a sender with valid keys.
            let Some((key, salt)) = &self.gcm else {
                return self.feed_raw(plain);
            };
            let mut iv = [0u8; 12];
            iv[2..6].copy_from_slice(&header.ssrc.to_be_bytes());
            iv[10..12].copy_from_slice(&header.sequence_number.to_be_bytes());
            for (b, s) in iv.iter_mut().zip(salt) {
                *b ^= s;
            }
            let mut out = plain.to_vec();
            let (aad, body) = out.split_at_mut(header_len);
            let Ok(tag) = key.seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(iv),
                ring::aead::Aad::from(&aad[..]),
                body,
            ) else {
                return self.feed_raw(plain);
            };
            out.extend_from_slice(tag.as_ref());
            return self.feed_raw(&out);
        }
        match self.srtp.encrypt_rtp(plain) {
            Ok(d) => self.feed_raw(&d),
            Err(_) => self.feed_raw(plain),
        }
    }

    /// Plaintext RTCP, encrypted with the client's keys.
    pub fn feed_rtcp(&mut self, plain: &[u8]) -> bool {
        match self.srtp.encrypt_rtcp(plain) {
            Ok(d) => self.feed_raw(&d),
            Err(_) => self.feed_raw(plain),
        }
    }

    /// Datagrams the connection's SSRC gate kept from rtc.
    pub fn ssrcs_refused(&self) -> u64 {
        conn(&self.core, self.key).map_or(0, |c| c.ssrcs_refused())
    }

    pub fn is_connected(&self) -> bool {
        conn(&self.core, self.key).is_some_and(|c| c.is_connected())
    }

    /// RTP packets the connection accepted (decrypted and read) so far: forwarded (the
    /// core's fan-out ran for them) or discarded on a parked feed.
    pub fn packets_received(&self) -> u64 {
        self.metrics.packets_received.load(Ordering::Relaxed)
            + self.metrics.packets_discarded.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// A publisher and a subscriber through the core, in simulated time.

/// A webrtc-rs client on the other side of the core.
struct Peer {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    connected: bool,
}

impl Peer {
    fn new(now: Instant, addr: SocketAddr) -> Result<Peer, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut me = MediaEngine::default();
        me.register_default_codecs().map_err(|x| e(&x))?;
        // A browser's microphone sends its level in every packet (RFC 6464).
        me.register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )
        .map_err(|x| e(&x))?;
        // The engine's own last interceptor: it hands PLIs, NACKs and sender reports to the
        // application, so a test can see what the server sent.
        let registry = register_default_interceptors(Registry::new(), &mut me)
            .map_err(|x| e(&x))?
            .with(
                rtc::interceptor::Slot::from(14_000),
                crate::sfu::keyframe::rtcp_link(),
            );
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(me)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
                    .build(),
            )
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|x| e(&x))?;
        pc.add_local_candidate(host(addr)?).map_err(|x| e(&x))?;
        Ok(Peer {
            pc,
            addr,
            connected: false,
        })
    }
}

/// What the subscriber's client read (decrypted) from the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub marker: bool,
    /// The VP8 picture id, if the payload carries one (`send_layer` packets do).
    pub picture_id: Option<u16>,
    /// The VP8 TL0PICIDX, if the payload carries one.
    pub tl0: Option<u8>,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    /// The simulcast layer the publisher sent it on (`send_layer` writes it into the
    /// payload), None for `send_video` packets.
    pub layer: Option<u8>,
}

impl Received {
    fn of(p: &rtp::Packet) -> Received {
        let ids = crate::sfu::keyframe::vp8_ids(&p.payload);
        let tagged = ids.is_some() && p.payload.len() > LAYER_TAG_AT;
        Received {
            seq: p.header.sequence_number,
            timestamp: p.header.timestamp,
            ssrc: p.header.ssrc,
            marker: p.header.marker,
            picture_id: ids.and_then(|i| i.picture_id).map(|(_, v, _)| v),
            tl0: ids.and_then(|i| i.tl0).map(|(_, v)| v),
            keyframe: crate::sfu::keyframe::starts_keyframe(CodecFamily::Vp8, &p.payload),
            layer: tagged.then(|| p.payload[LAYER_TAG_AT]),
        }
    }
}

/// The simulcast layers `Sim::simulcast` publishes: rid and SSRC, lowest first.
pub const SIMULCAST_LAYERS: [(&str, u32); 3] =
    [("q", 0x2222_0001), ("h", 0x2222_0002), ("f", 0x2222_0003)];
/// The layers of `Sim::two_cameras`' second camera (same rids, their own SSRCs).
pub const SECOND_CAMERA_LAYERS: [(&str, u32); 3] =
    [("q", 0x3333_0001), ("h", 0x3333_0002), ("f", 0x3333_0003)];
/// Where `send_layer` writes the layer into its VP8 payload: after the 5-byte payload
/// descriptor (15-bit picture id, TL0PICIDX) and the frame header's first bytes.
const LAYER_TAG_AT: usize = 7;

/// A translated sender report as the subscriber's client read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSeen {
    pub ssrc: u32,
    pub ntp_time: u64,
    pub rtp_time: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One publishing client (VP8) and one subscribing client, both real webrtc-rs connections,
/// joined through the core in simulated time: ICE, DTLS, SRTP, the subscription negotiated
/// with the engine's own commands (`Open`, `AddTrack`, `CreateOffer`, `Answer`), the
/// down-track built as `Subscriber` builds it. The test is the network: it decides what
/// arrives (`drop_to_subscriber`, `set_silent`) and when (`advance`).
#[doc(hidden)]
pub struct Sim {
    core: Core,
    now: Instant,
    start: Instant,
    metrics: Arc<Metrics>,
    publisher: Peer,
    subscriber: Peer,
    video_sender: RTCRtpSenderId,
    pub_events: tokio::sync::mpsc::Receiver<PeerEvent>,
    sub_events: tokio::sync::mpsc::Receiver<PeerEvent>,
    forwarder: crate::sfu::Forwarder,
    down: Arc<DownTrack>,
    silent: bool,
    drop_seqs: Vec<u16>,
    /// A bottleneck in front of the subscriber, if any (`set_subscriber_line`).
    line: Option<Line>,
    /// `video_quality` changes the subscriber's member task was told: (time, track, quality).
    qualities: Vec<(Duration, TrackId, crate::sfu::VideoQuality)>,
    /// `Sim::simulcast`: the publisher's microphone and the subscriber's end of it.
    audio: Option<Audio>,
    /// More viewers of the video (`add_viewer`), each on its own connection.
    others: Vec<Other>,
    /// RTP datagrams the core sent to the subscriber: (time since start, sequence number).
    sent_to_subscriber: Vec<(Duration, u16)>,
    received: Vec<Received>,
    reports: Vec<ReportSeen>,
    /// Keyframe requests (PLI/FIR) the publisher's client read, with their time since start.
    keyframe_requests: Vec<Duration>,
    /// PLIs the publisher's client read: (time since start, media SSRC).
    plis: Vec<(Duration, u32)>,
    /// Simulcast: the header extension ids for mid and rid, and the video's mid.
    simulcast: Option<(u8, u8, String)>,
    /// `Failed` events member tasks got: (publish or subscribe, time since start).
    failed: Vec<(Target, Duration)>,
    /// When a datagram from the publisher's and the subscriber's client last reached the core.
    last_heard: [Duration; 2],
    /// The publish connection (`reoffer`).
    pub_key: ConnKey,
    /// The video's feed while parked (`park`, `republish`).
    parked: Option<Arc<Feed>>,
    /// Whether `send_layer` writes the mid and rid header extensions (Chromium stops once the
    /// receiver acknowledged the SSRC; `stop_rid_extensions`).
    rid_extensions: bool,
    /// The simulcast layers the publisher sends while its track is announced (bit per layer).
    setup_layers: u8,
    /// The audio-level extension's id in the publisher's offer, and the level `send_audio`
    /// puts in each packet (`set_audio_level`; 127 = silence).
    audio_level: Option<(u8, u8)>,
    /// `speaking` changes the publisher's member task was told: (time since start, speaking).
    speaking: Vec<(Duration, bool)>,
    /// `Sim::two_cameras`: the publisher's second simulcast camera.
    second: Option<Second>,
}

/// The publisher's second simulcast camera (`Sim::two_cameras`) and the subscriber's
/// down-track of it.
struct Second {
    sender: RTCRtpSenderId,
    mid: String,
    forwarder: Option<crate::sfu::Forwarder>,
    down: Option<Arc<DownTrack>>,
    received: Vec<Received>,
}

/// A client's VP8 camera track offered as three simulcast layers by rid (`layers`: rid and
/// SSRC, lowest first), as Chromium's `sendEncodings` does.
fn simulcast_track(stream: &str, id: &str, layers: &[(&str, u32); 3]) -> MediaStreamTrack {
    let codings = layers
        .iter()
        .map(|(rid, ssrc)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: (*rid).into(),
                ssrc: Some(*ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    MediaStreamTrack::new(
        stream.into(),
        id.into(),
        id.into(),
        RtpCodecKind::Video,
        codings,
    )
}

/// What `Subscriber` asks the engine for one track of `info`, sent on `ssrc`.
fn track_spec(info: &crate::sfu::TrackInfo, ssrc: u32) -> super::TrackSpec {
    super::TrackSpec {
        id: info.id,
        member: info.member,
        kind: info.kind,
        codec: info.codec.clone(),
        ssrc,
        keyframes: info.keyframes.clone(),
        feed: info.feed,
    }
}

/// The publisher's Opus track and the subscriber's down-track of it.
struct Audio {
    sender: RTCRtpSenderId,
    forwarder: Option<crate::sfu::Forwarder>,
    down: Option<Arc<DownTrack>>,
    seq: u16,
    timestamp: u32,
    /// When an audio packet reached the subscriber's client (time since start).
    received: Vec<Duration>,
}

/// Another viewer of the video (`add_viewer`).
struct Other {
    peer: Peer,
    down: Arc<DownTrack>,
    _events: tokio::sync::mpsc::Receiver<PeerEvent>,
    received: Vec<Received>,
}

/// The SSRC the subscriber gets the second camera on (`Sim::two_cameras`).
const SECOND_DOWN_SSRC: u32 = 0x5555_0003;

/// Opus payload type (webrtc-rs's default codec table).
const OPUS_PT: u8 = 111;

/// A bottleneck link: it sends `bps`, queues what it cannot send yet, and drops what would
/// wait longer than `queue` (drop-tail), like a home line's modem.
struct Line {
    bps: u64,
    queue: Duration,
    /// When the link is free again.
    free_at: Instant,
    /// Datagrams on their way: (arrival, bytes).
    in_flight: std::collections::VecDeque<(Instant, Vec<u8>)>,
    dropped: u64,
}

/// The VP8 payload type both sides use (webrtc-rs's default codec table).
const VP8_PT: u8 = 96;

impl Sim {
    /// Both clients connected, the subscription negotiated; the down-track is not attached
    /// yet (`attach`). The publisher's first packets (sent until its track is announced)
    /// start at sequence number 0.
    pub fn new() -> Result<Sim, String> {
        Self::with_first_seq(0)
    }

    /// As `new`, the publisher's video offered as three simulcast layers by rid
    /// (`SIMULCAST_LAYERS`, as Chromium's `sendEncodings` does); its packets carry the mid and
    /// rid header extensions (`send_layer`). The publisher also sends Opus (`send_audio`),
    /// which the subscriber receives too (`audio_received`).
    pub fn simulcast() -> Result<Sim, String> {
        Self::build_with_layers(0, settings(false), true, 0b111, false)
    }

    /// As `simulcast`, with a second simulcast camera on the same publish connection (its
    /// layers `SECOND_CAMERA_LAYERS`, sent with `send_second_layer`), which the subscriber
    /// receives too (`second_received`). Both are cameras: the server's own order puts the
    /// first one first.
    pub fn two_cameras() -> Result<Sim, String> {
        Self::build_with_layers(0, settings(false), true, 0b111, true)
    }

    /// As `simulcast` (three layers offered by rid), but the publisher sends only the lowest
    /// one, 'q', as Chromium does with a small camera.
    pub fn simulcast_lowest_only() -> Result<Sim, String> {
        Self::build_with_layers(0, settings(false), true, 0b001, false)
    }

    /// As `new`, the publisher's first packets starting at `first_seq` (a test of the wrap
    /// starts near it: SRTP takes a jump of more than 2^15 for a step back).
    pub fn with_first_seq(first_seq: u16) -> Result<Sim, String> {
        Self::build(first_seq, settings(false))
    }

    /// As `new`, with `media.keyframe_request_interval` set to `interval`.
    pub fn with_keyframe_request_interval(interval: Duration) -> Result<Sim, String> {
        let mut s = settings(false);
        s.keyframe_request_interval = interval;
        Self::build(0, s)
    }

    fn build(first_seq: u16, settings: MediaSettings) -> Result<Sim, String> {
        Self::build_with(first_seq, settings, false)
    }

    fn build_with(first_seq: u16, settings: MediaSettings, simulcast: bool) -> Result<Sim, String> {
        Self::build_with_layers(first_seq, settings, simulcast, 0b111, false)
    }

    fn build_with_layers(
        first_seq: u16,
        settings: MediaSettings,
        simulcast: bool,
        setup_layers: u8,
        second_camera: bool,
    ) -> Result<Sim, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let mut core = Core::new(settings, metrics.clone(), vec![(LOCAL, LOCAL)], now);

        // The publisher.
        let (tx, mut pub_events) = tokio::sync::mpsc::channel(64);
        let pub_key = open(&mut core, now, Target::Publish, tx).map_err(|x| e(&x))?;
        let mut publisher = Peer::new(now, SocketAddr::from(([127, 0, 0, 7], 41000)))?;
        let track = if simulcast {
            simulcast_track("client", "simulcast", &SIMULCAST_LAYERS)
        } else {
            client_track(RtpCodecKind::Video, VIDEO_SSRC, "video/VP8", 90_000, 0)
        };
        let video_sender = publisher.pc.add_track(track).map_err(|x| e(&x))?;
        let second_sender = if second_camera {
            let track = simulcast_track("client2", "second", &SECOND_CAMERA_LAYERS);
            Some(publisher.pc.add_track(track).map_err(|x| e(&x))?)
        } else {
            None
        };
        let audio_sender = if simulcast {
            Some(
                publisher
                    .pc
                    .add_track(client_track(
                        RtpCodecKind::Audio,
                        AUDIO_SSRC,
                        "audio/opus",
                        48_000,
                        2,
                    ))
                    .map_err(|x| e(&x))?,
            )
        } else {
            None
        };
        let offer = publisher.pc.create_offer(None).map_err(|x| e(&x))?;
        publisher
            .pc
            .set_local_description(now, offer.clone())
            .map_err(|x| e(&x))?;
        let audio_level = offer.sdp.lines().find_map(|l| {
            let (id, u) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
            (u.trim() == rtc::sdp::extmap::AUDIO_LEVEL_URI)
                .then(|| id.split('/').next()?.parse::<u8>().ok())?
        });
        let second = match second_sender {
            Some(sender) => Some(Second {
                sender,
                // The second m-line (the second camera, added before the microphone).
                mid: offer
                    .sdp
                    .lines()
                    .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
                    .nth(1)
                    .ok_or("no second mid in the offer")?
                    .to_owned(),
                forwarder: None,
                down: None,
                received: Vec::new(),
            }),
            None => None,
        };
        let simulcast = if simulcast {
            let ext = |uri: &str| {
                offer.sdp.lines().find_map(|l| {
                    let rest = l.strip_prefix("a=extmap:")?;
                    let (id, u) = rest.split_once(' ')?;
                    (u.trim() == uri).then(|| id.split('/').next()?.parse::<u8>().ok())?
                })
            };
            let mid = crate::sfu::first_mid(&offer.sdp).ok_or("no mid in the offer")?;
            Some((
                ext("urn:ietf:params:rtp-hdrext:sdes:mid").ok_or("no mid extension offered")?,
                ext("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id")
                    .ok_or("no rid extension offered")?,
                mid,
            ))
        } else {
            None
        };
        let answer = call(&mut core, now, |reply| Command::Offer {
            conn: pub_key,
            sdp: offer.sdp,
            reply,
        })
        .map_err(|x| e(&x))?;
        publisher
            .pc
            .set_remote_description(
                now,
                RTCSessionDescription::answer(answer).map_err(|x| e(&x))?,
            )
            .map_err(|x| e(&x))?;
        publisher
            .pc
            .add_remote_candidate(host(LOCAL)?)
            .map_err(|x| e(&x))?;

        // The subscriber's connection, before any track (as a member joins).
        let (tx, sub_events) = tokio::sync::mpsc::channel(64);
        let sub_key = open(&mut core, now, Target::Subscribe, tx).map_err(|x| e(&x))?;
        let subscriber = Peer::new(now, SocketAddr::from(([127, 0, 0, 8], 42000)))?;

        let placeholder = down_track(
            sub_key,
            RTCRtpSenderId::default(),
            0,
            0,
            CodecFamily::Vp8,
            KeyframeRequester::default(),
            true,
        );
        let mut sim = Sim {
            core,
            now,
            start: now,
            metrics,
            publisher,
            subscriber,
            video_sender,
            pub_events: tokio::sync::mpsc::channel(1).1,
            sub_events,
            forwarder: Self::placeholder_forwarder(now),
            down: placeholder,
            silent: false,
            line: None,
            qualities: Vec::new(),
            audio: None,
            others: Vec::new(),
            drop_seqs: Vec::new(),
            sent_to_subscriber: Vec::new(),
            received: Vec::new(),
            reports: Vec::new(),
            keyframe_requests: Vec::new(),
            plis: Vec::new(),
            simulcast,
            failed: Vec::new(),
            last_heard: [Duration::ZERO; 2],
            pub_key,
            parked: None,
            rid_extensions: true,
            setup_layers,
            audio_level: audio_level.map(|id| (id, 127)),
            speaking: Vec::new(),
            second,
        };
        // Connect the publisher; its track is announced once media flows, so send a
        // keyframe's first packet until the member task is told.
        sim.run_until("the publisher connects", |s| {
            s.publisher.connected && conn(&s.core, pub_key).is_some_and(|c| c.is_connected())
        })?;
        let mut seq = first_seq;
        if let Some(sender) = audio_sender {
            sim.audio = Some(Audio {
                sender,
                forwarder: None,
                down: None,
                seq: 0,
                timestamp: 0,
                received: Vec::new(),
            });
        }
        let mut video_forwarder = None;
        let forwarder = loop {
            if sim.simulcast.is_some() {
                for layer in 0..SIMULCAST_LAYERS.len() as u8 {
                    if sim.setup_layers & (1 << layer) != 0 {
                        sim.send_layer(layer, seq, 0, seq & 0x7fff, true, true);
                        if sim.second.is_some() {
                            sim.send_second_layer(layer, seq, 0, seq & 0x7fff, true, true);
                        }
                    }
                }
                sim.send_audio();
            } else {
                sim.send_video(seq, 0, true, true);
            }
            seq = seq.wrapping_add(1);
            sim.advance(Duration::from_millis(5));
            while let Ok(ev) = pub_events.try_recv() {
                if let PeerEvent::Published(_, f) = ev {
                    match (f.info().kind, sim.audio.as_mut(), sim.second.as_mut()) {
                        (MediaKind::Audio, Some(a), _) => a.forwarder = Some(f),
                        (_, _, Some(s)) if f.info().client_track_id == "second" => {
                            s.forwarder = Some(f)
                        }
                        _ => video_forwarder = Some(f),
                    }
                }
            }
            let audio_ready = sim.audio.as_ref().is_none_or(|a| a.forwarder.is_some());
            let second_ready = sim.second.as_ref().is_none_or(|s| s.forwarder.is_some());
            if audio_ready && second_ready && video_forwarder.is_some() {
                break video_forwarder.take().expect("just checked");
            }
            if sim.now - sim.start > Duration::from_secs(10) {
                return Err("the publisher's track was never announced".into());
            }
        };
        sim.pub_events = pub_events;

        // Subscribe: the engine's commands, as `Subscriber` sends them.
        let info = forwarder.info().clone();
        let ssrc = 0x5555_0001;
        let spec = track_spec(&info, ssrc);
        let now = sim.now;
        let sender = call(&mut sim.core, now, |reply| Command::AddTrack {
            conn: sub_key,
            track: spec,
            reply,
        })
        .map_err(|x| e(&x))?;
        let mut senders = vec![(sender, info.codec.clone())];
        let audio_info = sim
            .audio
            .as_ref()
            .and_then(|a| a.forwarder.as_ref())
            .map(|f| f.info().clone());
        if let Some(ai) = &audio_info {
            let spec = track_spec(ai, 0x5555_0002);
            let sender = call(&mut sim.core, now, |reply| Command::AddTrack {
                conn: sub_key,
                track: spec,
                reply,
            })
            .map_err(|x| e(&x))?;
            senders.push((sender, ai.codec.clone()));
        }
        let second_info = sim
            .second
            .as_ref()
            .and_then(|s| s.forwarder.as_ref())
            .map(|f| f.info().clone());
        if let Some(si) = &second_info {
            let spec = track_spec(si, SECOND_DOWN_SSRC);
            let sender = call(&mut sim.core, now, |reply| Command::AddTrack {
                conn: sub_key,
                track: spec,
                reply,
            })
            .map_err(|x| e(&x))?;
            senders.push((sender, si.codec.clone()));
        }
        let offer = call(&mut sim.core, now, |reply| Command::CreateOffer {
            conn: sub_key,
            reply,
        })
        .map_err(|x| e(&x))?;
        let pc = &mut sim.subscriber.pc;
        pc.set_remote_description(now, RTCSessionDescription::offer(offer).map_err(|x| e(&x))?)
            .map_err(|x| e(&x))?;
        let answer = pc.create_answer(None).map_err(|x| e(&x))?;
        pc.set_local_description(now, answer.clone())
            .map_err(|x| e(&x))?;
        let _ = pc.add_remote_candidate(host(LOCAL)?);
        let chosen = call(&mut sim.core, now, |reply| Command::Answer {
            conn: sub_key,
            sdp: answer.sdp,
            senders: senders.clone(),
            reply,
        })
        .map_err(|x| e(&x))?;
        if let (Some(ai), Some(a)) = (&audio_info, sim.audio.as_mut()) {
            let pt = chosen
                .get(1)
                .copied()
                .flatten()
                .ok_or("the subscriber refused Opus")?;
            a.down = Some(down_track(
                sub_key,
                senders[1].0,
                0x5555_0002,
                pt,
                CodecFamily::Audio,
                ai.keyframes.clone(),
                false,
            ));
        }
        if let (Some(si), Some(s)) = (&second_info, sim.second.as_mut()) {
            let (sender, _) = senders
                .last()
                .expect("the second camera's sender was added");
            let pt = chosen
                .last()
                .copied()
                .flatten()
                .ok_or("the subscriber refused the second camera")?;
            s.down = Some(down_track(
                sub_key,
                *sender,
                SECOND_DOWN_SSRC,
                pt,
                CodecFamily::Vp8,
                si.keyframes.clone(),
                true,
            ));
        }
        let payload_type = chosen
            .first()
            .copied()
            .flatten()
            .ok_or("the subscriber refused VP8")?;
        sim.down = down_track(
            sub_key,
            sender,
            ssrc,
            payload_type,
            CodecFamily::Vp8,
            info.keyframes.clone(),
            true,
        );
        sim.forwarder = forwarder;
        sim.run_until("the subscriber connects", |s| {
            s.subscriber.connected
                && conn(&s.core, sub_key).is_some_and(|c| c.is_connected() && c.lean().is_some())
        })?;
        // What setup produced is not what a test looks at.
        sim.sent_to_subscriber.clear();
        sim.received.clear();
        sim.keyframe_requests.clear();
        sim.plis.clear();
        Ok(sim)
    }

    /// A forwarder that forwards nothing, until the real one is announced.
    fn placeholder_forwarder(now: Instant) -> crate::sfu::Forwarder {
        Feed::new(
            now,
            MemberId::new(),
            MediaKind::Video,
            String::new(),
            Codec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                channels: 0,
                fmtp: String::new(),
            },
        )
        .publish(crate::protocol::Source::Camera)
        .expect("a fresh feed publishes")
    }

    fn run_until(&mut self, what: &str, done: impl Fn(&Sim) -> bool) -> Result<(), String> {
        let limit = self.now + Duration::from_secs(10);
        while !done(self) {
            if self.now > limit {
                return Err(format!("{what}: not within 10 simulated seconds"));
            }
            self.advance(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The subscriber's down-track joins the publication (the room's `add_subscriber`).
    pub fn attach(&mut self) {
        self.forwarder.add_subscriber(self.down.clone());
        if let Some(s) = &self.second {
            if let (Some(f), Some(d)) = (&s.forwarder, &s.down) {
                f.add_subscriber(d.clone());
            }
        }
        if let Some(a) = &self.audio {
            if let (Some(f), Some(d)) = (&a.forwarder, &a.down) {
                f.add_subscriber(d.clone());
            }
        }
    }

    /// The publisher's client sends one Opus packet (20 ms of sound; `Sim::simulcast`).
    pub fn send_audio(&mut self) {
        let Some(a) = self.audio.as_mut() else {
            return;
        };
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: a.seq,
                timestamp: a.timestamp,
                ssrc: AUDIO_SSRC,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0xfcu8; 80]),
        };
        let mut packet = packet;
        if let Some((id, level)) = self.audio_level {
            let _ = packet
                .header
                .set_extension(id, bytes::Bytes::copy_from_slice(&[level]));
        }
        a.seq = a.seq.wrapping_add(1);
        a.timestamp = a.timestamp.wrapping_add(960);
        let sender = a.sender;
        if let Some(mut s) = self.publisher.pc.rtp_sender(sender) {
            let _ = s.write_rtp(self.now, packet);
        }
        self.pump_clients();
    }

    /// The level (RFC 6464, -dBov: 0 loudest, 127 silence) in the publisher's next audio
    /// packets.
    pub fn set_audio_level(&mut self, level: u8) {
        if let Some((_, l)) = self.audio_level.as_mut() {
            *l = level;
        }
    }

    /// Simulated time since the start.
    pub fn now_since_start(&self) -> Duration {
        self.now - self.start
    }

    /// `speaking` changes the publisher's member task was told: (time since start, speaking).
    pub fn speaking(&self) -> &[(Duration, bool)] {
        &self.speaking
    }

    /// When the subscriber's client read an audio packet, since the start.
    pub fn audio_received(&self) -> &[Duration] {
        self.audio.as_ref().map_or(&[], |a| &a.received)
    }

    /// Another viewer of the video joins on its own subscribe connection (negotiated and
    /// connected, attached at once); returns its index for `other_received`.
    pub fn add_viewer(&mut self) -> Result<usize, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let n = self.others.len();
        let now = self.now;
        let (tx, events) = tokio::sync::mpsc::channel(64);
        let key = open(&mut self.core, now, Target::Subscribe, tx).map_err(|x| e(&x))?;
        let mut peer = Peer::new(now, SocketAddr::from(([127, 0, 0, 20 + n as u8], 43000)))?;
        let info = self.forwarder.info().clone();
        let ssrc = 0x6666_0001 + n as u32;
        let spec = track_spec(&info, ssrc);
        let sender = call(&mut self.core, now, |reply| Command::AddTrack {
            conn: key,
            track: spec,
            reply,
        })
        .map_err(|x| e(&x))?;
        let offer = call(&mut self.core, now, |reply| Command::CreateOffer {
            conn: key,
            reply,
        })
        .map_err(|x| e(&x))?;
        let pc = &mut peer.pc;
        pc.set_remote_description(now, RTCSessionDescription::offer(offer).map_err(|x| e(&x))?)
            .map_err(|x| e(&x))?;
        let answer = pc.create_answer(None).map_err(|x| e(&x))?;
        pc.set_local_description(now, answer.clone())
            .map_err(|x| e(&x))?;
        let _ = pc.add_remote_candidate(host(LOCAL)?);
        let chosen = call(&mut self.core, now, |reply| Command::Answer {
            conn: key,
            sdp: answer.sdp,
            senders: vec![(sender, info.codec.clone())],
            reply,
        })
        .map_err(|x| e(&x))?;
        let pt = chosen
            .first()
            .copied()
            .flatten()
            .ok_or("the viewer refused VP8")?;
        let down = down_track(
            key,
            sender,
            ssrc,
            pt,
            CodecFamily::Vp8,
            info.keyframes.clone(),
            true,
        );
        self.others.push(Other {
            peer,
            down: down.clone(),
            _events: events,
            received: Vec::new(),
        });
        self.run_until("the other viewer connects", |s| {
            s.others[n].peer.connected
                && conn(&s.core, key).is_some_and(|c| c.is_connected() && c.lean().is_some())
        })?;
        self.forwarder.add_subscriber(down);
        Ok(n)
    }

    /// What another viewer (`add_viewer`) read.
    pub fn other_received(&self, n: usize) -> &[Received] {
        &self.others[n].received
    }

    /// The layer another viewer is forwarded now.
    pub fn other_layer(&self, n: usize) -> Option<u8> {
        Some(self.others[n].down.layer()).filter(|l| *l != crate::sfu::forwarder::NO_LAYER)
    }

    /// The publisher's client sends one VP8 packet (a frame's first packet if `start`; a
    /// keyframe's if also `keyframe`).
    pub fn send_video(&mut self, seq: u16, timestamp: u32, start: bool, keyframe: bool) {
        let mut payload = vec![0xa5u8; 900];
        payload[0] = if start { 0x10 } else { 0x00 };
        payload[1] = if keyframe { 0x00 } else { 0x01 };
        let packet = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: VP8_PT,
                sequence_number: seq,
                timestamp,
                ssrc: VIDEO_SSRC,
                ..Default::default()
            },
            payload: bytes::Bytes::from(payload),
        };
        if let Some(mut s) = self.publisher.pc.rtp_sender(self.video_sender) {
            let _ = s.write_rtp(self.now, packet);
        }
        self.pump_clients();
    }

    /// The publisher's client sends one VP8 packet on simulcast `layer` (`Sim::simulcast`):
    /// that layer's SSRC, the mid and rid header extensions, a payload descriptor with the
    /// 15-bit `picture_id` and TL0PICIDX (its low byte), and the layer written into the
    /// payload so the test can tell what the subscriber was sent.
    pub fn send_layer(
        &mut self,
        layer: u8,
        seq: u16,
        timestamp: u32,
        picture_id: u16,
        start: bool,
        keyframe: bool,
    ) {
        self.send_camera_layer(false, layer, seq, timestamp, picture_id, start, keyframe);
    }

    /// As `send_layer`, on the second camera (`Sim::two_cameras`).
    pub fn send_second_layer(
        &mut self,
        layer: u8,
        seq: u16,
        timestamp: u32,
        picture_id: u16,
        start: bool,
        keyframe: bool,
    ) {
        self.send_camera_layer(true, layer, seq, timestamp, picture_id, start, keyframe);
    }

    #[allow(clippy::too_many_arguments)]
    fn send_camera_layer(
        &mut self,
        second: bool,
        layer: u8,
        seq: u16,
        timestamp: u32,
        picture_id: u16,
        start: bool,
        keyframe: bool,
    ) {
        let Some((mid_id, rid_id, first_mid)) = self.simulcast.clone() else {
            return;
        };
        let (mid, (rid, ssrc), sender) = match (second, self.second.as_ref()) {
            (false, _) => (
                first_mid,
                SIMULCAST_LAYERS[usize::from(layer)],
                self.video_sender,
            ),
            (true, Some(s)) => (
                s.mid.clone(),
                SECOND_CAMERA_LAYERS[usize::from(layer)],
                s.sender,
            ),
            (true, None) => return,
        };
        let mut payload = vec![0x5au8; 300 * (usize::from(layer) + 1)];
        // X, S (frame start), partition 0; I and L; 15-bit picture id; TL0PICIDX.
        payload[0] = 0x80 | if start { 0x10 } else { 0x00 };
        payload[1] = 0xc0;
        payload[2] = 0x80 | (picture_id >> 8) as u8 & 0x7f;
        payload[3] = picture_id as u8;
        payload[4] = picture_id as u8;
        payload[5] = if keyframe { 0x00 } else { 0x01 };
        payload[LAYER_TAG_AT] = layer;
        let mut header = rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: VP8_PT,
            sequence_number: seq,
            timestamp,
            ssrc,
            ..Default::default()
        };
        if self.rid_extensions {
            let _ = header.set_extension(mid_id, bytes::Bytes::from(mid.into_bytes()));
            let _ = header.set_extension(rid_id, bytes::Bytes::from_static(rid.as_bytes()));
        }
        let packet = rtp::Packet {
            header,
            payload: bytes::Bytes::from(payload),
        };
        if let Some(mut s) = self.publisher.pc.rtp_sender(sender) {
            let _ = s.write_rtp(self.now, packet);
        }
        self.pump_clients();
    }

    /// From now on `send_layer` leaves out the mid and rid header extensions: Chromium sends
    /// them only until the receiver's RTCP acknowledged the layer's SSRC.
    pub fn stop_rid_extensions(&mut self) {
        self.rid_extensions = false;
    }

    /// The floor is taken back: the room drops the video's publication, so the feed parks
    /// (the core keeps reading and discarding its media).
    pub fn park(&mut self) {
        let parked = std::mem::replace(&mut self.forwarder, Self::placeholder_forwarder(self.now));
        self.parked = Some(parked.feed().clone());
    }

    /// The floor is given again: the parked feed is published anew (a new track id, as the
    /// member task's `republish` does) and the subscriber gets a new down-track of it. The
    /// down-track reuses the subscriber's sender and SSRC (the real server negotiates a new
    /// sender; what the engine forwards does not depend on that).
    pub fn republish(&mut self) -> Result<(), String> {
        let feed = self.parked.take().ok_or("nothing parked")?;
        let forwarder = feed
            .publish(crate::protocol::Source::Camera)
            .ok_or("the parked feed did not publish again")?;
        let old = self.down.clone();
        self.down = down_track(
            old.conn,
            old.sender,
            old.ssrc,
            old.payload_type,
            old.codec,
            forwarder.info().keyframes.clone(),
            true,
        );
        self.forwarder = forwarder;
        self.forwarder.add_subscriber(self.down.clone());
        Ok(())
    }

    /// The publisher's client offers again on the same connection (same tracks, same
    /// transceivers), as the page does when it is given the floor again.
    pub fn reoffer(&mut self) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let now = self.now;
        let offer = self.publisher.pc.create_offer(None).map_err(|x| e(&x))?;
        self.publisher
            .pc
            .set_local_description(now, offer.clone())
            .map_err(|x| e(&x))?;
        let key = self.pub_key;
        let answer = call(&mut self.core, now, |reply| Command::Offer {
            conn: key,
            sdp: offer.sdp,
            reply,
        })
        .map_err(|x| e(&x))?;
        self.publisher
            .pc
            .set_remote_description(
                now,
                RTCSessionDescription::answer(answer).map_err(|x| e(&x))?,
            )
            .map_err(|x| e(&x))?;
        Ok(())
    }

    /// The layer the subscriber is forwarded now (None: none).
    pub fn down_layer(&self) -> Option<u8> {
        Some(self.down.layer()).filter(|l| *l != crate::sfu::forwarder::NO_LAYER)
    }

    /// What the subscriber read of the second camera (`Sim::two_cameras`).
    pub fn second_received(&self) -> &[Received] {
        self.second.as_ref().map_or(&[], |s| &s.received)
    }

    /// The layer the subscriber is forwarded of the second camera now.
    pub fn second_layer(&self) -> Option<u8> {
        let d = self.second.as_ref()?.down.as_ref()?;
        Some(d.layer()).filter(|l| *l != crate::sfu::forwarder::NO_LAYER)
    }

    /// The two cameras' track ids as the subscriber knows them (its down-tracks', what
    /// `video_preference.order` names; `Sim::two_cameras`): the first camera's, then the
    /// second's.
    pub fn camera_tracks(&self) -> Vec<TrackId> {
        let mut ids = vec![self.down.track];
        ids.extend(
            self.second
                .as_ref()
                .and_then(|s| s.down.as_ref())
                .map(|d| d.track),
        );
        ids
    }

    /// PLIs the publisher's client read for the second camera's `layer`.
    pub fn second_plis_for_layer(&self, layer: u8) -> Vec<Duration> {
        self.plis_for_ssrc(SECOND_CAMERA_LAYERS[usize::from(layer)].1)
    }

    /// PLIs the publisher's client read for simulcast `layer`, with their time since start.
    pub fn plis_for_layer(&self, layer: u8) -> Vec<Duration> {
        self.plis_for_ssrc(SIMULCAST_LAYERS[usize::from(layer)].1)
    }

    fn plis_for_ssrc(&self, ssrc: u32) -> Vec<Duration> {
        self.plis
            .iter()
            .filter(|(_, s)| *s == ssrc)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Puts a bottleneck of `bps` bits per second with a drop-tail queue of `queue` in front
    /// of the subscriber (the server → viewer direction only); `None` takes it away (what is
    /// in flight still arrives).
    pub fn set_subscriber_line(&mut self, line: Option<(u64, Duration)>) {
        match (line, self.line.as_mut()) {
            (Some((bps, queue)), Some(l)) => {
                l.bps = bps;
                l.queue = queue;
            }
            (Some((bps, queue)), None) => {
                self.line = Some(Line {
                    bps,
                    queue,
                    free_at: self.now,
                    in_flight: Default::default(),
                    dropped: 0,
                })
            }
            (None, Some(l)) => l.bps = u64::MAX,
            (None, None) => {}
        }
    }

    /// Datagrams the subscriber's line dropped (its queue was full).
    pub fn line_drops(&self) -> u64 {
        self.line.as_ref().map_or(0, |l| l.dropped)
    }

    /// `video_quality` changes the subscriber was told, with their time since start.
    pub fn qualities(&self) -> Vec<(Duration, crate::sfu::VideoQuality)> {
        self.qualities.iter().map(|(t, _, q)| (*t, *q)).collect()
    }

    /// The subscriber's target layer, as its allocator set it (`u8::MAX`: paused).
    pub fn target_layer(&self) -> u8 {
        match self.down.target_layer() {
            crate::sfu::forwarder::PAUSED => u8::MAX,
            l => l,
        }
    }

    /// The subscriber's bandwidth estimate (bits per second) and whether transport-cc
    /// feedback drives it.
    pub fn estimate(&self) -> Option<(f64, bool)> {
        let c = conn(&self.core, self.down.conn)?;
        let v = c.viewer.as_ref()?;
        let ms = c.ms(self.now);
        Some((v.estimate.bps(ms), v.estimate.has_twcc(ms)))
    }

    /// The viewer's own preference (`video_preference`), as its member task passes it on.
    pub fn set_video_preference(&mut self, max_height: Option<u32>, save_data: bool) {
        self.set_preference(crate::sfu::Preference {
            max_height,
            save_data,
            order: Vec::new(),
        });
    }

    /// The viewer's whole preference, its own order of the videos included.
    pub fn set_preference(&mut self, preference: crate::sfu::Preference) {
        let now = self.now;
        self.core.handle_input(
            now,
            Input::Command(Command::VideoPreference {
                conn: self.down.conn,
                preference,
            }),
        );
    }

    /// Simulated time passes in 1 ms steps: the clients' timers, the network, the core's
    /// periodic work when `poll_timeout` says so.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while self.now < until {
            self.now = (self.now + Duration::from_millis(1)).min(until);
            if !self.silent {
                let others = self.others.iter_mut().map(|o| &mut o.peer);
                for peer in [&mut self.publisher, &mut self.subscriber]
                    .into_iter()
                    .chain(others)
                {
                    if peer.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                        let _ = peer.pc.handle_timeout(self.now);
                    }
                }
            }
            self.deliver_line();
            self.pump_clients();
            if self.core.poll_timeout() <= self.now {
                self.core.handle_input(self.now, Input::Timeout);
                self.pump_core();
            }
        }
    }

    /// What the subscriber's line delivers by now.
    fn deliver_line(&mut self) {
        let Some(line) = self.line.as_mut() else {
            return;
        };
        while line
            .in_flight
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            let (_, data) = line.in_flight.pop_front().expect("just looked");
            if !self.silent {
                let _ = self.subscriber.pc.handle_read(tagged(
                    self.now,
                    self.subscriber.addr,
                    LOCAL,
                    &data,
                ));
            }
        }
        self.read_clients();
    }

    /// The clients' datagrams into the core (unless silent), and the core's answers back.
    fn pump_clients(&mut self) {
        if self.silent {
            return;
        }
        let since = self.now - self.start;
        let mut out = Vec::new();
        for (i, peer) in [&mut self.publisher, &mut self.subscriber]
            .into_iter()
            .chain(self.others.iter_mut().map(|o| &mut o.peer))
            .enumerate()
        {
            while let Some(d) = peer.pc.poll_write() {
                if d.transport.peer_addr == LOCAL {
                    out.push((peer.addr, d.message));
                    if i < 2 {
                        self.last_heard[i] = since;
                    }
                }
            }
        }
        for (from, data) in out {
            let d = Datagram {
                local: LOCAL,
                from,
                proto: TransportProtocol::UDP,
                data: &data,
            };
            self.core.handle_input(self.now, Input::Datagram(d));
        }
        self.pump_core();
    }

    /// The core's datagrams to the clients (through the test's network), and what the clients
    /// make of them.
    fn pump_core(&mut self) {
        let since = self.now - self.start;
        while let Some(t) = self.core.poll_transmit() {
            let rtp_seq = rtp_seq(&t.data);
            let mut deliver = !self.silent;
            if t.peer == self.subscriber.addr {
                if let Some(seq) = rtp_seq {
                    self.sent_to_subscriber.push((since, seq));
                    if let Some(i) = self.drop_seqs.iter().position(|s| *s == seq) {
                        self.drop_seqs.swap_remove(i);
                        deliver = false;
                    }
                }
            }
            if deliver && t.peer == self.subscriber.addr {
                if let Some(line) = self.line.as_mut() {
                    // Through the bottleneck: queued behind what is on its way, or dropped.
                    deliver = false;
                    let start = line.free_at.max(self.now);
                    if start.saturating_duration_since(self.now) > line.queue {
                        line.dropped += 1;
                    } else {
                        let bits = (t.data.len() as u64 + 28) * 8;
                        let secs = bits as f64 / line.bps as f64;
                        line.free_at = start + Duration::from_secs_f64(secs);
                        line.in_flight.push_back((line.free_at, t.data.to_vec()));
                    }
                }
            }
            if deliver {
                let others = self.others.iter_mut().map(|o| &mut o.peer);
                for peer in [&mut self.publisher, &mut self.subscriber]
                    .into_iter()
                    .chain(others)
                {
                    if peer.addr == t.peer {
                        let _ = peer
                            .pc
                            .handle_read(tagged(self.now, peer.addr, LOCAL, &t.data));
                    }
                }
            }
            self.core.recycle(t.data);
        }
        while self.core.poll_event().is_some() {}
        // What the clients answer goes into the core at the next step (1 ms later).
        self.read_clients();
        for (events, target) in [
            (&mut self.pub_events, Target::Publish),
            (&mut self.sub_events, Target::Subscribe),
        ] {
            while let Ok(ev) = events.try_recv() {
                match ev {
                    PeerEvent::Failed(..) => self.failed.push((target, since)),
                    PeerEvent::VideoQuality(_, track, q) => self.qualities.push((since, track, q)),
                    PeerEvent::Speaking(_, v) => self.speaking.push((since, v)),
                    _ => {}
                }
            }
        }
    }

    fn read_clients(&mut self) {
        use rtc::peer_connection::message::RTCMessage;
        use rtc::rtcp::sender_report::SenderReport;
        let since = self.now - self.start;
        let audio_ssrc = self
            .audio
            .as_ref()
            .and_then(|a| a.down.as_ref())
            .map(|d| d.ssrc);
        for o in &mut self.others {
            while let Some(ev) = o.peer.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    o.peer.connected = s == RTCPeerConnectionState::Connected;
                }
            }
            while let Some(msg) = o.peer.pc.poll_read() {
                if let RTCMessage::RtpPacket(_, p) = msg.message {
                    o.received.push(Received::of(&p));
                }
            }
        }
        for (i, peer) in [&mut self.publisher, &mut self.subscriber]
            .into_iter()
            .enumerate()
        {
            while let Some(ev) = peer.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                    peer.connected = s == RTCPeerConnectionState::Connected;
                }
            }
            while let Some(msg) = peer.pc.poll_read() {
                match msg.message {
                    RTCMessage::RtpPacket(_, p) if i == 1 => {
                        if p.header.ssrc == SECOND_DOWN_SSRC {
                            if let Some(s) = self.second.as_mut() {
                                s.received.push(Received::of(&p));
                            }
                        } else if Some(p.header.ssrc) == audio_ssrc {
                            if let Some(a) = self.audio.as_mut() {
                                a.received.push(since);
                            }
                        } else {
                            self.received.push(Received::of(&p));
                        }
                    }
                    RTCMessage::RtcpPacket(_, packets) => {
                        if i == 0 && crate::sfu::keyframe::is_keyframe_request(&packets) {
                            self.keyframe_requests.push(since);
                        }
                        if i == 0 {
                            use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication as Pli;
                            for p in &packets {
                                if let Some(pli) = p.as_any().downcast_ref::<Pli>() {
                                    self.plis.push((since, pli.media_ssrc));
                                }
                            }
                        }
                        for p in &packets {
                            if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                                if i == 1 {
                                    self.reports.push(ReportSeen {
                                        ssrc: sr.ssrc,
                                        ntp_time: sr.ntp_time,
                                        rtp_time: sr.rtp_time,
                                        packet_count: sr.packet_count,
                                        octet_count: sr.octet_count,
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next RTP datagram to the subscriber with this sequence number is lost.
    pub fn drop_to_subscriber(&mut self, seq: u16) {
        self.drop_seqs.push(seq);
    }

    /// The subscriber's client sends one NACK (RFC 4585 generic NACK) for these outgoing
    /// sequence numbers, as a viewer that lost them would.
    pub fn nack(&mut self, seqs: &[u16]) {
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
            nack_pairs_from_sequence_numbers, TransportLayerNack,
        };
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: self.down.ssrc,
            nacks: nack_pairs_from_sequence_numbers(seqs),
        };
        self.subscriber_rtcp(Box::new(nack));
    }

    /// The subscriber's client asks for a keyframe (PLI).
    pub fn pli(&mut self) {
        let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: self.down.ssrc,
        };
        self.subscriber_rtcp(Box::new(pli));
    }

    /// Another viewer of the same track asks for a keyframe (what its PLI does in the core:
    /// the track's requester is marked).
    pub fn other_viewer_wants_keyframe(&mut self) {
        self.forwarder.info().keyframes.request();
    }

    fn subscriber_rtcp(&mut self, p: Box<dyn rtc::rtcp::Packet>) {
        let now = self.now;
        let pc = &mut self.subscriber.pc;
        let first = pc.get_receivers().next();
        if let Some(id) = first {
            if let Some(mut rx) = pc.rtp_receiver(id) {
                let _ = rx.write_rtcp(now, vec![p]);
            }
        }
        self.pump_clients();
    }

    /// Media bytes (payloads) forwarded to the down-track so far, re-sends not counted.
    pub fn down_octets_sent(&self) -> u32 {
        self.down.octets_sent.load(Ordering::Relaxed)
    }

    /// Both clients fall silent (gone without a word): nothing from them reaches the core,
    /// nothing reaches them, their timers stop.
    pub fn set_silent(&mut self, silent: bool) {
        self.silent = silent;
    }

    /// Time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The subscriber's outgoing SSRC for the forwarded track.
    pub fn down_ssrc(&self) -> u32 {
        self.down.ssrc
    }

    /// The down-track's SRTP rollover counter, as the core keeps it.
    pub fn down_roc(&self) -> u32 {
        self.down.roc.load(Ordering::Relaxed)
    }

    /// Forwarded packets the down-track counted (what its sender reports carry).
    pub fn down_packets_sent(&self) -> u32 {
        self.down.packets_sent.load(Ordering::Relaxed)
    }

    pub fn sent_to_subscriber(&self) -> &[(Duration, u16)] {
        &self.sent_to_subscriber
    }

    pub fn received(&self) -> &[Received] {
        &self.received
    }

    pub fn reports(&self) -> &[ReportSeen] {
        &self.reports
    }

    pub fn keyframe_requests(&self) -> &[Duration] {
        &self.keyframe_requests
    }

    pub fn failed(&self) -> &[(Target, Duration)] {
        &self.failed
    }

    /// When the core last got a datagram from the publisher's (`Publish`) or the
    /// subscriber's (`Subscribe`) client, since the start.
    pub fn last_heard(&self, from: Target) -> Duration {
        self.last_heard[usize::from(from == Target::Subscribe)]
    }
}

/// The sequence number of an RTP (not RTCP) datagram: the SRTP header is in the clear.
fn rtp_seq(d: &[u8]) -> Option<u16> {
    if d.len() < 12 || !matches!(mux::classify(d), mux::Kind::Rtp) {
        return None;
    }
    // RTCP packet types 192–223 sit where RTP has marker + payload type (RFC 5761).
    if (192..=223).contains(&d[1]) {
        return None;
    }
    Some(u16::from_be_bytes([d[2], d[3]]))
}

// ---------------------------------------------------------------------------------------------
// A connectivity check through the core.

/// A connectivity check (`/check`) through the core in simulated time: an `rtc` client with
/// a data channel offers, the core answers with a check connection (`Command::Check`) on the
/// media port, and the two connect (ICE, DTLS, SCTP) with the test as the network. `echo`
/// and `burst` speak the page's protocol.
#[doc(hidden)]
pub struct CheckSim {
    core: Core,
    now: Instant,
    client: Peer,
    answer: String,
    channel: Option<rtc::data_channel::RTCDataChannelId>,
    received: Vec<BytesMut>,
}

impl CheckSim {
    /// `udp` / `tcp`: which of the media port's candidates the answer names.
    pub fn new(udp: bool, tcp: bool) -> Result<CheckSim, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let now = Instant::now();
        let core = Core::new(
            settings(true),
            Arc::new(Metrics::default()),
            vec![(LOCAL, LOCAL)],
            now,
        );
        let mut client = Peer::new(now, SocketAddr::from(([127, 0, 0, 9], 42000)))?;
        client
            .pc
            .create_data_channel("check", None)
            .map_err(|x| e(&x))?;
        let offer = client.pc.create_offer(None).map_err(|x| e(&x))?;
        client
            .pc
            .set_local_description(now, offer.clone())
            .map_err(|x| e(&x))?;
        let mut sim = CheckSim {
            core,
            now,
            client,
            answer: String::new(),
            channel: None,
            received: Vec::new(),
        };
        sim.answer = call(&mut sim.core, now, |reply| Command::Check {
            sdp: offer.sdp,
            udp,
            tcp,
            reply,
        })
        .map_err(|x| e(&x))?;
        let answer = RTCSessionDescription::answer(sim.answer.clone()).map_err(|x| e(&x))?;
        sim.client
            .pc
            .set_remote_description(now, answer)
            .map_err(|x| e(&x))?;
        Ok(sim)
    }

    /// The core's answer.
    pub fn answer(&self) -> &str {
        &self.answer
    }

    /// Runs until the page's data channel is open (at most 10 simulated seconds); how long
    /// it took.
    pub fn open(&mut self) -> Result<Duration, String> {
        let start = self.now;
        while self.channel.is_none() {
            if self.now - start > Duration::from_secs(10) {
                return Err("the check's data channel did not open".into());
            }
            self.advance(Duration::from_millis(1));
        }
        Ok(self.now - start)
    }

    /// Sends `msg` on the channel and waits (at most 2 simulated seconds) for a message back
    /// that starts with the same byte.
    pub fn echo(&mut self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.channel.ok_or("no channel")?;
        self.received.clear();
        if let Some(mut dc) = self.client.pc.data_channel(id) {
            dc.send(self.now, BytesMut::from(msg))
                .map_err(|x| x.to_string())?;
        }
        let until = self.now + Duration::from_secs(2);
        while self.now < until {
            self.advance(Duration::from_millis(1));
            if let Some(m) = self.received.iter().find(|m| m.first() == msg.first()) {
                return Ok(m.to_vec());
            }
        }
        Err("no echo".into())
    }

    /// Asks for a burst of `n` messages; returns how many arrived within 5 simulated seconds
    /// and the size of the first.
    pub fn burst(&mut self, n: u32) -> Result<(usize, usize), String> {
        let id = self.channel.ok_or("no channel")?;
        self.received.clear();
        let mut ask = BytesMut::from(&b"d"[..]);
        ask.extend_from_slice(&n.to_be_bytes());
        if let Some(mut dc) = self.client.pc.data_channel(id) {
            dc.send(self.now, ask).map_err(|x| x.to_string())?;
        }
        self.advance(Duration::from_secs(5));
        let got: Vec<&BytesMut> = self
            .received
            .iter()
            .filter(|m| m.first() == Some(&b'D'))
            .collect();
        Ok((got.len(), got.first().map_or(0, |m| m.len())))
    }

    /// Check connections open in the core.
    pub fn connections(&self) -> usize {
        self.core.conns.iter().filter(|s| s.conn.is_some()).count()
    }

    pub fn advance(&mut self, d: Duration) {
        use rtc::peer_connection::event::RTCDataChannelEvent;
        use rtc::peer_connection::message::RTCMessage;
        let until = self.now + d;
        while self.now < until {
            self.now = (self.now + Duration::from_millis(1)).min(until);
            if self.client.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                let _ = self.client.pc.handle_timeout(self.now);
            }
            let mut out = Vec::new();
            while let Some(d) = self.client.pc.poll_write() {
                if d.transport.peer_addr == LOCAL {
                    out.push(d.message);
                }
            }
            for data in out {
                let d = Datagram {
                    local: LOCAL,
                    from: self.client.addr,
                    proto: TransportProtocol::UDP,
                    data: &data,
                };
                self.core.handle_input(self.now, Input::Datagram(d));
            }
            if self.core.poll_timeout() <= self.now {
                self.core.handle_input(self.now, Input::Timeout);
            }
            while let Some(t) = self.core.poll_transmit() {
                if t.peer == self.client.addr {
                    let _ = self.client.pc.handle_read(tagged(
                        self.now,
                        self.client.addr,
                        LOCAL,
                        &t.data,
                    ));
                }
                self.core.recycle(t.data);
            }
            while self.core.poll_event().is_some() {}
            while let Some(ev) = self.client.pc.poll_event() {
                if let RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) = ev {
                    self.channel = Some(id);
                }
            }
            while let Some(m) = self.client.pc.poll_read() {
                if let RTCMessage::DataChannelMessage(_, msg) = m.message {
                    self.received.push(msg.data);
                }
            }
        }
    }
}
