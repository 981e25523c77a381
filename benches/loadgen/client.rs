//! The generator's peers: a synthetic 720p publisher and subscribers that join through the real
//! signalling and ICE/DTLS, on `kursrelay-client` (typed messages, `Peer`). Counting
//! subscribers read only RTP headers (see `net`); sample subscribers decrypt everything and
//! read the send time from each payload.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kursrelay_client::protocol::{
    ClientMessage, PublishedTrackDesc, ServerMessage, Source, Target,
};
use kursrelay_client::{
    candidate_message, is_keyframe_request, ClientError, Peer, PeerOptions, Signalling,
    SignallingRx, SignallingTx,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
};
use webrtc::runtime::Runtime;

use crate::net::{CountingRuntime, SharedCounters};
use crate::shaper::Rate;

/// Microseconds since the generator started; publisher and samples share it.
pub fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

struct Handler {
    target: Target,
    candidates: mpsc::UnboundedSender<(Target, RTCIceCandidateInit)>,
    /// Sample subscribers record transit times here; counting ones only drain.
    transit: Option<Arc<Mutex<Vec<u32>>>>,
    epoch: Instant,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send((self.target, init));
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let transit = self.transit.clone();
        let epoch = self.epoch;
        tokio::spawn(async move {
            // Video payloads have two codec bytes before seq and time; audio none.
            let off = if track.kind().await == RtpCodecKind::Video {
                2
            } else {
                0
            };
            while let Some(ev) = track.poll().await {
                if let (TrackRemoteEvent::OnRtpPacket(p), Some(t)) = (ev, &transit) {
                    if p.payload.len() >= off + 12 {
                        let sent = u64::from_be_bytes(
                            p.payload[off + 4..off + 12].try_into().expect("8 bytes"),
                        );
                        let us = now_us(epoch).saturating_sub(sent);
                        t.lock()
                            .expect("transit lock")
                            .push(us.min(u32::MAX as u64) as u32);
                    }
                }
            }
        });
    }
}

/// A connection like the server's, on loopback, through `runtime` (counting, maybe capped).
async fn build_pc(runtime: Arc<dyn Runtime>, handler: Handler) -> anyhow::Result<Peer> {
    let options = PeerOptions::bind("127.0.0.1:0").with_runtime(runtime);
    Ok(Peer::new(Arc::new(handler), options).await?)
}

/// One joined subscriber; dropping `stop` (or cancelling it) leaves.
pub struct Subscriber {
    pub counters: SharedCounters,
    pub transit: Option<Arc<Mutex<Vec<u32>>>>,
    pub join_sent: Instant,
    /// Audio payload type from the offer, to tell audio from video streams.
    pub audio_pt: Arc<AtomicU64>,
    pub stop: CancellationToken,
    /// Behind a bandwidth cap (`--capped`).
    pub capped: bool,
}

impl Subscriber {
    /// Join → first video packet (the SFU starts video at a keyframe), if it came.
    pub fn join_to_keyframe(&self) -> Option<Duration> {
        let audio = self.audio_pt.load(Ordering::Relaxed) as u8;
        let c = self.counters.lock().expect("counters lock");
        c.streams
            .iter()
            .filter(|s| s.payload_type != audio)
            .map(|s| s.first_arrival.saturating_duration_since(self.join_sent))
            .min()
    }
}

/// Joins `session` as a subscriber. `sample` subscribers decrypt and measure transit; a
/// counting subscriber with a `cap` receives through a bandwidth limit (see `net`).
pub async fn subscribe(
    url: &str,
    token: &str,
    sample: bool,
    cap: Option<Rate>,
    epoch: Instant,
) -> anyhow::Result<Subscriber> {
    let mut ws = Signalling::connect(url).await?;
    let counters: SharedCounters = Arc::default();
    let transit = sample.then(|| Arc::new(Mutex::new(Vec::new())));
    let cap = cap.filter(|_| !sample);
    let runtime = CountingRuntime::capped((!sample).then(|| counters.clone()), cap);
    let stop = CancellationToken::new();
    let audio_pt = Arc::new(AtomicU64::new(111));
    let join_sent = Instant::now();
    ws.hello_join(token, None).await?;
    tokio::spawn(subscriber_task(
        ws,
        runtime,
        transit.clone(),
        epoch,
        stop.clone(),
        audio_pt.clone(),
    ));
    Ok(Subscriber {
        counters,
        transit,
        join_sent,
        audio_pt,
        stop,
        capped: cap.is_some(),
    })
}

