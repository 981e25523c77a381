//! The media engine's core in simulated time (in the style of str0m's tests): a real
//! webrtc-rs publisher and a real webrtc-rs subscriber connected *through the core* in memory
//! (`sfu::testing::Sim`) — ICE, DTLS, SRTP, the subscription negotiated with the engine's own
//! commands — with the test as the network and the clock. No socket, no thread, no sleep:
//! every test is deterministic and runs in well under a second of real time, whatever the
//! machine is doing. The simulcast and bandwidth-estimation work builds on these.

use std::time::Duration;

use kursrelay::protocol::Target;
use kursrelay::sfu::testing::Sim;

const FRAME: Duration = Duration::from_millis(33);
const TICKS_PER_FRAME: u32 = 3000;

fn sim() -> Sim {
    Sim::new().expect("publisher and subscriber connect through the core")
}

/// Sends one frame of `packets` packets starting at `seq`; returns the next sequence number.
fn frame(sim: &mut Sim, seq: u16, timestamp: u32, packets: u16, keyframe: bool) -> u16 {
    for i in 0..packets {
        sim.send_video(seq.wrapping_add(i), timestamp, i == 0, keyframe);
    }
    seq.wrapping_add(packets)
}

/// A subscriber that lost a packet NACKs it, and the core answers from the track cache with
/// the very same packet (same sequence number, decrypts under the same keys).
#[test]
fn a_lost_packet_is_answered_from_the_track_cache() {
    let mut sim = sim();
    sim.attach();
    let mut seq = 1000;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 5, true);
    sim.advance(FRAME);
    // Packet 1007 is lost on the way to the subscriber, once.
    sim.drop_to_subscriber(1007);
    for _ in 0..10 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 3, false);
        sim.advance(FRAME);
    }
    sim.advance(Duration::from_millis(500));
    let sent_1007 = sim
        .sent_to_subscriber()
        .iter()
        .filter(|(_, s)| *s == 1007)
        .count();
    assert_eq!(sent_1007, 2, "1007 sent once, lost, and sent again");
    let received: Vec<u16> = sim.received().iter().map(|r| r.seq).collect();
    assert!(
        received.contains(&1007),
        "the re-sent packet never reached the subscriber: {received:?}"
    );
    assert!(received.iter().all(|s| (1000..seq).contains(s)));
    let m = sim.metrics();
    assert!(m.nacks_answered.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(m.nacks_missed.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A newcomer joining mid-GOP gets the cached keyframe and everything since, at most
/// GOP_PACKETS_PER_TURN (64) per turn, then the live stream — no gap, no keyframe request.
#[test]
fn a_newcomer_gets_the_cached_gop_paced() {
    let mut sim = sim();
    // A 150-packet keyframe and 10 delta frames go out before anyone subscribes.
    let mut seq = 5000;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 150, true);
    for _ in 0..10 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 4, false);
        sim.advance(Duration::from_millis(2));
    }
    let gop_len = seq - 5000;
    let requests_before = sim.keyframe_requests().len();
    sim.attach();
    // The next live packet finds the newcomer: it starts from the cache.
    ts += TICKS_PER_FRAME;
    seq = frame(&mut sim, seq, ts, 1, false);
    let joined = sim.elapsed();
    assert_eq!(
        sim.metrics()
            .gop_joins
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    sim.advance(Duration::from_millis(200));
    let sent = sim.sent_to_subscriber();
    // Per turn (the core's periodic work, every 20 ms): at most 64 cached packets.
    let mut per_turn = std::collections::BTreeMap::<Duration, usize>::new();
    for (t, _) in sent {
        *per_turn.entry(*t).or_default() += 1;
    }
    assert!(
        per_turn.values().all(|n| *n <= 64),
        "a turn sent more than 64: {per_turn:?}"
    );
    assert!(
        per_turn.len() >= 3,
        "{} packets in {} turns",
        sent.len(),
        per_turn.len()
    );
    let seqs: Vec<u16> = sent.iter().map(|(_, s)| *s).collect();
    let expected: Vec<u16> = (5000..seq).collect();
    assert_eq!(
        seqs, expected,
        "the GOP ({gop_len} packets), then the live packet, in order"
    );
    assert!(per_turn.keys().all(|t| *t >= joined));
    assert_eq!(sim.received().len(), expected.len());
    assert_eq!(
        sim.keyframe_requests().len(),
        requests_before,
        "no keyframe request for a newcomer who got a GOP"
    );
}

/// A newcomer waiting for a keyframe asks on every packet; the publisher gets at most one
/// PLI per `keyframe_request_interval` (1 s here).
#[test]
fn keyframe_requests_are_paced_per_interval() {
    let mut sim = sim();
    // Setup sent keyframe starts; a fresh GOP-less stream: delta frames only, from a new
    // sequence range far from the setup's (the cache's GOP is pushed out).
    let mut seq = 30_000;
    let mut ts = 1_000_000;
    for _ in 0..2048 / 2 + 10 {
        seq = frame(&mut sim, seq, ts, 2, false);
        ts += TICKS_PER_FRAME;
    }
    sim.advance(Duration::from_millis(1100));
    let start = sim.elapsed();
    let before = sim.keyframe_requests().len();
    sim.attach();
    // 3.5 s of delta frames at 30 fps: the newcomer waits, and asks, all along.
    for _ in 0..105 {
        seq = frame(&mut sim, seq, ts, 2, false);
        ts += TICKS_PER_FRAME;
        sim.advance(FRAME);
    }
    let plis: Vec<Duration> = sim.keyframe_requests()[before..]
        .iter()
        .map(|t| *t - start)
        .collect();
    assert!(
        (3..=4).contains(&plis.len()),
        "{} keyframe requests in 3.5 s: {plis:?}",
        plis.len()
    );
    for pair in plis.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "two requests within a second: {plis:?}"
        );
    }
    assert!(
        sim.received().is_empty(),
        "nothing before a keyframe: {:?}",
        &sim.received()[..sim.received().len().min(3)]
    );
}

