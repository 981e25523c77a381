//! Bad networks, black-box: the server is untouched; a test peer's media goes through a
//! userspace impairer (`common::netsim`: loss, delay, a dead link, in each direction at the
//! peer's own UDP sockets — it stands in for `tc netem`, which this kernel lacks). What is
//! judged is what the peers see through the server's public behaviour (signalling and media),
//! so the tests stay valid when the media engine changes (issue 9).
//!
//! Video is the harness's synthetic VP8 stream: 50 frames a second, one packet per frame, a
//! keyframe every 100 frames and on every keyframe request. A receiving "decoder" is
//! modelled: frame n can be shown if it is a keyframe, or frame n-1 was shown and n arrived
//! (a lost frame breaks the chain until the next keyframe, as with VP8 without error
//! concealment); it is shown when it and its predecessor have arrived. A freeze is a gap
//! between shown frames over max(3 × 20 ms, 20 ms + 150 ms) = 170 ms (the definition
//! Chromium's `freezeCount` uses) that is also 150 ms longer than the publisher took between
//! the two frames (the payload carries its send time), so a stall of the test publisher on
//! this shared machine is not counted as the network's. Figures are printed (`--nocapture`); the assertions are on
//! behaviour with wide margins, never on tight timing (set `KURSRELAY_STRICT_TIMING=1` to
//! also hold the 2 s rejoin bound of issue 14).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::netsim::{self, Link};
use common::*;
use kursrelay::attendance::{self, Kind, LeftReason};
use kursrelay::protocol::Role;

const FREEZE: Duration = Duration::from_millis(170);

/// What a subscriber's decoder made of a video track.
#[derive(Debug, Default)]
struct Decoded {
    /// Frames the publisher sent from the subscriber's first keyframe to the end of the window.
    sent: usize,
    received: usize,
    /// Received after a later frame: retransmissions (NACK) — the impairer keeps order.
    late: usize,
    /// Arrived more than once (a retransmission of a frame that had arrived after all).
    dups: usize,
    shown: usize,
    freezes: usize,
    frozen: Duration,
    /// When the last frame was shown.
    last_shown: Option<Instant>,
    first_shown: Option<Instant>,
}

impl std::fmt::Display for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} frames, received {} ({:.1} %; {} late = retransmitted, {} duplicates), decoded {} ({:.1} %), {} freezes ({} ms frozen)",
            self.sent,
            self.received,
            100.0 * self.received as f64 / self.sent.max(1) as f64,
            self.late,
            self.dups,
            self.shown,
            100.0 * self.shown as f64 / self.sent.max(1) as f64,
            self.freezes,
            self.frozen.as_millis()
        )
    }
}

/// Runs the decoder model over what `peer` received on `track_id` of `sent`, up to frame
/// `until` (exclusive, so frames still in flight are not counted as lost).
fn decode(peer: &TestPeer, track_id: &str, sent: &SentTrack, until: u32) -> Decoded {
    let codec = Some(VideoCodec::Vp8);
    let arrivals = peer.arrivals(track_id);
    let sent_frames = sent.sent.lock().unwrap();
    // Only packets that are byte for byte what the publisher sent count (padding, probes or
    // anything else the stack may deliver are not frames).
    let mut got: BTreeMap<u32, Instant> = BTreeMap::new();
    let (mut late, mut dups) = (0, 0);
    let mut highest = None;
    peer.with_received(track_id, |r| {
        for ((_, _, _, payload), at) in r.packets.iter().zip(&arrivals) {
            if payload.len() < 6 {
                continue;
            }
            let seq = payload_seq(codec, payload);
            if sent_frames.get(&seq) != Some(payload) {
                continue;
            }
            if got.contains_key(&seq) {
                dups += 1;
                continue;
            }
            if highest.is_some_and(|h| seq < h) {
                late += 1;
            }
            highest = highest.max(Some(seq));
            got.insert(seq, *at);
        }
    });
    let keyframe = |seq: u32| sent_frames.get(&seq).is_some_and(|p| p[1] == 0x00);
    // The send time the payload carries (µs since the publisher's start).
    let sent_us = |seq: u32| {
        sent_frames.get(&seq).map_or(0, |p| {
            u64::from_be_bytes(p[6..14].try_into().expect("send time"))
        })
    };
    let Some(first) = got.keys().copied().find(|s| keyframe(*s)) else {
        return Decoded::default();
    };
    let mut d = Decoded {
        sent: (first..until)
            .filter(|s| sent_frames.contains_key(s))
            .count(),
        late,
        dups,
        ..Decoded::default()
    };
    let mut prev_shown: Option<(u32, Instant)> = None;
    for seq in first..until {
        let Some(&at) = got.get(&seq) else { continue };
        d.received += 1;
        let chained = prev_shown.is_some_and(|(p, _)| p + 1 == seq);
        if !(keyframe(seq) || chained) {
            continue;
        }
        let shown_at = prev_shown.map_or(at, |(_, t)| at.max(t));
        if let Some((p, t)) = prev_shown {
            // Beyond what the publisher itself took between the two frames: a stall of the
            // test publisher on this shared machine is not the network's freeze.
            let gap = shown_at.saturating_duration_since(t);
            let sent_gap = Duration::from_micros(sent_us(seq).saturating_sub(sent_us(p)));
            if gap > FREEZE && gap.saturating_sub(sent_gap) > FREEZE - Duration::from_millis(20) {
                d.freezes += 1;
                d.frozen += gap;
            }
        }
        d.first_shown.get_or_insert(shown_at);
        d.last_shown = Some(shown_at);
        d.shown += 1;
        prev_shown = Some((seq, shown_at));
    }
    d
}

