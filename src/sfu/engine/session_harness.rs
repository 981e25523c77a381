//! An *established* publish connection for the media fuzz target `media_session` (issue 14):
//! a webrtc-rs client (sans-IO rtc, full ICE, publishing VP8 and Opus) connects in memory to a
//! real engine connection through the engine's demultiplexer — ICE, DTLS and SRTP keys for
//! real — and then fuzzed plaintext RTP and RTCP is encrypted with the client's own SRTP keys
//! and fed in, so it passes authentication and reaches what a participant with a valid link
//! can reach: rtc's RTP and RTCP parsing, its interceptors, and the engine's handling of
//! tracks, NACKs, keyframe requests and sender reports. No socket, no thread.

use std::net::{IpAddr, SocketAddr};
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
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::conn::{Conn, Feedback};
use super::{mux, ConnKey, PublishShared};
use crate::ids::MemberId;
use crate::protocol::Target;
use crate::sfu::{MediaSettings, Metrics, PeerEvent};

/// The client's SSRCs and payload types (what the seeds use).
pub const VIDEO_SSRC: u32 = 0x1111_1111;
pub const AUDIO_SSRC: u32 = 0x2222_2222;

#[doc(hidden)]
pub struct MediaSessionHarness {
    conn: Conn,
    key: ConnKey,
    demux: mux::Demux<ConnKey>,
    local: SocketAddr,
    client_addr: SocketAddr,
    client: RTCPeerConnection,
    /// The client's outgoing SRTP context: encrypts what the fuzzer writes.
    srtp: rtc::srtp::context::Context,
    /// The same keys as a bare AES-GCM session key and salt (for headers rtc-srtp cannot
    /// encrypt).
    gcm: Option<(ring::aead::LessSafeKey, [u8; 12])>,
    metrics: Metrics,
    forwards: Vec<(Arc<crate::sfu::forwarder::Feed>, rtc::rtp::Packet)>,
    feedback: Feedback,
    _events: tokio::sync::mpsc::Receiver<PeerEvent>,
    /// Datagrams the server connection has sent (to the client), and the client to it.
    pub sent_by_server: u64,
    pub from_client: u64,
    /// RTP packets the connection read on a track it forwards.
    rtp_read: u64,
}

fn host(addr: SocketAddr) -> Result<rtc::peer_connection::transport::RTCIceCandidateInit, String> {
    super::conn::host_candidate(addr, false).map_err(|e| e.to_string())
}