/// Clients that go silent (no check, no media, no RTCP) are reported failed once the
/// configured ICE timeouts (5 s + 25 s) have passed — not before.
#[test]
fn silent_clients_are_reported_failed_after_the_ice_timeouts() {
    let mut sim = sim();
    sim.advance(Duration::from_secs(2));
    sim.set_silent(true);
    sim.advance(Duration::from_secs(27));
    assert!(sim.failed().is_empty(), "failed early: {:?}", sim.failed());
    sim.advance(Duration::from_secs(4));
    let failed = sim.failed();
    for target in [Target::Publish, Target::Subscribe] {
        let at = failed
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("{target:?} not reported failed: {failed:?}"));
        // Judged every 250 ms (LIVENESS_EVERY): within one pass of the limit.
        let after = at - sim.last_heard(target);
        assert!(
            after >= Duration::from_secs(30) && after <= Duration::from_millis(30_251),
            "{target:?} failed {after:?} after its client was last heard"
        );
    }
    assert_eq!(failed.len(), 2, "reported once each: {failed:?}");
}

/// The publisher's sender reports reach the subscriber translated: the subscriber's own
/// SSRC, the publisher's RTP time (timestamps are forwarded unchanged), the down-track's own
/// packet count.
#[test]
fn sender_reports_are_translated_for_the_subscriber() {
    let mut sim = sim();
    sim.attach();
    let mut seq = 100;
    let mut ts = 90_000;
    seq = frame(&mut sim, seq, ts, 5, true);
    for _ in 0..150 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 2, false);
        sim.advance(FRAME);
    }
    let reports = sim.reports();
    assert!(
        !reports.is_empty(),
        "no sender report reached the subscriber in 5 s"
    );
    let ssrc = sim.down_ssrc();
    for r in reports {
        assert_eq!(r.ssrc, ssrc, "{r:?}");
        assert!(r.ntp_time != 0);
        assert!(r.packet_count >= 1 && r.packet_count <= sim.down_packets_sent());
        assert!(r.octet_count >= 900 * r.packet_count);
        // The publisher's RTP clock, near the timestamps it sent.
        assert!(
            r.rtp_time.abs_diff(ts) <= 6 * 90_000,
            "rtp time {} far from the stream's {ts}",
            r.rtp_time
        );
    }
    assert!(
        sim.metrics()
            .sender_reports
            .load(std::sync::atomic::Ordering::Relaxed)
            >= reports.len() as u64
    );
    let _ = seq;
}

/// Sequence numbers wrap (65535 → 0) and the SRTP rollover counter with them: the subscriber
/// decrypts every packet across the wrap, in order, and a NACK for a packet from before the
/// wrap is answered with the old rollover counter.
#[test]
fn sequence_numbers_and_the_rollover_counter_wrap() {
    let mut sim = Sim::with_first_seq(65_400).expect("connected");
    sim.attach();
    let mut seq: u16 = 65_500;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 3, true);
    sim.advance(FRAME);
    sim.drop_to_subscriber(65_534);
    for _ in 0..40 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 2, false);
        sim.advance(FRAME);
    }
    sim.advance(Duration::from_millis(300));
    assert_eq!(sim.down_roc(), 1, "the rollover counter did not move");
    let received: Vec<u16> = sim.received().iter().map(|r| r.seq).collect();
    let mut expected: Vec<u16> = (0..83u32).map(|i| (65_500 + i) as u16).collect();
    expected.sort_unstable();
    let mut got = received.clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, expected, "every packet decrypted across the wrap");
    assert!(
        received.contains(&65_534),
        "the NACKed packet from before the wrap"
    );
    assert_eq!(seq, 65_500u16.wrapping_add(83));
}

/// The sound packets the subscriber received since `t`, and the longest gap between two.
fn sound_since(sim: &Sim, t: Duration) -> (Vec<Duration>, Duration) {
    let sound: Vec<Duration> = sim
        .audio_received()
        .iter()
        .copied()
        .filter(|at| *at >= t)
        .collect();
    let gap = sound
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (sound, gap)
}

fn count(sim: &Sim, f: impl Fn(&kursrelay::sfu::Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(sim.metrics()).load(std::sync::atomic::Ordering::Relaxed)
}

fn times_sent(sim: &Sim, seq: u16) -> usize {
    sim.sent_to_subscriber()
        .iter()
        .filter(|(_, s)| *s == seq)
        .count()
}

/// Issue 20: the same NACKed packet is re-sent to a viewer at most once per repeat window
/// (250 ms, `engine::resend::NACK_REPEAT_WINDOW`), and a NACK for a packet that arrived more
/// than the jitter horizon (1 s) ago is not answered. Before, every NACK was answered.
#[test]
fn a_nack_is_answered_once_per_window_and_never_for_a_packet_too_old() {
    let mut sim = sim();
    sim.attach();
    let mut seq = 2000;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 5, true);
    // 1.5 s of video, 3 packets a frame.
    for _ in 0..45 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 3, false);
        sim.advance(FRAME);
    }
    let fresh = seq.wrapping_sub(2);
    assert_eq!(times_sent(&sim, fresh), 1);
    // The viewer asks for it four times within 100 ms (a receiver that does not know the
    // round trip asks again and again): one re-send.
    for _ in 0..4 {
        sim.nack(&[fresh]);
        sim.advance(Duration::from_millis(25));
    }
    assert_eq!(
        times_sent(&sim, fresh),
        2,
        "re-sent more than once in 100 ms"
    );
    assert_eq!(count(&sim, |m| &m.nacks_refused_repeat), 3);
    // After the window it is answered again (the first re-send may have been lost).
    sim.advance(Duration::from_millis(200));
    sim.nack(&[fresh]);
    sim.advance(Duration::from_millis(5));
    assert_eq!(times_sent(&sim, fresh), 3, "not answered after the window");
    // A packet from the first frames arrived ≈ 1.5 s ago: too old to help the viewer.
    let old = 2003;
    sim.nack(&[old]);
    sim.advance(Duration::from_millis(5));
    assert_eq!(times_sent(&sim, old), 1, "a packet 1.5 s old was re-sent");
    assert_eq!(count(&sim, |m| &m.nacks_refused_too_old), 1);
    assert_eq!(count(&sim, |m| &m.nacks_answered), 2);
}

