//! Active speaker through the real protocol (issue 20 item 5): a course leader in headless
//! Chromium speaks into a fake microphone (a warbling tone for 1.5 s, then 2.5 s of silence,
//! looped by Chromium); Chromium sends the RFC 6464 audio level in every Opus packet, the
//! engine decides who is speaking, and a participant (a webrtc-rs test client on the
//! WebSocket) is told `{"type": "speaking", "member_id": …, "speaking": true}` and later
//! `false` for the leader.

mod common;

use std::time::Instant;

use common::chromium::Chromium;
use common::*;
use kursrelay::protocol::Role;

/// 48 kHz mono 16-bit PCM: `voice_s` of a tone gliding 300–900 Hz (not stationary, so
/// Chromium's noise suppression keeps it), then `quiet_s` of silence.
fn voice_then_silence_wav(dir: &std::path::Path, voice_s: f64, quiet_s: f64) -> std::path::PathBuf {
    const RATE: u32 = 48_000;
    let voice = (voice_s * f64::from(RATE)) as usize;
    let total = voice + (quiet_s * f64::from(RATE)) as usize;
    let mut pcm = Vec::with_capacity(total * 2);
    let mut phase = 0f64;
    for i in 0..total {
        let t = i as f64 / f64::from(RATE);
        let f = 600.0 + 300.0 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
        phase += 2.0 * std::f64::consts::PI * f / f64::from(RATE);
        let s = if i < voice { 0.5 * phase.sin() } else { 0.0 };
        pcm.extend_from_slice(&((s * f64::from(i16::MAX)) as i16).to_le_bytes());
    }
    let wav = wav_mono16(RATE, &pcm);
    let path = dir.join("voice.wav");
    std::fs::write(&path, wav).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaking_leader_is_announced_to_the_room_and_so_is_the_silence() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = voice_then_silence_wav(dir.path(), 1.5, 2.5);
    let leader = server
        .token("speak", Role::Leader, Some("Kursleiar"), false)
        .await;
    let kari = TestPeer::join(&server, "speak", "Kari").await;
    let mut b = Chromium::launch_with_microphone(&wav).await;
    let base = format!("http://{}", server.addr);
    let lead = b.open(&format!("{base}/course.html#t={leader}")).await;
    b.eval(&lead, "kursrelay.start({}).then(() => true)").await;
    let started = Instant::now();

    let on = kari
        .wait_msg(|m| m["type"] == "speaking" && m["speaking"] == true)
        .await;
    let speaker = on["member_id"].as_str().unwrap().to_owned();
    assert_ne!(speaker, kari.member_id, "{on}");
    let off = kari
        .wait_msg(|m| {
            m["type"] == "speaking" && m["speaking"] == false && m["member_id"] == speaker.as_str()
        })
        .await;
    eprintln!(
        "speaking on/off seen {:?} after the leader started",
        started.elapsed()
    );
    // Changes only: no repeats of the same state in a row for the speaker.
    let states: Vec<bool> = kari
        .inbox()
        .iter()
        .filter(|m| m["type"] == "speaking" && m["member_id"] == speaker.as_str())
        .map(|m| m["speaking"].as_bool().unwrap())
        .collect();
    assert!(states.windows(2).all(|w| w[0] != w[1]), "{states:?} {off}");
    drop(b);
    server.shutdown().await;
}