async fn subscriber_task(
    ws: Signalling,
    runtime: Arc<dyn Runtime>,
    transit: Option<Arc<Mutex<Vec<u32>>>>,
    epoch: Instant,
    stop: CancellationToken,
    audio_pt: Arc<AtomicU64>,
) {
    let (mut tx, mut rx) = ws.split();
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let mut pc: Option<Peer> = None;
    // Candidates that come before the first offer (and so before the connection).
    let mut early = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = rx.recv() => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    // A message this client does not know (a newer server): not for it.
                    Err(ClientError::BadMessage(_)) => continue,
                    Err(e) => { eprintln!("signalling: {e}"); break; }
                };
                match msg {
                    ServerMessage::SubscribeOffer { sdp, .. } => {
                        if let Some(pt) = audio_payload_type(&sdp) {
                            audio_pt.store(pt as u64, Ordering::Relaxed);
                        }
                        if pc.is_none() {
                            let handler = Handler { target: Target::Subscribe, candidates: cand_tx.clone(), transit: transit.clone(), epoch };
                            match build_pc(runtime.clone(), handler).await {
                                Ok(p) => pc = Some(p),
                                Err(e) => { eprintln!("subscriber connection: {e}"); break; }
                            }
                        }
                        let p = pc.as_mut().expect("built above");
                        for c in early.drain(..) { let _ = p.add_candidate(&c).await; }
                        let Ok(answer) = p.answer(&sdp).await else { break };
                        if tx.send(&ClientMessage::SubscribeAnswer { sdp: answer }).await.is_err() { break; }
                    }
                    ServerMessage::IceCandidate { candidate, .. } => match pc.as_mut() {
                        Some(p) => { let _ = p.add_candidate(&candidate).await; }
                        None => early.push(candidate),
                    },
                    ServerMessage::Error { code, message, request } => {
                        eprintln!("server error: {code:?} {message} ({request:?})");
                    }
                    ServerMessage::Bye { .. } => break,
                    _ => {}
                }
            }
            Some((target, init)) = cand_rx.recv() => {
                if tx.send(&candidate_message(target, &init)).await.is_err() { break; }
            }
        }
    }
    let _ = tx.send(&ClientMessage::Leave).await;
    if let Some(p) = pc {
        p.close().await;
    }
}

