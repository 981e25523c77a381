//! The weak-line table of issue 20, as a measurement: a Chromium publisher (the leader's link,
//! a generated 720p camera with motion, the fake microphone) and one Chromium viewer at a time
//! behind a bandwidth-limited relay (`netsim::Shaper`: token bucket, 200 ms drop-tail queue,
//! server → viewer only), for each line speed in turn. What is recorded is the viewer's own
//! getStats (frames decoded per second, freezes, audio concealment, loss, NACKs), the
//! publisher's (what a real camera makes the encoder send) and the server's (/metrics: packets
//! forwarded, NACKs answered, keyframe requests; the relay: bytes the server aimed at the
//! viewer and what the line's queue dropped).
//!
//! Nothing here asserts speed. The full table is an ignored test, run by hand (BENCHMARKS.md,
//! "Weak lines"):
//!
//! ```sh
//! cargo test --test weak_line -- --ignored --nocapture weak_line_table
//! # KURSRELAY_WEAK_SECS=60 (per step, default 30), KURSRELAY_WEAK_STEPS=0,5000,1500,800,500,300
//! # (kbit/s; 0 = unlimited), KURSRELAY_WEAK_QUEUE_MS=200
//! ```
//!
//! The publisher is the page as users get it: web/media.js publishes three layers (q/h/f)
//! when the server's `joined` says `simulcast`, so the runner injects nothing.
//!
//! `slides_on_a_weak_line` (ignored, by hand) has the leader share a slide drawn on a canvas
//! (the page's screen capture replaced in the test) and looks at it through 400 kbit/s and
//! an open line: which of the screen's two full-size layers a viewer gets, and a screenshot.
//!
//! The normal `cargo test` runs the shaper's own unit tests and a smoke run (one step, a small
//! camera file, a few seconds) that only checks that something sane was measured, so the
//! runner does not rot while the media engine is rewritten.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::chromium::{Chromium, Page};
use common::netsim::shaper::{Queue, Rate, Shaper, Verdict};
use common::netsim::{self, Dir, Link};
use common::*;
use kursrelay::protocol::Role;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- the shaper, with made-up time ----

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 1 Mbit/s = 125 bytes per ms; a 1 250-byte burst; 100 ms of queue = 12 500 bytes.
fn one_mbit(queue: Queue) -> Rate {
    Rate {
        bits_per_sec: 1_000_000,
        burst_bytes: 1250,
        queue,
    }
}

fn leaves(v: Verdict) -> tokio::time::Instant {
    match v {
        Verdict::Leaves(at) => at,
        Verdict::Dropped => panic!("dropped"),
    }
}

#[test]
fn shaper_passes_a_burst_at_once_then_queues_at_the_rate() {
    let t0 = tokio::time::Instant::now();
    let mut s = Shaper::new(t0, one_mbit(Queue::Millis(100)));
    // The full bucket lets 1 250 bytes through at once.
    assert_eq!(s.offer(t0, 1250), Verdict::Leaves(t0));
    // Then each 1 250-byte datagram waits 10 ms more than the one before (125 B/ms).
    for k in 1..=10u64 {
        assert_eq!(leaves(s.offer(t0, 1250)), t0 + ms(10 * k), "datagram {k}");
    }
    assert_eq!(s.backlog(t0), 12_500);
    // The queue (100 ms = 12 500 bytes) is full: the next is dropped at the tail, and takes
    // no place in it.
    assert_eq!(s.offer(t0, 1250), Verdict::Dropped);
    assert_eq!(s.offer(t0, 1), Verdict::Dropped);
    assert_eq!((s.passed, s.dropped, s.dropped_bytes), (11, 2, 1251));
    // 30 ms later 3 750 bytes have drained, so exactly three more fit, each behind the last.
    let t = t0 + ms(30);
    assert_eq!(s.backlog(t), 8_750);
    for k in 1..=3u64 {
        assert_eq!(leaves(s.offer(t, 1250)), t0 + ms(100 + 10 * k));
    }
    assert_eq!(s.offer(t, 1250), Verdict::Dropped);
}

#[test]
fn shaper_sustains_exactly_its_rate_over_a_long_overload() {
    // 10 s of 2 Mbit/s offered to a 1 Mbit/s line: 1 000-byte datagrams every 4 ms.
    let t0 = tokio::time::Instant::now();
    let mut s = Shaper::new(t0, one_mbit(Queue::Millis(200)));
    let mut last = t0;
    for i in 0..2500u64 {
        if let Verdict::Leaves(at) = s.offer(t0 + ms(4 * i), 1000) {
            assert!(at >= last, "out of order at {i}");
            last = at;
        }
    }
    // What passed is the burst, the rate over the time and what the queue held; the rest
    // (about half) was dropped.
    let passed = s.passed_bytes as f64;
    let expected = 1250.0 + 125.0 * 9996.0 + 25_000.0;
    assert!(
        (passed - expected).abs() <= 1000.0,
        "{passed} vs {expected}"
    );
    assert!(s.dropped > 1200 && s.dropped < 1300, "{}", s.dropped);
    // No datagram waits longer than the queue's 200 ms.
    assert!(last <= t0 + ms(4 * 2499 + 200), "{:?}", last - t0);
}

