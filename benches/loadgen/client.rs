//! The generator's peers: a synthetic 720p publisher and subscribers that join through the real
//! signalling and ICE/DTLS. Counting subscribers read only RTP headers (see `net`); sample
//! subscribers decrypt everything and read the send time from each payload.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCSessionDescription,
};
use webrtc::runtime::Runtime;

use crate::net::{CountingRuntime, SharedCounters};
use crate::shaper::Rate;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Microseconds since the generator started; publisher and samples share it.
pub fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

struct Handler {
    target: &'static str,
    candidates: mpsc::UnboundedSender<(&'static str, RTCIceCandidateInit)>,
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

async fn build_pc(
    runtime: Arc<dyn Runtime>,
    handler: Handler,
) -> anyhow::Result<Arc<dyn PeerConnection>> {
    let (media_engine, registry) = kursrelay::sfu::media_setup()?;
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        .with_runtime(runtime)
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

fn candidate_json(init: &RTCIceCandidateInit) -> Value {
    json!({"candidate": init.candidate, "sdpMid": init.sdp_mid, "sdpMLineIndex": init.sdp_mline_index})
}

fn candidate_init(v: &Value) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: v["candidate"].as_str().unwrap_or_default().to_owned(),
        sdp_mid: v["sdpMid"].as_str().map(str::to_owned),
        sdp_mline_index: v["sdpMLineIndex"].as_u64().map(|i| i as u16),
        username_fragment: None,
        url: None,
    }
}

async fn hello_join(ws: &mut Ws, token: &str) -> anyhow::Result<()> {
    ws.send(Message::text(
        json!({"type": "hello", "version": 1}).to_string(),
    ))
    .await?;
    ws.send(Message::text(
        json!({"type": "join", "token": token}).to_string(),
    ))
    .await?;
    Ok(())
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
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let counters: SharedCounters = Arc::default();
    let transit = sample.then(|| Arc::new(Mutex::new(Vec::new())));
    let cap = cap.filter(|_| !sample);
    let runtime = CountingRuntime::capped((!sample).then(|| counters.clone()), cap);
    let stop = CancellationToken::new();
    let audio_pt = Arc::new(AtomicU64::new(111));
    let join_sent = Instant::now();
    hello_join(&mut ws, token).await?;
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
    ws: Ws,
    runtime: Arc<dyn Runtime>,
    transit: Option<Arc<Mutex<Vec<u32>>>>,
    epoch: Instant,
    stop: CancellationToken,
    audio_pt: Arc<AtomicU64>,
) {
    let (mut sink, mut stream) = ws.split();
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let mut pc: Option<Arc<dyn PeerConnection>> = None;
    let mut early = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            frame = stream.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, Some(Ok(_))) { continue } else { break }
                };
                let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                match msg["type"].as_str().unwrap_or_default() {
                    "subscribe_offer" => {
                        let sdp = msg["sdp"].as_str().unwrap_or_default().to_owned();
                        if let Some(pt) = audio_payload_type(&sdp) {
                            audio_pt.store(pt as u64, Ordering::Relaxed);
                        }
                        if pc.is_none() {
                            let handler = Handler { target: "subscribe", candidates: cand_tx.clone(), transit: transit.clone(), epoch };
                            match build_pc(runtime.clone(), handler).await {
                                Ok(p) => pc = Some(p),
                                Err(e) => { eprintln!("subscriber connection: {e}"); break; }
                            }
                        }
                        let p = pc.as_ref().expect("built above");
                        let Ok(offer) = RTCSessionDescription::offer(sdp) else { break };
                        if p.set_remote_description(offer).await.is_err() { break; }
                        for c in early.drain(..) { let _ = p.add_ice_candidate(c).await; }
                        let Ok(answer) = p.create_answer(None).await else { break };
                        if p.set_local_description(answer).await.is_err() { break; }
                        let Some(local) = p.local_description().await else { break };
                        let reply = json!({"type": "subscribe_answer", "sdp": local.sdp});
                        if sink.send(Message::text(reply.to_string())).await.is_err() { break; }
                    }
                    "ice_candidate" => {
                        let init = candidate_init(&msg["candidate"]);
                        match &pc {
                            Some(p) if p.remote_description().await.is_some() => { let _ = p.add_ice_candidate(init).await; }
                            _ => early.push(init),
                        }
                    }
                    "error" => eprintln!("server error: {}", msg),
                    "bye" => break,
                    _ => {}
                }
            }
            Some((target, init)) = cand_rx.recv() => {
                let msg = json!({"type": "ice_candidate", "target": target, "candidate": candidate_json(&init)});
                if sink.send(Message::text(msg.to_string())).await.is_err() { break; }
            }
        }
    }
    let _ = sink
        .send(Message::text(json!({"type": "leave"}).to_string()))
        .await;
    if let Some(p) = pc {
        let _ = p.close().await;
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
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    hello_join(&mut ws, token).await?;
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let handler = Handler {
        target: "publish",
        candidates: cand_tx,
        transit: None,
        epoch,
    };
    let pc = build_pc(CountingRuntime::shared(None), handler).await?;
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
    let vsender = pc.add_track(video.clone() as Arc<dyn TrackLocal>).await?;
    let asender = pc.add_track(audio.clone() as Arc<dyn TrackLocal>).await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow::anyhow!("no offer"))?
        .sdp;
    let tracks = json!([{"track_id": format!("loadgen-track-{vssrc}"), "source": "camera"},
                        {"track_id": format!("loadgen-track-{assrc}"), "source": "microphone"}]);
    ws.send(Message::text(
        json!({"type": "publish_offer", "sdp": sdp, "tracks": tracks}).to_string(),
    ))
    .await?;

    // Signalling until the answer is applied; candidates keep flowing afterwards.
    let (mut sink, mut stream) = ws.split();
    let mut early = Vec::new();
    loop {
        tokio::select! {
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    // Pings (answered by the WebSocket layer) and other control frames.
                    Some(Ok(_)) => continue,
                    _ => anyhow::bail!("socket closed before publish_answer"),
                };
                let msg: Value = serde_json::from_str(&text)?;
                match msg["type"].as_str().unwrap_or_default() {
                    "publish_answer" => {
                        let answer = RTCSessionDescription::answer(msg["sdp"].as_str().unwrap_or_default().to_owned())?;
                        pc.set_remote_description(answer).await?;
                        for c in early.drain(..) { pc.add_ice_candidate(c).await?; }
                        break;
                    }
                    "ice_candidate" => early.push(candidate_init(&msg["candidate"])),
                    "error" => anyhow::bail!("server refused to publish: {msg}"),
                    _ => {}
                }
            }
            Some((target, init)) = cand_rx.recv() => {
                let msg = json!({"type": "ice_candidate", "target": target, "candidate": candidate_json(&init)});
                sink.send(Message::text(msg.to_string())).await?;
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
    // Signalling after the answer: forward candidates, keep the socket (and so the member) alive.
    {
        let stop = stop.clone();
        let pc = pc.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    frame = stream.next() => {
                        // The server's keepalive pings arrive here too: only a closed or
                        // failed socket ends the member.
                        let text = match frame {
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(_)) => continue,
                            _ => break,
                        };
                        let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                        if msg["type"] == "ice_candidate" { let _ = pc.add_ice_candidate(candidate_init(&msg["candidate"])).await; }
                    }
                    Some((target, init)) = cand_rx.recv() => {
                        let msg = json!({"type": "ice_candidate", "target": target, "candidate": candidate_json(&init)});
                        if sink.send(Message::text(msg.to_string())).await.is_err() { break; }
                    }
                }
            }
            let _ = sink
                .send(Message::text(json!({"type": "leave"}).to_string()))
                .await;
            let _ = pc.close().await;
        });
    }
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
                        Some(TrackLocalEvent::OnRtcpPacket(p)) if kursrelay::sfu::keyframe::is_keyframe_request(&p) => {
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
