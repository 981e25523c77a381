//! Automatic captions end to end through the real audio path (issue 13): Debian's `espeak-ng`
//! speaks a known English sentence into a WAV file, Chromium sends it as the course leader's
//! microphone (`--use-file-for-fake-audio-capture`), the leader turns automatic captions on
//! with the console's button, the reference captioner (`kursrelay-captioner`) receives the
//! speech through kursrelay, decodes the Opus to 16 kHz PCM and pipes it into Debian's
//! `pocketsphinx` (en-us model), and a participant's page shows caption text with words of the
//! sentence, marked as automatic. Turned off, the captioner's audio stops at once.

// The server's test harness, shared by path: this test lives here, beside the binary it runs,
// because cargo builds a package's binaries for its own tests only (`CARGO_BIN_EXE_…`).
#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::chromium::Chromium;
use common::*;
use kursrelay::protocol::Role;

/// espeak-ng's "en" voice at 120 words a minute: pocketsphinx's en-us model reliably hears
/// "welcome to the" in it (tried by hand; the other words vary).
const SENTENCE: &str = "good morning everyone, welcome to the course";
const WORDS: &[&str] = &["welcome", "course", "morning", "everyone"];

/// The captioner process, killed when the test ends.
struct Captioner(Child);

impl Drop for Captioner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Speech with silence around it (0.5 s before, 2.5 s after), so the looped file has pauses
/// and the recogniser sees each sentence end. 16-bit mono WAV at espeak-ng's rate.
fn speech_wav(dir: &std::path::Path) -> std::path::PathBuf {
    let espeak = tools::require(
        "espeak-ng (captions test)",
        &["/usr/bin/espeak-ng"],
        "espeak-ng",
    );
    let raw = dir.join("spoken.wav");
    let status = Command::new(espeak)
        .args(["-v", "en", "-s", "120", "-w"])
        .arg(&raw)
        .arg(SENTENCE)
        .status()
        .expect("run espeak-ng");
    assert!(status.success());
    let wav = std::fs::read(&raw).unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    let rate = u32::from_le_bytes(wav[24..28].try_into().unwrap());
    assert_eq!(
        u16::from_le_bytes(wav[22..24].try_into().unwrap()),
        1,
        "mono"
    );
    // Find the data chunk.
    let mut at = 12;
    let data = loop {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            let end = (at + 8 + len).min(wav.len());
            break &wav[at + 8..end];
        }
        at += 8 + len;
    };
    let silence = |secs: f32| vec![0u8; (rate as f32 * secs) as usize * 2];
    let mut pcm = silence(0.5);
    pcm.extend_from_slice(data);
    pcm.extend(silence(2.5));
    let out = wav_mono16(rate, &pcm);
    let path = dir.join("speech.wav");
    std::fs::write(&path, out).unwrap();
    path
}

fn start_captioner(server: &TestServer, token: &str) -> Captioner {
    let recogniser = tools::require(
        "pocketsphinx (captions test)",
        &["/usr/bin/pocketsphinx_continuous"],
        "pocketsphinx",
    );
    tools::require(
        "pocketsphinx's en-us model (captions test)",
        &["/usr/share/pocketsphinx/model/en-us/en-us.lm.bin"],
        "pocketsphinx-en-us",
    );
    let child = Command::new(env!("CARGO_BIN_EXE_kursrelay-captioner"))
        .args([
            "--server",
            &server.ws_url(),
            "--media-addr",
            "127.0.0.1:0",
            "--",
        ])
        .arg(recogniser)
        .args(["-infile", "/dev/stdin", "-logfn", "/dev/null"])
        .env("KURSRELAY_CAPTIONER_TOKEN", token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start kursrelay-captioner");
    Captioner(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_words_reach_a_participant_as_automatic_captions() {
    let server = TestServer::spawn().await;
    let wav = speech_wav(server.dir.path());
    let leader = server
        .token("asr", Role::Leader, Some("Kursleiar"), false)
        .await;
    let kari = server
        .token("asr", Role::Participant, Some("Kari"), false)
        .await;
    let captioner = server
        .token("asr", Role::Captioner, Some("Talegjenkjenning"), false)
        .await;
    let mut b = Chromium::launch_with_microphone(&wav).await;
    let base = format!("http://{}", server.addr);
    let lead = b.open(&format!("{base}/course.html#t={leader}")).await;
    b.eval(&lead, "kursrelay.start({}).then(() => true)").await;
    let part = b.open(&format!("{base}/course.html#t={kari}")).await;
    b.eval(&part, "kursrelay.start({}).then(() => true)").await;

    let _asr = start_captioner(&server, &captioner);
    // The captioner is in the room as equipment; the leader's console says captions are off.
    b.wait_for(
        &lead,
        "((kursrelay.roster() || {}).members || []).some((m) => m.role === 'captioner')",
        20,
    )
    .await;
    let state = b
        .wait_for(
            &lead,
            "(() => { const s = document.getElementById('auto-captions-state').textContent; return s.length ? s : null; })()",
            10,
        )
        .await;
    let off = b
        .eval(&lead, "(kursrelay.roster() || {}).auto_captions")
        .await;
    assert_eq!(off, false, "automatic captions start off ({state})");
    // Nothing reaches the recogniser before the leader turns captions on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = b.eval(&part, "kursrelay.captions().length").await;
    assert_eq!(before, 0, "captions before they were turned on");

    // The leader turns them on with the console's button (keyboard and screen reader: a
    // plain button whose text says what it does).
    b.click(&lead, "#auto-captions").await;
    b.wait_for(
        &lead,
        "(kursrelay.roster() || {}).auto_captions === true",
        10,
    )
    .await;

    let words = serde_json::to_string(WORDS).unwrap();
    let found = b
        .wait_for(
            &part,
            &format!(
                "(() => {{ const words = {words}; const all = kursrelay.captions().join(' ').toLowerCase(); \
                 const hit = words.filter((w) => all.includes(w)); return hit.length ? {{hit, all}} : null; }})()"
            ),
            90,
        )
        .await;
    eprintln!("captions seen: {found}");
    // Marked as automatic on the page: a visible tag in the line.
    let marked = b
        .eval(
            &part,
            "(() => { const p = document.querySelector('#captions p.automatic'); return p ? p.querySelector('.auto-tag').textContent : null; })()",
        )
        .await;
    assert!(marked.is_string(), "no automatic caption line: {marked}");

    // How the captions look on a big screen and a phone.
    b.viewport(&part, 1920, 1080, false).await;
    b.screenshot(&part, "captions-automatic-1920x1080").await;
    b.viewport(&part, 390, 844, true).await;
    b.screenshot(&part, "captions-automatic-390x844").await;
    b.viewport(&lead, 1920, 1080, false).await;
    b.screenshot(&lead, "captions-leader-console-1920x1080")
        .await;

    // Turned off: the captioner's down-tracks are detached and no further caption arrives.
    b.click(&lead, "#auto-captions").await;
    b.wait_for(
        &lead,
        "(kursrelay.roster() || {}).auto_captions === false",
        10,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = b.eval(&part, "kursrelay.captions().length").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = b.eval(&part, "kursrelay.captions().length").await;
    assert_eq!(n, later, "captions kept coming after they were turned off");

    drop(_asr);
    b.eval(&part, "Promise.resolve(kursrelay.leave()).then(() => true)")
        .await;
    b.eval(&lead, "Promise.resolve(kursrelay.leave()).then(() => true)")
        .await;
    drop(b);
    assert!(
        wait_until(TIMEOUT, || server.live() == Default::default()).await,
        "left behind: {:?}",
        server.live()
    );
    server.shutdown().await;
}