fn audio_payload_type(sdp: &str) -> Option<u8> {
    sdp.lines()
        .find(|l| l.starts_with("m=audio"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|pt| pt.parse().ok())
}

/// The synthetic publisher's counters.
#[derive(Default)]
pub struct PublisherStats {
    pub video_packets: AtomicU64,
    pub audio_packets: AtomicU64,
    pub bytes: AtomicU64,
    pub plis: AtomicU64,
    pub keyframes: AtomicU64,
}

pub struct Publisher {
    pub stats: Arc<PublisherStats>,
    pub stop: CancellationToken,
}

/// Deterministic xorshift, so every run sends the same pattern.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// The video pattern: 30 fps at ~2 Mbit/s, a ~50 KB keyframe every 2.5 s (or on PLI, at most
/// one per second), 5–11 KB delta frames, packets of at most 1100 payload bytes.
const FPS: u64 = 30;
const MAX_PAYLOAD: usize = 1100;
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(2500);

/// Joins with a course leader's token and starts sending VP8 video + Opus audio.
pub async fn publish(url: &str, token: &str, epoch: Instant) -> anyhow::Result<Publisher> {
    let mut ws = Signalling::connect(url).await?;
    ws.hello_join(token, None).await?;
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let handler = Handler {
        target: Target::Publish,
        candidates: cand_tx,
        transit: None,
        epoch,
    };
    let mut pc = build_pc(CountingRuntime::shared(None), handler).await?;
    let make = |kind, mime: &str, clock, channels, fmtp: &str, ssrc: u32| {
        Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("loadgen-{ssrc}"),
            format!("loadgen-track-{ssrc}"),
            format!("loadgen-{ssrc}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: mime.into(),
                    clock_rate: clock,
                    channels,
                    sdp_fmtp_line: fmtp.into(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        )))
    };
    let (vssrc, assrc) = (0x1000_0001u32, 0x2000_0002u32);
    let video = make(RtpCodecKind::Video, "video/VP8", 90000, 0, "", vssrc);
    let audio = make(
        RtpCodecKind::Audio,
        "audio/opus",
        48000,
        2,
        "minptime=10;useinbandfec=1",
        assrc,
    );
    let conn = pc.connection().clone();
    let vsender = conn.add_track(video.clone() as Arc<dyn TrackLocal>).await?;
    let asender = conn.add_track(audio.clone() as Arc<dyn TrackLocal>).await?;
    let sdp = pc.offer().await?;
    let tracks = vec![
        PublishedTrackDesc {
            track_id: format!("loadgen-track-{vssrc}"),
            source: Source::Camera,
        },
        PublishedTrackDesc {
            track_id: format!("loadgen-track-{assrc}"),
            source: Source::Microphone,
        },
    ];
    ws.send(&ClientMessage::PublishOffer { sdp, tracks })
        .await?;

    // Signalling until the answer is applied; candidates keep flowing afterwards.
    let (mut tx, mut rx) = ws.split();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                match msg?.ok_or_else(|| anyhow::anyhow!("socket closed before publish_answer"))? {
                    ServerMessage::PublishAnswer { sdp } => {
                        pc.apply_answer(&sdp).await?;
                        break;
                    }
                    ServerMessage::IceCandidate { candidate, .. } => pc.add_candidate(&candidate).await?,
                    ServerMessage::Error { code, message, .. } => {
                        anyhow::bail!("server refused to publish: {code:?}: {message}")
                    }
                    _ => {}
                }
            }
            Some((target, init)) = cand_rx.recv() => {
                tx.send(&candidate_message(target, &init)).await?;
            }
        }
    }
    let vpt = vsender
        .get_parameters()
        .await?
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))
        .map(|c| c.payload_type)
        .unwrap_or(96);
    let apt = asender
        .get_parameters()
        .await?
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
        .map(|c| c.payload_type)
        .unwrap_or(111);

    let stats = Arc::new(PublisherStats::default());
    let stop = CancellationToken::new();
    let want_keyframe = Arc::new(AtomicBool::new(true));
    // Signalling after the answer: forward candidates, keep the socket (and so the member)
    // alive by reading it (the server's keepalive pings are answered while it is read).
    tokio::spawn(publisher_signalling(pc, tx, rx, cand_rx, stop.clone()));
    // Keyframe requests from the SFU.
    {
        let (video, stats, want, stop) = (
            video.clone(),
            stats.clone(),
            want_keyframe.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = video.poll() => match ev {
                        Some(TrackLocalEvent::OnRtcpPacket(p)) if is_keyframe_request(&p) => {
                            stats.plis.fetch_add(1, Ordering::Relaxed);
                            want.store(true, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        });
    }
    tokio::spawn(send_video(
        video,
        vpt,
        vssrc,
        stats.clone(),
        want_keyframe,
        stop.clone(),
        epoch,
    ));
    tokio::spawn(send_audio(
        audio,
        apt,
        assrc,
        stats.clone(),
        stop.clone(),
        epoch,
    ));
    Ok(Publisher { stats, stop })
}

/// The publisher's socket once it sends: candidates both ways until `stop`, then `leave`.
async fn publisher_signalling(
    mut pc: Peer,
    mut tx: SignallingTx,
    mut rx: SignallingRx,
    mut candidates: mpsc::UnboundedReceiver<(Target, RTCIceCandidateInit)>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = rx.recv() => match msg {
                Ok(Some(ServerMessage::IceCandidate { candidate, .. })) => {
                    let _ = pc.add_candidate(&candidate).await;
                }
                Ok(Some(_)) | Err(ClientError::BadMessage(_)) => {}
                // Only a closed or failed socket ends the member.
                Ok(None) | Err(_) => break,
            },
            Some((target, init)) = candidates.recv() => {
                if tx.send(&candidate_message(target, &init)).await.is_err() { break; }
            }
        }
    }
    let _ = tx.send(&ClientMessage::Leave).await;
    pc.close().await;
}

