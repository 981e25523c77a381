//! `kursrelay-captioner`: the reference captioner (README, "Automatic captions"). It joins a
//! session with a `captioner` invite's token over the normal protocol (WebSocket + WebRTC,
//! through `kursrelay-client`),
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
use kursrelay_client::protocol::{ClientMessage, Role, ServerMessage, Target};
use kursrelay_client::{candidate_message, Peer, PeerOptions, Signalling};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
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
    let mut ws = Signalling::connect(&args.server)
        .await
        .with_context(|| format!("connecting to {}", args.server))?;
    ws.hello_join(&token, None).await?;

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
    let handler = Arc::new(Handler {
        candidates: cand_tx,
        buffers: buffers.clone(),
    });
    let mut pc = Peer::new(handler, PeerOptions::bind(args.media_addr.clone())).await?;
    let (mut tx, mut rx) = ws.split();
    let mut last_partial = tokio::time::Instant::now() - PARTIAL_EVERY;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            msg = rx.recv() => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                };
                match msg {
                    ServerMessage::Joined { role, .. } => {
                        if role != Role::Captioner {
                            break Err(anyhow::anyhow!("this token is not a captioner invite's"));
                        }
                        eprintln!("kursrelay-captioner: joined; captions follow when the course leader turns them on");
                    }
                    ServerMessage::SubscribeOffer { sdp, .. } => {
                        let sdp = pc.answer(&sdp).await?;
                        tx.send(&ClientMessage::SubscribeAnswer { sdp }).await?;
                    }
                    ServerMessage::IceCandidate { candidate, .. } => {
                        let _ = pc.add_candidate(&candidate).await;
                    }
                    ServerMessage::Bye { reason } => {
                        eprintln!("kursrelay-captioner: the server ended the membership ({reason:?})");
                        break Ok(());
                    }
                    // A refused join ends the captioner; other errors (captions while they
                    // are off, a rate limit) only lose a line.
                    ServerMessage::Error { request: Some(request), message, .. }
                        if request == "join" || request == "hello" =>
                    {
                        break Err(anyhow::anyhow!("the server refused: {message}"));
                    }
                    _ => {}
                }
            }
            Some(init) = cand_rx.recv() => {
                tx.send(&candidate_message(Target::Subscribe, &init)).await?;
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
                tx.send(&ClientMessage::Caption { text, partial }).await?;
            }
        }
    };
    mixer.abort();
    pc.close().await;
    tx.close().await;
    outcome
}
