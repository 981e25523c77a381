//! A fake microphone that speaks and then is quiet, for Chromium's
//! `--use-file-for-fake-audio-capture` (Chromium loops the file). Included with `#[path]` by the
//! tests that need it (tests/speaking.rs, tests/client_screens.rs), so tests/common/mod.rs
//! stays as it is.

use crate::common::wav_mono16;

/// 48 kHz mono 16-bit PCM: `voice_s` of a tone gliding 300–900 Hz (not stationary, so
/// Chromium's noise suppression keeps it), then `quiet_s` of silence; written to
/// `dir/voice.wav`.
pub fn voice_then_silence_wav(
    dir: &std::path::Path,
    voice_s: f64,
    quiet_s: f64,
) -> std::path::PathBuf {
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
