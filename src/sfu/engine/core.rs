//! The engine's core, without I/O (str0m's `Rtc` is the model): every connection, the
//! demultiplexer, the deadline heap, the track caches, fan-out, GOP catch-up, NACK re-sends,
//! the viewers' pacers, sender-report translation, keyframe requests upstream and liveness.
//! It opens no socket, reads no clock and spawns nothing:
//!
//! - `handle_input(now, Input)`: a datagram (or ICE-TCP frame) that arrived, a command from a
//!   member task, or `Timeout` (the periodic work, due at `poll_timeout()`);
//! - `poll_transmit()`: datagrams to send, in order (the shell batches them into `sendmmsg`
//!   and gives the buffers back with `recycle`);
//! - `poll_event()`: what the shell must do besides sending (ICE-TCP bookkeeping);
//! - `poll_timeout()`: when to call `handle_input(now, Input::Timeout)` next.
//!
//! Member tasks still get their `PeerEvent`s on their own bounded queues (`try_send`, never
//! waiting): that is the engine's contract with them, not I/O of the engine's own. The shell
//! around this (`shell.rs`) is the only part that touches sockets, epoll and the clock; the
//! deterministic tests (tests/media_sim.rs) drive this core in simulated time instead.
//!
//! The core knows nothing about the other engines that may one day run beside it: everything
//! it owns is keyed by its own `ConnKey`s and feed ids, so several cores can later run on
//! several threads, each with its own shell.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::conn::{Conn, Feedback, Sent};
use super::resend::{Refusal, ResendGuard};
use super::{cache, mux, pacer, srtp, Command};
use crate::sfu::allocator;
use crate::sfu::conn_key::ConnKey;
use crate::sfu::forwarder::{DownTrack, Feed, Incoming, Outgoing, NO_LAYER, PAUSED};
use crate::sfu::keyframe::{CodecFamily, MAX_LAYERS};
use crate::sfu::metrics::Metrics;
use crate::sfu::probe;
use crate::sfu::{MediaSettings, SfuError};

/// Datagrams per second one remote address may send before the rest is dropped.
pub(crate) const FLOOD_LIMIT_PER_SECOND: u32 = 8000;
/// Cached GOP packets sent per newcomer per turn (a `Timeout`, at least every `TURN`): a
/// whole keyframe (≈ 45–55 packets) fits, so the first picture is not delayed (at 24 the
/// storm's join → first keyframe p95 went from 139 to 267 ms); the rest of the GOP is spread.
pub(crate) const GOP_PACKETS_PER_TURN: usize = 64;
/// A newcomer is replayed the cached GOP only if its keyframe arrived at most this long ago
/// and it holds at most `GOP_REPLAY_MAX_PACKETS`; otherwise the engine asks the publisher for
/// a fresh keyframe (paced, `keyframe_requests`) and starts the newcomer there. Chromium sends
/// keyframes rarely (a cached GOP was ≈ 1 100 packets, ≈ 16 s of video): replaying that cost
/// a newcomer 9–70 Mbit/s for seconds and froze its picture on any line short of that
/// (issue 20). 2 s of a 1.7 Mbit/s camera is ≈ 400 packets: a short GOP is still cheaper than
/// a keyframe round trip (≈ one RTT plus an encoded keyframe), a long one is not.
pub(crate) const GOP_REPLAY_MAX_AGE: Duration = Duration::from_secs(2);
pub(crate) const GOP_REPLAY_MAX_PACKETS: usize = 512;
/// Bytes on the wire besides the payload: IP + UDP (28), RTP header with the transport-wide
/// sequence number (20), SRTP tag (16).
const WIRE_OVERHEAD: usize = 64;
/// How often each viewer's layers are chosen again (`allocate`).
pub(crate) const ALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// How often the layers' rates are measured.
pub(crate) const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// The periodic work (GOP pacing, keyframe requests, timers) runs at least this often.
pub(crate) const TURN: Duration = Duration::from_millis(20);
/// How often connections are checked for a silent client.
pub(crate) const LIVENESS_EVERY: Duration = Duration::from_millis(250);
/// Send buffers kept for reuse. One input's output must fit for the path to allocate nothing:
/// a packet fanned out to N subscribers queues N buffers before the shell sends them. Beyond
/// this many (a feed with more than ≈ 1 000 subscribers on one engine) the extra buffers are
/// allocated, sent and freed, and the path allocates once per extra datagram.
pub(crate) const POOL: usize = 1024;

/// What `allocate` reuses from pass to pass: one viewer's videos, their down-tracks, the
/// decisions.
#[derive(Default)]
struct Scratch {
    feeds: Vec<u64>,
    videos: Vec<(crate::ids::TrackId, [allocator::LayerInfo; MAX_LAYERS])>,
    downs: Vec<Arc<DownTrack>>,
    decisions: Vec<allocator::Decision>,
}

/// A feed's packet caches, one per simulcast layer (a single-layer feed uses the first).
type LayerCaches = [Option<cache::TrackCache>; MAX_LAYERS];

/// One datagram or ICE-TCP frame that arrived on the media port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram<'a> {
    /// The local address it arrived on (which socket, or which TCP listener).
    pub(crate) local: SocketAddr,
    pub(crate) from: SocketAddr,
    pub(crate) proto: TransportProtocol,
    pub(crate) data: &'a [u8],
}

/// What the core is given.
pub(crate) enum Input<'a> {
    Datagram(Datagram<'a>),
    Command(Command),
    /// Time passed: due connection timers, GOP pacing, keyframe requests, liveness.
    Timeout,
}

/// One datagram (or ICE-TCP frame) to send.
#[derive(Debug)]
pub(crate) struct Transmit {
    pub(crate) proto: TransportProtocol,
    /// The local address to send from (which socket).
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) data: BytesMut,
}

/// What the shell has to do besides sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A connection closed: close the ICE-TCP stream from this peer, if there is one.
    ClosePeer(SocketAddr),
    /// A liveness pass ran: close ICE-TCP streams that never passed a check (`judged`: the
    /// engine kept up, so silence means something).
    Liveness { judged: bool },
}

/// Connections live in slots; a key carries the slot's generation so a stale key (a closed
/// connection's down-track) never reaches the connection that reused the slot.
pub(super) struct Slot {
    pub(super) gen: u32,
    pub(super) conn: Option<Conn>,
}

/// The connection `key` names, if its slot still holds it (not a later one in the same slot).
/// A free function so a caller can hold it beside `Core::out`.
fn live_conn(conns: &mut [Slot], key: ConnKey) -> Option<&mut Conn> {
    conns
        .get_mut(key.slot as usize)
        .filter(|s| s.gen == key.gen)
        .and_then(|s| s.conn.as_mut())
}

