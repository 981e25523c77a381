//! One peer connection inside the engine: an `rtc` sans-IO connection (ICE-lite, our own ICE
//! credentials, host candidates on the shared media port), what it publishes (feeds) or
//! receives (senders and their keyframe requesters), and the events it owes its member task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::distr::{Alphanumeric, SampleString};
use rtc::interceptor::PacketReport;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::ids::{MemberId, TrackId};
use crate::protocol::{IceCandidate, MediaKind, Source, Target};
use crate::sfu::allocator::{Allocator, Estimate, TwccSend};
use crate::sfu::forwarder::Feed;
use crate::sfu::keyframe::{is_keyframe_request, rtcp_link, KeyframeRequester, MAX_LAYERS};
use crate::sfu::metrics::Metrics;
use crate::sfu::{Codec, ConnId, MediaSettings, PeerEvent, SfuError};

/// Position of our interceptor: after every built-in one, so it sees inbound RTCP last.
const KEYFRAME_INTERCEPTOR_SLOT: usize = 14_000;

/// rtc's own ICE timers for our ICE-lite connections: out of the way (see `silent_for`).
const LITE_ICE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a publish connection shares with its `Publisher` (the member task's side): which
/// source each client track is, and every feed that arrived (for `republish`). Locked briefly
/// when a track arrives and when the member task republishes — never per packet.
#[derive(Default)]
pub(crate) struct PublishShared {
    pub(crate) sources: Mutex<HashMap<String, Source>>,
    pub(crate) feeds: Mutex<Vec<Arc<Feed>>>,
}

pub(crate) fn source_of(
    sources: &HashMap<String, Source>,
    client_track_id: &str,
    kind: MediaKind,
) -> Source {
    sources.get(client_track_id).copied().unwrap_or(match kind {
        MediaKind::Audio => Source::Microphone,
        MediaKind::Video => Source::Camera,
    })
}

/// A track a subscribe connection should send.
pub(crate) struct TrackSpec {
    pub(crate) id: TrackId,
    pub(crate) member: MemberId,
    pub(crate) kind: MediaKind,
    pub(crate) codec: Codec,
    pub(crate) ssrc: u32,
    pub(crate) keyframes: KeyframeRequester,
    pub(crate) feed: u64,
}

/// What a connection's RTCP asks of the engine (filled by `poll_reads`, reused).
#[derive(Default)]
pub(crate) struct Feedback {
    /// (feed, outgoing sequence number) a subscriber lost.
    pub(crate) nacks: Vec<(u64, u16)>,
    /// Feeds a subscriber asked a keyframe of (PLI/FIR): the engine asks for the layer that
    /// subscriber is sent.
    pub(crate) plis: Vec<u64>,
    /// A publisher's sender report for one layer of its feeds: (feed, layer, NTP, RTP time).
    pub(crate) reports: Vec<(Arc<Feed>, u8, u64, u32)>,
}

/// A track arriving on a publish connection.
struct Incoming {
    track_id: String,
    receiver: RTCRtpReceiverId,
    /// Its layers: one, or up to `MAX_LAYERS` for simulcast (made when a layer opens).
    layers: Vec<Layer>,
    feed: Arc<Feed>,
}

/// One RTP stream of an incoming track: a simulcast layer (by rid), or the track itself.
struct Layer {
    ssrc: u32,
    index: u8,
    last_keyframe_request: Option<Instant>,
}

/// The offer without RTX on its simulcast video sections, so the answer does not negotiate
/// it there: rtc cannot map a layer's retransmissions yet (their `repaired-rtp-stream-id` is
/// not handled upstream, webrtc-rs/rtc#12), and without RTX a browser re-sends lost packets
/// on the layer's own SSRC, which rtc does map. Other sections are left as they are.
fn without_simulcast_rtx(sdp: String) -> String {
    if !sdp.contains("a=simulcast:") {
        return sdp;
    }
    let mut out = String::with_capacity(sdp.len());
    let mut rest = sdp.as_str();
    while !rest.is_empty() {
        // One section: up to the next "m=" line.
        let end = rest[1..].find("\nm=").map_or(rest.len(), |i| i + 2);
        let (section, tail) = rest.split_at(end);
        rest = tail;
        if !(section.starts_with("m=video") && section.contains("a=simulcast:")) {
            out.push_str(section);
            continue;
        }
        let rtx: Vec<&str> = section
            .lines()
            .filter_map(|l| {
                let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
                codec.to_ascii_lowercase().starts_with("rtx/").then_some(pt)
            })
            .collect();
        let names_rtx = |l: &str| {
            ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|p| {
                l.strip_prefix(p)
                    .and_then(|r| r.split([' ', ':']).next())
                    .is_some_and(|pt| rtx.contains(&pt))
            }) || l.starts_with("a=ssrc-group:FID")
        };
        for line in section.split_inclusive('\n') {
            let l = line.trim_end();
            if l.starts_with("m=video") {
                let kept: Vec<&str> = l
                    .split(' ')
                    .enumerate()
                    .filter(|(i, f)| *i < 3 || !rtx.contains(f))
                    .map(|(_, f)| f)
                    .collect();
                out.push_str(&kept.join(" "));
                out.push_str(&line[l.len()..]);
            } else if !names_rtx(l) {
                out.push_str(line);
            }
        }
    }
    out
}

/// Which layer (0 = lowest) a rid names, given every rid the publisher offered for the
/// track: `q`/`h`/`f` (what Chromium's examples and most SFUs use), `l`/`m`/`h`, or `0`/`1`/`2`;
/// other names count in the order the offer lists them, lowest first.
fn layer_of(rid: &str, rids: &[&str]) -> u8 {
    let quarter_half_full = rids.contains(&"f") || rids.contains(&"q");
    let known = match rid {
        "q" | "l" | "low" | "0" => Some(0),
        "h" if quarter_half_full => Some(1),
        "m" | "mid" | "1" => Some(1),
        "f" | "h" | "high" | "2" => Some(2),
        _ => None,
    };
    known
        .or_else(|| rids.iter().position(|r| *r == rid).map(|i| i as u8))
        .unwrap_or(0)
        .min(MAX_LAYERS as u8 - 1)
}