fn highest_sent(sent: &SentTrack) -> u32 {
    sent.sent.lock().unwrap().keys().copied().max().unwrap_or(0)
}

fn camera_spec() -> PublishSpec {
    PublishSpec {
        camera: Some(VideoCodec::Vp8),
        microphone: false,
        screen: None,
        video_pps: 50,
        keyframe_every: 100,
    }
}

/// 5 % loss and 100 ms delay each way, as the issue asks (see `netsim` for "each way").
fn bad_link() -> std::sync::Arc<Link> {
    Link::new(0.05, Duration::from_millis(100))
}

const RUN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_delay_on_a_subscriber_link() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "net-sub", "Ola").await;
    let sent = leader.publish(camera_spec()).await;
    let clean = TestPeer::join(&server, "net-sub", "Kari").await;
    let link = bad_link();
    let token = server
        .token("net-sub", Role::Participant, Some("Per"), false)
        .await;
    let impaired = TestPeer::connect_impaired(&server, &token, link.clone()).await;
    // The impairer set to nothing: shows that the tool itself loses nothing.
    let token = server
        .token("net-sub", Role::Participant, Some("Ida"), false)
        .await;
    let zero = TestPeer::connect_impaired(&server, &token, Link::new(0.0, Duration::ZERO)).await;
    let clean_cam = clean.wait_offered(&leader.member_id, "camera").await;
    let zero_cam = zero.wait_offered(&leader.member_id, "camera").await;
    let bad_cam = impaired.wait_offered(&leader.member_id, "camera").await;
    let started = highest_sent(&sent[0]);
    tokio::time::sleep(RUN).await;
    // Frames sent up to half a second ago must have arrived (or been lost for good).
    let until = highest_sent(&sent[0]) - 25;
    let c = decode(&clean, &clean_cam, &sent[0], until);
    let b = decode(&impaired, &bad_cam, &sent[0], until);
    let z = decode(&zero, &zero_cam, &sent[0], until);
    eprintln!(
        "subscriber link 5 % / 100 ms each way, {} s:",
        RUN.as_secs()
    );
    eprintln!("  clean subscriber:    {c}");
    eprintln!("  impairer at 0 / 0:   {z}");
    eprintln!("  impaired subscriber: {b}");
    eprintln!(
        "  {}; keyframe requests at the publisher: {}",
        link.summary(),
        sent[0].plis.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(until > started + 200, "the publisher hardly sent anything");
    // Video keeps decoding on the impaired link: most frames, and still at the end.
    assert!(b.shown * 2 > b.sent, "impaired: {b}");
    assert!(
        b.last_shown
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3)),
        "the impaired subscriber stopped decoding: {b}"
    );
    assert!(c.shown * 10 >= c.sent * 8, "clean: {c}");
    assert!(z.shown * 10 >= z.sent * 8, "impairer at zero: {z}");
    assert!(
        !impaired.socket_closed(),
        "the impaired subscriber was dropped"
    );
    leader.close().await;
    clean.close().await;
    impaired.close().await;
    zero.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_delay_on_the_publisher_link() {
    let server = TestServer::spawn().await;
    let link = bad_link();
    let token = server
        .token("net-pub", Role::Leader, Some("Ola"), false)
        .await;
    let leader = TestPeer::connect_impaired(&server, &token, link.clone()).await;
    let sent = leader.publish(camera_spec()).await;
    let subs = [
        TestPeer::join(&server, "net-pub", "Kari").await,
        TestPeer::join(&server, "net-pub", "Per").await,
    ];
    let mut cams = Vec::new();
    for s in &subs {
        cams.push(s.wait_offered(&leader.member_id, "camera").await);
    }
    tokio::time::sleep(RUN).await;
    let until = highest_sent(&sent[0]) - 25;
    eprintln!("publisher link 5 % / 100 ms each way, {} s:", RUN.as_secs());
    for (s, cam) in subs.iter().zip(&cams) {
        let d = decode(s, cam, &sent[0], until);
        eprintln!("  subscriber: {d}");
        assert!(d.shown * 2 > d.sent, "{d}");
        assert!(
            d.last_shown
                .is_some_and(|t| t.elapsed() < Duration::from_secs(3)),
            "stopped decoding: {d}"
        );
    }
    eprintln!(
        "  {}; keyframe requests at the publisher: {}",
        link.summary(),
        sent[0].plis.load(std::sync::atomic::Ordering::Relaxed)
    );
    leader.close().await;
    for s in subs {
        s.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_drops_and_rejoins_is_seen_again_quickly() {
    let server = TestServer::spawn().await;
    let token = server
        .token("net-rejoin", Role::Leader, Some("Ola"), false)
        .await;
    let leader = TestPeer::connect(&server, &token, None).await;
    leader.wait_msg(|m| m["type"] == "joined").await;
    let sent = leader.publish(camera_spec()).await;
    let sub = TestPeer::join(&server, "net-rejoin", "Kari").await;
    let cam = sub.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || sub.received_count(&cam) > 50).await);

    // The publisher's machine loses its network: media and signalling gone, no goodbye.
    leader.kill_media().await;
    leader.drop_socket().await;
    drop(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // It comes back with the same link and publishes again.
    let rejoined_at = Instant::now();
    let back = TestPeer::connect(&server, &token, None).await;
    back.wait_msg(|m| m["type"] == "joined").await;
    let sent2 = back.publish(camera_spec()).await;
    let published_at = Instant::now();
    let cam2 = sub.wait_offered(&back.member_id, "camera").await;
    assert!(
        wait_until(TIMEOUT, || {
            let until = highest_sent(&sent2[0]) + 1;
            decode(&sub, &cam2, &sent2[0], until).shown > 0
        })
        .await,
        "the subscriber never decoded the rejoined publisher"
    );
    let d = decode(&sub, &cam2, &sent2[0], highest_sent(&sent2[0]) + 1);
    let first = d.first_shown.expect("shown");
    let after_rejoin = first.duration_since(rejoined_at);
    let after_publish = first.saturating_duration_since(published_at);
    eprintln!(
        "publisher rejoin: first decoded frame {} ms after the new join was sent, {} ms after its publish was answered ({} frames sent before the drop)",
        after_rejoin.as_millis(),
        after_publish.as_millis(),
        highest_sent(&sent[0])
    );
    let bound = if std::env::var("KURSRELAY_STRICT_TIMING").is_ok() {
        Duration::from_secs(2)
    } else {
        // A loaded 2-core CI box: behaviour, not speed (the figure is in RELIABILITY.md).
        Duration::from_secs(15)
    };
    assert!(after_rejoin < bound, "{after_rejoin:?}");
    back.close().await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_link_that_dies_silently_is_cleaned_up_and_counted() {
    // The test server's ICE timeouts: disconnected after 1 s, failed 2 s after that.
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "net-dead", "Ola").await;
    leader.publish(camera_spec()).await;
    let link = Link::new(0.0, Duration::ZERO);
    let (invite, token) = server
        .token_with("net-dead", Role::Participant, Some("Kari"), false, None)
        .await;
    let sub = TestPeer::connect_impaired(&server, &token, link.clone()).await;
    let cam = sub.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || sub.received_count(&cam) > 20).await);
    let peers_before = server.live().peer_connections;

    link.set_down(true);
    let died_at = Instant::now();
    let died_ms = attendance::now_ms();
    let bye = sub.wait_msg(|m| m["type"] == "bye").await;
    let noticed = died_at.elapsed();
    // The leader is told the member left: a roster without them.
    let member = sub.member_id.clone();
    leader
        .wait_msg(|m| {
            m["type"] == "roster"
                && !m["members"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x["member_id"] == member.as_str()))
        })
        .await;
    assert!(
        wait_until(TIMEOUT, || server.live().peer_connections < peers_before).await,
        "the dead subscriber's connection was never closed"
    );
    // The leave is committed by the attendance writer shortly after the room let go.
    let sid = server.session("net-dead").await;
    let (db, sid_ref, invite_ref) = (&server.state.db, &sid, &invite);
    let events = eventually_async(
        "the dead member's leave in the attendance log",
        TIMEOUT,
        || async move {
            let events = attendance::events(db, sid_ref).await.unwrap();
            events
                .iter()
                .any(|e| e.invite_id == *invite_ref && matches!(e.kind, Kind::Left(_)))
                .then_some(events)
        },
    )
    .await;
    let mine: Vec<_> = events.iter().filter(|e| e.invite_id == invite).collect();
    let joins = mine.iter().filter(|e| e.kind == Kind::Joined).count();
    let lefts: Vec<_> = mine
        .iter()
        .filter(|e| matches!(e.kind, Kind::Left(_)))
        .collect();
    eprintln!(
        "dead subscriber link: bye {} after {} ms (ICE disconnected 1000 + failed 2000 ms configured); attendance left {:?} at +{} ms",
        bye["reason"],
        noticed.as_millis(),
        lefts.first().map(|e| e.kind),
        lefts.first().map_or(0, |e| e.at_ms - died_ms)
    );
    assert_eq!(bye["reason"], "peer_failed", "{bye}");
    assert_eq!((joins, lefts.len()), (1, 1), "{mine:?}");
    assert_eq!(lefts[0].kind, Kind::Left(LeftReason::Dropped), "{mine:?}");
    // Counted as present until the link died, not until the server noticed … at most the
    // ICE timeouts later (plus slack for a loaded machine).
    assert!(
        noticed >= Duration::from_secs(1),
        "gone before any ICE timeout: {noticed:?}"
    );
    assert!(noticed < Duration::from_secs(30), "{noticed:?}");
    let summary: HashMap<&str, i64> = HashMap::from([("joins", joins as i64)]);
    assert_eq!(summary["joins"], 1);
    leader.close().await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_media_whose_connection_goes_silent_is_dropped_by_the_keepalive() {
    // Pings every 200 ms; a socket silent for 1 s is closed. (Default: 15 s and 45 s.)
    let server =
        TestServer::spawn_with("[signalling]\nping_interval_ms = 200\nidle_timeout_ms = 1000\n")
            .await;
    // The leader only listens after joining; its WebSocket library answers the pings.
    let leader = TestPeer::leader(&server, "net-quiet", "Ola").await;
    let (invite, token) = server
        .token_with("net-quiet", Role::Participant, Some("Kari"), false, None)
        .await;
    // A participant with signalling only (no publish, never answers an offer: no media), whose
    // connection then goes silent: it neither reads nor writes again — to the server, the
    // same as a home router that lost power mid-course (no FIN, no RST).
    let mut silent = WsClient::connect(&server).await;
    let joined = silent.hello_join(&token).await;
    let member = joined["member_id"].as_str().unwrap().to_string();
    let in_roster = |m: &serde_json::Value| {
        m["type"] == "roster"
            && m["members"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["member_id"] == member.as_str()))
    };
    leader.wait_msg(in_roster).await;
    let went_quiet = Instant::now();
    let went_quiet_ms = attendance::now_ms();

    let n = leader.inbox_len();
    leader
        .wait_msg_after(n, |m| m["type"] == "roster" && !in_roster(m))
        .await;
    let noticed = went_quiet.elapsed();
    eprintln!(
        "silent signalling-only member: out of the leader's roster after {} ms (ping 200 ms, idle timeout 1000 ms)",
        noticed.as_millis()
    );
    assert!(
        noticed >= Duration::from_millis(900),
        "dropped before the idle timeout: {noticed:?}"
    );
    // The leader, silent too but answering pings, is still there long after the timeout. A
    // window, honestly: what must not happen is a timer firing, and nothing the server sends
    // marks "the leader's idle timer was checked" (its pings are answered below the test
    // peer). The silent member's drop above already shows the timer runs on this machine.
    stays_false(
        "a listening member was dropped",
        Duration::from_millis(1500),
        || leader.socket_closed(),
    )
    .await;
    // … and still hears the course: a newcomer shows up in its roster.
    let n = leader.inbox_len();
    let newcomer = server
        .token("net-quiet", Role::Participant, Some("Per"), false)
        .await;
    let mut late = WsClient::connect(&server).await;
    let late_id = late.hello_join(&newcomer).await["member_id"].clone();
    leader
        .wait_msg_after(n, |m| {
            m["type"] == "roster"
                && m["members"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x["member_id"] == late_id))
        })
        .await;
    late.close().await;

    let sid = server.session("net-quiet").await;
    let (db, sid_ref, invite_ref) = (&server.state.db, &sid, &invite);
    let mine: Vec<_> = eventually_async(
        "the silent member's leave in the attendance log",
        TIMEOUT,
        || async move {
            let mine: Vec<_> = attendance::events(db, sid_ref)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.invite_id == *invite_ref)
                .collect();
            mine.iter()
                .any(|e| matches!(e.kind, Kind::Left(_)))
                .then_some(mine)
        },
    )
    .await;
    let kinds: Vec<Kind> = mine.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![Kind::Joined, Kind::Left(LeftReason::Dropped)],
        "{mine:?}"
    );
    assert!(mine[1].at_ms >= went_quiet_ms, "{mine:?}");
    leader.close().await;
}

