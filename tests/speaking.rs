//! Active speaker through the real protocol (issue 20 item 5): a course leader in headless
//! Chromium speaks into a fake microphone (a warbling tone for 1.5 s, then 2.5 s of silence,
//! looped by Chromium); Chromium sends the RFC 6464 audio level in every Opus packet, the
//! engine decides who is speaking, and a participant (a webrtc-rs test client on the
//! WebSocket) is told `{"type": "speaking", "member_id": …, "speaking": true}` and later
//! `false` for the leader.

mod common;
#[path = "common/voice.rs"]
mod voice;

use std::time::Instant;

use common::chromium::{Chromium, Page};
use common::*;
use kursrelay::protocol::Role;
use voice::voice_then_silence_wav;

/// A session `session` with Kari (a webrtc-rs participant) in it, and its leader in Chromium,
/// joined, speaking into a microphone of `voice_s` of voice and `quiet_s` of quiet, looped.
struct Course {
    server: TestServer,
    _wav_dir: tempfile::TempDir,
    kari: TestPeer,
    b: Chromium,
    lead: Page,
}

async fn leader_speaks(session: &str, voice_s: f64, quiet_s: f64) -> Course {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = voice_then_silence_wav(dir.path(), voice_s, quiet_s);
    let leader = server
        .token(session, Role::Leader, Some("Kursleiar"), false)
        .await;
    let kari = TestPeer::join(&server, session, "Kari").await;
    let mut b = Chromium::launch_with_microphone(&wav).await;
    let base = format!("http://{}", server.addr);
    let lead = b.open(&format!("{base}/course.html#t={leader}")).await;
    b.eval(&lead, "kursrelay.start({}).then(() => true)").await;
    Course {
        server,
        _wav_dir: dir,
        kari,
        b,
        lead,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaking_leader_is_announced_to_the_room_and_so_is_the_silence() {
    let Course {
        server,
        _wav_dir,
        kari,
        b,
        lead: _,
    } = leader_speaks("speak", 1.5, 2.5).await;
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

/// Someone who joins while a member speaks is told at once (right after `joined`); a speaking
/// member who goes (closes the page while talking) is followed by "stopped" for everyone: no
/// one is left marked as speaking by someone who is no longer there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_who_leaves_mid_sentence_is_announced_silent() {
    // Voice for far longer than the test: only the leaving can end it.
    let Course {
        server,
        _wav_dir,
        kari,
        mut b,
        lead,
    } = leader_speaks("speakleave", 60.0, 1.0).await;
    let on = kari
        .wait_msg(|m| m["type"] == "speaking" && m["speaking"] == true)
        .await;
    let speaker = on["member_id"].as_str().unwrap().to_owned();
    // Someone who joins mid-sentence is told right after `joined`, not at the next change.
    let ola = TestPeer::join(&server, "speakleave", "Ola").await;
    let told = ola
        .wait_msg(|m| {
            m["type"] == "speaking" && m["speaking"] == true && m["member_id"] == speaker.as_str()
        })
        .await;
    let order: Vec<String> = ola
        .inbox()
        .iter()
        .map(|m| m["type"].as_str().unwrap_or("").to_owned())
        .collect();
    let joined_at = order.iter().position(|t| t == "joined").expect("joined");
    let told_at = order
        .iter()
        .position(|t| t == "speaking")
        .expect("speaking");
    assert!(joined_at < told_at, "{order:?} {told}");
    b.close_tab(&lead).await;
    let left = Instant::now();
    for peer in [&kari, &ola] {
        peer.wait_msg(|m| {
            m["type"] == "speaking" && m["speaking"] == false && m["member_id"] == speaker.as_str()
        })
        .await;
    }
    eprintln!(
        "'stopped' {:?} after the speaker's tab closed",
        left.elapsed()
    );
    drop(b);
    server.shutdown().await;
}
