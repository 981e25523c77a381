//! `kursrelay-captioner`: the reference captioner (README, "Automatic captions"). It joins a
//! session with a `captioner` invite's token over the normal protocol (WebSocket + WebRTC),
//! receives the speech the room sends it (the teachers' and the floor-holder's microphones,
//! only while the course leader has automatic captions on), decodes each Opus track to
//! 16 kHz mono, mixes them, and pipes the PCM (signed 16-bit little-endian) into any
//! recogniser command given after `--`. Every line the recogniser prints becomes a caption;
//! a line starting with `~` is a partial one (the next line replaces it).
//!
//! Nothing of the media or the text is written to disk or to a log: audio goes only into the
//! recogniser's standard input, text only to the session. The recogniser's own standard
//! error is discarded unless `--show-recogniser-errors` is given (recognisers print what they
//! heard there).
//!
//! Opus is decoded with libopus (the `opus` crate, Debian's libopus-dev): one small C library
//! already on every machine with a browser, exact, and at 16 kHz directly (libopus resamples
//! internally), so no resampler is needed here.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCSessionDescription,
};

/// The recogniser's input rate and frame: 16 kHz mono, 20 ms.
const RATE: usize = 16_000;
const FRAME: usize = RATE / 50;
/// Audio kept per speaker when the recogniser reads slowly; older audio is dropped.
const MAX_BUFFERED: usize = RATE * 2;
/// Partial captions sent at most this often (the server limits messages per second).
const PARTIAL_EVERY: Duration = Duration::from_millis(300);

#[derive(Parser, Debug)]
#[command(
    name = "kursrelay-captioner",
    about = "Automatic captions for a kursrelay session from a local speech recogniser",
    after_help = "Example (English, Debian's pocketsphinx):\n  KURSRELAY_CAPTIONER_TOKEN=… kursrelay-captioner --server wss://kurs.example.no/ws -- \\\n    pocketsphinx_continuous -infile /dev/stdin -logfn /dev/null"
)]
struct Args {
    /// The server's WebSocket URL, e.g. wss://kurs.example.no/ws.
    #[arg(long)]
    server: String,
    /// The captioner invite's token (the part after `#t=` of its link). Prefer the
    /// environment variable or --token-file: a command line is visible to other users.
    #[arg(long, env = "KURSRELAY_CAPTIONER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Local address for media (UDP), e.g. 192.0.2.10:0.
    #[arg(long, default_value = "0.0.0.0:0")]
    media_addr: String,
    /// Let the recogniser's standard error through (for setting it up; recognisers may print
    /// what they heard there).
    #[arg(long)]
    show_recogniser_errors: bool,
    /// The recogniser: reads 16 kHz mono s16le PCM on stdin, prints lines of text.
    #[arg(last = true, required = true)]
    recogniser: Vec<String>,
}

/// Per speaking track: decoded 16 kHz samples waiting to be mixed.
type Buffers = Arc<Mutex<HashMap<String, VecDeque<i16>>>>;

struct Handler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    buffers: Buffers,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(init);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Runs in the connection's driver: decode elsewhere.
        tokio::spawn(decode_track(track, self.buffers.clone()));
    }
}

/// Reads one audio track until it ends, decoding every packet into its buffer.
async fn decode_track(track: Arc<dyn TrackRemote>, buffers: Buffers) {
    let id = track.track_id().await;
    let mut decoder = match opus::Decoder::new(RATE as u32, opus::Channels::Mono) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("kursrelay-captioner: cannot start the Opus decoder: {e}");
            return;
        }
    };
    // 120 ms, the longest Opus frame.
    let mut pcm = vec![0i16; RATE * 120 / 1000];
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(p) = ev else {
            continue;
        };
        if p.payload.is_empty() {
            continue;
        }
        let Ok(n) = decoder.decode(&p.payload, &mut pcm, false) else {
            continue; // a damaged packet: skip it, the next one decodes
        };
        let mut map = buffers.lock().unwrap_or_else(|e| e.into_inner());
        let buf = map.entry(id.clone()).or_default();
        buf.extend(&pcm[..n]);
        let excess = buf.len().saturating_sub(MAX_BUFFERED);
        buf.drain(..excess);
    }
    buffers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