// ---- Chromium through the impairing relay ----
//
// A browser's sockets cannot be given the impairer's runtime, so here the server advertises
// its media port at 127.0.0.2 (`media.public_ips`) and `netsim::UdpRelay` sits there in front
// of the real port (127.0.0.1), loss and delay on the flows chosen. Publisher and watchers are
// Chromium tabs (fake camera, real VP8 encoder and decoder, real NACK, PLI and jitter buffer);
// the figures are Chromium's own getStats. Printed, with wide behavioural assertions only.

struct Browsers {
    server: TestServer,
    relay: netsim::UdpRelay,
    browser: common::chromium::Chromium,
    base: String,
    /// Held while the test runs (dropped last): see `CHROMIUM_ONE_AT_A_TIME`.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

/// This file's Chromium tests run one at a time: each starts a browser with a publisher and
/// two watchers behind a lossy link, and two of them beside the file's other peers on two
/// cores once starved a publisher's first video past its wait (a fresh-clone CI run,
/// 2026-12-07).
static CHROMIUM_ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn browsers_behind_relay() -> Browsers {
    let one_at_a_time = CHROMIUM_ONE_AT_A_TIME.lock().await;
    let server = TestServer::spawn_with(
        "[media]\nbind_ips = [\"127.0.0.1\"]\npublic_ips = [\"127.0.0.2\"]\ntransports = [\"udp\"]\n",
    )
    .await;
    let media = server.state.sfu.media_addrs()[0];
    let relay = netsim::UdpRelay::start(
        std::net::SocketAddr::new([127, 0, 0, 2].into(), media.port()),
        media,
    )
    .await
    .expect("relay on 127.0.0.2");
    let browser = common::chromium::Chromium::launch().await;
    let base = format!("http://{}", server.addr);
    Browsers {
        server,
        relay,
        browser,
        base,
        _one_at_a_time: one_at_a_time,
    }
}

impl Browsers {
    async fn tab(&mut self, role: Role, name: &str) -> common::chromium::Page {
        let token = self
            .server
            .token("net-chromium", role, Some(name), false)
            .await;
        let page = if role == Role::Leader {
            "publish"
        } else {
            "watch"
        };
        let tab = self
            .browser
            .open(&format!("{}/{page}.html#t={token}", self.base))
            .await;
        let started = self.browser.eval(&tab, "kursrelay.start({})").await;
        assert!(started.get("role").is_some(), "{started}");
        tab
    }