/// Issue 20: re-sends to a viewer never exceed a quarter of the media bytes it is forwarded
/// (token bucket, `engine::resend`): a viewer that NACKs every packet it is sent — what a line
/// below the stream rate does — gets about one in four again, not all of them. The refusals
/// are counted in /metrics.
#[test]
fn re_sends_stay_within_a_quarter_of_what_the_viewer_is_forwarded() {
    let mut sim = sim();
    sim.attach();
    let mut seq = 7000;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 5, true);
    sim.advance(FRAME);
    // 4 s at 30 fps, 3 packets a frame; every packet is NACKed once, right after it is sent.
    for _ in 0..120 {
        ts += TICKS_PER_FRAME;
        let first = seq;
        seq = frame(&mut sim, seq, ts, 3, false);
        sim.advance(Duration::from_millis(3));
        let lost: Vec<u16> = (first..seq).collect();
        sim.nack(&lost);
        sim.advance(FRAME - Duration::from_millis(3));
    }
    sim.advance(Duration::from_millis(100));
    let forwarded = u64::from(sim.down_octets_sent());
    let answered = count(&sim, |m| &m.nacks_answered);
    let resent = answered * 900;
    assert!(
        resent <= forwarded / 4 + 900,
        "re-sent {resent} bytes for {forwarded} forwarded"
    );
    assert!(
        resent + 4 * 900 >= forwarded / 4,
        "the budget was not used: {resent} of {forwarded}"
    );
    let refused = count(&sim, |m| &m.nacks_refused_budget);
    assert_eq!(answered + refused, 360, "every NACK was judged once");
    let mut text = String::new();
    sim.metrics().render(&mut text);
    assert!(
        text.contains(&format!(
            "kursrelay_nacks_refused_total{{reason=\"budget\"}} {refused}"
        )),
        "{text}"
    );
}

/// Issue 20: a newcomer is not replayed a long cached GOP (here 3 s, ≈ 320 packets; Chromium's
/// were ≈ 16 s and 1 100 packets). The publisher is asked for a fresh keyframe and the
/// newcomer starts at it; a short GOP is still replayed (`a_newcomer_gets_the_cached_gop_paced`).
#[test]
fn a_newcomer_starts_at_a_fresh_keyframe_instead_of_a_long_gop() {
    let mut sim = sim();
    let mut seq = 9000;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 50, true);
    for _ in 0..90 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 3, false);
        sim.advance(FRAME);
    }
    let requests_before = sim.keyframe_requests().len();
    sim.attach();
    let joined = sim.elapsed();
    // Live delta frames go on; the newcomer gets none of them, and nothing from the cache.
    for _ in 0..3 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 3, false);
        sim.advance(FRAME);
    }
    assert_eq!(
        count(&sim, |m| &m.gop_joins),
        0,
        "the long GOP was replayed"
    );
    assert_eq!(count(&sim, |m| &m.gop_joins_skipped), 1);
    assert!(
        sim.sent_to_subscriber().is_empty(),
        "{} packets sent before the fresh keyframe",
        sim.sent_to_subscriber().len()
    );
    let asked: Vec<Duration> = sim.keyframe_requests()[requests_before..].to_vec();
    assert_eq!(asked.len(), 1, "one keyframe request: {asked:?}");
    assert!(asked[0] - joined <= Duration::from_millis(60), "{asked:?}");
    // The publisher answers with a keyframe: the newcomer starts there, in order.
    let key = seq;
    ts += TICKS_PER_FRAME;
    seq = frame(&mut sim, seq, ts, 20, true);
    for _ in 0..5 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 3, false);
        sim.advance(FRAME);
    }
    let sent: Vec<u16> = sim.sent_to_subscriber().iter().map(|(_, s)| *s).collect();
    let expected: Vec<u16> = (key..seq).collect();
    assert_eq!(
        sent, expected,
        "the fresh keyframe and what follows, nothing older"
    );
    assert_eq!(sim.received().first().map(|r| r.seq), Some(key));
}

/// Issue 20: keyframe requests are aggregated per published track. One viewer sending a PLI
/// every frame and other viewers asking as well reach the publisher as at most one PLI per
/// second — even with `media.keyframe_request_interval_ms` set below a second.
#[test]
fn keyframe_requests_reach_the_publisher_at_most_once_a_second_per_track() {
    let mut sim =
        Sim::with_keyframe_request_interval(Duration::from_millis(100)).expect("connected");
    sim.attach();
    let mut seq = 100;
    let mut ts = 0;
    seq = frame(&mut sim, seq, ts, 5, true);
    sim.advance(Duration::from_millis(1100));
    let start = sim.elapsed();
    let before = sim.keyframe_requests().len();
    // 5 s: every frame the viewer sends a PLI and two other viewers ask too.
    for _ in 0..150 {
        ts += TICKS_PER_FRAME;
        seq = frame(&mut sim, seq, ts, 2, false);
        sim.pli();
        sim.other_viewer_wants_keyframe();
        sim.other_viewer_wants_keyframe();
        sim.advance(FRAME);
    }
    assert!(count(&sim, |m| &m.keyframe_requests_received) >= 140);
    let plis: Vec<Duration> = sim.keyframe_requests()[before..]
        .iter()
        .map(|t| *t - start)
        .collect();
    assert!(
        (4..=6).contains(&plis.len()),
        "{} PLIs in 5 s: {plis:?}",
        plis.len()
    );
    for pair in plis.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "two PLIs within a second: {plis:?}"
        );
    }
}

/// A publisher sending three simulcast layers and a microphone (`Sim::simulcast`: rids q/h/f, each its own
/// SSRC, sequence numbers, timestamps and VP8 picture ids), answering each PLI of a layer with
/// a keyframe of that layer, as a browser's encoder does.
struct Simulcast {
    seq: [u16; 3],
    ts: [u32; 3],
    pid: [u16; 3],
    key_next: [bool; 3],
    plis_seen: [usize; 3],
}

impl Simulcast {
    fn new() -> Simulcast {
        Simulcast {
            seq: [100, 7_100, 14_100],
            ts: [10_000, 510_000, 1_010_000],
            pid: [100, 5_100, 10_100],
            key_next: [true; 3],
            plis_seen: [0; 3],
        }
    }

    /// One frame on every layer (lowest first: 2, 3 and 4 packets, a keyframe 2 more), then
    /// a frame's time passes.
    fn frame(&mut self, sim: &mut Sim) {
        self.send(sim, false);
        sim.send_audio();
        sim.advance(FRAME);
    }