fn payload(codec_header: &[u8], seq: u32, sent_us: u64, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_slice(codec_header);
    b.put_u32(seq);
    b.put_u64(sent_us);
    b.resize(len.max(b.len()), 0xa5);
    b.freeze()
}

async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    pt: u8,
    ssrc: u32,
    stats: Arc<PublisherStats>,
    want_keyframe: Arc<AtomicBool>,
    stop: CancellationToken,
    epoch: Instant,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FPS));
    let (mut seq, mut frame): (u32, u64) = (0, 0);
    let mut last_key: Option<Instant> = None;
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
        let now = Instant::now();
        let due = last_key.is_none_or(|t| now - t >= KEYFRAME_INTERVAL);
        let asked = want_keyframe.load(Ordering::Relaxed)
            && last_key.is_none_or(|t| now - t >= Duration::from_secs(1));
        let key = due || asked;
        if key {
            want_keyframe.store(false, Ordering::Relaxed);
            last_key = Some(now);
            stats.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        let size = if key {
            rng.range(45_000, 55_000)
        } else {
            rng.range(5_000, 11_000)
        };
        let packets = size.div_ceil(MAX_PAYLOAD);
        for i in 0..packets {
            let len = if i + 1 == packets {
                size - MAX_PAYLOAD * i
            } else {
                MAX_PAYLOAD
            }
            .max(16);
            // VP8 descriptor: S on the first packet of a frame; VP8 header P bit 0 on keyframes.
            let desc = [
                if i == 0 { 0x10 } else { 0x00 },
                if key { 0x00 } else { 0x01 },
            ];
            let p = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: i + 1 == packets,
                    payload_type: pt,
                    sequence_number: seq as u16,
                    timestamp: (frame * 90_000 / FPS) as u32,
                    ssrc,
                    ..Default::default()
                },
                payload: payload(&desc, seq, now_us(epoch), len),
            };
            stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
            if track.write_rtp(p).await.is_ok() {
                stats.video_packets.fetch_add(1, Ordering::Relaxed);
            }
            seq = seq.wrapping_add(1);
        }
        frame += 1;
    }
}

async fn send_audio(
    track: Arc<TrackLocalStaticRTP>,
    pt: u8,
    ssrc: u32,
    stats: Arc<PublisherStats>,
    stop: CancellationToken,
    epoch: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seq: u32 = 0;
    loop {
        tokio::select! { _ = stop.cancelled() => return, _ = tick.tick() => {} }
        let p = rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: seq == 0,
                payload_type: pt,
                sequence_number: seq as u16,
                timestamp: seq.wrapping_mul(960),
                ssrc,
                ..Default::default()
            },
            payload: payload(&[], seq, now_us(epoch), 100),
        };
        if track.write_rtp(p).await.is_ok() {
            stats.audio_packets.fetch_add(1, Ordering::Relaxed);
        }
        seq = seq.wrapping_add(1);
    }
}