    async fn stats(&mut self, tab: &common::chromium::Page) -> serde_json::Value {
        self.browser.eval(tab, "kursrelay.stats()").await
    }

    /// Waits until `tab` has decoded `n` frames.
    async fn decoding(&mut self, tab: &common::chromium::Page, n: u64) {
        let mut patience =
            Patience::new("", Duration::from_secs(30)).at_most_every(Duration::from_millis(100));
        loop {
            let s = self.stats(tab).await;
            if s["framesDecoded"].as_u64().unwrap_or(0) >= n {
                return;
            }
            assert!(patience.try_pause().await, "no video decoded: {s}");
        }
    }
}

/// What changed in a tab's stats over the window.
fn window(a: &serde_json::Value, b: &serde_json::Value, secs: f64) -> String {
    let d = |k: &str, sub: Option<&str>| {
        let get = |v: &serde_json::Value| match sub {
            Some(s) => v[s][k].as_f64().unwrap_or(0.0),
            None => v[k].as_f64().unwrap_or(0.0),
        };
        get(b) - get(a)
    };
    let jb = d("jitterBufferDelay", Some("video"))
        / d("jitterBufferEmittedCount", Some("video")).max(1.0);
    format!(
        "decoded {:.0} frames ({:.1}/s), packets {:.0} received / {:.0} lost for good, {:.0} NACKs, {:.0} PLIs, {:.0} keyframes, {:.0} dropped frames, {:.0} freezes ({:.2} s frozen), jitter buffer {:.0} ms",
        d("framesDecoded", None),
        d("framesDecoded", None) / secs,
        d("videoPacketsReceived", None),
        d("packetsLost", Some("video")),
        d("nackCount", Some("video")),
        d("pliCount", Some("video")),
        d("keyFramesDecoded", Some("video")),
        d("framesDropped", Some("video")),
        d("freezeCount", Some("video")),
        d("totalFreezesDuration", Some("video")),
        jb * 1000.0,
    )
}

fn engine_figures(server: &TestServer) -> String {
    format!(
        "forwarded {} (sealed by the engine {}); NACKed packets re-sent from the cache {}, not in it {}; keyframe requests received {}, sent to the publisher {}; probes {} ({} found the line full)",
        server.metric(|m| &m.packets_forwarded),
        server.metric(|m| &m.packets_sealed),
        server.metric(|m| &m.nacks_answered),
        server.metric(|m| &m.nacks_missed),
        server.metric(|m| &m.keyframe_requests_received),
        server.metric(|m| &m.keyframe_requests_sent),
        server.metric(|m| &m.probes),
        server.metric(|m| &m.probes_failed),
    )
}

const CHROMIUM_RUN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_watcher_on_a_lossy_late_link_keeps_decoding() {
    let mut b = browsers_behind_relay().await;
    let publisher = b.tab(Role::Leader, "Kursleiar").await;
    let control = b.tab(Role::Participant, "Volda").await;
    b.decoding(&control, 30).await;
    // From here on new flows (the next tab's) are 5 % / 100 ms each way.
    let link = bad_link();
    b.relay.set_new_flows(link.clone());
    let impaired = b.tab(Role::Participant, "Kari").await;
    b.decoding(&impaired, 10).await;

    let (c0, i0) = (b.stats(&control).await, b.stats(&impaired).await);
    let started = Instant::now();
    tokio::time::sleep(CHROMIUM_RUN).await;
    let (c1, i1) = (b.stats(&control).await, b.stats(&impaired).await);
    let secs = started.elapsed().as_secs_f64();
    eprintln!("Chromium watchers, {secs:.1} s, publisher a Chromium tab with the fake camera:");
    eprintln!("  clean (control):      {}", window(&c0, &c1, secs));
    eprintln!(
        "  5 % / 100 ms each way: {} [{}]",
        window(&i0, &i1, secs),
        link.summary()
    );
    eprintln!("  server: {}", engine_figures(&b.server));
    let quality = |s: &serde_json::Value| {
        s["inbound"]
            .as_array()
            .and_then(|l| l.iter().find(|t| t["kind"] == "video"))
            .map(|t| t["quality"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    eprintln!(
        "  video the server forwards: impaired {}, control {}",
        quality(&i1),
        quality(&c1)
    );
    eprintln!(
        "  transports: {} / {}",
        i1["transports"],
        b.stats(&publisher).await["transports"]
    );

    let frames = |a: &serde_json::Value, b: &serde_json::Value| {
        b["framesDecoded"].as_f64().unwrap() - a["framesDecoded"].as_f64().unwrap()
    };
    let nacks =
        i1["video"]["nackCount"].as_f64().unwrap() - i0["video"]["nackCount"].as_f64().unwrap();
    assert!(
        link.received_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the relay lost nothing: {}",
        link.summary()
    );
    assert!(nacks > 0.0, "the impaired watcher sent no NACK: {i1}");
    // … and the server answered them from its cache (before Chromium's AES-CM profile was
    // sealed by the engine, no NACK from a browser was ever answered).
    assert!(
        b.server.metric(|m| &m.nacks_answered) > 0,
        "no NACK answered: {}",
        engine_figures(&b.server)
    );
    // Random loss is not a narrow line: the server keeps sending this viewer the layer the
    // clean one gets (when the loss in transport-cc feedback was misread, 5 % read as 15 %,
    // its estimate sank until its video was paused).
    assert_eq!(quality(&i1), "full", "{}", i1["inbound"]);
    // Kept decoding: at least half the control's frames (wide: this machine is shared).
    assert!(
        frames(&i0, &i1) >= 0.5 * frames(&c0, &c1),
        "impaired {} against control {}",
        frames(&i0, &i1),
        frames(&c0, &c1)
    );
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publisher_on_a_lossy_late_link_still_reaches_watchers() {
    let mut b = browsers_behind_relay().await;
    // The publisher's flows are 5 % / 100 ms each way; the watcher's are clean.
    let link = bad_link();
    b.relay.set_new_flows(link.clone());
    let publisher = b.tab(Role::Leader, "Kursleiar").await;
    // Its publish connection is up once the server sees its video. Through 5 % loss each
    // way a lost DTLS flight is re-sent after 1, 2, then 4 s, so this may take well beyond
    // a clean link's time (a fresh-clone CI run with the other Chromium tests of this file
    // beside it once missed TIMEOUT here; the next run passed).
    let server = &b.server;
    assert!(
        wait_until(2 * TIMEOUT, || server.live().forwarders > 0).await,
        "no feed from the impaired publisher within {:?}: {}",
        2 * TIMEOUT,
        link.summary()
    );
    b.relay.set_new_flows(Link::new(0.0, Duration::ZERO));
    let watcher = b.tab(Role::Participant, "Volda").await;
    b.decoding(&watcher, 10).await;

    let (p0, w0) = (b.stats(&publisher).await, b.stats(&watcher).await);
    let started = Instant::now();
    tokio::time::sleep(CHROMIUM_RUN).await;
    let (p1, w1) = (b.stats(&publisher).await, b.stats(&watcher).await);
    let secs = started.elapsed().as_secs_f64();
    let sent = |k: &str| p1["sent"][k].as_f64().unwrap() - p0["sent"][k].as_f64().unwrap();
    eprintln!(
        "Chromium publisher on a 5 % / 100 ms link each way, {secs:.1} s [{}]:",
        link.summary()
    );
    eprintln!(
        "  publisher: encoded {:.0} frames in {} layers ({:.1}/s in the busiest), sent {:.0} packets, {:.0} retransmitted on {:.0} NACKs, {:.0} PLIs received",
        sent("framesEncoded"),
        p1["sent"]["layers"],
        sent("framesEncodedOneLayer") / secs,
        sent("packetsSent"),
        sent("retransmittedPacketsSent"),
        sent("nackCount"),
        sent("pliCount"),
    );
    eprintln!("  clean watcher: {}", window(&w0, &w1, secs));
    eprintln!("  server: {}", engine_figures(&b.server));
    assert!(
        sent("nackCount") > 0.0,
        "the server asked the lossy publisher for nothing again: {p1}"
    );
    let decoded = w1["framesDecoded"].as_f64().unwrap() - w0["framesDecoded"].as_f64().unwrap();
    // A simulcast publisher encodes each frame once per layer; a watcher gets one layer.
    // Upstream loss that the publisher's re-sends do not repair costs the watcher frames until
    // the next keyframe, and how many depends on the publisher's rate: 65 % decoded on a quiet
    // machine, 44 % in a loaded CI run (issue 20's session, the publisher at 3× the packet rate). A
    // third is the floor: a watcher that gets nothing, or only keyframes, stays far below it.
    let one_layer = sent("framesEncodedOneLayer");
    assert!(
        decoded >= 0.33 * one_layer,
        "the watcher decoded {decoded} of {one_layer} frames encoded in one layer ({} layers)",
        p1["sent"]["layers"]
    );
    b.server.shutdown().await;
}