    /// One frame on every layer of the first camera, or of the second (`Sim::two_cameras`).
    fn send(&mut self, sim: &mut Sim, second: bool) {
        for l in 0..3u8 {
            let i = usize::from(l);
            let plis = if second {
                sim.second_plis_for_layer(l).len()
            } else {
                sim.plis_for_layer(l).len()
            };
            if plis > self.plis_seen[i] {
                self.plis_seen[i] = plis;
                self.key_next[i] = true;
            }
            let key = std::mem::take(&mut self.key_next[i]);
            let n = 2 + u16::from(l) + if key { 2 } else { 0 };
            for k in 0..n {
                if second {
                    sim.send_second_layer(l, self.seq[i], self.ts[i], self.pid[i], k == 0, key);
                } else {
                    sim.send_layer(l, self.seq[i], self.ts[i], self.pid[i], k == 0, key);
                }
                self.seq[i] = self.seq[i].wrapping_add(1);
            }
            self.ts[i] = self.ts[i].wrapping_add(TICKS_PER_FRAME);
            self.pid[i] = (self.pid[i] + 1) & 0x7fff;
        }
    }

    fn run(&mut self, sim: &mut Sim, frames: usize) {
        for _ in 0..frames {
            self.frame(sim);
        }
    }
}

/// Issue 20, step 1: a publisher's three simulcast layers arrive as one track; the viewer
/// gets ONE stream (one SSRC) and is moved high → low → high (by its own "save data"
/// preference, so the line plays no part). Each switch happens at a
/// keyframe of the target layer (asked for with a PLI on that layer only), and the viewer
/// sees one continuous, decodable stream: sequence numbers without a gap, timestamps rising,
/// VP8 picture id and TL0PICIDX going up by one a frame across both switches.
#[test]
fn simulcast_layers_switch_only_at_keyframes_into_one_continuous_stream() {
    let mut sim = Sim::simulcast().expect("a simulcast publisher connects through the core");
    let mut pub_ = Simulcast::new();
    sim.attach();
    pub_.run(&mut sim, 30);
    assert_eq!(
        sim.down_layer(),
        Some(2),
        "a viewer starts on the top layer"
    );
    let high_until = sim.received().len();
    assert!(high_until > 0, "nothing reached the viewer");

    // The viewer asks to save data (lowest layer only), then no longer.
    sim.set_video_preference(None, true);
    pub_.run(&mut sim, 60);
    assert_eq!(sim.down_layer(), Some(0), "not moved down within 2 s");
    let low_until = sim.received().len();
    sim.set_video_preference(None, false);
    pub_.run(&mut sim, 60);
    assert_eq!(sim.down_layer(), Some(2), "not moved back up within 2 s");

    let got = sim.received();
    let ssrc = sim.down_ssrc();
    // The layers in the order the viewer got them: 2, then 0, then 2 — each run starting at
    // a keyframe of its layer.
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.ssrc, ssrc, "one outgoing SSRC: {r:?}");
        let layer = r.layer.expect("a tagged simulcast packet");
        if runs.last().map(|(l, _)| *l) != Some(layer) {
            assert!(
                r.keyframe,
                "switched to layer {layer} at a non-keyframe: {r:?}"
            );
            runs.push((layer, i));
        }
    }
    let order: Vec<u8> = runs.iter().map(|(l, _)| *l).collect();
    assert_eq!(order, vec![2, 0, 2], "layers as received");
    assert!(runs[1].1 >= high_until && runs[2].1 >= low_until);
    // Continuous: no gap, timestamps rise from frame to frame, picture ids count frames.
    for w in got.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(b.seq, a.seq.wrapping_add(1), "a gap: {a:?} → {b:?}");
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) < 0x8000_0000,
            "timestamp went back: {a:?} → {b:?}"
        );
        if b.timestamp != a.timestamp {
            let (pa, pb) = (a.picture_id.unwrap(), b.picture_id.unwrap());
            assert_eq!(pb, (pa + 1) & 0x7fff, "picture id: {a:?} → {b:?}");
            assert_eq!(
                b.tl0.unwrap(),
                a.tl0.unwrap().wrapping_add(1),
                "{a:?} → {b:?}"
            );
        } else {
            assert_eq!(a.picture_id, b.picture_id, "one frame, one picture id");
        }
    }
    let m = sim.metrics();
    assert_eq!(
        m.layer_switches.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // The publisher was asked for keyframes per layer, at most once a second per layer, and
    // never for the middle layer nobody wanted.
    assert!(
        sim.plis_for_layer(1).is_empty(),
        "{:?}",
        sim.plis_for_layer(1)
    );
    for l in [0, 2] {
        let plis = sim.plis_for_layer(l);
        assert!(!plis.is_empty() || l == 2);
        for w in plis.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_secs(1), "layer {l}: {plis:?}");
        }
    }
}