/// Datagrams waiting for the shell, and the buffers it gave back. Kept apart from the
/// connections so a connection can be serviced while output is queued.
pub(crate) struct Outbox {
    queue: VecDeque<Transmit>,
    pub(crate) pool: Vec<BytesMut>,
    /// Viewers whose pacer holds packets (`release_paced` looks at them every `PACE_TICK`).
    paced: Vec<ConnKey>,
    /// Viewers whose line is being probed (`send_probes` looks at them every `PACE_TICK`).
    probing: Vec<ConnKey>,
    /// Packets held by a pacer, and held packets sent early because a pacer was full, since
    /// the metrics last took them.
    held: u64,
    forced: u64,
}

/// One forwarded packet for one viewer, as `Outbox::deliver` takes it.
struct Forward<'a> {
    down: &'a Arc<DownTrack>,
    out: Outgoing,
    marker: bool,
    payload: &'a [u8],
    what: Sent,
    /// A re-send's transport-wide number (extension id, number): the original's.
    twcc: Option<(u8, u16)>,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            queue: VecDeque::with_capacity(POOL),
            pool: Vec::with_capacity(POOL),
            paced: Vec::new(),
            probing: Vec::new(),
            held: 0,
            forced: 0,
        }
    }

    /// Queues what a connection produced.
    fn push(&mut self, out: TaggedBytesMut) {
        self.queue.push_back(Transmit {
            proto: out.transport.transport_protocol,
            local: out.transport.local_addr,
            peer: out.transport.peer_addr,
            data: out.message,
        });
    }

    /// Seals one forwarded packet for one subscriber (its SSRC and payload type, the outgoing
    /// sequence number, rollover counter, timestamp and VP8 ids `admit` gave it; the
    /// transport-wide sequence number when the connection has transport-cc) with its connection's own SRTP
    /// keys into a pooled buffer, and queues it. The one place where fan-out, GOP catch-up and
    /// NACK re-sends put forwarded media on the wire. False if the sealer refused it (a
    /// payload too large for a datagram).
    #[allow(clippy::too_many_arguments)]
    fn seal_and_queue(
        &mut self,
        sealer: &srtp::Sealer,
        dest: TransportContext,
        down: &DownTrack,
        out: &Outgoing,
        marker: bool,
        payload: &[u8],
        twcc: Option<(u8, u16)>,
    ) -> bool {
        let mut buf = self.pool.pop().unwrap_or_default();
        let rewrite = out.rewrite;
        let header = srtp::Header {
            marker,
            payload_type: down.payload_type,
            seq: out.seq,
            timestamp: out.timestamp,
            ssrc: down.ssrc,
            roc: out.roc,
            twcc,
            padding: 0,
        };
        if !sealer.seal(&mut buf, &header, payload, |p| rewrite.apply(p)) {
            self.recycle(buf);
            return false;
        }
        if let Some((_, n)) = twcc {
            down.remember_twcc(out.seq, n);
        }
        self.queue.push_back(Transmit {
            proto: dest.transport_protocol,
            local: dest.local_addr,
            peer: dest.peer_addr,
            data: buf,
        });
        true
    }

    /// Puts one forwarded packet for viewer `key` on its way: sealed and queued now, or held
    /// by the viewer's pacer (a copy of the payload in a pooled buffer, sealed when it
    /// leaves). Sound is never held. False if it could not be sealed.
    fn deliver(&mut self, key: ConnKey, conn: &mut Conn, now: Instant, f: Forward<'_>) -> bool {
        let size = f.payload.len() + WIRE_OVERHEAD;
        if let Some(p) = conn.pacer() {
            if f.what == Sent::Audio {
                p.charge(now, size);
            } else if !p.may_send(now, size) {
                if !p.listed {
                    p.listed = true;
                    self.paced.push(key);
                }
                let mut payload = self.pool.pop().unwrap_or_default();
                payload.extend_from_slice(f.payload);
                let held = pacer::Held {
                    down: f.down.clone(),
                    out: f.out,
                    marker: f.marker,
                    payload,
                    what: f.what,
                    twcc: f.twcc,
                };
                self.held += 1;
                if let Some(h) = p.hold(held, size, f.what == Sent::Resent) {
                    self.forced += 1;
                    self.seal_held(conn, now, h);
                }
                return true;
            }
        }
        self.seal_now(conn, now, &f)
    }

    /// Seals `f` with the connection's keys (a new packet gets its transport-wide number
    /// now, when it leaves) and queues it.
    fn seal_now(&mut self, conn: &mut Conn, now: Instant, f: &Forward<'_>) -> bool {
        let size = f.payload.len() + WIRE_OVERHEAD;
        let stamped = if f.what == Sent::Resent {
            conn.lean().map(|(sealer, dest)| (sealer, dest, f.twcc))
        } else {
            conn.lean_stamped(now, size, f.what)
        };
        let Some((sealer, dest, twcc)) = stamped else {
            return false;
        };
        if !self.seal_and_queue(sealer, dest, f.down, &f.out, f.marker, f.payload, twcc) {
            return false;
        }
        if f.what == Sent::Resent {
            conn.count_resent(size);
        }
        true
    }

    /// A held packet leaves: sealed and queued, its buffer back in the pool.
    fn seal_held(&mut self, conn: &mut Conn, now: Instant, h: pacer::Held) -> bool {
        let ok = self.seal_now(
            conn,
            now,
            &Forward {
                down: &h.down,
                out: h.out,
                marker: h.marker,
                payload: &h.payload,
                what: h.what,
                twcc: h.twcc,
            },
        );
        self.recycle(h.payload);
        ok
    }

    /// One padding-only packet of a probe on the viewer's repair stream (`sfu::probe`):
    /// sealed and queued. The transport-cc id it got, if it could be sent.
    fn seal_padding(&mut self, conn: &mut Conn, now: Instant, timestamp: u32) -> Option<u64> {
        let p = conn.lean_padding(now, probe::PAD_WIRE)?;
        let mut buf = self.pool.pop().unwrap_or_default();
        let header = srtp::Header {
            marker: false,
            payload_type: p.payload_type,
            seq: p.seq,
            timestamp,
            ssrc: p.ssrc,
            roc: p.roc,
            twcc: Some(p.twcc),
            padding: probe::PAD,
        };
        if !p.sealer.seal(&mut buf, &header, &[], |_| {}) {
            self.recycle(buf);
            return None;
        }
        self.queue.push_back(Transmit {
            proto: p.dest.transport_protocol,
            local: p.dest.local_addr,
            peer: p.dest.peer_addr,
            data: buf,
        });
        Some(p.id)
    }

    fn recycle(&mut self, mut buf: BytesMut) {
        if self.pool.len() < self.pool.capacity() {
            buf.clear();
            self.pool.push(buf);
        }
    }
}