pub(crate) struct Conn {
    id: ConnId,
    target: Target,
    member: MemberId,
    pc: RTCPeerConnection,
    ufrag: String,
    events: tokio::sync::mpsc::Sender<PeerEvent>,
    pub(super) connected: bool,
    failed_reported: bool,
    has_remote: bool,
    early_candidates: Vec<IceCandidate>,
    /// Bound address → advertised address, for the SDP we hand out.
    advertised: Vec<(SocketAddr, SocketAddr)>,
    /// An unbound address whose binding request this connection was given last.
    checking: Option<SocketAddr>,
    /// Which SSRCs may reach rtc's SRTP (see `SsrcGate`).
    ssrcs: super::mux::SsrcGate,
    ssrcs_refused: u64,
    deadline: Option<Instant>,
    /// Our own SRTP seal for forwarded packets, once DTLS gave us keys (GCM profile only),
    /// and which handshake they came from.
    pub(super) sealer: Option<super::srtp::Sealer>,
    sealer_generation: u64,
    /// Where rtc sends this connection's DTLS and SRTP (the selected pair).
    pub(super) media_dest: Option<TransportContext>,
    /// When the client was last heard (any datagram), or when its description arrived.
    last_heard: Instant,
    /// Our candidates (advertised addresses), also trickled once after the first description:
    /// they are in every SDP we hand out, the trickle keeps the protocol's promise.
    trickle: Option<Vec<IceCandidate>>,
    publish: Option<Arc<PublishShared>>,
    incoming: Vec<Incoming>,
    /// Subscribe side: our track id (as a string) → its publisher's keyframe requester and
    /// the feed it forwards.
    tracks: HashMap<String, (KeyframeRequester, u64)>,
    /// Subscribe side: transport-cc, once the client accepted the header extension.
    pub(super) twcc: Option<TwccSend>,
    /// Subscribe side: the viewer's estimate and layer choices.
    pub(super) viewer: Option<Box<Viewer>>,
    /// When the connection was made (its estimate's clock counts from here).
    epoch: Instant,
    /// Whether simulcast offers are accepted (`media.simulcast`).
    simulcast: bool,
    /// A connectivity check's connection (`/check`): its data channel, served here.
    pub(super) check: Option<Box<super::check::CheckChannel>>,
    /// Publish side: the audio-level extension's id, once negotiated, and whether the
    /// publisher is speaking (`speaking.rs`).
    audio_level: Option<u8>,
    speech: crate::sfu::speaking::Speech,
}

/// What the engine keeps per viewer (subscribe connection) for its estimate and allocation.
#[derive(Default)]
pub(crate) struct Viewer {
    pub(crate) estimate: Estimate,
    pub(crate) allocator: Allocator,
    /// Bytes sent: audio, video (fan-out and GOP catch-up), re-sends; and the same counts at
    /// the last allocation pass.
    pub(crate) sent: [u64; 3],
    pub(crate) sent_seen: [u64; 3],
    /// Whether any of its videos is paused now (for the gauge).
    pub(crate) paused: bool,
    /// Its video leaves no faster than its line carries (`pacer.rs`).
    pub(crate) pacer: super::pacer::Pacer<super::pacer::Held>,
    /// Reused by `poll_reads` for transport-cc reports.
    reports: Vec<PacketReport>,
    /// Probing its line before a step up (`sfu::probe`), and the repair stream the padding
    /// goes on (none: the client did not take RTX for any video).
    pub(crate) probe: crate::sfu::probe::Probe,
    pub(crate) pad: Option<PadStream>,
}

/// The repair (RTX) stream of one of a viewer's videos, as the offer named it and the answer
/// took it: where a probe's padding-only packets go. Its own sequence numbers and rollover
/// counter (nothing else is ever sent on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PadStream {
    pub(crate) ssrc: u32,
    pub(crate) payload_type: u8,
    pub(crate) seq: u16,
    pub(crate) roc: u32,
}

impl PadStream {
    /// The next sequence number and its rollover counter.
    pub(crate) fn next(&mut self) -> (u16, u32) {
        let (seq, roc) = (self.seq, self.roc);
        self.seq = seq.wrapping_add(1);
        if self.seq == 0 {
            self.roc = self.roc.wrapping_add(1);
        }
        (seq, roc)
    }
}

/// What `lean_stamped` gives: the seal, where to send, the transport-wide sequence number
/// (extension id, number) when transport-cc is on.
pub(crate) type Stamped<'a> = (&'a super::srtp::Sealer, TransportContext, Option<(u8, u16)>);

/// What `lean_padding` gives for one padding packet: the seal, where to send, its
/// transport-wide number (extension id, number), the repair stream's header fields, and the
/// id it gets in transport-cc reports.
pub(crate) struct PadSeal<'a> {
    pub(crate) sealer: &'a super::srtp::Sealer,
    pub(crate) dest: TransportContext,
    pub(crate) twcc: (u8, u16),
    pub(crate) ssrc: u32,
    pub(crate) payload_type: u8,
    pub(crate) seq: u16,
    pub(crate) roc: u32,
    pub(crate) id: u64,
}

/// Which of `Viewer::sent` a packet counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Audio = 0,
    Video = 1,
    Resent = 2,
}

/// The payload type an RTX format repairs (`apt=` in its fmtp line, RFC 4588 §8.1).
fn rtx_apt(fmtp: &str) -> Option<u8> {
    fmtp.split(';')
        .find_map(|p| p.trim().strip_prefix("apt="))
        .and_then(|v| v.trim().parse().ok())
}

/// The transport-wide-cc header extension's id in a description, if it has one.
fn twcc_extension_id(sdp: &str) -> Option<u8> {
    extension_id(sdp, rtc::sdp::extmap::TRANSPORT_CC_URI)
}

/// The id of the header extension `uri` in a description (one-byte ids only), if it has one.
fn extension_id(sdp: &str, wanted: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (id, uri) = l.strip_prefix("a=extmap:")?.split_once(' ')?;
        (uri.split_whitespace().next()? == wanted)
            .then(|| id.split('/').next()?.parse::<u8>().ok())?
            .filter(|id| (1..=14).contains(id))
    })
}