/// Issue 20, step 2: a viewer whose line drops to 300 kbit/s (a bottleneck with a 200 ms
/// drop-tail queue in front of it, as a weak home line) is moved from the top layer (≈ 0.9
/// Mbit/s here) to the lowest (≈ 0.15 Mbit/s) within a few seconds by its own transport-cc
/// feedback, stays there while the line stays weak — apart from a rare, backed-off try of the
/// next layer, which is how the estimate is probed — and climbs back to the top once the line
/// recovers, one step at a time. The viewer is told of changes only (`full` → `reduced` →
/// `full`, at most one short pause between).
#[test]
fn a_viewer_on_a_weak_line_moves_down_and_back_up_without_thrash() {
    let mut sim = Sim::simulcast().expect("connected");
    let mut pub_ = Simulcast::new();
    sim.attach();
    pub_.run(&mut sim, 90);
    assert_eq!(sim.down_layer(), Some(2));
    let (estimate, twcc) = sim.estimate().expect("a viewer estimate");
    assert!(
        twcc,
        "transport-cc feedback drives the estimate ({estimate} bit/s)"
    );

    sim.set_subscriber_line(Some((300_000, Duration::from_millis(200))));
    let weak = sim.elapsed();
    let mut down_after = None;
    let (mut frames_low, mut frames_after_down, mut tries) = (0, 0, 0);
    let mut last = sim.down_layer();
    for _ in 0..(20 * 30) {
        pub_.frame(&mut sim);
        let layer = sim.down_layer();
        if down_after.is_none() && layer == Some(0) {
            down_after = Some(sim.elapsed() - weak);
        }
        if down_after.is_some() {
            frames_after_down += 1;
            frames_low += u32::from(layer == Some(0));
            if last == Some(0) && layer != Some(0) {
                tries += 1;
            }
        }
        last = layer;
    }
    let (estimate, _) = sim.estimate().unwrap();
    eprintln!(
        "weak line: down after {down_after:?}, {frames_low} of {frames_after_down} frames on \
         the lowest layer since, {tries} tries up, estimate {estimate:.0} bit/s, {} datagrams \
         dropped by the line",
        sim.line_drops()
    );
    let down_after = down_after.expect("never moved to the lowest layer");
    assert!(down_after <= Duration::from_secs(5), "{down_after:?}");
    // Measured 408 of 545: the rest are the two tries of the middle layer, each
    // taken back when the line lost packets (the estimate alone grows while the line is not
    // used, docs/ARCHITECTURE.md "Known limits").
    assert!(
        frames_low * 10 >= frames_after_down * 7,
        "{frames_low} of {frames_after_down} frames on the lowest layer"
    );
    assert!(tries <= 2, "{tries} tries up in {:?}", sim.elapsed() - weak);

    sim.set_subscriber_line(None);
    let restored = sim.elapsed();
    let mut up_after = None;
    for _ in 0..(60 * 30) {
        pub_.frame(&mut sim);
        if sim.down_layer() == Some(2) {
            up_after = Some(sim.elapsed() - restored);
            break;
        }
    }
    let qualities = sim.qualities();
    eprintln!("restored: top layer after {up_after:?}; told {qualities:?}");
    let up_after = up_after.expect("never back on the top layer");
    assert!(up_after <= Duration::from_secs(45), "{up_after:?}");
    use kursrelay::sfu::VideoQuality::{Full, Reduced};
    let told: Vec<_> = qualities.iter().map(|(_, q)| *q).collect();
    // Told on changes only: full, reduced, and full again at the end. In between, while the
    // estimate settles below the line, a short pause may be told once (measured: one, 4 s,
    // with the 1.2 Mbit/s initial estimate).
    assert_eq!(told[..2], [Full, Reduced], "{qualities:?}");
    assert_eq!(told.last(), Some(&Full), "{qualities:?}");
    assert!(told.len() <= 5, "{qualities:?}");
}

/// Issue 20, step 2: on a line that does not carry even the lowest layer (100 kbit/s), the
/// viewer's video is paused and it is told so; the sound goes on (audio is never thinned for
/// video) — only a resume try, backed off (4 s, 8 s, 16 s …) and given up at once when it does
/// not fit, costs it a moment on the line; once the line recovers the picture comes back by
/// itself.
#[test]
fn below_the_lowest_layer_video_pauses_and_the_sound_goes_on() {
    use kursrelay::sfu::VideoQuality::Paused;
    let mut sim = Sim::simulcast().expect("connected");
    let mut pub_ = Simulcast::new();
    sim.attach();
    pub_.run(&mut sim, 60);
    assert!(!sim.audio_received().is_empty(), "no sound before the test");
    sim.set_subscriber_line(Some((100_000, Duration::from_millis(200))));
    let weak = sim.elapsed();
    let mut paused_at = None;
    let (mut frames_paused, mut frames_after) = (0u32, 0u32);
    for _ in 0..(30 * 30) {
        pub_.frame(&mut sim);
        if paused_at.is_none() && sim.down_layer().is_none() {
            paused_at = Some(sim.elapsed());
        }
        if paused_at.is_some() {
            frames_after += 1;
            frames_paused += u32::from(sim.down_layer().is_none());
        }
    }
    let paused_at = paused_at.expect("video was never paused");
    // Since the pause: the sound (one packet a frame) arrives, with at most a short gap.
    let (sound, gap) = sound_since(&sim, paused_at);
    eprintln!(
        "paused {:?} after the line dropped; since then {} of {frames_after} frames paused, \
         {} of {frames_after} audio packets arrived, longest gap {gap:?}",
        paused_at - weak,
        frames_paused,
        sound.len()
    );
    assert!(paused_at - weak <= Duration::from_secs(8), "{paused_at:?}");
    assert!(sim.qualities().iter().any(|(_, q)| *q == Paused));
    assert!(frames_paused * 10 >= frames_after * 8, "video kept trying");
    // Measured 97 % and a 0.4 s gap (98 % and 0.39 s with the pacer): each resume try floods this line for a
    // moment before it is taken back. Padding probes instead of trying the layer itself would
    // spare the sound (docs/ARCHITECTURE.md, "Known limits").
    assert!(
        sound.len() as u32 * 100 >= frames_after * 80,
        "{} audio packets for {frames_after} frames",
        sound.len()
    );
    assert!(
        gap <= Duration::from_millis(2500),
        "a {gap:?} gap in the sound"
    );

    sim.set_subscriber_line(None);
    let restored = sim.elapsed();
    let mut back = None;
    for _ in 0..(40 * 30) {
        pub_.frame(&mut sim);
        if sim.down_layer().is_some() {
            back = Some(sim.elapsed() - restored);
            break;
        }
    }
    eprintln!(
        "picture back {back:?} after the line recovered; told {:?}",
        sim.qualities()
    );
    assert!(
        back.is_some_and(|b| b <= Duration::from_secs(35)),
        "{back:?}"
    );
}

/// Issue 20, step 2: one viewer behind a congested line changes nothing for another viewer
/// of the same camera — it stays on the top layer with every packet in order — and the
/// publisher is asked for keyframes at most once a second per layer, however the congested
/// viewer's layer moves.
#[test]
fn one_congested_viewer_changes_nothing_for_another() {
    let mut sim = Sim::simulcast().expect("connected");
    let mut pub_ = Simulcast::new();
    sim.attach();
    let other = sim.add_viewer().expect("a second viewer");
    pub_.run(&mut sim, 60);
    assert_eq!(sim.other_layer(other), Some(2));
    let start = sim.elapsed();
    let seen_before = sim.other_received(other).len();
    sim.set_subscriber_line(Some((250_000, Duration::from_millis(200))));
    for _ in 0..(20 * 30) {
        pub_.frame(&mut sim);
        assert_eq!(sim.other_layer(other), Some(2), "at {:?}", sim.elapsed());
    }
    assert!(
        sim.down_layer() != Some(2),
        "the congested viewer stayed on the top layer"
    );
    let got = &sim.other_received(other)[seen_before..];
    assert!(got.len() >= 20 * 30 * 4, "{} packets in 20 s", got.len());
    for w in got.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{:?} → {:?}",
            w[0],
            w[1]
        );
        assert_eq!(w[1].layer, Some(2));
    }
    for layer in 0..3 {
        let plis: Vec<Duration> = sim
            .plis_for_layer(layer)
            .into_iter()
            .filter(|t| *t >= start)
            .collect();
        for w in plis.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_secs(1),
                "layer {layer}: {plis:?}"
            );
        }
        assert!(plis.len() <= 20, "layer {layer}: {plis:?}");
    }
}