pub(crate) struct Core {
    settings: MediaSettings,
    metrics: Arc<Metrics>,
    out: Outbox,
    events: VecDeque<Event>,
    advertised: Vec<(SocketAddr, SocketAddr)>,
    pub(super) conns: Vec<Slot>,
    free: Vec<u32>,
    pub(super) demux: mux::Demux<ConnKey>,
    flood: mux::FloodGuard,
    /// (deadline, connection): stale entries (the connection's deadline moved) are skipped.
    timers: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    /// Publish connections (their feeds are checked for keyframe requests every turn).
    publishers: Vec<ConnKey>,
    /// Media taken from a publish connection, waiting for its fan-out (reused, no allocation).
    /// (feed, simulcast layer, packet).
    forwards: Vec<(Arc<Feed>, u8, rtc::rtp::Packet)>,
    /// NACKs and sender reports taken from a connection, waiting for the engine (reused).
    feedback: Feedback,
    /// Newcomers being sent a cached GOP, paced (`pace_catchups`).
    catchups: Vec<(Arc<Feed>, u8, Arc<DownTrack>)>,
    /// Per forwarded feed: a packet cache per layer (NACKs, GOP joins), made at the layer's
    /// first packet, dropped when the feed ends.
    caches: HashMap<u64, (Arc<Feed>, LayerCaches)>,
    /// Per down-track (viewer connection, feed) that NACKed: which NACKs are answered
    /// (`resend.rs`). Made at the first NACK, dropped with the connection or the feed.
    resends: HashMap<(ConnKey, u64), ResendGuard>,
    next_liveness: Instant,
    /// When viewers' layers are chosen next, and when layer rates were last measured.
    next_allocation: Instant,
    last_measure: Instant,
    /// Reused by `allocate`.
    scratch: Scratch,
    /// The last periodic turn (`Timeout`).
    last_turn: Instant,
    /// The shell's last socket read stopped at its budget with datagrams left.
    reads_pending: bool,
    /// Connectivity-check connections open now (at most `MAX_CHECKS`).
    checks: usize,
    epoch: Instant,
}

impl Core {
    /// `advertised`: each bound address and the address clients are told to use for it.
    pub(crate) fn new(
        settings: MediaSettings,
        metrics: Arc<Metrics>,
        advertised: Vec<(SocketAddr, SocketAddr)>,
        now: Instant,
    ) -> Core {
        Core {
            settings,
            metrics,
            out: Outbox::new(),
            events: VecDeque::new(),
            advertised,
            conns: Vec::new(),
            free: Vec::new(),
            demux: mux::Demux::default(),
            flood: mux::FloodGuard::new(FLOOD_LIMIT_PER_SECOND),
            timers: BinaryHeap::new(),
            publishers: Vec::new(),
            forwards: Vec::with_capacity(64),
            feedback: Feedback::default(),
            catchups: Vec::new(),
            caches: HashMap::new(),
            resends: HashMap::new(),
            next_liveness: now,
            next_allocation: now + ALLOCATE_EVERY,
            last_measure: now,
            scratch: Scratch::default(),
            last_turn: now,
            reads_pending: false,
            checks: 0,
            epoch: now,
        }
    }