#[test]
fn shaper_below_its_rate_delays_nothing() {
    // 500 kbit/s into a 1 Mbit/s line: every datagram leaves when it comes.
    let t0 = tokio::time::Instant::now();
    let mut s = Shaper::new(t0, one_mbit(Queue::Millis(200)));
    for i in 0..1000u64 {
        let at = t0 + ms(16 * i);
        assert_eq!(s.offer(at, 1000), Verdict::Leaves(at));
    }
    assert_eq!(s.dropped, 0);
}

#[test]
fn shaper_queue_in_bytes_and_a_rate_change() {
    let t0 = tokio::time::Instant::now();
    let mut s = Shaper::new(t0, one_mbit(Queue::Bytes(2500)));
    assert_eq!(s.offer(t0, 1250), Verdict::Leaves(t0));
    assert_eq!(leaves(s.offer(t0, 1250)), t0 + ms(10));
    assert_eq!(leaves(s.offer(t0, 1250)), t0 + ms(20));
    assert_eq!(s.offer(t0, 1250), Verdict::Dropped, "2 500 bytes queued");
    // The line drops to 500 kbit/s (62.5 B/ms) at 10 ms: the 1 250 bytes still queued then
    // drain in 20 ms, so a datagram offered at 10 ms leaves at 50 ms.
    let t = t0 + ms(10);
    s.set_rate(
        t,
        Rate {
            bits_per_sec: 500_000,
            ..one_mbit(Queue::Bytes(2500))
        },
    );
    assert_eq!(leaves(s.offer(t, 1250)), t0 + ms(50));
    // Idle for a second: the bucket is full again, but never more than its burst.
    let t = t0 + ms(1050);
    assert_eq!(s.backlog(t), 0);
    assert_eq!(s.offer(t, 1250), Verdict::Leaves(t));
    assert_eq!(leaves(s.offer(t, 1250)), t + ms(20));
}

#[test]
fn rate_kbps_is_a_200_ms_queue() {
    let r = Rate::kbps(800);
    assert_eq!(r.bits_per_sec, 800_000);
    assert_eq!(r.queue, Queue::Millis(200));
    assert_eq!(r.burst_bytes, 1500);
    assert_eq!(Rate::kbps(5000).burst_bytes, 6250);
}

// ---- a camera with motion ----