/// Audio first on a line just above the middle layer (here ≈ 0.46 Mbit/s of video and
/// ≈ 0.03 of sound on a 0.56 Mbit/s line with a 200 ms drop-tail queue; the browser run at
/// 500 kbit/s concealed 12 % of its sound, BENCHMARKS.md): a viewer that joins on that line
/// gets its sound once the start has settled (≥ 99 % of packets, no gap over 400 ms), while
/// its video settles on a layer that fits and keeps room for the sound and re-sends.
/// Before the fix: 96.1 % and an 872 ms gap — rtc's GCC grows without bound
/// while the line carries the middle layer (25 Mbit/s after 40 s on this 0.56 Mbit/s line),
/// so the top layer was tried every hold, and each try kept flooding the line until the
/// middle layer's next keyframe. After: 99.2 %, a 360 ms gap (the one try left in the
/// window, stopped at once). With probes (`sfu::probe`): the top layer is probed with padding
/// instead of tried, never sent; 100 % of the sound, longest gap 72 ms
/// (`KURSRELAY_SIM_PROBES=false`: 99.1 %, 167 ms, 26 frames on the top layer).
#[test]
fn on_a_line_just_above_the_middle_layer_the_sound_arrives_whole() {
    let mut sim = Sim::simulcast().expect("connected");
    let mut pub_ = Simulcast::new();
    sim.set_subscriber_line(Some((560_000, Duration::from_millis(200))));
    sim.attach();
    let start = sim.elapsed();
    let mut layers = [0u32; 4];
    let settled = start + Duration::from_secs(6);
    let mut frames_settled = 0u32;
    for _ in 0..(40 * 30) {
        pub_.frame(&mut sim);
        if sim.elapsed() >= settled {
            frames_settled += 1;
            layers[usize::from(sim.down_layer().unwrap_or(3))] += 1;
        }
    }
    let (sound, gap) = sound_since(&sim, settled);
    let (estimate, twcc) = sim.estimate().unwrap();
    eprintln!(
        "after the first 6 s: {} audio packets for {frames_settled} frames, longest gap \
         {gap:?}; frames per layer (low, middle, top, none) {layers:?}; {} datagrams dropped \
         by the line; estimate {estimate:.0} bit/s (transport-cc {twcc}); told {:?}",
        sound.len(),
        sim.line_drops(),
        sim.qualities()
    );
    assert!(
        sound.len() as u32 * 100 >= frames_settled * 99,
        "{} audio packets for {frames_settled} frames",
        sound.len()
    );
    assert!(
        gap <= Duration::from_millis(400),
        "a {gap:?} gap in the sound"
    );
    // Video settles: mostly on one layer that fits, not paused.
    assert!(
        layers[3] * 10 <= frames_settled,
        "video paused for {} of {frames_settled} frames",
        layers[3]
    );
    // The top layer was probed, found not to fit, and never sent.
    let probes = count(&sim, |m| &m.probes);
    let failed = count(&sim, |m| &m.probes_failed);
    eprintln!("{probes} probes, {failed} found the line full");
    if std::env::var("KURSRELAY_SIM_PROBES").as_deref() != Ok("false") {
        assert!(
            probes >= 1 && failed >= 1,
            "{probes} probes, {failed} failed"
        );
        assert_eq!(layers[2], 0, "frames on the top layer: {layers:?}");
        assert!(
            sound.len() as u32 * 1000 >= frames_settled * 995,
            "{} audio packets for {frames_settled} frames",
            sound.len()
        );
    }
}

/// A publisher sending only the lowest simulcast layer 'q' (`Sim::simulcast_lowest_only`:
/// Chromium with a small camera) and a microphone; a keyframe first and then only when a PLI
/// of that layer asks for one (Chromium's own keyframes are many seconds apart).
struct LowestOnly {
    seq: u16,
    ts: u32,
    pid: u16,
    key_next: bool,
    plis_seen: usize,
}

impl LowestOnly {
    fn new() -> LowestOnly {
        LowestOnly {
            seq: 100,
            ts: 10_000,
            pid: 100,
            key_next: true,
            plis_seen: 0,
        }
    }

    fn frame(&mut self, sim: &mut Sim) {
        let plis = sim.plis_for_layer(0).len();
        if plis > self.plis_seen {
            self.plis_seen = plis;
            self.key_next = true;
        }
        let key = std::mem::take(&mut self.key_next);
        let n = if key { 5 } else { 3 };
        for k in 0..n {
            sim.send_layer(0, self.seq, self.ts, self.pid, k == 0, key);
            self.seq = self.seq.wrapping_add(1);
        }
        self.ts = self.ts.wrapping_add(TICKS_PER_FRAME);
        self.pid = (self.pid + 1) & 0x7fff;
        sim.send_audio();
        sim.advance(FRAME);
    }

    fn run(&mut self, sim: &mut Sim, frames: usize) {
        for _ in 0..frames {
            self.frame(sim);
        }
    }
}