    pub(crate) fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram(d) => self.input(now, d),
            Input::Command(cmd) => self.command(now, cmd),
            Input::Timeout => self.turn(now),
        }
    }

    /// The next datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.queue.pop_front()
    }

    /// Gives a sent datagram's buffer back for reuse.
    pub(crate) fn recycle(&mut self, buf: BytesMut) {
        self.out.recycle(buf);
    }

    /// The buffer pool, for the shell's send batches (which give their buffers back in bulk).
    pub(crate) fn pool(&mut self) -> &mut Vec<BytesMut> {
        &mut self.out.pool
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `Input::Timeout` is due: the earliest connection deadline, the next liveness pass,
    /// and at least every `TURN` (GOP pacing, keyframe requests asked for from other threads).
    pub(crate) fn poll_timeout(&self) -> Instant {
        let mut t = (self.last_turn + TURN).min(self.next_liveness);
        if !self.out.paced.is_empty() || !self.out.probing.is_empty() {
            t = t.min(self.last_turn + pacer::PACE_TICK);
        }
        if let Some(Reverse((deadline, _))) = self.timers.peek() {
            t = t.min(*deadline);
        }
        t
    }

    /// Set by the shell: its last read left datagrams in a socket. Silence is not judged then
    /// ("not heard" may just mean "not read yet").
    pub(crate) fn set_reads_pending(&mut self, pending: bool) {
        self.reads_pending = pending;
    }

    /// Whether a client address passed an ICE check (the shell keeps such TCP streams).
    pub(crate) fn is_bound(&self, addr: &SocketAddr) -> bool {
        self.demux.is_bound(addr)
    }

    /// Closes every connection (the engine is stopping).
    pub(crate) fn close_all(&mut self) {
        for key in self.live_keys() {
            self.close(key);
        }
    }

    /// One periodic turn.
    fn turn(&mut self, now: Instant) {
        self.last_turn = now;
        self.timers_due(now);
        self.release_paced(now);
        self.send_probes(now);
        self.pace_catchups(now);
        self.keyframe_requests(now);
        self.allocate(now);
        self.liveness(now);
    }

    /// Every ALLOCATE_EVERY: each viewer's estimate takes in its receiver reports, and its
    /// allocator chooses a layer (or a pause) for each of its videos from what the estimate
    /// leaves after audio and re-sends. Changes the viewer should hear of become
    /// `PeerEvent::VideoQuality`. Not per packet: a few small vectors per pass.
    fn allocate(&mut self, now: Instant) {
        if now < self.next_allocation {
            return;
        }
        let since = now.saturating_duration_since(self.next_allocation - ALLOCATE_EVERY);
        self.next_allocation = now + ALLOCATE_EVERY;
        if now.saturating_duration_since(self.last_measure) >= MEASURE_EVERY {
            let secs = now
                .saturating_duration_since(self.last_measure)
                .as_secs_f64();
            self.last_measure = now;
            for (feed, _) in self.caches.values() {
                feed.measure(secs);
            }
        }
        let secs = since.as_secs_f64().max(0.001);
        let Scratch {
            feeds,
            videos,
            downs,
            decisions,
        } = &mut self.scratch;
        let (mut paused_viewers, mut estimate_sum, mut viewers) = (0i64, 0f64, 0i64);
        let (mut by_twcc, mut by_rr, mut by_remb) = (0i64, 0i64, 0i64);
        for (i, slot) in self.conns.iter_mut().enumerate() {
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if conn.viewer.is_none() || !conn.is_connected() {
                continue;
            }
            let key = ConnKey {
                slot: i as u32,
                gen: slot.gen,
            };
            videos.clear();
            downs.clear();
            feeds.clear();
            feeds.extend(conn.sent_feeds());
            // The server's order: a shared screen first (slides are what a course is read
            // from), then the oldest publication first, so a feed's place in the budget does
            // not depend on a map's order. The viewer's own order, if it sent one, comes
            // before this (below).
            let caches = &self.caches;
            feeds.sort_unstable_by_key(|id| {
                let screen = caches.get(id).is_some_and(|(f, _)| f.is_screen());
                (!screen, *id)
            });
            for &feed in feeds.iter() {
                let Some((f, _)) = self.caches.get(&feed) else {
                    continue;
                };
                if f.family == CodecFamily::Audio {
                    continue;
                }
                // A single-layer video is forwarded as before, whatever the estimate: there
                // is nothing to choose, and an estimate that never saw it fit (a viewer
                // without transport-cc on a lossy path: receiver reports do not let it grow)
                // must not take the only picture away.
                if f.layers().count_ones() < 2 {
                    continue;
                }
                if let Some(d) = f.downs.load().iter().find(|d| d.conn == key) {
                    videos.push((d.track, f.layer_info()));
                    downs.push(d.clone());
                }
            }
            let now_ms = conn.ms(now);
            let next_twcc_id = conn.next_twcc_id();
            let Some(viewer) = conn.viewer.as_mut() else {
                continue;
            };
            let mut rate = [0f64; 3];
            for (k, r) in rate.iter_mut().enumerate() {
                *r = (viewer.sent[k] - viewer.sent_seen[k]) as f64 * 8.0 / secs;
            }
            viewer.sent_seen = viewer.sent;
            viewer.estimate.pass(now_ms, rate.iter().sum());
            viewer.probe.settle(now_ms);
            if let Some(proof) = viewer.probe.take_fresh() {
                viewer.estimate.on_proof(&proof);
                if !proof.kept_up {
                    self.metrics.probes_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let estimate = viewer.estimate.bps(now_ms);
            let twcc = viewer.estimate.has_twcc(now_ms);
            let pace = viewer.estimate.pace_bps(now_ms);
            let pacing = twcc && self.settings.pacer;
            viewer.pacer.update(pacing.then_some(pace), secs);
            if twcc {
                by_twcc += 1;
            } else {
                by_rr += 1;
            }
            by_remb += i64::from(viewer.estimate.remb_caps(now_ms));
            let budget = estimate * allocator::HEADROOM
                - rate[Sent::Audio as usize]
                - rate[Sent::Resent as usize];
            // The viewer's own order (its page knows which picture is the interpreter's)
            // goes before the server's.
            allocator::in_viewer_order(viewer.allocator.preference(), videos, downs);
            decisions.clear();
            let loss = viewer.estimate.loss(now_ms);
            // Steps up wait for a probe where the line can be probed: transport-cc says when
            // the padding arrived, the client took a repair stream to carry it, and it has not
            // shown that it leaves padding out of its feedback.
            let probing =
                self.settings.probes && twcc && viewer.pad.is_some() && viewer.probe.usable;
            let room_bps = viewer
                .estimate
                .cap_bps(now_ms)
                .map(|cap| cap - rate[Sent::Audio as usize] - rate[Sent::Resent as usize]);
            viewer.allocator.probing = probing.then_some(allocator::Probing {
                proof: viewer.probe.proof,
                sent_bps: rate.iter().sum(),
                room_bps,
            });
            viewer
                .allocator
                .allocate(now_ms, budget, videos, PAUSED, loss, decisions);
            if let Some(target) = viewer.allocator.take_probe() {
                // Not while the pacer holds packets: the line is busy with a burst already.
                if let (false, false, Some(next_id)) = (
                    viewer.probe.is_busy(),
                    viewer.pacer.is_holding(),
                    next_twcc_id,
                ) {
                    let sent = viewer.sent.iter().sum();
                    viewer
                        .probe
                        .start(now, target, rate.iter().sum(), next_id, sent);
                    if viewer.probe.is_sending() {
                        self.metrics.probes.fetch_add(1, Ordering::Relaxed);
                        self.out.probing.push(key);
                    }
                }
            }
            let mut paused = false;
            for (d, down) in decisions.iter().zip(downs.iter()) {
                down.set_target_layer(d.target);
                if d.cut && down.layer() != NO_LAYER && down.layer() > d.target {
                    // The line does not carry what it gets: stop sending it now and go on
                    // at the lower layer's next keyframe (asked for by `admit`), a short
                    // still picture instead of a queue that drops the sound.
                    down.start_layer(d.target);
                    self.metrics.layer_cuts.fetch_add(1, Ordering::Relaxed);
                }
                if (d.cut && down.layer() != NO_LAYER) || d.target == PAUSED {
                    // What the pacer still holds of a layer cut (or a video paused) goes too:
                    // sent afterwards, it would go on flooding the line the cut relieves.
                    if let Some(p) = conn.pacer() {
                        let out = &mut self.out;
                        p.remove_where(
                            |h| Arc::ptr_eq(&h.down, down) && h.what == Sent::Video,
                            |h| out.recycle(h.payload),
                        );
                    }
                }
                paused |= d.target == PAUSED;
                if let Some(q) = d.tell {
                    conn.tell_quality(down.track, q);
                }
            }
            if let Some(viewer) = conn.viewer.as_mut() {
                viewer.paused = paused;
            }
            paused_viewers += i64::from(paused);
            estimate_sum += estimate;
            viewers += 1;
        }
        let m = &self.metrics;
        m.video_paused_viewers
            .store(paused_viewers, Ordering::Relaxed);
        m.viewers_estimated.store(viewers, Ordering::Relaxed);
        m.viewer_estimate_sum_bps
            .store(estimate_sum as i64, Ordering::Relaxed);
        m.viewers_estimated_by_twcc
            .store(by_twcc, Ordering::Relaxed);
        m.viewers_estimated_by_receiver_reports
            .store(by_rr, Ordering::Relaxed);
        m.viewers_capped_by_remb.store(by_remb, Ordering::Relaxed);
    }

    pub(super) fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        live_conn(&mut self.conns, key)
    }

    fn live_keys(&self) -> Vec<ConnKey> {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, s)| ConnKey {
                slot: i as u32,
                gen: s.gen,
            })
            .collect()
    }

    /// Whether a datagram from `from` at `now` is within that address's budget.
    pub(super) fn flood_allows(&mut self, now: Instant, from: SocketAddr) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.flood.allow(from, now_ms)
    }

    /// One datagram (or ICE-TCP frame) in: flood budget, demultiplexing, the connection.
    fn input(&mut self, now: Instant, d: Datagram<'_>) {
        let Datagram {
            local,
            from,
            proto,
            data,
        } = d;
        if !self.flood_allows(now, from) {
            self.metrics.count_drop(mux::Drop::Flood);
            return;
        }
        let key = match self.demux.route(from, data) {
            Ok(k) => k,
            Err(why) => {
                self.metrics.count_drop(why);
                return;
            }
        };
        let ok = match self.conn_mut(key) {
            Some(c) => c.handle_datagram(now, local, from, data, proto),
            None => false,
        };
        if !ok {
            self.metrics.count_drop(mux::Drop::Rejected);
        }
        self.service(key, now);
    }

    /// Drains what one connection produced: datagrams (binding the addresses it answered),
    /// events, and received media (forwarded at once); then files its next deadline.
    fn service(&mut self, key: ConnKey, now: Instant) {
        let Some(slot) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if slot.gen != key.gen {
            return;
        }
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        // Output first: answering a check is what binds the check's address.
        while let Some(out) = conn.poll_write() {
            let to = out.transport.peer_addr;
            if !self.demux.is_bound(&to) && conn.answers_check(to, &out.message) {
                self.demux.bind(to, key);
            }
            self.out.push(out);
        }
        let mut forwards = std::mem::take(&mut self.forwards);
        let mut feedback = std::mem::take(&mut self.feedback);
        let became_publisher = conn.poll_events(now, &self.metrics);
        conn.refresh_keys();
        conn.poll_reads(now, &self.metrics, &mut forwards, &mut feedback);
        if conn.check.is_some() {
            // A check's echo and burst: what its data channel produced goes out now.
            conn.check_pump(now);
            while let Some(out) = conn.poll_write() {
                self.out.push(out);
            }
        }
        let deadline = conn.next_deadline();
        if became_publisher && !self.publishers.contains(&key) {
            self.publishers.push(key);
        }
        if let Some(t) = deadline {
            self.timers.push(Reverse((t, key)));
        }
        for (feed, layer, packet) in forwards.drain(..) {
            self.fan_out(&feed, layer, packet, now);
        }
        self.forwards = forwards;
        for (feed, seq) in feedback.nacks.drain(..) {
            self.resend(key, feed, seq, now);
        }
        for feed in feedback.plis.drain(..) {
            self.viewer_wants_keyframe(key, feed);
        }
        for (feed, layer, ntp, rtp) in feedback.reports.drain(..) {
            self.sender_reports(&feed, layer, ntp, rtp, now);
        }
        self.feedback = feedback;
    }

    /// A subscriber lost `seq` of `feed`: the same bytes again from the track cache (sealed
    /// with the same header, so the ciphertext repeats exactly — RFC 7714 nonce safety),
    /// unless the down-track's `ResendGuard` refuses it (too old, a repeat within the window,
    /// or over the viewer's re-send budget).
    fn resend(&mut self, key: ConnKey, feed: u64, seq: u16, now: Instant) {
        let Some((f, caches)) = self.caches.get(&feed) else {
            return;
        };
        let downs = f.downs.load();
        let Some(down) = downs.iter().find(|d| d.conn == key) else {
            return;
        };
        let Some((layer, original, roc)) = down.incoming_of(seq) else {
            return;
        };
        let Some(c) = caches
            .get(usize::from(layer))
            .and_then(Option::as_ref)
            .and_then(|cache| cache.get(original))
        else {
            self.metrics.nacks_missed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(conn) = live_conn(&mut self.conns, key) else {
            return;
        };
        // Still held by the viewer's pacer: not sent yet, so not lost; it goes when due.
        if conn.pacer().is_some_and(|p| {
            p.holds(|h| Arc::ptr_eq(&h.down, down) && h.what != Sent::Resent && h.out.seq == seq)
        }) {
            return;
        }
        // With transport-cc the re-send carries the number the original did (the same bytes
        // under the same SRTP nonce); one no longer remembered is not re-sent.
        let twcc = match conn.twcc_ext() {
            Some(id) => match down.twcc_of(seq) {
                Some(n) => Some((id, n)),
                None => {
                    self.metrics.nacks_missed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            None => None,
        };
        if conn.lean().is_none() {
            return;
        }
        let octets = down.octets_sent.load(Ordering::Relaxed);
        let guard = self
            .resends
            .entry((key, feed))
            .or_insert_with(|| ResendGuard::new(octets));
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let age = now.saturating_duration_since(c.arrived);
        if let Err(why) = guard.check(now_ms, seq, age, c.payload.len(), octets) {
            let m = &self.metrics;
            match why {
                Refusal::TooOld => &m.nacks_refused_too_old,
                Refusal::Repeat => &m.nacks_refused_repeat,
                Refusal::Budget => &m.nacks_refused_budget,
            }
            .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (timestamp, rewrite) = down.resent(c.timestamp, &c.payload);
        let out = Outgoing {
            seq,
            roc,
            timestamp,
            rewrite,
        };
        let f = Forward {
            down,
            out,
            marker: c.marker,
            payload: &c.payload,
            what: Sent::Resent,
            twcc,
        };
        if self.out.deliver(key, conn, now, f) {
            self.metrics.nacks_answered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A viewer on connection `key` asked for a keyframe of `feed`: the publisher is asked for
    /// one of the layer that viewer is sent (paced per layer), not of every layer.
    fn viewer_wants_keyframe(&mut self, key: ConnKey, feed: u64) {
        let Some((f, _)) = self.caches.get(&feed) else {
            return;
        };
        let layer = f
            .downs
            .load()
            .iter()
            .find(|d| d.conn == key)
            .map(|d| d.layer())
            .filter(|l| *l != NO_LAYER);
        match layer {
            Some(l) => f.keyframes.request_layer(l),
            None => f.keyframes.request(),
        }
    }

    /// A publisher's sender report of one layer, translated for every subscriber sent that
    /// layer: same NTP time, the RTP time in the subscriber's timestamps (unchanged until its
    /// first layer switch), the subscriber's own SSRC and counts.
    fn sender_reports(&mut self, feed: &Arc<Feed>, layer: u8, ntp: u64, rtp: u32, now: Instant) {
        let downs = feed.downs.load();
        for down in downs.iter() {
            let Some(slot) = self.conns.get_mut(down.conn.slot as usize) else {
                continue;
            };
            if slot.gen != down.conn.gen {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if !conn.is_connected() || !down.has_started() {
                continue;
            }
            // Only the layer this viewer is sent, in its timestamps.
            let Some(rtp_time) = down.report_time(layer, rtp) else {
                continue;
            };
            let report = rtc::rtcp::sender_report::SenderReport {
                ssrc: down.ssrc,
                ntp_time: ntp,
                rtp_time,
                packet_count: down.packets_sent.load(Ordering::Relaxed),
                octet_count: down.octets_sent.load(Ordering::Relaxed),
                ..Default::default()
            };
            if conn.write_sender_report(now, down.sender, report) {
                self.metrics.sender_reports.fetch_add(1, Ordering::Relaxed);
            }
            while let Some(out) = conn.poll_write() {
                self.out.push(out);
            }
        }
    }

    /// Packet-major: this packet (of simulcast `layer`, 0 for a single-layer feed) goes to
    /// every subscriber before the next packet is read.
    pub(super) fn fan_out(
        &mut self,
        feed: &Arc<Feed>,
        layer: u8,
        packet: rtc::rtp::Packet,
        now: Instant,
    ) {
        let layer = layer.min(MAX_LAYERS as u8 - 1);
        let downs = feed.downs.load();
        let keyframe = crate::sfu::keyframe::starts_keyframe(feed.family, &packet.payload);
        let seq_in = packet.header.sequence_number;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let (_, caches) = self
            .caches
            .entry(feed.id)
            .or_insert_with(|| (feed.clone(), Default::default()));
        let cache = caches[usize::from(layer)].get_or_insert_with(cache::TrackCache::new);
        cache.insert(
            seq_in,
            packet.header.timestamp,
            packet.header.marker,
            &packet.payload,
            keyframe,
            now,
        );
        let video = feed.family != CodecFamily::Audio;
        feed.count_layer(layer, &packet.payload, keyframe);
        if video && !cache.has_gop() {
            // Keep a GOP ready for the next newcomer (paced like every request).
            feed.keyframes.request_layer(layer);
        }
        let (mut sent, mut sealed) = (0u64, 0u64);
        for down in downs.iter() {
            let Some(slot) = self.conns.get_mut(down.conn.slot as usize) else {
                continue;
            };
            if slot.gen != down.conn.gen {
                continue;
            }
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if !conn.is_connected() {
                continue;
            }
            if video {
                // One layer per viewer: the one its allocator wants, switched to at a
                // keyframe of it (asked for, paced per layer); the current one until then.
                let Some(want) = feed.best_layer(down.target_layer()) else {
                    if down.pause() {
                        self.metrics.video_pauses.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                };
                let current = down.layer();
                if layer != current {
                    if layer != want {
                        continue;
                    }
                    if current == NO_LAYER {
                        down.start_layer(layer);
                    } else if keyframe {
                        down.start_layer(layer);
                        self.metrics.layer_switches.fetch_add(1, Ordering::Relaxed);
                    } else {
                        feed.keyframes.request_layer(layer);
                        continue;
                    }
                }
            }
            // A newcomer starts from the cached GOP (the last keyframe and everything since)
            // instead of waiting for a keyframe request to come back. The GOP is paced out by
            // `pace_catchups`; until it has caught up, live packets reach it from the cache.
            if down.is_catching_up() {
                continue;
            }
            if !keyframe && down.is_newcomer() && conn.lean().is_some() {
                let cache = self
                    .caches
                    .get(&feed.id)
                    .and_then(|(_, c)| c[usize::from(layer)].as_ref());
                let until = seq_in.wrapping_sub(1);
                // A long GOP is not replayed: the newcomer waits (`admit` asks the publisher
                // for a keyframe, paced) and starts at the fresh keyframe.
                let too_long = cache.and_then(|c| c.gop_age(until)).is_some_and(|(at, n)| {
                    now.saturating_duration_since(at) > GOP_REPLAY_MAX_AGE
                        || n > GOP_REPLAY_MAX_PACKETS
                });
                if too_long {
                    if down.skip_gop() {
                        self.metrics
                            .gop_joins_skipped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                } else if let Some((start, _)) = cache.and_then(|c| c.gop_until(until)) {
                    down.start_catchup(start);
                    self.catchups.push((feed.clone(), layer, down.clone()));
                    self.metrics.gop_joins.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let Some(out) = down.admit(Incoming {
                seq: seq_in,
                timestamp: packet.header.timestamp,
                keyframe,
                layer,
                payload: &packet.payload,
                now_ms,
            }) else {
                continue;
            };
            down.count(packet.payload.len());
            let what = if video { Sent::Video } else { Sent::Audio };
            if conn.lean().is_some() {
                // Our own seal with the connection's keys (now, or when the viewer's pacer
                // lets it go): no rtc round, no allocation.
                let f = Forward {
                    down,
                    out,
                    marker: packet.header.marker,
                    payload: &packet.payload,
                    what,
                    twcc: None,
                };
                if !self.out.deliver(down.conn, conn, now, f) {
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                sealed += 1;
            } else {
                if !conn.write_rtp(now, down.sender, down.packet(&packet, &out)) {
                    down.lost();
                    self.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                while let Some(out) = conn.poll_write() {
                    self.out.push(out);
                }
            }
            sent += 1;
        }
        self.metrics
            .packets_received
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .packets_forwarded
            .fetch_add(sent, Ordering::Relaxed);
        self.metrics
            .packets_sealed
            .fetch_add(sealed, Ordering::Relaxed);
    }

    /// Viewers whose pacer holds packets: what is due leaves (sealed now, so its
    /// transport-wide number says when it really left).
    fn release_paced(&mut self, now: Instant) {
        let m = &self.metrics;
        m.packets_paced
            .fetch_add(std::mem::take(&mut self.out.held), Ordering::Relaxed);
        m.pacer_overflows
            .fetch_add(std::mem::take(&mut self.out.forced), Ordering::Relaxed);
        if self.out.paced.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.out.paced);
        list.retain(|key| {
            let Some(conn) = live_conn(&mut self.conns, *key) else {
                return false;
            };
            while let Some(h) = conn.pacer().and_then(|p| p.pop_due(now)) {
                self.out.seal_held(conn, now, h);
            }
            let Some(p) = conn.pacer() else {
                return false;
            };
            p.listed = p.is_holding();
            p.listed
        });
        // Viewers that held their first packet while this ran (none: nothing is forwarded here).
        list.append(&mut self.out.paced);
        self.out.paced = list;
    }

    /// Viewers whose line is being probed: the padding due now (media sent meanwhile counts
    /// towards the probe's rate, so padding only fills up to it).
    fn send_probes(&mut self, now: Instant) {
        if self.out.probing.is_empty() {
            return;
        }
        let timestamp = (now.saturating_duration_since(self.epoch).as_micros() * 9 / 100) as u32;
        let mut list = std::mem::take(&mut self.out.probing);
        let mut padding = 0u64;
        list.retain(|key| {
            let Some(conn) = live_conn(&mut self.conns, *key) else {
                return false;
            };
            let now_ms = conn.ms(now);
            let next_id = conn.next_twcc_id();
            let Some(v) = conn.viewer.as_mut() else {
                return false;
            };
            let Some(next_id) = next_id else {
                // Transport-cc was renegotiated away: nothing could measure the probe.
                v.probe.abandon();
                return false;
            };
            let sent = v.sent.iter().sum();
            let n = v.probe.due(now, next_id, sent, now_ms);
            for _ in 0..n {
                let Some(id) = self.out.seal_padding(conn, now, timestamp) else {
                    break;
                };
                padding += probe::PAD_WIRE as u64;
                if let Some(v) = conn.viewer.as_mut() {
                    v.probe.padded(id);
                }
            }
            conn.viewer.as_ref().is_some_and(|v| v.probe.is_sending())
        });
        list.append(&mut self.out.probing);
        self.out.probing = list;
        self.metrics
            .padding_bytes
            .fetch_add(padding, Ordering::Relaxed);
    }

    /// Newcomers starting from a cached GOP get at most GOP_PACKETS_PER_TURN of it per turn
    /// each (a 50 KB keyframe to many newcomers at once would otherwise be one burst); when
    /// one reaches the newest cached packet it goes on with the live stream.
    fn pace_catchups(&mut self, now: Instant) {
        if self.catchups.is_empty() {
            return;
        }
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut list = std::mem::take(&mut self.catchups);
        let mut sent = 0u64;
        list.retain(|(feed, layer, down)| {
            let live = feed.downs.load().iter().any(|d| Arc::ptr_eq(d, down));
            let conn = self
                .conns
                .get_mut(down.conn.slot as usize)
                .filter(|s| s.gen == down.conn.gen)
                .and_then(|s| s.conn.as_mut());
            let cache = self
                .caches
                .get(&feed.id)
                .and_then(|(_, c)| c[usize::from(*layer)].as_ref());
            let (Some(conn), Some(cache), true) = (conn, cache, live && down.layer() == *layer)
            else {
                down.end_catchup();
                return false;
            };
            if conn.lean().is_none() {
                down.end_catchup();
                return false;
            }
            // A pacer still holding this viewer's packets: the GOP waits (it would only be
            // held behind them).
            if conn.pacer().is_some_and(|p| p.is_holding()) {
                return true;
            }
            for _ in 0..GOP_PACKETS_PER_TURN {
                let Some(next) = down.catchup_next() else {
                    return false;
                };
                let Some(c) = cache.get(next) else {
                    if cache
                        .latest()
                        .is_some_and(|l| l.wrapping_sub(next) >= 0x8000)
                    {
                        // Caught up: the next packet is the live one.
                        down.end_catchup();
                    } else {
                        // Pushed out of the cache before it was sent: start over at a keyframe.
                        down.end_catchup();
                        down.lost();
                    }
                    return false;
                };
                down.set_catchup_next(next.wrapping_add(1));
                let Some(out) = down.admit(Incoming {
                    seq: next,
                    timestamp: c.timestamp,
                    keyframe: true,
                    layer: *layer,
                    payload: &c.payload,
                    now_ms,
                }) else {
                    continue;
                };
                down.count(c.payload.len());
                let f = Forward {
                    down,
                    out,
                    marker: c.marker,
                    payload: &c.payload,
                    what: Sent::Video,
                    twcc: None,
                };
                if self.out.deliver(down.conn, conn, now, f) {
                    sent += 1;
                }
            }
            true
        });
        // Newcomers added while this ran (none: fan-out does not run here) and the rest.
        list.append(&mut self.catchups);
        self.catchups = list;
        self.metrics
            .packets_forwarded
            .fetch_add(sent, Ordering::Relaxed);
        self.metrics
            .packets_sealed
            .fetch_add(sent, Ordering::Relaxed);
    }

    fn timers_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            due.push((t, key));
        }
        for (t, key) in due {
            let fire = match self.conn_mut(key) {
                Some(c) => c.timer_due(t, now),
                None => false,
            };
            if fire {
                self.service(key, now);
            }
        }
        // Stale entries pile up when deadlines move often; rebuild now and then.
        if self.timers.len() > 64 + 8 * self.conns.len() {
            let mut fresh = BinaryHeap::with_capacity(self.conns.len());
            for key in self.live_keys() {
                if let Some(t) = self.conn_mut(key).and_then(|c| c.deadline()) {
                    fresh.push(Reverse((t, key)));
                }
            }
            self.timers = fresh;
        }
    }

    /// Every LIVENESS_EVERY: connections whose client went silent for longer than the
    /// configured ICE timeouts (disconnected + failed) are reported failed.
    fn liveness(&mut self, now: Instant) {
        if now < self.next_liveness {
            return;
        }
        // Silence is only judged on an engine that keeps up: with datagrams still waiting in
        // a socket, or after the thread itself was held up (a loaded machine), "not heard"
        // may just mean "not read yet".
        let stalled = now.saturating_duration_since(self.next_liveness) > LIVENESS_EVERY * 4;
        self.next_liveness = now + LIVENESS_EVERY;
        let (ufrags, bound) = self.demux.len();
        let m = &self.metrics;
        m.ufrags.store(ufrags as i64, Ordering::Relaxed);
        m.bound_addresses.store(bound as i64, Ordering::Relaxed);
        m.track_caches
            .store(self.caches.len() as i64, Ordering::Relaxed);
        let judged = !(self.reads_pending || stalled);
        self.events.push_back(Event::Liveness { judged });
        self.expire_checks(now);
        if !judged {
            return;
        }
        self.caches.retain(|_, (feed, _)| !feed.is_ended());
        let (conns, caches) = (&self.conns, &self.caches);
        self.resends.retain(|(key, feed), _| {
            caches.contains_key(feed)
                && conns
                    .get(key.slot as usize)
                    .is_some_and(|s| s.gen == key.gen && s.conn.is_some())
        });
        let limit = self.settings.ice_disconnected_timeout + self.settings.ice_failed_timeout;
        let mut connecting = Vec::new();
        for (i, slot) in self.conns.iter_mut().enumerate() {
            if let Some(c) = slot.conn.as_mut() {
                c.check_silence(now, limit);
                if c.is_connecting() {
                    connecting.push(ConnKey {
                        slot: i as u32,
                        gen: slot.gen,
                    });
                }
            }
        }
        // Belt and braces for handshakes: a connection still setting up (ICE, DTLS with its
        // retransmissions) gets its timers run now and then even if a deadline was not filed.
        for key in connecting {
            if let Some(c) = self.conn_mut(key) {
                c.run_timers(now);
            }
            self.service(key, now);
        }
    }

    fn keyframe_requests(&mut self, now: Instant) {
        // The guarantee (`keyframe::MIN_KEYFRAME_REQUEST_INTERVAL`): at most one request per
        // published track per second, whatever the configuration says.
        let interval = self
            .settings
            .keyframe_request_interval
            .max(crate::sfu::keyframe::MIN_KEYFRAME_REQUEST_INTERVAL);
        let mut i = 0;
        while i < self.publishers.len() {
            let key = self.publishers[i];
            let Some(conn) = self.conn_mut(key) else {
                self.publishers.swap_remove(i);
                continue;
            };
            conn.speech_tick(now);
            let sent = conn.send_keyframe_requests(now, interval);
            if sent > 0 {
                self.metrics
                    .keyframe_requests_sent
                    .fetch_add(sent, Ordering::Relaxed);
                self.service(key, now);
            }
            i += 1;
        }
    }

    fn command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Open {
                target,
                member,
                id,
                events,
                publish,
                reply,
            } => {
                let result = Conn::new(
                    now,
                    &self.settings,
                    &self.advertised,
                    target,
                    member,
                    id,
                    events,
                    publish,
                )
                .map(|conn| self.insert(conn));
                let _ = reply.send(result);
            }
            Command::Check {
                sdp,
                udp,
                tcp,
                reply,
            } => {
                let r = self.open_check(now, sdp, udp, tcp);
                let key = r.as_ref().ok().map(|(k, _)| *k);
                let _ = reply.send(r.map(|(_, answer)| answer));
                if let Some(key) = key {
                    self.service(key, now);
                }
            }
            Command::Offer { conn, sdp, reply } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.apply_offer(now, sdp),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::AddTrack { conn, track, reply } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.add_track(track),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
            }
            Command::RemoveTrack {
                conn,
                sender,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.remove_track(sender),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
            }
            Command::CreateOffer { conn, reply } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.create_offer(now),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::Answer {
                conn,
                sdp,
                senders,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.apply_answer(now, sdp, &senders),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::AnswerOffer {
                conn,
                sdp,
                senders,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c
                        .apply_offer(now, sdp)
                        .map(|answer| (answer, c.payload_types(&senders))),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::Candidate {
                conn,
                candidate,
                reply,
            } => {
                let r = match self.conn_mut(conn) {
                    Some(c) => c.add_remote_candidate(candidate),
                    None => Err(SfuError::Closed),
                };
                let _ = reply.send(r);
                self.service(conn, now);
            }
            Command::VideoPreference { conn, preference } => {
                if let Some(v) = self.conn_mut(conn).and_then(|c| c.viewer.as_mut()) {
                    v.allocator.set_preference(preference);
                }
                // Applied at the next pass (within ALLOCATE_EVERY).
            }
            Command::Close { conn } => self.close(conn),
        }
    }

    /// Puts a new connection in a free slot and makes its ufrag known to the demultiplexer.
    fn insert(&mut self, conn: Conn) -> ConnKey {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(Slot { gen: 0, conn: None });
                (self.conns.len() - 1) as u32
            }
        };
        let entry = &mut self.conns[slot as usize];
        entry.gen = entry.gen.wrapping_add(1);
        let key = ConnKey {
            slot,
            gen: entry.gen,
        };
        self.demux.add_ufrag(conn.ufrag().to_owned(), key);
        if conn.check.is_some() {
            self.checks += 1;
        }
        entry.conn = Some(conn);
        self.metrics.peer_connections.fetch_add(1, Ordering::SeqCst);
        key
    }

    /// A connectivity check (`/check`): a connection on the media port that answers the
    /// page's offer (candidates in the answer, no trickle) and serves its data channel
    /// (`check.rs`). At most `MAX_CHECKS` at once; each closed after `CHECK_LIFETIME`.
    fn open_check(
        &mut self,
        now: Instant,
        sdp: String,
        udp: bool,
        tcp: bool,
    ) -> Result<(ConnKey, String), SfuError> {
        if self.checks >= crate::sfu::MAX_CHECKS {
            return Err(SfuError::Busy);
        }
        let expires = now + crate::sfu::CHECK_LIFETIME;
        let conn = Conn::new_check(now, &self.settings, &self.advertised, udp, tcp, expires)?;
        let key = self.insert(conn);
        let answer = match self.conn_mut(key) {
            Some(c) => c.apply_offer(now, sdp),
            None => Err(SfuError::Closed),
        };
        match answer {
            Ok(answer) => Ok((key, answer)),
            Err(e) => {
                self.close(key);
                Err(e)
            }
        }
    }

    /// Closes check connections that are over (time up, channel closed, failed). Runs with
    /// every liveness pass, whether or not silence is judged: the lifetime is a hard limit.
    fn expire_checks(&mut self, now: Instant) {
        if self.checks == 0 {
            return;
        }
        let over: Vec<ConnKey> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.as_ref().is_some_and(|c| c.check_is_over(now)))
            .map(|(i, s)| ConnKey {
                slot: i as u32,
                gen: s.gen,
            })
            .collect();
        for key in over {
            self.close(key);
        }
    }

    fn close(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if slot.gen != key.gen {
            return;
        }
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        if conn.check.is_some() {
            self.checks -= 1;
        }
        conn.close(&self.metrics);
        // Whatever closing produced (DTLS close_notify) still goes out.
        while let Some(out) = conn.poll_write() {
            self.out.push(out);
        }
        for peer in self.demux.remove(key) {
            self.events.push_back(Event::ClosePeer(peer));
        }
        self.publishers.retain(|k| *k != key);
        self.free.push(key.slot);
        self.metrics.peer_connections.fetch_sub(1, Ordering::SeqCst);
    }
}
