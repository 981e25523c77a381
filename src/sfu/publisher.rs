//! A member's publish connection: the client offers, we answer; every track that arrives gets
//! a feed (its reading task, `forwarder::Feed`) and is offered to the member task as
//! `PeerEvent::Published`. Tracks the room stopped forwarding stay parked here and can be
//! forwarded again (`republish`) without renegotiating.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

use super::forwarder::{self, Feed, FeedReport, Forwarder};
use super::metrics::GaugeGuard;
use super::peer::{self, Handler, TrackSink};
use super::{Codec, ConnId, PeerEvent, SfuError, SfuInner};
use crate::ids::MemberId;
use crate::protocol::{IceCandidate, MediaKind, PublishedTrackDesc, Source, Target};

/// Client track id → what the client said it is. A std mutex: held for a map lookup only, never
/// across an await.
type Sources = Arc<Mutex<HashMap<String, Source>>>;

pub struct Publisher {
    id: ConnId,
    pc: Arc<dyn PeerConnection>,
    sources: Sources,
    /// Every track that arrived on this connection and has not ended.
    feeds: Feeds,
    /// Cancels every feed's tasks when the connection closes.
    cancel: CancellationToken,
    /// The `o=` session id of the client's offers: a different one is a new connection.
    session_id: Option<String>,
    /// Candidates that came before the first offer; applied right after it.
    early_candidates: Vec<IceCandidate>,
    has_remote: bool,
    /// The first m-line's mid in our answer (candidates belong to it).
    first_mid: Option<String>,
    guard: Option<GaugeGuard>,
}

type Feeds = Arc<Mutex<Vec<Arc<Feed>>>>;