/// tests/floor_browser.rs `hand_grant_revoke_grant_twice_in_the_browser` with simulcast on:
/// the floor given (the page publishes with rids q/h/f, only 'q' arrives), taken back (the
/// feed parks: read and thrown away), given again: the page offers again on the same publish
/// connection and the parked feed is published under a new track id. The viewer must get
/// the video again. `reoffer`: whether the publisher offers again before the re-publication
/// (the browser does; without it only the engine's part is tested).
///
/// Failed with `reoffer` before the rtc patch's second change (patches/rtc/KURSRELAY-PATCH.md):
/// the new offer made rtc's `start_rtp` rebuild the rid layers' receive codings with no SSRC,
/// and Chromium no longer writes mid/rid on a layer whose SSRC was acknowledged, so rtc could
/// not bind the layer again and dropped every packet before the engine saw it (0 packets,
/// none counted as discarded, no PLI). With mid/rid kept on every packet the same run passed.
fn park_and_publish_again(reoffer: bool) {
    let mut sim = Sim::simulcast_lowest_only().expect("connected");
    let mut cam = LowestOnly::new();
    sim.attach();
    cam.run(&mut sim, 60);
    let round0 = sim.received().len();
    assert!(round0 >= 20, "round 0: only {round0} video packets");
    // Chromium writes mid/rid only until its SSRC is acknowledged by the receiver's RTCP.
    sim.stop_rid_extensions();
    cam.run(&mut sim, 30);
    let before_park = sim.received().len();
    assert!(
        before_park >= round0 + 20,
        "packets without mid/rid are not forwarded: {} after {round0}",
        before_park
    );
    sim.park();
    cam.run(&mut sim, 90);
    let parked = sim.received().len();
    assert!(parked <= before_park + 5, "a parked feed was forwarded");
    if reoffer {
        sim.reoffer()
            .expect("the publisher's new offer is answered");
    }
    sim.republish().expect("the parked feed is published again");
    cam.run(&mut sim, 150);
    let round1 = sim.received().len() - parked;
    let m = sim.metrics();
    assert!(
        round1 >= 20,
        "round 1: {round1} video packets in 5 s (PLIs for q: {}, discarded {}, down layer {:?})",
        sim.plis_for_layer(0).len(),
        m.packets_discarded
            .load(std::sync::atomic::Ordering::Relaxed),
        sim.down_layer()
    );
}

#[test]
fn a_parked_simulcast_feed_given_the_floor_again_reaches_the_viewer() {
    park_and_publish_again(false);
}

#[test]
fn a_parked_simulcast_feed_given_the_floor_again_after_a_new_offer_reaches_the_viewer() {
    park_and_publish_again(true);
}

/// Issue 20 item 5: the publisher's microphone level (the RFC 6464 extension a browser puts in
/// every Opus packet) makes the engine tell the member task "speaking" after a quarter second
/// of voice, not during a short pause between words, and "stopped" after 0.8 s of silence.
#[test]
fn the_audio_level_tells_who_is_speaking_with_hysteresis() {
    let mut sim = Sim::simulcast().expect("a publisher with a microphone connects");
    let mut pub_ = Simulcast::new();
    sim.attach();
    pub_.run(&mut sim, 30); // 1 s of silence (level 127)
    assert!(sim.speaking().is_empty(), "{:?}", sim.speaking());
    sim.set_audio_level(30); // speech
    let voice_from = sim.now_since_start();
    pub_.run(&mut sim, 30);
    assert_eq!(sim.speaking().len(), 1, "{:?}", sim.speaking());
    let (at, speaking) = sim.speaking()[0];
    assert!(speaking);
    let after = at - voice_from;
    assert!(
        after >= Duration::from_millis(250) && after <= Duration::from_millis(400),
        "speaking after {after:?}"
    );
    // A 0.4 s pause between words: still speaking.
    sim.set_audio_level(127);
    pub_.run(&mut sim, 12);
    sim.set_audio_level(30);
    pub_.run(&mut sim, 15);
    assert_eq!(sim.speaking().len(), 1, "{:?}", sim.speaking());
    // Silence: stopped, once.
    sim.set_audio_level(127);
    let quiet_from = sim.now_since_start();
    pub_.run(&mut sim, 60);
    assert_eq!(sim.speaking().len(), 2, "{:?}", sim.speaking());
    let (at, speaking) = sim.speaking()[1];
    assert!(!speaking);
    let after = at - quiet_from;
    assert!(
        after >= Duration::from_millis(750) && after <= Duration::from_millis(1000),
        "stopped after {after:?}"
    );
}

/// Issue 21 item 6: the connectivity check is a connection of the engine itself, on the
/// media port: a data-channel client connects through the core, gets its `p` pings echoed
/// unchanged and a `d` burst of 1100-byte messages; the answer names only the transports
/// asked for; the engine closes the check after its lifetime.
#[test]
fn a_check_connection_on_the_media_port_echoes_and_bursts() {
    use kursrelay::sfu::testing::CheckSim;
    // The answer's candidates: all on the media port, all of the transport asked for.
    let only = |sim: &CheckSim, proto: &str| {
        let cands: Vec<&str> = sim
            .answer()
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .collect();
        let fits = |c: &&str| c.contains(&format!(" {proto} ")) && c.contains(" 50000 ");
        assert!(!cands.is_empty() && cands.iter().all(fits), "{cands:?}");
    };
    only(
        &CheckSim::new(false, true).expect("a TCP-only check answers"),
        "tcp",
    );
    let mut sim = CheckSim::new(true, false).expect("a UDP check answers");
    only(&sim, "udp");
    let took = sim
        .open()
        .expect("the check's channel opens through the core");
    eprintln!("check channel open after {took:?} (simulated)");
    let ping = b"p\x00\x00\x00\x07hello";
    assert_eq!(sim.echo(ping).expect("echo"), ping.to_vec());
    let (got, size) = sim.burst(200).expect("burst");
    assert_eq!((got, size), (200, kursrelay::sfu::BURST_MESSAGE_BYTES));
    assert_eq!(sim.connections(), 1);
    sim.advance(kursrelay::sfu::CHECK_LIFETIME);
    assert_eq!(sim.connections(), 0, "closed after its lifetime");
}

