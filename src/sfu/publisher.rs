//! A member's publish connection, as the member task sees it: the client offers, the engine
//! answers. Every track that arrives becomes a feed (inside the engine) and is offered to the
//! member task as `PeerEvent::Published`. Tracks the room stopped forwarding stay parked and
//! can be forwarded again (`republish`) without renegotiating.

use std::sync::Arc;

use super::engine::{Command, ConnKey, EngineHandle, PublishShared};
use super::forwarder::Forwarder;
use super::{ConnId, SfuError};
use crate::protocol::{IceCandidate, PublishedTrackDesc, Source};

pub struct Publisher {
    id: ConnId,
    key: ConnKey,
    engine: EngineHandle,
    shared: Arc<PublishShared>,
    /// The `o=` session id of the client's offers: a different one is a new connection.
    session_id: Option<String>,
    /// The first m-line's mid in our answer (candidates belong to it).
    first_mid: Option<String>,
    /// Our last answer (it carries every candidate: the engine is ICE-lite with host
    /// candidates known up front).
    last_answer: Option<String>,
    closed: bool,
}

impl Publisher {
    pub(crate) fn new(
        id: ConnId,
        key: ConnKey,
        engine: EngineHandle,
        shared: Arc<PublishShared>,
    ) -> Publisher {
        Publisher {
            id,
            key,
            engine,
            shared,
            session_id: None,
            first_mid: None,
            last_answer: None,
            closed: false,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// A local candidate as the client should get it (with the m-line it belongs to).
    pub fn complete_candidate(&self, c: IceCandidate) -> IceCandidate {
        super::with_mid(c, self.first_mid.as_deref())
    }

    /// Whether `sdp` comes from another `RTCPeerConnection` than the offers so far (its `o=`
    /// session id differs): the client started over, and this connection should be replaced.
    pub fn is_other_connection(&self, sdp: &str) -> bool {
        match (&self.session_id, sdp_session_id(sdp)) {
            (Some(ours), Some(theirs)) => *ours != theirs,
            _ => false,
        }
    }

    /// Applies the client's offer and returns our answer (with our candidates in it).
    pub async fn handle_offer(
        &mut self,
        sdp: String,
        tracks: &[PublishedTrackDesc],
    ) -> Result<String, SfuError> {
        {
            let mut sources = self
                .shared
                .sources
                .lock()
                .expect("sources lock is never poisoned");
            for t in tracks {
                sources.insert(t.track_id.clone(), t.source);
            }
        }
        let session_id = sdp_session_id(&sdp);
        let key = self.key;
        let answer = self
            .engine
            .call(|reply| Command::Offer {
                conn: key,
                sdp,
                reply,
            })
            .await?;
        if self.session_id.is_none() {
            self.session_id = session_id;
        }
        self.first_mid = super::first_mid(&answer);
        self.last_answer = Some(answer.clone());
        Ok(answer)
    }

    /// Our answer with every local candidate in it, for a peer that does not trickle (WHIP).
    /// Call after `handle_offer`. The engine's answers always carry all candidates (ICE-lite,
    /// host candidates on the media port, `a=end-of-candidates`), so this waits for nothing.
    pub async fn answer_with_candidates(
        &self,
        _within: std::time::Duration,
    ) -> Result<String, SfuError> {
        self.last_answer.clone().ok_or(SfuError::NoOfferPending)
    }

    /// Starts forwarding this connection's parked tracks whose media is arriving and whose
    /// source `may` allows. Returns the new publications for the room, and whether an active
    /// track was left parked because `may` refused it.
    pub fn republish(&self, may: impl Fn(Source) -> bool) -> (Vec<Forwarder>, bool) {
        let mut feeds = self
            .shared
            .feeds
            .lock()
            .expect("feeds lock is never poisoned");
        feeds.retain(|f| !f.is_ended());
        let sources = self
            .shared
            .sources
            .lock()
            .expect("sources lock is never poisoned");
        let mut out = Vec::new();
        let mut refused = false;
        for feed in feeds.iter().filter(|f| f.is_active()) {
            let source = super::engine::source_of(&sources, feed.client_track_id(), feed.kind());
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
        let key = self.key;
        let candidate = c.clone();
        self.engine
            .call(|reply| Command::Candidate {
                conn: key,
                candidate,
                reply,
            })
            .await
    }

    /// Closes the connection; its tracks end.
    pub async fn close(mut self) {
        self.closed = true;
        self.engine.close(self.key);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if !self.closed {
            self.engine.close(self.key);
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