impl Publisher {
    pub(crate) async fn new(
        sfu: Arc<SfuInner>,
        member: MemberId,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Publisher, SfuError> {
        let id = ConnId::next();
        let sources: Sources = Arc::default();
        let feeds: Feeds = Arc::default();
        let cancel = CancellationToken::new();
        let sink: TrackSink = {
            let sfu = sfu.clone();
            let sources = sources.clone();
            let feeds = feeds.clone();
            let events = events.clone();
            let cancel = cancel.clone();
            Box::new(move |track| {
                // `on_track` runs in the connection's driver loop: do the async work elsewhere.
                tokio::spawn(start_feed(
                    StartFeed {
                        sfu: sfu.clone(),
                        id,
                        member,
                        sources: sources.clone(),
                        feeds: feeds.clone(),
                        events: events.clone(),
                        cancel: cancel.child_token(),
                    },
                    track,
                ));
            })
        };
        let handler = Handler {
            target: Target::Publish,
            conn: id,
            events,
            connected: Arc::new(AtomicBool::new(false)),
            on_track: Some(sink),
        };
        let pc = peer::build(&sfu, Arc::new(handler)).await?;
        Ok(Publisher {
            id,
            pc,
            sources,
            feeds,
            cancel,
            session_id: None,
            early_candidates: Vec::new(),
            has_remote: false,
            first_mid: None,
            guard: Some(GaugeGuard::new(&sfu.metrics, |m| &m.peer_connections)),
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// A local candidate as the client should get it (with the m-line it belongs to).
    pub fn complete_candidate(&self, c: IceCandidate) -> IceCandidate {
        peer::with_mid(c, self.first_mid.as_deref())
    }

    /// Whether `sdp` comes from another `RTCPeerConnection` than the offers so far (its `o=`
    /// session id differs): the client started over, and this connection should be replaced.
    pub fn is_other_connection(&self, sdp: &str) -> bool {
        match (&self.session_id, sdp_session_id(sdp)) {
            (Some(ours), Some(theirs)) => *ours != theirs,
            _ => false,
        }
    }

    /// Applies the client's offer and returns our answer.
    pub async fn handle_offer(
        &mut self,
        sdp: String,
        tracks: &[PublishedTrackDesc],
    ) -> Result<String, SfuError> {
        {
            let mut sources = self.sources.lock().expect("sources lock is never poisoned");
            for t in tracks {
                sources.insert(t.track_id.clone(), t.source);
            }
        }
        let session_id = sdp_session_id(&sdp);
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.has_remote = true;
        if self.session_id.is_none() {
            self.session_id = session_id;
        }
        for c in std::mem::take(&mut self.early_candidates) {
            self.add_candidate(&c).await?;
        }
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(SfuError::webrtc)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(SfuError::webrtc)?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| SfuError::WebRtc("no local description after answering".into()))?;
        self.first_mid = peer::first_mid(&local.sdp);
        Ok(local.sdp)
    }

    /// Starts forwarding this connection's parked tracks whose media is arriving and whose
    /// source `may` allows. Returns the new publications for the room, and whether an active
    /// track was left parked because `may` refused it.
    pub fn republish(&self, may: impl Fn(Source) -> bool) -> (Vec<Forwarder>, bool) {
        let mut feeds = self.feeds.lock().expect("feeds lock is never poisoned");
        feeds.retain(|f| !f.is_ended());
        let sources = self.sources.lock().expect("sources lock is never poisoned");
        let mut out = Vec::new();
        let mut refused = false;
        for feed in feeds.iter().filter(|f| f.is_active()) {
            let source = source_of(&sources, feed.client_track_id(), feed.kind());
            if !may(source) {
                refused = true;
                continue;
            }
            out.extend(feed.publish(source));
        }
        (out, refused)
    }

    pub async fn add_candidate(&mut self, c: &IceCandidate) -> Result<(), SfuError> {
        if c.candidate.is_empty() {
            return Ok(());
        }
        if !self.has_remote {
            self.early_candidates.push(c.clone());
            return Ok(());
        }
        self.pc
            .add_ice_candidate(peer::candidate_from_json(c))
            .await
            .map_err(|e| SfuError::BadCandidate(e.to_string()))
    }

    /// Our answer with every local candidate in it, for a peer that does not trickle (WHIP).
    /// Call after `handle_offer`.
    pub async fn answer_with_candidates(
        &self,
        within: std::time::Duration,
    ) -> Result<String, SfuError> {
        super::nontrickle::gathered_local_sdp(&self.pc, within).await
    }

    /// Closes the connection and ends the tasks of its tracks.
    pub async fn close(mut self) {
        self.cancel.cancel();
        let _ = self.pc.close().await;
        self.guard.take();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(guard) = self.guard.take() {
            let pc = self.pc.clone();
            tokio::spawn(async move {
                let _ = pc.close().await;
                drop(guard);
            });
        }
    }
}

/// The session id of an SDP's origin line (`o=<user> <sess-id> …`).
fn sdp_session_id(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("o="))
        .and_then(|o| o.split_whitespace().nth(1))
        .map(str::to_owned)
}

fn source_of(sources: &HashMap<String, Source>, client_track_id: &str, kind: MediaKind) -> Source {
    sources.get(client_track_id).copied().unwrap_or(match kind {
        MediaKind::Audio => Source::Microphone,
        MediaKind::Video => Source::Camera,
    })
}

struct StartFeed {
    sfu: Arc<SfuInner>,
    id: ConnId,
    member: MemberId,
    sources: Sources,
    feeds: Feeds,
    events: mpsc::Sender<PeerEvent>,
    cancel: CancellationToken,
}

/// Reads a new track's codec and SSRC, starts its feed and offers it to the member task for
/// the room (which may refuse it; the feed then stays parked).
async fn start_feed(ctx: StartFeed, track: Arc<dyn TrackRemote>) {
    let Some(ssrc) = track.ssrcs().await.first().copied() else {
        tracing::warn!("published track has no SSRC; not forwarding it");
        return;
    };
    let Some(codec) = track.codec(ssrc).await else {
        tracing::warn!("published track has no negotiated codec; not forwarding it");
        return;
    };
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let client_track_id = track.track_id().await;
    let source = source_of(
        &ctx.sources.lock().expect("sources lock is never poisoned"),
        &client_track_id,
        kind,
    );
    let report: FeedReport = {
        let events = ctx.events.clone();
        let id = ctx.id;
        // Runs in the feed's task: never waits; a full queue only loses a report.
        Box::new(move || {
            let _ = events.try_send(PeerEvent::ParkedMedia(id));
        })
    };
    let feed = forwarder::spawn(
        ctx.member,
        kind,
        client_track_id,
        Codec {
            mime_type: codec.mime_type,
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            fmtp: codec.sdp_fmtp_line,
        },
        track,
        ssrc,
        ctx.sfu.settings.keyframe_request_interval,
        ctx.sfu.metrics.clone(),
        ctx.cancel,
        report,
    );
    ctx.feeds
        .lock()
        .expect("feeds lock is never poisoned")
        .push(feed.clone());
    let Some(forwarder) = feed.publish(source) else {
        return;
    };
    let info = forwarder.info();
    tracing::info!(track = %info.id, kind = ?info.kind, source = ?info.source, mime = %info.codec.mime_type, "track published");
    // If the member task is gone, the forwarder is dropped here and the feed stays parked
    // until its connection closes.
    let _ = ctx
        .events
        .send(PeerEvent::Published(ctx.id, forwarder))
        .await;
}