/// A Y4M (4:2:0) file of `frames` frames that loop without a jump: a drifting diagonal
/// gradient, fine texture scrolling both ways, bright shapes on circles and per-pixel sensor
/// noise, so VP8 has to spend what a real camera makes it spend. Written once per set of
/// parameters under target/weak-line/ (never committed: 1280×720 is 1.38 MB a frame).
fn camera_file(width: usize, height: usize, fps: u32, frames: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/weak-line");
    std::fs::create_dir_all(&dir).expect("target/weak-line");
    let path = dir.join(format!("camera-{width}x{height}-{fps}fps-{frames}.y4m"));
    let header = format!("YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n");
    let frame_len = width * height * 3 / 2;
    let size = (header.len() + frames * (6 + frame_len)) as u64;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
        return path;
    }
    let tmp = dir.join(format!("{}.{}.tmp", path.display(), std::process::id()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create y4m"));
    out.write_all(header.as_bytes()).expect("write y4m");
    let mut frame = vec![0u8; frame_len];
    let mut seed: u32 = 0x9e37_79b9;
    let tau = std::f64::consts::TAU;
    for f in 0..frames {
        let phase = f as f64 / frames as f64; // 0 → 1 over the loop
        let shift = (phase * width as f64) as usize; // one screen width per loop
        let (y_plane, uv) = frame.split_at_mut(width * height);
        // Shapes: three discs on circles, one of them twice round per loop.
        let discs: Vec<(f64, f64, f64)> = (0..3)
            .map(|k| {
                let a = tau * phase * (1 + k % 2) as f64 + k as f64 * 2.1;
                let cx = width as f64 * (0.5 + 0.3 * a.cos());
                let cy = height as f64 * (0.5 + 0.3 * a.sin());
                (cx, cy, height as f64 * (0.08 + 0.03 * k as f64))
            })
            .collect();
        for y in 0..height {
            for x in 0..width {
                // A diagonal gradient drifting right.
                let g = ((x + shift) % width + y) * 200 / (width + height);
                // Fine texture: a checker of 4-pixel cells scrolling left in the top half,
                // right in the bottom half.
                let xs = if y < height / 2 {
                    x + shift
                } else {
                    x + width - shift
                };
                let texture = if ((xs / 4) + (y / 4)) % 2 == 0 { 16 } else { 0 };
                let mut v = 16 + g as i32 + texture;
                for (cx, cy, r) in &discs {
                    let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                    if dx * dx + dy * dy < r * r {
                        v = 235 - (texture / 2);
                    }
                }
                // Sensor noise, ±2.
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                v += (seed % 5) as i32 - 2;
                y_plane[y * width + x] = v.clamp(0, 255) as u8;
            }
        }
        let (cw, ch) = (width / 2, height / 2);
        let (u_plane, v_plane) = uv.split_at_mut(cw * ch);
        for y in 0..ch {
            for x in 0..cw {
                let a = tau * (phase + x as f64 / cw as f64);
                u_plane[y * cw + x] = (128.0 + 60.0 * a.sin()) as u8;
                v_plane[y * cw + x] = (128.0 + 60.0 * (a + y as f64 / ch as f64 * 3.0).cos()) as u8;
            }
        }
        out.write_all(b"FRAME\n").expect("write y4m");
        out.write_all(&frame).expect("write y4m");
    }
    out.flush().expect("write y4m");
    drop(out);
    std::fs::rename(&tmp, &path).expect("rename y4m");
    path
}

// ---- the runner ----

struct Setup {
    /// Line speeds toward the viewer, kbit/s; 0 = no limit.
    steps: Vec<u64>,
    /// How long each step is measured, from the viewer's join.
    secs: u64,
    queue_ms: u64,
    camera: PathBuf,
    camera_width: u64,
    camera_fps: f64,
}

/// One step's figures.
#[derive(Debug, Default)]
struct Row {
    kbps: u64,
    secs: f64,
    fps: f64,
    width: u64,
    height: u64,
    /// From the join to the first decoded frame (NaN: none came), and the time after it in
    /// which no new frame was decoded (250 ms samples).
    first_frame_s: f64,
    stalled_s: f64,
    freezes: f64,
    frozen_s: f64,
    concealed_pct: f64,
    audio_samples: f64,
    lost: f64,
    nacks: f64,
    plis: f64,
    /// Bytes the server aimed at the viewer (counted at the relay, before the line's queue),
    /// and what the queue dropped.
    aimed_mbps: f64,
    queue_dropped: u64,
    queue_offered: u64,
    forwarded: f64,
    nacks_answered: f64,
    keyframes_to_publisher: f64,
    /// The publisher over the window: what it sent, its size and frame rate.
    pub_mbps: f64,
    pub_width: u64,
    pub_fps: f64,
    pub_limit: String,
    pub_keyframes: f64,
    /// The server's gauges at the end of the step: viewers whose estimate transport-cc
    /// drives, receiver reports drive, a REMB caps.
    estimated_by: (f64, f64, f64),
}

impl Row {
    fn line(&self) -> String {
        if self.kbps == 0 {
            "unlimited".into()
        } else if self.kbps >= 1000 {
            format!("{} Mbit/s", self.kbps as f64 / 1000.0)
        } else {
            format!("{} kbit/s", self.kbps)
        }
    }

    fn markdown(&self) -> String {
        format!(
            "| {} | {:.1} | {}×{} | {} | {:.1} s | {:.0} / {:.1} s | {:.1} % | {:.0} | {:.0} | {:.0} | {:.2} Mbit/s, {:.0} re-sent | {} of {} | {:.0} | {:.2} Mbit/s {}p {:.0} fps ({}) |",
            self.line(),
            self.fps,
            self.width,
            self.height,
            if self.first_frame_s.is_nan() {
                "never".to_owned()
            } else {
                format!("{:.1} s", self.first_frame_s)
            },
            self.stalled_s,
            self.freezes,
            self.frozen_s,
            self.concealed_pct,
            self.lost,
            self.nacks,
            self.plis,
            self.aimed_mbps,
            self.nacks_answered,
            self.queue_dropped,
            self.queue_offered,
            self.keyframes_to_publisher,
            self.pub_mbps,
            self.pub_height(),
            self.pub_fps,
            self.pub_limit,
        )
    }

    fn pub_height(&self) -> u64 {
        self.pub_width * 9 / 16
    }
}

const TABLE_HEAD: &str = "| line | fps decoded | size | first picture after | no new picture for | freezes / frozen | audio concealed | packets lost | NACKs sent | PLIs sent | server → viewer (re-sends) | dropped by the line's queue | keyframe requests to the publisher | publisher sent |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The server's /metrics, unlabelled series only (names kept whatever the engine calls them).
async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("GET /metrics");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read /metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn delta(a: &HashMap<String, f64>, b: &HashMap<String, f64>, name: &str) -> f64 {
    b.get(name).copied().unwrap_or(f64::NAN) - a.get(name).copied().unwrap_or(f64::NAN)
}

/// Sums field `k` over the stats objects of `type_` and `kind`.
fn sum(stats: &[Value], type_: &str, kind: &str, k: &str) -> f64 {
    stats
        .iter()
        .filter(|s| s["type"] == type_ && s["kind"] == kind)
        .map(|s| s[k].as_f64().unwrap_or(0.0))
        .sum()
}

fn max(stats: &[Value], type_: &str, kind: &str, k: &str) -> f64 {
    stats
        .iter()
        .filter(|s| s["type"] == type_ && s["kind"] == kind)
        .map(|s| s[k].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max)
}

/// What the publisher's getStats say besides its rate, and its estimate of the line (bit/s).
struct Note(String, f64);

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const SAMPLE: Duration = Duration::from_millis(250);

struct Rig {
    server: TestServer,
    relay: netsim::UdpRelay,
    browser: Chromium,
    base: String,
}

impl Rig {
    async fn start(camera: &Path) -> Rig {
        // KURSRELAY_WEAK_PACER=false: the same run without the pacer (an A/B in one build).
        let pacer: bool = env_or("KURSRELAY_WEAK_PACER", true);
        // KURSRELAY_WEAK_PROBES=false: steps up tried without a probe first.
        let probes: bool = env_or("KURSRELAY_WEAK_PROBES", true);
        let server = TestServer::spawn_with(&format!(
            "[media]\nbind_ips = [\"127.0.0.1\"]\npublic_ips = [\"127.0.0.2\"]\ntransports = [\"udp\"]\npacer = {pacer}\nprobes = {probes}\n",
        ))
        .await;
        let media = server.state.sfu.media_addrs()[0];
        let relay = netsim::UdpRelay::start(
            std::net::SocketAddr::new([127, 0, 0, 2].into(), media.port()),
            media,
        )
        .await
        .expect("relay on 127.0.0.2");
        let browser = Chromium::launch_with(&[
            "--autoplay-policy=no-user-gesture-required".to_owned(),
            // The slide test's canvas is drawn on a timer in the leader's tab, which is in
            // the background while a viewer's tab is in front: keep its timers at full rate.
            "--disable-background-timer-throttling".to_owned(),
            "--disable-renderer-backgrounding".to_owned(),
            "--disable-backgrounding-occluded-windows".to_owned(),
            format!("--use-file-for-fake-video-capture={}", camera.display()),
        ])
        .await;
        let base = format!("http://{}", server.addr);
        Rig {
            server,
            relay,
            browser,
            base,
        }
    }

    async fn tab(&mut self, role: Role, name: &str) -> Page {
        let token = self
            .server
            .token("weak-line", role, Some(name), false)
            .await;
        let page = if role == Role::Leader {
            "publish"
        } else {
            "watch"
        };
        let tab = self
            .browser
            .open_tracked(&format!("{}/{page}.html#t={token}", self.base))
            .await;
        let started = self.browser.eval(&tab, "kursrelay.start({})").await;
        assert!(started.get("role").is_some(), "{started}");
        tab
    }

    /// A participant's page at home (`w`×`h`, a phone when upright) behind a line of `kbps`
    /// (0: no limit) with a 200 ms queue, server → viewer; opened, not started.
    async fn viewer_at_home(&mut self, kbps: u64, w: u32, h: u32) -> (std::sync::Arc<Link>, Page) {
        let link = Link::new(0.0, Duration::ZERO);
        if kbps > 0 {
            link.set_rate(
                Dir::ToPeer,
                Some(Rate {
                    queue: Queue::Millis(200),
                    ..Rate::kbps(kbps)
                }),
            );
        }
        self.relay.set_new_flows(link.clone());
        let token = self
            .server
            .token("weak-line", Role::Participant, Some("Heime"), false)
            .await;
        let viewer = self.browser.open_blank().await;
        self.browser.viewport(&viewer, w, h, w < h).await;
        self.browser
            .navigate(&viewer, &format!("{}/course.html#t={token}", self.base))
            .await;
        (link, viewer)
    }

    /// The publisher's video over `secs`: Mbit/s sent, width, frames per second, and a note
    /// (its estimate of the line, mean QP, why it limits itself).
    async fn publisher_rate(&mut self, publisher: &Page, secs: f64) -> (f64, u64, f64, Note) {
        let a = self.browser.peer_stats(publisher).await;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let b = self.browser.peer_stats(publisher).await;
        let d = |k| sum(&b, "outbound-rtp", "video", k) - sum(&a, "outbound-rtp", "video", k);
        let estimate = b
            .iter()
            .filter(|s| s["type"] == "candidate-pair" && s["nominated"] == true)
            .filter_map(|s| s["availableOutgoingBitrate"].as_f64())
            .fold(0.0, f64::max);
        let limit = b
            .iter()
            .find(|s| s["type"] == "outbound-rtp" && s["kind"] == "video")
            .and_then(|s| s["qualityLimitationReason"].as_str())
            .unwrap_or("?")
            .to_owned();
        let note = Note(
            format!(
                "estimate {:.2} Mbit/s, QP {:.0}, limited by {limit}",
                estimate / 1e6,
                d("qpSum") / d("framesEncoded").max(1.0)
            ),
            estimate,
        );
        (
            d("bytesSent") * 8.0 / secs / 1e6,
            max(&b, "outbound-rtp", "video", "frameWidth") as u64,
            d("framesEncoded") / secs,
            note,
        )
    }

    /// One viewer on a line of `kbps` (0: no limit) for `secs`, from its join.
    async fn step(&mut self, publisher: &Page, kbps: u64, secs: u64, queue_ms: u64) -> Row {
        let link = Link::new(0.0, Duration::ZERO);
        if kbps > 0 {
            link.set_rate(
                Dir::ToPeer,
                Some(Rate {
                    queue: Queue::Millis(queue_ms),
                    ..Rate::kbps(kbps)
                }),
            );
        }
        self.relay.set_new_flows(link.clone());
        let m0 = scrape(&self.server).await;
        let p0 = self.browser.peer_stats(publisher).await;
        let began = Instant::now();
        let viewer = self.tab(Role::Participant, &format!("Heime {kbps}")).await;
        let v0 = self.browser.peer_stats(&viewer).await;
        // Sampled every 250 ms: when the first picture came, and how long no new one came
        // after it (at 0 frames a second `freezeCount` stays 0: it counts gaps between frames).
        let (mut first_frame, mut stalled, mut frames) = (None, Duration::ZERO, 0u64);
        let end = began + Duration::from_secs(secs);
        let mut at = Instant::now();
        while at < end {
            tokio::time::sleep(SAMPLE.min(end - at)).await;
            let now = Instant::now();
            let decoded = self.browser.eval(&viewer, "kursrelay.stats()").await["framesDecoded"]
                .as_u64()
                .unwrap_or(0);
            if decoded > 0 && first_frame.is_none() {
                first_frame = Some(now - began);
            } else if decoded == frames && first_frame.is_some() {
                stalled += now - at;
            }
            (frames, at) = (decoded, now);
        }
        let v1 = self.browser.peer_stats(&viewer).await;
        let p1 = self.browser.peer_stats(publisher).await;
        let m1 = scrape(&self.server).await;
        let elapsed = began.elapsed().as_secs_f64();
        // Connections to the new viewer are all new, so its counters start at 0 with the
        // join; v0 only guards against a page that reused a connection.
        let dv = |t: &str, kind: &str, k: &str| sum(&v1, t, kind, k) - sum(&v0, t, kind, k);
        let dp =
            |k: &str| sum(&p1, "outbound-rtp", "video", k) - sum(&p0, "outbound-rtp", "video", k);
        let samples = dv("inbound-rtp", "audio", "totalSamplesReceived");
        let shaper = link.shaper(Dir::ToPeer);
        let row = Row {
            kbps,
            first_frame_s: first_frame.map_or(f64::NAN, |d| d.as_secs_f64()),
            stalled_s: stalled.as_secs_f64(),
            secs: elapsed,
            fps: dv("inbound-rtp", "video", "framesDecoded") / elapsed,
            width: max(&v1, "inbound-rtp", "video", "frameWidth") as u64,
            height: max(&v1, "inbound-rtp", "video", "frameHeight") as u64,
            freezes: dv("inbound-rtp", "video", "freezeCount"),
            frozen_s: dv("inbound-rtp", "video", "totalFreezesDuration"),
            concealed_pct: 100.0 * dv("inbound-rtp", "audio", "concealedSamples")
                / samples.max(1.0),
            audio_samples: samples,
            lost: dv("inbound-rtp", "video", "packetsLost")
                + dv("inbound-rtp", "audio", "packetsLost"),
            nacks: dv("inbound-rtp", "video", "nackCount"),
            plis: dv("inbound-rtp", "video", "pliCount"),
            aimed_mbps: link.received_bytes.load(Ordering::Relaxed) as f64 * 8.0 / elapsed / 1e6,
            queue_dropped: shaper.as_ref().map_or(0, |s| s.dropped),
            queue_offered: shaper.as_ref().map_or(0, |s| s.dropped + s.passed),
            forwarded: delta(&m0, &m1, "kursrelay_packets_forwarded_total"),
            nacks_answered: delta(&m0, &m1, "kursrelay_nacks_answered_total"),
            keyframes_to_publisher: delta(&m0, &m1, "kursrelay_keyframe_requests_sent_total"),
            pub_mbps: dp("bytesSent") * 8.0 / elapsed / 1e6,
            pub_width: max(&p1, "outbound-rtp", "video", "frameWidth") as u64,
            pub_fps: dp("framesEncoded") / elapsed,
            pub_limit: p1
                .iter()
                .find(|s| s["type"] == "outbound-rtp" && s["kind"] == "video")
                .and_then(|s| s["qualityLimitationReason"].as_str())
                .unwrap_or("?")
                .to_owned(),
            pub_keyframes: dp("keyFramesEncoded"),
            estimated_by: (
                m1.get("kursrelay_viewers_estimated_by_twcc")
                    .copied()
                    .unwrap_or(0.0),
                m1.get("kursrelay_viewers_estimated_by_receiver_reports")
                    .copied()
                    .unwrap_or(0.0),
                m1.get("kursrelay_viewers_capped_by_remb")
                    .copied()
                    .unwrap_or(0.0),
            ),
        };
        eprintln!(
            "  {} ({:.1} s): {}; server forwarded {:.0} packets, {:.0} keyframes encoded; \
             viewers' estimate by transport-cc / receiver reports / capped by REMB: {:?}; \
             {:.0} probes ({:.0} found the line full, {:.0} KB of padding), {:.0} layer cuts; {}",
            row.line(),
            row.secs,
            row.markdown(),
            row.forwarded,
            row.pub_keyframes,
            row.estimated_by,
            delta(&m0, &m1, "kursrelay_probes_total"),
            delta(&m0, &m1, "kursrelay_probes_failed_total"),
            delta(&m0, &m1, "kursrelay_padding_bytes_total") / 1000.0,
            delta(&m0, &m1, "kursrelay_layer_cuts_total"),
            link.summary()
        );
        // The viewer leaves; its flows go quiet.
        self.browser.eval(&viewer, "kursrelay.leave()").await;
        self.browser.close_tab(&viewer).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        row
    }
}

/// Starts the publisher, lets its encoder ramp up (up to `warmup`), then runs every step.
async fn run(setup: &Setup, warmup: Duration) -> Vec<Row> {
    let mut rig = Rig::start(&setup.camera).await;
    let publisher = rig.tab(Role::Leader, "Kursleiar").await;
    let server = &rig.server;
    assert!(
        wait_until(TIMEOUT, || server.live().forwarders > 0).await,
        "the publisher's media never reached the server"
    );
    // Chromium's bandwidth estimate starts at 300 kbit/s, and under the browser's default
    // ("maintain-framerate", which the page keeps) the encoder starts 720p at 360p and its
    // quality scaler rarely comes back up on this loaded machine. So: first let the estimate
    // ramp up at the default (up to half of `warmup`), then have the camera's sender keep its
    // resolution (set from the test, web/ is not changed; the top layer of issue 20's
    // simulcast is 720p too) — set at once, a 720p encoder starved at 300 kbit/s drops to
    // 2–5 frames a second and the estimate hardly grows.
    let started = Instant::now();
    loop {
        let (mbps, width, fps, note) = rig.publisher_rate(&publisher, 1.0).await;
        eprintln!(
            "publisher after {:.0} s: {mbps:.2} Mbit/s, {width} wide, {fps:.0} fps ({note})",
            started.elapsed().as_secs_f64()
        );
        if note.1 >= 2.5e6 || started.elapsed() > warmup / 2 {
            break;
        }
    }
    let set = rig
        .browser
        .eval(
            &publisher,
            "Promise.all(window.__pcs.flatMap((pc) => pc.getSenders()) \
               .filter((s) => s.track && s.track.kind === 'video') \
               .map(async (s) => { const p = s.getParameters(); \
                  p.degradationPreference = 'maintain-resolution'; \
                  await s.setParameters(p); return s.getParameters().degradationPreference; }))",
        )
        .await;
    eprintln!("publisher's video senders: degradationPreference {set}");
    // Then wait until it sends the camera's full size at a steady rate (four successive
    // seconds within 15 % of each other, at two thirds of the camera's frame rate or more),
    // or `warmup` runs out.
    let mut last: Vec<f64> = Vec::new();
    loop {
        let (mbps, width, fps, note) = rig.publisher_rate(&publisher, 1.0).await;
        eprintln!(
            "publisher after {:.0} s: {mbps:.2} Mbit/s, {width} wide, {fps:.0} fps ({note})",
            started.elapsed().as_secs_f64()
        );
        last.push(mbps);
        let recent = &last[last.len().saturating_sub(4)..];
        let (lo, hi) = recent
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &m| (lo.min(m), hi.max(m)));
        let steady = recent.len() == 4 && lo > 0.1 && hi < 1.15 * lo;
        let full = width >= setup.camera_width && fps >= setup.camera_fps * 2.0 / 3.0;
        if (steady && full) || started.elapsed() > warmup {
            break;
        }
    }
    let mut rows = Vec::new();
    for &kbps in &setup.steps {
        rows.push(rig.step(&publisher, kbps, setup.secs, setup.queue_ms).await);
    }
    rig.server.shutdown().await;
    rows
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of several minutes: run by hand (BENCHMARKS.md, \"Weak lines\")"]
async fn weak_line_table() {
    let steps = std::env::var("KURSRELAY_WEAK_STEPS")
        .unwrap_or_else(|_| "0,5000,1500,800,500,300".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("KURSRELAY_WEAK_STEPS: kbit/s, comma-separated")
        })
        .collect();
    // 1280×720 at 30 fps, a 2 s loop: 60 frames, 83 MB.
    let camera = camera_file(1280, 720, 30, 60);
    let setup = Setup {
        steps,
        secs: env_or("KURSRELAY_WEAK_SECS", 30),
        queue_ms: env_or("KURSRELAY_WEAK_QUEUE_MS", 200),
        camera,
        camera_width: 1280,
        camera_fps: 30.0,
    };
    eprintln!(
        "weak-line table: {} s a step, {} ms queue, camera {}",
        setup.secs,
        setup.queue_ms,
        setup.camera.display()
    );
    let rows = run(&setup, Duration::from_secs(90)).await;
    eprintln!("\n{TABLE_HEAD}");
    for r in &rows {
        eprintln!("{}", r.markdown());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_line_smoke() {
    // The runner, cut to one short step on a 5 Mbit/s line with a small camera file (320×180,
    // 15 frames): it must measure decoded frames, sound and a publisher. Never speed.
    let setup = Setup {
        steps: vec![5000],
        secs: 6,
        queue_ms: 200,
        camera: camera_file(320, 180, 15, 15),
        camera_width: 320,
        camera_fps: 15.0,
    };
    let rows = run(&setup, Duration::from_secs(4)).await;
    let r = &rows[0];
    eprintln!("{TABLE_HEAD}\n{}", r.markdown());
    assert!(r.fps > 0.0, "nothing decoded at 5 Mbit/s: {r:?}");
    // The page publishes simulcast (q/h/f at ¼, ½ and full size); for a camera this small
    // Chromium sends only the lowest layer(s) (80×45 measured), so the viewer
    // gets the best layer that arrives, not the camera's size.
    assert!(r.width > 0 && r.width == r.pub_width, "{r:?}");
    assert!(r.pub_mbps > 0.0 && r.aimed_mbps > 0.0, "{r:?}");
    assert!(r.audio_samples > 0.0, "no sound played: {r:?}");
    assert!(r.queue_offered > 0, "the line's shaper saw nothing: {r:?}");
    // Chromium's viewer answers with transport-cc: that is what drives its estimate.
    assert_eq!(r.estimated_by.0, 1.0, "{r:?}");
    assert_eq!(r.estimated_by.1, 0.0, "{r:?}");
}

// ---- slides on a weak line ----

/// Replaces the page's screen capture with a slide drawn on a canvas (1280×720, 30 frames a
/// second): a title, bullets at 40 px, a footnote at 22 px (the size that tells whether text is
/// sharp), a clock that changes every frame and an animated diagram (a colour field and a ball that move every frame), so the full layer costs what
/// a screen with a moving picture on it costs (more than a weak line carries).
const SLIDE_SCREEN: &str = "(() => { \
    const c = document.createElement('canvas'); c.width = 1280; c.height = 720; \
    const g = c.getContext('2d'); let n = 0; \
    const draw = () => { n += 1; \
      g.fillStyle = '#fff'; g.fillRect(0, 0, 1280, 720); \
      g.fillStyle = '#0a3d8f'; g.fillRect(0, 0, 1280, 110); \
      g.fillStyle = '#fff'; g.font = 'bold 60px sans-serif'; g.fillText('Stoffskifte og medisiner', 48, 78); \
      g.fillStyle = '#111'; g.font = '40px sans-serif'; \
      ['• Ta tabletten om morgenen', '• En halv time før frokost', '• Samme tid hver dag', '• Blodprøve etter seks uker'] \
        .forEach((t, i) => g.fillText(t, 64, 200 + i * 70)); \
      g.font = '22px sans-serif'; \
      g.fillText('Kilde: Norsk legemiddelhåndbok, kapittel 3.2 (levotyroksin). Spør oss gjerne etterpå.', 64, 620); \
      g.font = 'bold 32px monospace'; g.fillText('Lysbilde 4 · bilde ' + n, 64, 680); \
      const a = n / 10; const grad = g.createLinearGradient(900 + 120 * Math.cos(a), 340 + 90 * Math.sin(a), 1140, 480); \
      grad.addColorStop(0, `hsl(${(n * 7) % 360}, 80%, 50%)`); grad.addColorStop(1, `hsl(${(n * 7 + 180) % 360}, 80%, 50%)`); \
      g.fillStyle = grad; g.fillRect(900, 300, 240, 180); \
      g.fillStyle = '#fff'; g.beginPath(); g.arc(1020 + 90 * Math.cos(a * 2), 390 + 60 * Math.sin(a * 3), 24, 0, 7); g.fill(); }; \
    draw(); setInterval(draw, 33); \
    const stream = c.captureStream(30); \
    navigator.mediaDevices.getDisplayMedia = async () => stream; return true; })()";

/// What one viewer's page shows of the shared screen: its inbound stats entry (frame rate,
/// size, freezes, the server's `video_quality`) over `secs`, frames decoded a second.
async fn screen_seen(b: &mut Chromium, viewer: &Page, secs: u64) -> (Value, f64) {
    let pick = "kursrelay.stats().then(s => { const el = document.querySelector('#main-slot figure[data-pos=main][data-source=screen]'); \
        const id = el && el.dataset.trackId; return s.inbound.find(v => v.track_id === id) || null; })";
    let a = b.wait_for(viewer, pick, 30).await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let z = b.eval(viewer, pick).await;
    let fps = (z["framesDecoded"].as_f64().unwrap_or(0.0)
        - a["framesDecoded"].as_f64().unwrap_or(0.0))
        / secs as f64;
    (z, fps)
}

/// Slides shared by the leader, watched through a 400 kbit/s line (and, for comparison, with
/// no limit on a laptop and on a phone): which layer the viewer gets, at what size and frame
/// rate, and a screenshot of what it sees, to read the footnote from. A measurement, run by hand:
///
/// ```sh
/// cargo test --test weak_line -- --ignored --nocapture slides_on_a_weak_line
/// # screenshots: target/screenshots/weak-slides-*.png
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of about two minutes: run by hand"]
async fn slides_on_a_weak_line() {
    let mut rig = Rig::start(&camera_file(320, 180, 15, 15)).await;
    let leader = rig.tab(Role::Leader, "Kursleiar").await;
    rig.browser.eval(&leader, SLIDE_SCREEN).await;
    rig.browser
        .eval(&leader, "kursrelay.screenShare().then(() => true)")
        .await;
    // The publisher's estimate of its own line grows from 300 kbit/s: wait until both screen
    // layers are sent.
    let sent = rig
        .browser
        .wait_for(
            &leader,
            "kursrelay.stats().then(s => { const v = s.senders.find(x => x.source === 'screen'); \
               return v && v.encodings.every(e => e.framesPerSecond > 0) ? v : null; })",
            90,
        )
        .await;
    eprintln!("the leader sends the screen as {sent}");
    let m0 = scrape(&rig.server).await;
    let mut camera_on = true;
    // First as a course runs today, the leader's camera on beside the slides; then with the
    // leader's camera turned off (its black frames cost next to nothing), which shows what the
    // server does with the two screen layers alone.
    for (kbps, w, h, name, camera) in [
        (400u64, 1366u32, 768u32, "400k-laptop-camera-on", true),
        (400, 1366, 768, "400k-laptop", false),
        (0, 1366, 768, "unlimited-laptop", false),
    ]
    .into_iter()
    // KURSRELAY_SLIDES_ONLY=400k-laptop: one case only.
    .filter(|r| std::env::var("KURSRELAY_SLIDES_ONLY").map_or(true, |o| o == r.3))
    {
        if !camera && camera_on {
            rig.browser
                .eval(
                    &leader,
                    "document.getElementById('cam-toggle').click(); true",
                )
                .await;
            camera_on = false;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let (link, viewer) = rig.viewer_at_home(kbps, w, h).await;
        rig.browser
            .eval(&viewer, "kursrelay.start({}).then(() => true)")
            .await;
        // Let the allocator settle (its estimate, its hold before a step up), then measure.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = rig
                .browser
                .eval(
                    &viewer,
                    "kursrelay.stats().then(s => JSON.stringify(s.inbound.filter(v => v.kind === 'video')                        .map(v => [v.quality, v.frameHeight, v.framesPerSecond, v.framesDecoded])))",
                )
                .await;
            eprintln!("  {name}: {now}");
        }
        let (seen, fps) = screen_seen(&mut rig.browser, &viewer, 15).await;
        let path = rig
            .browser
            .screenshot(&viewer, &format!("weak-slides-{name}"))
            .await;
        let sent_now = rig
            .browser
            .eval(
                &leader,
                "kursrelay.stats().then(s => s.senders.find(x => x.source === 'screen').encodings \
                   .map(e => [e.rid, e.frameWidth, e.frameHeight, e.framesPerSecond]))",
            )
            .await;
        eprintln!(
            "{name}: the viewer's screen {seen}, {fps:.1} frames decoded a second; \
             the leader's screen layers (rid, w, h, fps) {sent_now}; {}; {}",
            link.summary(),
            path.display()
        );
        rig.browser.eval(&viewer, "kursrelay.leave()").await;
        rig.browser.close_tab(&viewer).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let m1 = scrape(&rig.server).await;
    eprintln!(
        "layer switches {:.0}, cuts {:.0}; packets paced {:.0}, pacer overflows {:.0}; \
         probes {:.0} ({:.0} found the line full)",
        delta(&m0, &m1, "kursrelay_layer_switches_total"),
        delta(&m0, &m1, "kursrelay_layer_cuts_total"),
        delta(&m0, &m1, "kursrelay_packets_paced_total"),
        delta(&m0, &m1, "kursrelay_pacer_overflows_total"),
        delta(&m0, &m1, "kursrelay_probes_total"),
        delta(&m0, &m1, "kursrelay_probes_failed_total")
    );
    rig.server.shutdown().await;
}

/// The viewer's own order on a weak line, in Chromium: the leader's camera and the
/// sign-language interpreter's camera (both three simulcast layers), watched at home through a
/// line that carries the sound and about one camera's smallest picture. Once with the page's
/// default (the interpreter as large as the lecture: the lecture first in `order`), once with
/// the interpreter shown large (the interpreter first). What each picture brought over 20 s
/// after the allocator settled. A measurement, run by hand:
///
/// ```sh
/// cargo test --test weak_line -- --ignored --nocapture the_interpreter_first_on_a_weak_line
/// # KURSRELAY_ORDER_KBPS=350 (default 300)
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of about three minutes: run by hand"]
async fn the_interpreter_first_on_a_weak_line() {
    let kbps: u64 = env_or("KURSRELAY_ORDER_KBPS", 300);
    // 960×540 at 15 fps: three layers in Chromium (240×135, 480×270, 960×540), two encoders on
    // two cores.
    let mut rig = Rig::start(&camera_file(960, 540, 15, 30)).await;
    let _leader = rig.tab(Role::Leader, "Kursleiar").await;
    let token = rig
        .server
        .token("weak-line", Role::Interpreter, Some("Tolk"), false)
        .await;
    let tolk = rig
        .browser
        .open(&format!("{}/course.html#t={token}", rig.base))
        .await;
    rig.browser
        .eval(&tolk, "kursrelay.start({}).then(() => true)")
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    for size in ["equal", "large"] {
        let (link, viewer) = rig.viewer_at_home(kbps, 1366, 768).await;
        rig.browser
            .eval(
                &viewer,
                &format!("sessionStorage.setItem('kursrelay.interp', '{size}'); true"),
            )
            .await;
        rig.browser
            .eval(&viewer, "kursrelay.start({}).then(() => true)")
            .await;
        // Frames decoded of the lecture's picture and of the interpreter's, and the sound.
        let pick = "kursrelay.stats().then(s => { \
            const id = (sel) => (document.querySelector(sel) || {dataset: {}}).dataset.trackId; \
            const v = (sel) => s.inbound.find(x => x.track_id === id(sel)) || {}; \
            const lec = v('#main-slot figure[data-pos=main]'), tolk = v('#interp-slot figure'); \
            const a = s.inbound.find(x => x.kind === 'audio') || {}; \
            const p = kursrelay.sent().filter(m => m.type === 'video_preference').pop() || {}; \
            return {lecture: [lec.framesDecoded || 0, lec.frameHeight || 0, lec.quality || null], \
                    interpreter: [tolk.framesDecoded || 0, tolk.frameHeight || 0, tolk.quality || null], \
                    concealed: a.concealedSamples || 0, samples: a.totalSamplesReceived || 0, \
                    first: (p.order || [])[0] === id('#interp-slot figure') ? 'interpreter' : 'lecture'}; })";
        tokio::time::sleep(Duration::from_secs(40)).await;
        let a = rig.browser.eval(&viewer, pick).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let z = rig.browser.eval(&viewer, pick).await;
        let fps =
            |k: &str| (z[k][0].as_f64().unwrap_or(0.0) - a[k][0].as_f64().unwrap_or(0.0)) / 20.0;
        let concealed = (z["concealed"].as_f64().unwrap_or(0.0)
            - a["concealed"].as_f64().unwrap_or(0.0))
            / (z["samples"].as_f64().unwrap_or(0.0) - a["samples"].as_f64().unwrap_or(0.0))
                .max(1.0);
        let path = rig
            .browser
            .screenshot(&viewer, &format!("weak-order-{size}-{kbps}k"))
            .await;
        eprintln!(
            "{kbps} kbit/s, interpreter {size} ({} first): lecture {:.1} frames a second ({}), \
             interpreter {:.1} ({}); sound concealed {:.1} %; {}; {}",
            z["first"],
            fps("lecture"),
            z["lecture"],
            fps("interpreter"),
            z["interpreter"],
            concealed * 100.0,
            link.summary(),
            path.display()
        );
        rig.browser.eval(&viewer, "kursrelay.leave()").await;
        rig.browser.close_tab(&viewer).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    rig.server.shutdown().await;
}