pub(crate) fn host_candidate(addr: SocketAddr, tcp: bool) -> Result<RTCIceCandidateInit, SfuError> {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: if tcp { "tcp" } else { "udp" }.into(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: if tcp {
            rtc::ice::tcp_type::TcpType::Passive
        } else {
            Default::default()
        },
    }
    .new_candidate_host()
    .map_err(SfuError::webrtc)?;
    RTCIceCandidate::from(&c)
        .to_json()
        .map_err(SfuError::webrtc)
}

impl Conn {
    /// `now`: the engine's clock (rtc's timers and the liveness clock start from it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        now: Instant,
        settings: &MediaSettings,
        advertised: &[(SocketAddr, SocketAddr)],
        target: Target,
        member: MemberId,
        id: ConnId,
        events: tokio::sync::mpsc::Sender<PeerEvent>,
        publish: Option<Arc<PublishShared>>,
    ) -> Result<Conn, SfuError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .map_err(SfuError::webrtc)?;
        let registry = match target {
            // Receiving: NACK generation, transport-cc feedback, reports (rtc's default set).
            Target::Publish => {
                // The audio level each browser packet carries (RFC 6464): who is speaking.
                media_engine
                    .register_header_extension(
                        rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                            uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
                        },
                        RtpCodecKind::Audio,
                        None,
                    )
                    .map_err(SfuError::webrtc)?;
                register_default_interceptors(Registry::new(), &mut media_engine)
                    .map_err(SfuError::webrtc)?
            }
            // Sending forwarded media: the engine answers NACKs from the track cache and
            // writes the sender reports itself, so no per-subscriber retransmission buffer
            // (≈ 128 KB each); receiver reports and the feedback types stay negotiated.
            Target::Subscribe => {
                for parameter in ["", "pli"] {
                    media_engine.register_feedback(
                        rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                            typ: "nack".to_owned(),
                            parameter: parameter.to_owned(),
                        },
                        RtpCodecKind::Video,
                    );
                }
                // Transport-cc: the engine stamps the transport-wide sequence number itself
                // (`seal_and_queue`) and reads the viewer's feedback for its estimate
                // (`allocator.rs`); rtc's own TWCC interceptors stay out of the way.
                for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
                    media_engine.register_feedback(
                        rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                            typ: "transport-cc".to_owned(),
                            parameter: String::new(),
                        },
                        kind,
                    );
                    media_engine
                        .register_header_extension(
                            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
                            },
                            kind,
                            None,
                        )
                        .map_err(SfuError::webrtc)?;
                }
                configure_rtcp_reports(Registry::new())
            }
        }
        .with(Slot::from(KEYFRAME_INTERCEPTOR_SLOT), rtcp_link());
        let mut rng = rand::rng();
        // RFC 8445: ufrag ≥ 4 and password ≥ 22 characters from the ice-char set.
        let ufrag = Alphanumeric.sample_string(&mut rng, 16);
        let password = Alphanumeric.sample_string(&mut rng, 32);
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), password)
            // ICE-lite hears only the client's consent checks, every few seconds (RFC 7675:
            // ~5 s), so rtc's own silence timers would fail a healthy connection. The engine
            // watches for silence of ANY traffic instead (`silent_since`), with the
            // configured timeouts.
            .with_ice_timeouts(
                Some(LITE_ICE_TIMEOUT),
                Some(LITE_ICE_TIMEOUT),
                Some(Duration::from_secs(2)),
            )
            // Both sealed by the engine itself (engine/srtp.rs); GCM is about three times
            // cheaper. As DTLS server our order decides (patches/rtc-dtls): Chromium, which
            // lists AES-CM first, gets GCM too.
            .with_srtp_protection_profiles(vec![
                rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(SfuError::webrtc)?;
        let mut trickle = Vec::with_capacity(advertised.len());
        let mut protocols = Vec::with_capacity(2);
        if settings.udp_candidates {
            protocols.push(false);
        }
        if settings.ice_tcp {
            protocols.push(true);
        }
        for (bound, adv) in advertised {
            for &tcp in &protocols {
                pc.add_local_candidate(host_candidate(*bound, tcp)?)
                    .map_err(SfuError::webrtc)?;
                let c = host_candidate(*adv, tcp)?;
                trickle.push(IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: None,
                    sdp_mline_index: None,
                    username_fragment: Some(ufrag.clone()),
                });
            }
        }
        // Gathering is complete at once: `a=end-of-candidates` in every description we give.
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(SfuError::webrtc)?;
        Ok(Conn {
            id,
            target,
            member,
            pc,
            ufrag,
            events,
            connected: false,
            failed_reported: false,
            has_remote: false,
            early_candidates: Vec::new(),
            advertised: advertised.to_vec(),
            checking: None,
            ssrcs: super::mux::SsrcGate::default(),
            ssrcs_refused: 0,
            deadline: None,
            sealer: None,
            sealer_generation: 0,
            media_dest: None,
            last_heard: now,
            trickle: Some(trickle),
            publish,
            incoming: Vec::new(),
            tracks: HashMap::new(),
            twcc: None,
            viewer: (target == Target::Subscribe).then(Box::default),
            epoch: now,
            simulcast: settings.simulcast,
            check: None,
            audio_level: None,
            speech: Default::default(),
        })
    }

    /// A connectivity check's connection: no tracks, one data channel (`check.rs`), closed by
    /// the engine at `expires`. Its candidates are the media port's, limited to UDP and/or
    /// ICE-TCP as the page asks (`udp`, `tcp`), so each transport is tested on its own.
    pub(crate) fn new_check(
        now: Instant,
        settings: &MediaSettings,
        advertised: &[(SocketAddr, SocketAddr)],
        udp: bool,
        tcp: bool,
        expires: Instant,
    ) -> Result<Conn, SfuError> {
        let mut only = settings.clone();
        only.udp_candidates &= udp;
        only.ice_tcp &= tcp;
        // No member task listens: events go to a queue whose receiver is already gone (the
        // engine closes the connection itself). Built as a receive-only connection without
        // a publisher (`publish: None`), so a track sent on it would be ignored.
        let (events, _) = tokio::sync::mpsc::channel(1);
        let mut conn = Conn::new(
            now,
            &only,
            advertised,
            Target::Publish,
            MemberId::new(),
            ConnId::next(),
            events,
            None,
        )?;
        conn.check = Some(Box::new(super::check::CheckChannel::new(expires)));
        Ok(conn)
    }

    /// A check connection whose time is up, whose page closed its channel, or that failed.
    pub(crate) fn check_is_over(&self, now: Instant) -> bool {
        self.check
            .as_ref()
            .is_some_and(|c| c.done || now >= c.expires || self.failed_reported)
    }

    /// A check connection: sends more of a running burst while SCTP has room.
    pub(crate) fn check_pump(&mut self, now: Instant) {
        if let Some(c) = self.check.as_mut() {
            if c.bursting() {
                c.pump(&mut self.pc, now);
            }
        }
    }

    /// Datagrams refused because their SSRC was neither declared nor among the few others.
    pub(crate) fn ssrcs_refused(&self) -> u64 {
        self.ssrcs_refused
    }

    pub(crate) fn ufrag(&self) -> &str {
        &self.ufrag
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Described but not connected yet, and not given up on.
    pub(crate) fn is_connecting(&self) -> bool {
        self.has_remote && !self.connected && !self.failed_reported
    }

    /// Runs whatever timers are due (rtc checks each against `now`).
    pub(crate) fn run_timers(&mut self, now: Instant) {
        let _ = self.pc.handle_timeout(now);
    }

    /// Feeds one datagram in. False if the connection refused it.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &[u8],
        proto: TransportProtocol,
    ) -> bool {
        match super::mux::classify(data) {
            super::mux::Kind::Stun => self.checking = Some(from),
            super::mux::Kind::Rtp if !self.ssrcs.admit(data) => {
                self.ssrcs_refused += 1;
                return false;
            }
            _ => {}
        }
        self.last_heard = now;
        self.pc
            .handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: local,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: proto,
                },
                message: BytesMut::from(data),
            })
            .is_ok()
    }

    /// True if `out` to `to` is this connection answering a binding request from `to` with a
    /// success response — the request passed MESSAGE-INTEGRITY, so `to` may be bound.
    pub(crate) fn answers_check(&self, to: SocketAddr, out: &[u8]) -> bool {
        self.checking == Some(to) && out.len() >= 2 && out[0] == 0x01 && out[1] == 0x01
    }

    /// Liveness: true once if the client, after describing its side, has sent nothing at all
    /// (no check, no media, no RTCP) for `limit` — it is gone; the member task is told.
    pub(crate) fn check_silence(&mut self, now: Instant, limit: Duration) -> bool {
        if !self.has_remote
            || self.failed_reported
            || now.saturating_duration_since(self.last_heard) < limit
        {
            return false;
        }
        self.failed_reported = true;
        self.connected = false;
        tracing::debug!(target_pc = ?self.target, "no traffic from the client; connection failed");
        let _ = self
            .events
            .try_send(PeerEvent::Failed(self.target, self.id));
        true
    }

    pub(crate) fn poll_write(&mut self) -> Option<TaggedBytesMut> {
        let out = self.pc.poll_write()?;
        // DTLS and SRTP/SRTCP go where the selected pair is: so do our own packets.
        if matches!(
            super::mux::classify(&out.message),
            super::mux::Kind::Dtls | super::mux::Kind::Rtp
        ) {
            self.media_dest = Some(out.transport);
        }
        Some(out)
    }

    /// Picks up new SRTP keys after a DTLS handshake (and a re-key).
    pub(crate) fn refresh_keys(&mut self) {
        let Some(e) = self.pc.srtp_keying_export() else {
            return;
        };
        if e.generation == self.sealer_generation {
            return;
        }
        self.sealer_generation = e.generation;
        use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
        let profile = match e.profile {
            P::Srtp_Aead_Aes_128_Gcm => Some(super::srtp::Profile::AeadAes128Gcm),
            P::Srtp_Aes128_Cm_Hmac_Sha1_80 => Some(super::srtp::Profile::Aes128CmHmacSha1_80),
            _ => None,
        };
        self.sealer = profile
            .and_then(|p| super::srtp::Sealer::new(p, &e.local_master_key, &e.local_master_salt));
    }

    /// Our seal and where to send, when forwarded packets can bypass rtc.
    pub(crate) fn lean(&self) -> Option<(&super::srtp::Sealer, TransportContext)> {
        Some((self.sealer.as_ref()?, self.media_dest?))
    }

    /// As `lean`, for a new packet of `size` bytes leaving at `now`: also its transport-wide
    /// sequence number (extension id, number) when transport-cc is on, and it is counted as
    /// `what` for the viewer's estimate.
    pub(crate) fn lean_stamped(
        &mut self,
        now: Instant,
        size: usize,
        what: Sent,
    ) -> Option<Stamped<'_>> {
        let dest = self.media_dest?;
        let sealer = self.sealer.as_ref()?;
        let twcc = self.twcc.as_mut().map(|t| (t.ext_id, t.stamp(now, size)));
        if let Some(v) = self.viewer.as_mut() {
            v.sent[what as usize] += size as u64;
        }
        Some((sealer, dest, twcc))
    }

    /// A probe's padding packet of `size` bytes leaving at `now` (see `PadSeal`).
    pub(crate) fn lean_padding(&mut self, now: Instant, size: usize) -> Option<PadSeal<'_>> {
        let dest = self.media_dest?;
        let sealer = self.sealer.as_ref()?;
        let pad = self.viewer.as_mut()?.pad.as_mut()?;
        let twcc = self.twcc.as_mut()?;
        let id = twcc.next_id();
        let n = twcc.stamp(now, size);
        let (seq, roc) = pad.next();
        Some(PadSeal {
            sealer,
            dest,
            twcc: (twcc.ext_id, n),
            ssrc: pad.ssrc,
            payload_type: pad.payload_type,
            seq,
            roc,
            id,
        })
    }

    /// The id the next packet stamped for transport-cc will have (None without it).
    pub(crate) fn next_twcc_id(&self) -> Option<u64> {
        self.twcc.as_ref().map(|t| t.next_id())
    }

    /// Subscribe side: the viewer's pacer.
    pub(crate) fn pacer(&mut self) -> Option<&mut super::pacer::Pacer<super::pacer::Held>> {
        self.viewer.as_mut().map(|v| &mut v.pacer)
    }

    /// Tells the member task what the viewer now gets of a video.
    pub(crate) fn tell_quality(&self, track: TrackId, quality: crate::sfu::VideoQuality) {
        let _ = self
            .events
            .try_send(PeerEvent::VideoQuality(self.id, track, quality));
    }

    /// `now` in ms of this connection's clock (its estimate's).
    pub(crate) fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The transport-cc extension id, when it is on.
    pub(crate) fn twcc_ext(&self) -> Option<u8> {
        self.twcc.as_ref().map(|t| t.ext_id)
    }

    /// A re-send of `size` bytes went out.
    pub(crate) fn count_resent(&mut self, size: usize) {
        if let Some(v) = self.viewer.as_mut() {
            v.sent[Sent::Resent as usize] += size as u64;
        }
    }

    /// Subscribe side: the feeds this connection sends (for the allocation pass).
    pub(crate) fn sent_feeds(&self) -> impl Iterator<Item = u64> + '_ {
        self.tracks.values().map(|(_, feed)| *feed)
    }

    /// Turns transport-cc on once the client accepted the extension in `sdp` (and keeps the
    /// numbering when a renegotiation keeps the id).
    fn negotiate_twcc(&mut self, now: Instant, sdp: &str) {
        if self.target != Target::Subscribe {
            return;
        }
        match twcc_extension_id(sdp) {
            Some(id) if self.twcc.as_ref().is_some_and(|t| t.ext_id == id) => {}
            Some(id) => self.twcc = Some(TwccSend::new(id, now)),
            None => self.twcc = None,
        }
    }

    /// Turns rtc events into member-task events and feeds. True if a feed appeared.
    pub(crate) fn poll_events(&mut self, now: Instant, metrics: &Metrics) -> bool {
        let mut new_feed = false;
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                    tracing::debug!(target_pc = ?self.target, %state, "peer connection state");
                    match state {
                        RTCPeerConnectionState::Connected => {
                            self.connected = true;
                            let _ = self
                                .events
                                .try_send(PeerEvent::Connected(self.target, self.id));
                        }
                        // ICE-lite hears only the client's consent checks (Chromium sends one
                        // every few seconds once stable), so a short silence reads as
                        // "disconnected" while media flows fine: keep sending until "failed".
                        RTCPeerConnectionState::Disconnected => {}
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            self.connected = false;
                            if !self.failed_reported {
                                self.failed_reported = true;
                                let _ = self
                                    .events
                                    .try_send(PeerEvent::Failed(self.target, self.id));
                            }
                        }
                        _ => {}
                    }
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let started = self.start_feed(
                        now,
                        init.receiver_id,
                        init.track_id,
                        init.ssrc,
                        init.rid.as_deref(),
                        metrics,
                    );
                    new_feed |= started;
                }
                RTCPeerConnectionEvent::OnTrack(
                    RTCTrackEvent::OnClose(track_id) | RTCTrackEvent::OnError(track_id),
                ) => {
                    self.end_feed(&track_id, metrics);
                }
                RTCPeerConnectionEvent::OnDataChannel(event) => {
                    use rtc::peer_connection::event::RTCDataChannelEvent as Dc;
                    if let Some(c) = self.check.as_mut() {
                        match event {
                            Dc::OnOpen(id) => c.opened(id),
                            Dc::OnClose(id) => c.closed(id),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        new_feed
    }

    fn start_feed(
        &mut self,
        now: Instant,
        receiver: RTCRtpReceiverId,
        track_id: String,
        ssrc: u32,
        rid: Option<&str>,
        metrics: &Metrics,
    ) -> bool {
        let Some(publish) = self.publish.clone() else {
            tracing::debug!("ignoring a track on a receive-only connection");
            return false;
        };
        let Some(rx) = self.pc.rtp_receiver(receiver) else {
            return false;
        };
        let track = rx.track();
        // Simulcast: each layer opens on its own (rtc learns its SSRC from the mid and rid
        // header extensions of its first packet); all of them are one feed.
        let index = rid.map_or(0, |rid| {
            let rids: Vec<&str> = track
                .codings()
                .iter()
                .map(|c| c.rtp_coding_parameters.rid.as_str())
                .filter(|r| !r.is_empty())
                .collect();
            layer_of(rid, &rids)
        });
        if let Some(inc) = self.incoming.iter_mut().find(|i| i.track_id == track_id) {
            if rid.is_some()
                && inc.layers.len() < MAX_LAYERS
                && !inc
                    .layers
                    .iter()
                    .any(|l| l.index == index || l.ssrc == ssrc)
            {
                inc.layers.push(Layer {
                    ssrc,
                    index,
                    last_keyframe_request: None,
                });
                inc.feed.add_layer(index);
                tracing::debug!(layer = index, "simulcast layer arrived");
            }
            return false;
        }
        let kind = match track.kind() {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let Some(codec) = track.codec(ssrc).cloned() else {
            tracing::warn!("published track has no negotiated codec; not forwarding it");
            return false;
        };
        let source = source_of(
            &publish
                .sources
                .lock()
                .expect("sources lock is never poisoned"),
            &track_id,
            kind,
        );
        let feed = Feed::new(
            now,
            self.member,
            kind,
            track_id.clone(),
            Codec {
                mime_type: codec.mime_type,
                clock_rate: codec.clock_rate,
                channels: codec.channels,
                fmtp: codec.sdp_fmtp_line,
            },
        );
        metrics.forwarders.fetch_add(1, Ordering::SeqCst);
        publish
            .feeds
            .lock()
            .expect("feeds lock is never poisoned")
            .push(feed.clone());
        feed.add_layer(index);
        let mut layers = Vec::with_capacity(if rid.is_some() { MAX_LAYERS } else { 1 });
        layers.push(Layer {
            ssrc,
            index,
            last_keyframe_request: None,
        });
        self.incoming.push(Incoming {
            track_id,
            receiver,
            layers,
            feed: feed.clone(),
        });
        if let Some(forwarder) = feed.publish(source) {
            let info = forwarder.info();
            tracing::info!(track = %info.id, kind = ?info.kind, source = ?info.source, mime = %info.codec.mime_type, "track published");
            // If the member task cannot take it, the forwarder is dropped and the feed parks.
            let _ = self
                .events
                .try_send(PeerEvent::Published(self.id, forwarder));
        }
        true
    }

    fn end_feed(&mut self, track_id: &str, metrics: &Metrics) {
        if let Some(pos) = self.incoming.iter().position(|i| i.track_id == track_id) {
            let gone = self.incoming.swap_remove(pos);
            gone.feed.end();
            metrics.forwarders.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Takes received media: RTP of forwarded feeds goes to `forwards`; RTCP asking for a
    /// keyframe reaches the track's publisher; NACKs and sender reports go to `feedback`.
    pub(crate) fn poll_reads(
        &mut self,
        now: Instant,
        metrics: &Metrics,
        forwards: &mut Vec<(Arc<Feed>, u8, rtp::Packet)>,
        feedback: &mut Feedback,
    ) {
        use rtc::rtcp::sender_report::SenderReport;
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let now_ms = self.ms(now);
        while let Some(msg) = self.pc.poll_read() {
            match msg.message {
                RTCMessage::RtpPacket(track_id, packet) => {
                    let Some(inc) = self.incoming.iter().find(|i| i.track_id == track_id) else {
                        metrics.packets_discarded.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let ssrc = packet.header.ssrc;
                    let layer = match inc.layers.iter().find(|l| l.ssrc == ssrc) {
                        Some(l) => l.index,
                        None if inc.layers.len() == 1 => inc.layers[0].index,
                        None => {
                            metrics.packets_discarded.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    match inc.feed.arrived(now) {
                        super::super::forwarder::Arrival::Forward => {
                            // Who speaks: only forwarded sound counts (not a muted microphone).
                            if let Some(id) = self.audio_level {
                                let level = packet
                                    .header
                                    .extensions
                                    .iter()
                                    .find(|e| e.id == id)
                                    .and_then(|e| e.payload.first());
                                if let Some(b) = level {
                                    let level = crate::sfu::speaking::Speech::level_of(*b);
                                    if let Some(v) = self.speech.observe(now_ms, level) {
                                        let _ =
                                            self.events.try_send(PeerEvent::Speaking(self.id, v));
                                    }
                                }
                            }
                            forwards.push((inc.feed.clone(), layer, packet));
                        }
                        super::super::forwarder::Arrival::Discard { report } => {
                            metrics.packets_discarded.fetch_add(1, Ordering::Relaxed);
                            if report {
                                let _ = self.events.try_send(PeerEvent::ParkedMedia(self.id));
                            }
                        }
                    }
                }
                RTCMessage::RtcpPacket(track_id, packets) => {
                    if self.target == Target::Subscribe {
                        self.congestion_feedback(now, &packets);
                    }
                    if let Some((_, feed)) = self.tracks.get(&track_id) {
                        if is_keyframe_request(&packets) {
                            metrics
                                .keyframe_requests_received
                                .fetch_add(1, Ordering::Relaxed);
                            feedback.plis.push(*feed);
                        }
                        for p in &packets {
                            if let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() {
                                for n in &nack.nacks {
                                    for seq in n.packet_list() {
                                        feedback.nacks.push((*feed, seq));
                                    }
                                }
                            }
                        }
                    } else if let Some(inc) = self.incoming.iter().find(|i| i.track_id == track_id)
                    {
                        for p in &packets {
                            if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                                if let Some(l) = inc.layers.iter().find(|l| l.ssrc == sr.ssrc) {
                                    feedback.reports.push((
                                        inc.feed.clone(),
                                        l.index,
                                        sr.ntp_time,
                                        sr.rtp_time,
                                    ));
                                }
                            }
                        }
                    }
                }
                RTCMessage::DataChannelMessage(id, msg) => {
                    if let Some(c) = self.check.as_mut() {
                        c.on_message(&mut self.pc, now, id, msg.data);
                    }
                }
                _ => {}
            }
        }
    }

    /// A viewer's transport-cc feedback, receiver reports and REMB: its estimate.
    fn congestion_feedback(&mut self, now: Instant, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate as Remb;
        use rtc::rtcp::receiver_report::ReceiverReport;
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
        let now_ms = self.ms(now);
        let Some(viewer) = self.viewer.as_mut() else {
            return;
        };
        for p in packets {
            let any = p.as_any();
            if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                if let Some(twcc) = &self.twcc {
                    let acks = super::super::allocator::twcc_acks(cc);
                    let mut reports = std::mem::take(&mut viewer.reports);
                    reports.clear();
                    twcc.reports(now, &acks, &mut reports);
                    viewer.estimate.on_twcc(now, now_ms, &reports);
                    viewer.probe.on_reports(now_ms, &reports);
                    viewer.reports = reports;
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for block in &rr.reports {
                    viewer.estimate.on_loss(block.fraction_lost);
                }
            } else if let Some(remb) = any.downcast_ref::<Remb>() {
                viewer.estimate.on_remb(now_ms, f64::from(remb.bitrate));
            }
        }
    }

    /// Sends a translated sender report on one of this connection's senders.
    pub(crate) fn write_sender_report(
        &mut self,
        now: Instant,
        sender: RTCRtpSenderId,
        report: rtc::rtcp::sender_report::SenderReport,
    ) -> bool {
        match self.pc.rtp_sender(sender) {
            Some(mut s) => s.write_rtcp(now, vec![Box::new(report)]).is_ok(),
            None => false,
        }
    }

    /// The connection's next deadline, if it moved (then the engine files it).
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        let t = self.pc.poll_timeout();
        if t != self.deadline {
            self.deadline = t;
            return t;
        }
        None
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A filed deadline `t` came due: runs the timers if it is still the current one.
    pub(crate) fn timer_due(&mut self, t: Instant, now: Instant) -> bool {
        if self.deadline != Some(t) {
            return false;
        }
        self.deadline = None;
        let _ = self.pc.handle_timeout(now);
        true
    }

    pub(crate) fn write_rtp(
        &mut self,
        now: Instant,
        sender: RTCRtpSenderId,
        p: rtp::Packet,
    ) -> bool {
        match self.pc.rtp_sender(sender) {
            Some(mut s) => s.write_rtp(now, p).is_ok(),
            None => false,
        }
    }

    /// Publish side: ends "speaking" after a silence in which the browser sent nothing (DTX).
    pub(crate) fn speech_tick(&mut self, now: Instant) {
        if self.speech.is_speaking() {
            if let Some(v) = self.speech.tick(self.ms(now)) {
                let _ = self.events.try_send(PeerEvent::Speaking(self.id, v));
            }
        }
    }

    /// Sends a PLI for each layer of each video feed that someone asked a keyframe of, at
    /// most once per `interval` per layer. Returns how many went out.
    pub(crate) fn send_keyframe_requests(&mut self, now: Instant, interval: Duration) -> u64 {
        let mut sent = 0;
        for inc in &mut self.incoming {
            let keyframes = &inc.feed.keyframes;
            if inc.feed.kind() != MediaKind::Video || !keyframes.is_wanted() {
                continue;
            }
            keyframes.forget_absent(inc.feed.layers());
            for layer in &mut inc.layers {
                if !keyframes.is_wanted_layer(layer.index)
                    || layer
                        .last_keyframe_request
                        .is_some_and(|t| now.saturating_duration_since(t) < interval)
                {
                    continue;
                }
                keyframes.take_layer(layer.index);
                layer.last_keyframe_request = Some(now);
                if let Some(mut rx) = self.pc.rtp_receiver(inc.receiver) {
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: layer.ssrc,
                    };
                    if rx.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        sent
    }

    /// After our first description: our candidates for the member task to trickle.
    fn trickle_candidates(&mut self, sdp: &str) {
        let Some(list) = self.trickle.take() else {
            return;
        };
        let mid = super::super::first_mid(sdp);
        for c in list {
            let c = super::super::with_mid(c, mid.as_deref());
            let _ = self
                .events
                .try_send(PeerEvent::Candidate(self.target, self.id, c));
        }
    }

    /// Our candidates are all known from the start (host candidates on the media port), so
    /// gathering is always complete. rtc's `set_local_description` puts the gathering state
    /// back to `Gathering` after every description, and rtc writes `a=end-of-candidates` only
    /// in the `Complete` state: without this, only the first description of a connection
    /// carried it (issue 21, point 10). Called after each `set_local_description`, before the
    /// description is read back (`local_description` fills candidates in at that moment).
    fn gathering_complete(&mut self) -> Result<(), SfuError> {
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .map_err(SfuError::webrtc)
    }

    fn rewrite_sdp(&self, sdp: String) -> String {
        if self.advertised.iter().all(|(b, a)| b == a) {
            return sdp;
        }
        let mut out = String::with_capacity(sdp.len());
        for line in sdp.split_inclusive('\n') {
            if line.starts_with("a=candidate:") {
                let mut l = line.to_owned();
                for (bound, adv) in &self.advertised {
                    if bound != adv {
                        l = l.replace(
                            &format!(" {} {} ", bound.ip(), bound.port()),
                            &format!(" {} {} ", adv.ip(), adv.port()),
                        );
                    }
                }
                out.push_str(&l);
            } else {
                out.push_str(line);
            }
        }
        out
    }

    pub(crate) fn apply_offer(&mut self, now: Instant, sdp: String) -> Result<String, SfuError> {
        if !self.simulcast && sdp.contains("a=simulcast:") {
            return Err(SfuError::BadSdp(
                "this server does not accept simulcast (media.simulcast is off); send one layer"
                    .into(),
            ));
        }
        self.ssrcs.declare_from_sdp(&sdp);
        if self.target == Target::Publish {
            self.audio_level = extension_id(&sdp, rtc::sdp::extmap::AUDIO_LEVEL_URI);
        }
        let sdp = without_simulcast_rtx(sdp);
        self.negotiate_twcc(now, &sdp);
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(now, offer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        if !self.has_remote {
            self.last_heard = now;
        }
        self.has_remote = true;
        for c in std::mem::take(&mut self.early_candidates) {
            self.add_remote_candidate(c)?;
        }
        let answer = self.pc.create_answer(None).map_err(SfuError::webrtc)?;
        self.pc
            .set_local_description(now, answer)
            .map_err(SfuError::webrtc)?;
        self.gathering_complete()?;
        let local = self
            .pc
            .local_description()
            .ok_or_else(|| SfuError::WebRtc("no local description after answering".into()))?;
        let sdp = self.rewrite_sdp(local.sdp);
        self.trickle_candidates(&sdp);
        Ok(sdp)
    }

    pub(crate) fn add_track(&mut self, t: TrackSpec) -> Result<RTCRtpSenderId, SfuError> {
        let kind = match t.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // msid = "<publishing member> <track>": the client maps tracks with it.
        let track = MediaStreamTrack::new(
            t.member.to_string(),
            t.id.to_string(),
            t.id.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(t.ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: t.codec.mime_type.clone(),
                    clock_rate: t.codec.clock_rate,
                    channels: t.codec.channels,
                    sdp_fmtp_line: t.codec.fmtp.clone(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        );
        let sender = self.pc.add_track(track).map_err(SfuError::webrtc)?;
        self.tracks.insert(t.id.to_string(), (t.keyframes, t.feed));
        Ok(sender)
    }

    pub(crate) fn remove_track(&mut self, sender: RTCRtpSenderId) -> Result<(), SfuError> {
        if let Some(s) = self.pc.rtp_sender(sender) {
            let id = s.track().track_id().to_string();
            self.tracks.remove(&id);
        }
        self.pc.remove_track(sender).map_err(SfuError::webrtc)
    }

    pub(crate) fn create_offer(&mut self, now: Instant) -> Result<String, SfuError> {
        let offer = self.pc.create_offer(None).map_err(SfuError::webrtc)?;
        self.pc
            .set_local_description(now, offer)
            .map_err(SfuError::webrtc)?;
        self.gathering_complete()?;
        let local = self
            .pc
            .local_description()
            .ok_or_else(|| SfuError::WebRtc("no local description after offering".into()))?;
        let sdp = self.rewrite_sdp(local.sdp);
        self.trickle_candidates(&sdp);
        Ok(sdp)
    }

    pub(crate) fn apply_answer(
        &mut self,
        now: Instant,
        sdp: String,
        senders: &[(RTCRtpSenderId, Codec)],
    ) -> Result<Vec<Option<u8>>, SfuError> {
        self.ssrcs.declare_from_sdp(&sdp);
        self.negotiate_twcc(now, &sdp);
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        if !self.has_remote {
            self.last_heard = now;
        }
        self.has_remote = true;
        for c in std::mem::take(&mut self.early_candidates) {
            self.add_remote_candidate(c)?;
        }
        Ok(self.payload_types(senders))
    }

    /// The payload type negotiated for each sender, for the codec it should carry (same mime
    /// and fmtp first, else same mime); None where the client refused the codec.
    pub(crate) fn payload_types(&mut self, senders: &[(RTCRtpSenderId, Codec)]) -> Vec<Option<u8>> {
        let mut chosen = Vec::with_capacity(senders.len());
        let mut pad = None;
        for (sender, wanted) in senders {
            let Some(mut s) = self.pc.rtp_sender(*sender) else {
                chosen.push(None);
                continue;
            };
            let params = s.get_parameters();
            let codecs = &params.rtp_parameters.codecs;
            let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
                c.rtp_codec
                    .mime_type
                    .eq_ignore_ascii_case(&wanted.mime_type)
            };
            let pt = codecs
                .iter()
                .filter(same_mime)
                .find(|c| c.rtp_codec.sdp_fmtp_line == wanted.fmtp)
                .or_else(|| codecs.iter().find(same_mime))
                .map(|c| c.payload_type);
            if let (None, Some(pt)) = (pad, pt) {
                // The first video's repair stream, if the answer took RTX for its codec.
                let rtx_ssrc = params
                    .encodings
                    .first()
                    .and_then(|e| e.rtp_coding_parameters.rtx.as_ref())
                    .map(|r| r.ssrc);
                let rtx_pt = codecs.iter().find_map(|c| {
                    let rtx = c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx");
                    (rtx && rtx_apt(&c.rtp_codec.sdp_fmtp_line) == Some(pt))
                        .then_some(c.payload_type)
                });
                if let (Some(ssrc), Some(payload_type)) = (rtx_ssrc, rtx_pt) {
                    pad = Some((ssrc, payload_type));
                }
            }
            chosen.push(pt);
        }
        if let Some(v) = self.viewer.as_mut() {
            let same = v.pad.is_some_and(|p| pad == Some((p.ssrc, p.payload_type)));
            if !same {
                v.pad = pad.map(|(ssrc, payload_type)| PadStream {
                    ssrc,
                    payload_type,
                    seq: rand::random(),
                    roc: 0,
                });
            }
        }
        chosen
    }

    /// A remote candidate. ICE-lite learns the client's addresses from its checks, so these
    /// are only validated and remembered by rtc.
    pub(crate) fn add_remote_candidate(&mut self, c: IceCandidate) -> Result<(), SfuError> {
        if c.candidate.is_empty() {
            return Ok(());
        }
        if !self.has_remote {
            if self.early_candidates.len() < 64 {
                self.early_candidates.push(c);
            }
            return Ok(());
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            url: None,
        };
        match self.pc.add_remote_candidate(init) {
            Ok(()) => Ok(()),
            // mDNS names (browsers hide host addresses) cannot be resolved here and are not
            // needed: the client's checks tell us its address.
            Err(e) if e.to_string().to_lowercase().contains("mdns") => Ok(()),
            Err(e) => Err(SfuError::BadCandidate(e.to_string())),
        }
    }

    pub(crate) fn close(&mut self, metrics: &Metrics) {
        let _ = self.pc.close();
        for inc in self.incoming.drain(..) {
            inc.feed.end();
            metrics.forwarders.fetch_sub(1, Ordering::SeqCst);
        }
        if !self.failed_reported {
            self.failed_reported = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_name_layers() {
        let cases: &[(&str, &[&str], u8)] = &[
            ("q", &["q", "h", "f"], 0),
            ("h", &["q", "h", "f"], 1),
            ("f", &["f", "h", "q"], 2),
            ("l", &["l", "m", "h"], 0),
            ("m", &["l", "m", "h"], 1),
            ("h", &["l", "m", "h"], 2),
            ("1", &["0", "1", "2"], 1),
            ("b", &["a", "b", "c"], 1),
            ("x", &["a", "b", "c", "d", "x"], 2),
        ];
        for (rid, rids, want) in cases {
            assert_eq!(layer_of(rid, rids), *want, "{rid} in {rids:?}");
        }
    }

    #[test]
    fn rtx_is_taken_out_of_simulcast_video_only() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\na=rtpmap:96 VP8/90000\r\n\
            a=rtcp-fb:96 nack\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
            a=rtcp-fb:97 nack\r\na=rtpmap:98 H264/90000\r\na=rid:q send\r\n\
            a=simulcast:send q;h;f\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\n\
            a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=ssrc-group:FID 1 2\r\n";
        let out = without_simulcast_rtx(sdp.to_owned());
        let sections: Vec<&str> = out.split("m=").collect();
        assert_eq!(sections.len(), 4, "{out}");
        assert!(sections[1].contains("opus"));
        let sim = sections[2];
        assert!(
            sim.starts_with("video 9 UDP/TLS/RTP/SAVPF 96 98\r\n"),
            "{sim}"
        );
        assert!(!sim.contains("rtx") && !sim.contains("apt=") && !sim.contains(":97"));
        assert!(sim.contains("a=rtcp-fb:96 nack") && sim.contains("a=simulcast:send q;h;f"));
        // Not simulcast: untouched.
        assert!(sections[3].contains("rtx/90000") && sections[3].contains("FID 1 2"));
        let plain = "v=0\r\nm=video 9 X 96 97\r\na=rtpmap:97 rtx/90000\r\n";
        assert_eq!(without_simulcast_rtx(plain.to_owned()), plain);
    }
}