/// Issue 20, the pacer: a shared screen on a weak home line. Slides change rarely, but each
/// change is a keyframe of tens of KB; sent as fast as it arrives, it overflowed the queue in
/// front of a 400 kbit/s line (200 ms, 10 KB), the loss lowered the estimate and the viewer
/// lost the slides (BENCHMARKS.md, "Slides on a 400 kbit/s line"). Here a single-layer
/// screen share (5 fps, a 24 KB keyframe — 29 KB on the wire — every 3 s and whenever a PLI
/// asks, two packets otherwise) and the sound, behind that line: once the estimate has learnt
/// the line (the first 10 s), the viewer's pacer lets every keyframe through whole — the line
/// drops nothing — and the sound arrives whole and on time.
#[test]
fn a_slide_keyframe_passes_a_weak_line_paced() {
    let mut sim = Sim::simulcast_lowest_only().expect("connected");
    sim.set_subscriber_line(Some((400_000, Duration::from_millis(200))));
    sim.attach();
    let (mut seq, mut ts, mut pid) = (100u16, 10_000u32, 100u16);
    let mut plis_seen = 0;
    let mut key_next = true;
    let start = sim.elapsed();
    let settled = start + Duration::from_secs(10);
    let mut drops_at_settled = None;
    let mut keyframes_sent = 0u32;
    // 40 s in 20 ms steps: sound every step, a slide frame every 10th.
    for step in 0..2000u32 {
        if step % 10 == 0 {
            let plis = sim.plis_for_layer(0).len();
            if plis > plis_seen {
                plis_seen = plis;
                key_next = true;
            }
            let key = std::mem::take(&mut key_next) || step % 150 == 0;
            let n = if key { 80 } else { 2 };
            if key && sim.elapsed() >= settled {
                keyframes_sent += 1;
            }
            for k in 0..n {
                sim.send_layer(0, seq, ts, pid, k == 0, key);
                seq = seq.wrapping_add(1);
            }
            ts = ts.wrapping_add(18_000);
            pid = (pid + 1) & 0x7fff;
        }
        sim.send_audio();
        sim.advance(Duration::from_millis(20));
        if drops_at_settled.is_none() && sim.elapsed() >= settled {
            drops_at_settled = Some(sim.line_drops());
        }
    }
    let drops = sim.line_drops() - drops_at_settled.unwrap();
    let keyframes_received = sim.received().iter().filter(|r| r.keyframe).count();
    let (sound, gap) = sound_since(&sim, settled);
    let (estimate, twcc) = sim.estimate().unwrap();
    let m = sim.metrics();
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "after the first 10 s: {drops} datagrams dropped by the line ({} before), \
         {keyframes_sent} keyframes sent (the PLIs asked for {plis_seen} in all), \
         {keyframes_received} keyframe starts received in all; {} of 1500 audio packets, \
         longest gap {gap:?}; estimate {estimate:.0} bit/s (transport-cc {twcc}); \
         {} packets paced, {} pacer overflows",
        drops_at_settled.unwrap(),
        sound.len(),
        m.packets_paced.load(Relaxed),
        m.pacer_overflows.load(Relaxed),
    );
    assert!(twcc, "transport-cc drives the estimate");
    assert_eq!(
        drops, 0,
        "the line dropped {drops} datagrams after the first 10 s"
    );
    assert!(sound.len() >= 1490, "{} of 1500 audio packets", sound.len());
    assert!(
        gap <= Duration::from_millis(100),
        "a {gap:?} gap in the sound"
    );
}

/// Issue 20: the viewer's own order of importance. Two cameras (say the lecturer's and the
/// sign-language interpreter's) reach a viewer whose line carries the sound and ONE camera's
/// lowest layer, not two. In the server's own order the older camera keeps its picture and the
/// other is paused; once the viewer's page sends its own order (`video_preference.order`, the
/// interpreter first: its page knows which picture that is and that this viewer shows it
/// large), the interpreter gets the line and the lecturer's camera is paused instead. The
/// sound goes on throughout.
#[test]
fn the_viewers_own_order_decides_which_picture_a_weak_line_keeps() {
    const LINE: u64 = 280_000;
    let mut sim = Sim::two_cameras().expect("connected");
    let tracks = sim.camera_tracks();
    assert_eq!(tracks.len(), 2, "two cameras announced");
    let (mut lecturer, mut interpreter) = (Simulcast::new(), Simulcast::new());
    sim.attach();
    let frame = |sim: &mut Sim, a: &mut Simulcast, b: &mut Simulcast| {
        a.send(sim, false);
        b.send(sim, true);
        sim.send_audio();
        sim.advance(FRAME);
    };
    for _ in 0..90 {
        frame(&mut sim, &mut lecturer, &mut interpreter);
    }
    assert!(
        sim.down_layer().is_some() && sim.second_layer().is_some(),
        "both cameras reach the viewer on an open line"
    );
    // What each camera and the sound bring the viewer over the last `secs` seconds.
    let window = |sim: &mut Sim, a: &mut Simulcast, b: &mut Simulcast, secs: u32| {
        let (first, second) = (sim.received().len(), sim.second_received().len());
        let sound = sim.audio_received().len();
        for _ in 0..secs * 30 {
            frame(sim, a, b);
        }
        (
            sim.received().len() - first,
            sim.second_received().len() - second,
            sim.audio_received().len() - sound,
        )
    };
    sim.set_subscriber_line(Some((LINE, Duration::from_millis(200))));
    window(&mut sim, &mut lecturer, &mut interpreter, 20);
    let servers = window(&mut sim, &mut lecturer, &mut interpreter, 10);
    let layers_servers = (sim.down_layer(), sim.second_layer());
    eprintln!(
        "server's order: (lecturer, interpreter, sound) packets in 10 s {servers:?}, layers \
         {layers_servers:?}"
    );

    sim.set_preference(kursrelay::sfu::Preference {
        order: vec![tracks[1]],
        ..Default::default()
    });
    window(&mut sim, &mut lecturer, &mut interpreter, 20);
    let viewers = window(&mut sim, &mut lecturer, &mut interpreter, 10);
    let layers_viewers = (sim.down_layer(), sim.second_layer());
    eprintln!(
        "viewer's order: (lecturer, interpreter, sound) packets in 10 s {viewers:?}, layers \
         {layers_viewers:?}"
    );

    // A camera's lowest layer is 2 packets a frame: 600 in 10 s. The other camera may get a
    // try (its lowest layer for a second, taken back when the line loses packets).
    assert!(
        servers.0 >= 540 && servers.1 <= 120,
        "server's order: {servers:?}"
    );
    assert!(
        viewers.1 >= 540 && viewers.0 <= 120,
        "viewer's order: {viewers:?}"
    );
    // One sound packet a frame, 300 in 10 s: the sound goes on (a try costs it a few;
    // measured 278–279 without probes, 300 with them).
    assert!(
        servers.2 >= 265 && viewers.2 >= 265,
        "sound: {servers:?} {viewers:?}"
    );
    if std::env::var("KURSRELAY_SIM_PROBES").as_deref() != Ok("false") {
        // With probes the other camera is not tried on a line that cannot carry both (59
        // and 48 packets of tries without), and the sound loses nothing to them.
        assert!(
            servers.1 <= 10 && viewers.0 <= 10,
            "tries: {servers:?} {viewers:?}"
        );
        assert!(
            servers.2 >= 295 && viewers.2 >= 295,
            "sound: {servers:?} {viewers:?}"
        );
    }
}