/// Every 20 ms: one frame from every speaker, summed, into the recogniser. Silence when nobody
/// speaks, so the recogniser's voice-activity detection sees the end of a sentence.
async fn mix_into(mut stdin: tokio::process::ChildStdin, buffers: Buffers) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame = vec![0i32; FRAME];
    let mut bytes = Vec::with_capacity(FRAME * 2);
    loop {
        tick.tick().await;
        frame.iter_mut().for_each(|s| *s = 0);
        {
            let mut map = buffers.lock().unwrap_or_else(|e| e.into_inner());
            for buf in map.values_mut() {
                for (acc, s) in frame.iter_mut().zip(buf.drain(..FRAME.min(buf.len()))) {
                    *acc += i32::from(s);
                }
            }
        }
        bytes.clear();
        for s in &frame {
            let s = (*s).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        stdin
            .write_all(&bytes)
            .await
            .context("the recogniser stopped reading")?;
    }
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

fn token(args: &Args) -> anyhow::Result<String> {
    if let Some(t) = &args.token {
        return Ok(t.trim().to_owned());
    }
    if let Some(path) = &args.token_file {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        return Ok(t.trim().to_owned());
    }
    bail!("give the captioner invite's token in KURSRELAY_CAPTIONER_TOKEN or --token-file")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = token(&args)?;
    let (mut ws, _) = tokio_tungstenite::connect_async(args.server.as_str())
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(
        json!({"type": "hello", "version": kursrelay::protocol::VERSION}),
    ))
    .await?;
    ws.send(send(json!({"type": "join", "token": token})))
        .await?;

    let mut child = tokio::process::Command::new(&args.recogniser[0])
        .args(&args.recogniser[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if args.show_recogniser_errors {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the recogniser {}", args.recogniser[0]))?;
    let stdin = child.stdin.take().context("the recogniser's stdin")?;
    let stdout = child.stdout.take().context("the recogniser's stdout")?;
    let buffers: Buffers = Arc::default();
    let mixer = tokio::spawn(mix_into(stdin, buffers.clone()));
    let mut lines = BufReader::new(stdout).lines();

    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let (media_engine, registry) = kursrelay::sfu::media_setup()?;
    let pc: Arc<dyn PeerConnection> = Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                candidates: cand_tx,
                buffers: buffers.clone(),
            }))
            .with_udp_addrs(vec![args.media_addr.clone()])
            .build()
            .await?,
    );
    let mut early: Vec<RTCIceCandidateInit> = Vec::new();
    let mut last_partial = tokio::time::Instant::now() - PARTIAL_EVERY;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => break Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(e.into()),
                };
                let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
                match msg["type"].as_str().unwrap_or_default() {
                    "joined" => {
                        if msg["role"] != "captioner" {
                            break Err(anyhow::anyhow!("this token is not a captioner invite's"));
                        }
                        eprintln!("kursrelay-captioner: joined; captions follow when the course leader turns them on");
                    }
                    "subscribe_offer" => {
                        let sdp = msg["sdp"].as_str().unwrap_or_default().to_owned();
                        let offer = RTCSessionDescription::offer(sdp)?;
                        pc.set_remote_description(offer).await?;
                        for c in early.drain(..) {
                            let _ = pc.add_ice_candidate(c).await;
                        }
                        let answer = pc.create_answer(None).await?;
                        pc.set_local_description(answer).await?;
                        let sdp = pc.local_description().await.context("no answer")?.sdp;
                        ws.send(send(json!({"type": "subscribe_answer", "sdp": sdp}))).await?;
                    }
                    "ice_candidate" => {
                        let c = candidate_init(&msg["candidate"]);
                        if pc.remote_description().await.is_some() {
                            let _ = pc.add_ice_candidate(c).await;
                        } else {
                            early.push(c);
                        }
                    }
                    "bye" => {
                        eprintln!("kursrelay-captioner: the server ended the membership ({})", msg["reason"]);
                        break Ok(());
                    }
                    // A refused join ends the captioner; other errors (captions while they
                    // are off, a rate limit) only lose a line.
                    "error" if msg["request"] == "join" || msg["request"] == "hello" => {
                        break Err(anyhow::anyhow!("the server refused: {}", msg["message"]));
                    }
                    _ => {}
                }
            }
            Some(init) = cand_rx.recv() => {
                ws.send(send(json!({"type": "ice_candidate", "target": "subscribe", "candidate": candidate_json(&init)}))).await?;
            }
            line = lines.next_line() => {
                let Some(line) = line? else {
                    break Err(anyhow::anyhow!("the recogniser ended"));
                };
                let (partial, text) = match line.strip_prefix('~') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line.trim()),
                };
                if text.is_empty() {
                    continue;
                }
                let now = tokio::time::Instant::now();
                if partial {
                    if now.duration_since(last_partial) < PARTIAL_EVERY {
                        continue;
                    }
                    last_partial = now;
                }
                let text: String = text.chars().take(1000).collect();
                ws.send(send(json!({"type": "caption", "text": text, "partial": partial}))).await?;
            }
        }
    };
    mixer.abort();
    let _ = pc.close().await;
    let _ = ws.close(None).await;
    outcome
}