fn track(
    kind: RtpCodecKind,
    ssrc: u32,
    mime: &str,
    clock_rate: u32,
    channels: u16,
) -> MediaStreamTrack {
    let id = format!("{ssrc:x}");
    MediaStreamTrack::new(
        "fuzz".into(),
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

impl MediaSessionHarness {
    /// Connects the client and the engine connection (ICE + DTLS, in memory, real time);
    /// an error if they are not connected within 10 s.
    pub fn new() -> Result<MediaSessionHarness, String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let settings = MediaSettings {
            bind_ips: vec![IpAddr::from([127, 0, 0, 1])],
            udp_port: 0,
            public_ips: vec![],
            ice_tcp: false,
            udp_candidates: true,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(25),
            keyframe_request_interval: Duration::from_secs(1),
        };
        let local = SocketAddr::from(([127, 0, 0, 1], 50000));
        let client_addr = SocketAddr::from(([127, 0, 0, 9], 41000));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut conn = Conn::new(
            &settings,
            &[(local, local)],
            Target::Publish,
            MemberId::new(),
            crate::sfu::ConnId::next(),
            tx,
            Some(Arc::new(PublishShared::default())),
        )
        .map_err(|x| e(&x))?;

        let mut me = MediaEngine::default();
        me.register_default_codecs().map_err(|x| e(&x))?;
        let registry =
            register_default_interceptors(Registry::new(), &mut me).map_err(|x| e(&x))?;
        let mut client = RTCPeerConnectionBuilder::new()
            .with_media_engine(me)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
                    .build(),
            )
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(|x| e(&x))?;
        client
            .add_track(track(
                RtpCodecKind::Video,
                VIDEO_SSRC,
                "video/VP8",
                90_000,
                0,
            ))
            .map_err(|x| e(&x))?;
        client
            .add_track(track(
                RtpCodecKind::Audio,
                AUDIO_SSRC,
                "audio/opus",
                48_000,
                2,
            ))
            .map_err(|x| e(&x))?;
        client
            .add_local_candidate(host(client_addr)?)
            .map_err(|x| e(&x))?;
        let offer = client.create_offer(None).map_err(|x| e(&x))?;
        client
            .set_local_description(Instant::now(), offer.clone())
            .map_err(|x| e(&x))?;
        let answer = conn
            .apply_offer(Instant::now(), offer.sdp)
            .map_err(|x| e(&x))?;
        client
            .set_remote_description(
                Instant::now(),
                RTCSessionDescription::answer(answer).map_err(|x| e(&x))?,
            )
            .map_err(|x| e(&x))?;
        client
            .add_remote_candidate(host(local)?)
            .map_err(|x| e(&x))?;

        let key = ConnKey { slot: 0, gen: 1 };
        let mut demux = mux::Demux::default();
        demux.add_ufrag(conn.ufrag().to_owned(), key);
        let mut h = MediaSessionHarness {
            conn,
            key,
            demux,
            local,
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
            metrics: Metrics::default(),
            forwards: Vec::new(),
            feedback: Feedback::default(),
            _events: rx,
            sent_by_server: 0,
            from_client: 0,
            rtp_read: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client_up = false;
        while !(client_up && h.conn.is_connected()) {
            let now = Instant::now();
            if now > deadline {
                return Err(format!(
                    "not connected in 10 s (client {client_up}, server {}; {} datagrams to the client, {} from it)",
                    h.conn.is_connected(),
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
                if d.transport.peer_addr == h.local {
                    out.push(d.message);
                }
            }
            for d in out {
                h.feed_raw(&d);
            }
            h.service(now);
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
            std::thread::sleep(Duration::from_millis(1));
        }
        let keys = h
            .client
            .srtp_keying_export()
            .ok_or("the client has no SRTP keys after connecting")?;
        use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile as P;
        use rtc::srtp::protection_profile::ProtectionProfile;
        let profile = match keys.profile {
            P::Srtp_Aead_Aes_128_Gcm => ProtectionProfile::AeadAes128Gcm,
            P::Srtp_Aes128_Cm_Hmac_Sha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            other => return Err(format!("unexpected SRTP profile {other:?}")),
        };
        if matches!(profile, ProtectionProfile::AeadAes128Gcm) {
            let mk: [u8; 16] = keys.local_master_key[..]
                .try_into()
                .map_err(|_| "a GCM master key of 16 bytes")?;
            let key = super::srtp::derive(&mk, &keys.local_master_salt, 0, 0);
            let mut salt = [0u8; 12];
            salt.copy_from_slice(&super::srtp::derive(&mk, &keys.local_master_salt, 2, 0)[..12]);
            h.gcm = Some((
                ring::aead::LessSafeKey::new(
                    ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key)
                        .map_err(|_| "an AES-128-GCM key")?,
                ),
                salt,
            ));
        }
        h.srtp = rtc::srtp::context::Context::new(
            &keys.local_master_key,
            &keys.local_master_salt,
            profile,
            None,
            None,
            &rtc::crypto::providers::RingCrypto,
        )
        .map_err(|x| e(&x))?;
        Ok(h)
    }

    /// One datagram from the client's address, as the engine takes it (demux, connection,
    /// events, reads, feedback, due timers); the server's answers go to the client. False if
    /// it was not routed or the connection refused it.
    pub fn feed_raw(&mut self, data: &[u8]) -> bool {
        let now = Instant::now();
        if self.demux.route(self.client_addr, data) != Ok(self.key) {
            return false;
        }
        let taken = self.conn.handle_datagram(
            now,
            self.local,
            self.client_addr,
            data,
            TransportProtocol::UDP,
        );
        self.service(now);
        taken
    }

    /// The server connection's due timers, its output (to the client), events and reads.
    fn service(&mut self, now: Instant) {
        // As the engine's deadline heap would: the connection's current deadline, once due.
        self.conn.next_deadline();
        if let Some(t) = self.conn.deadline().filter(|t| *t <= now) {
            self.conn.timer_due(t, now);
        }
        while let Some(out) = self.conn.poll_write() {
            let to = out.transport.peer_addr;
            if !self.demux.is_bound(&to) && self.conn.answers_check(to, &out.message) {
                self.demux.bind(to, self.key);
            }
            self.sent_by_server += 1;
            if to == self.client_addr {
                let _ = self.client.handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: self.client_addr,
                        peer_addr: self.local,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(&out.message[..]),
                });
            }
        }
        self.conn.poll_events(&self.metrics);
        self.conn.refresh_keys();
        self.conn
            .poll_reads(now, &self.metrics, &mut self.forwards, &mut self.feedback);
        self.rtp_read += self.forwards.len() as u64;
        self.forwards.clear();
        self.feedback.nacks.clear();
        self.feedback.reports.clear();
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
        self.conn.ssrcs_refused()
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    /// RTP packets the connection accepted (decrypted and read) so far.
    pub fn packets_received(&self) -> u64 {
        use std::sync::atomic::Ordering;
        self.rtp_read + self.metrics.packets_discarded.load(Ordering::Relaxed)
    }
}
