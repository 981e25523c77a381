//! Hall equipment over HTTP: WHIP ingest (RFC 9725) and WHEP playback. Each WHIP or WHEP
//! session is a member of its room driven by the same `Client` state machine a WebSocket
//! drives — same token checks, permissions, attendance, revocation, floor and cleanup — with a
//! task of its own instead of a socket. `http::whip` translates HTTP to calls here and decides
//! nothing; this module never touches HTTP types.
//!
//! WHIP and WHEP peers do not trickle from our side: the answer carries every server
//! candidate. Trickle from the encoder or player (`PATCH`, RFC 8840 fragments that repeat the
//! offer's own ICE credentials) is accepted; an ICE restart (other credentials, or
//! `If-Match: *`) is not (the encoder starts a new session instead).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::{Client, ClientCtx, Flow};
use crate::clock::unix_now;
use crate::ids::SessionId;
use crate::protocol::{
    ClientMessage, ErrorCode, IceCandidate, ProtocolError, Role, ServerMessage, Target, VERSION,
};

/// How long an answer waits for the server's ICE gathering (host candidates: milliseconds).
const GATHER_WITHIN: Duration = Duration::from_secs(2);
/// WHIP and WHEP sessions at once, per server.
pub const MAX_SESSIONS: usize = 256;
/// Requests queued per session (trickle, delete).
const COMMAND_QUEUE: usize = 16;
/// How long a request waits for its session's task.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ingest (an encoder sends) or playback (a player receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Whip,
    Whep,
}

impl Kind {
    /// The invite role whose token this endpoint takes.
    fn role(self) -> Role {
        match self {
            Kind::Whip => Role::Encoder,
            Kind::Whep => Role::Player,
        }
    }
}

/// Why an equipment request failed; `http::whip` turns each into a status code.
#[derive(Debug, thiserror::Error)]
pub enum EquipmentError {
    /// The bearer token is missing, malformed, expired, withdrawn or unknown.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that may not do this (another role, another session, a locked session,
    /// someone removed, an ended session).
    #[error("{0}")]
    Forbidden(String),
    /// The offer (or trickle fragment) could not be used.
    #[error("{0}")]
    BadSdp(String),
    /// A request this endpoint understands but does not do (an ICE restart).
    #[error("{0}")]
    Unsupported(String),
    #[error("no such WHIP or WHEP session")]
    NotFound,
    /// The `If-Match` entity tag is not this session's.
    #[error("the entity tag does not match this session")]
    PreconditionFailed,
    /// Nothing to play yet, or too many sessions: try again later.
    #[error("{0}")]
    Unavailable(String),
    #[error("the server could not do that")]
    Internal,
}

/// A started session: where it lives, our answer, its entity tag.
pub struct Started {
    pub resource: String,
    pub answer: String,
    pub etag: String,
}

enum Command {
    Trickle(
        Vec<IceCandidate>,
        oneshot::Sender<Result<(), EquipmentError>>,
    ),
    Stop(oneshot::Sender<()>),
}

struct Entry {
    kind: Kind,
    session: SessionId,
    etag: String,
    /// The peer's ICE credentials from its offer: a trickle fragment repeating them is plain
    /// trickle (RFC 8840 asks for them in every fragment); only different ones are a restart.
    ice: IceCredentials,
    tx: mpsc::Sender<Command>,
}

/// The peer's `a=ice-ufrag` / `a=ice-pwd` (the first of each in an SDP or fragment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IceCredentials {
    ufrag: Option<String>,
    pwd: Option<String>,
}

impl IceCredentials {
    fn of(sdp: &str) -> IceCredentials {
        let first = |prefix: &str| {
            sdp.lines()
                .map(str::trim_end)
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_owned)
        };
        IceCredentials {
            ufrag: first("a=ice-ufrag:"),
            pwd: first("a=ice-pwd:"),
        }
    }

    /// Whether a fragment's credentials ask for an ICE restart: one of them is given and
    /// differs from the session's. Repeating the session's own (RFC 8840, RFC 9725 §4.3.1) or
    /// leaving them out is trickle.
    fn restarts(&self, frag: &IceCredentials) -> bool {
        let changed = |given: &Option<String>, ours: &Option<String>| {
            given.as_ref().is_some_and(|g| Some(g) != ours.as_ref())
        };
        changed(&frag.ufrag, &self.ufrag) || changed(&frag.pwd, &self.pwd)
    }
}

/// The running WHIP and WHEP sessions, by resource id (random, in the `Location` URL; it
/// names no person). A std mutex around the map, held for a lookup only.
#[derive(Clone, Default)]
pub struct Equipment {
    map: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Equipment {
    /// Starts a WHIP (encoder) or WHEP (player) session in `session` with `token` and the
    /// peer's offer.
    pub async fn start(
        &self,
        kind: Kind,
        ctx: ClientCtx,
        session: SessionId,
        token: &str,
        offer: String,
        shutdown: CancellationToken,
    ) -> Result<Started, EquipmentError> {
        // Who the token is for, before anything joins: a wrong kind of link never enters the
        // room (and never counts in attendance).
        // The token's signature is checked here, once; the join below gets the verdict.
        let unauthorized = || {
            EquipmentError::Unauthorized(
                "The bearer token is not a valid join token (expired, changed or incomplete)."
                    .into(),
            )
        };
        let genuine = ctx.tokens.genuine(token).map_err(|_| unauthorized())?;
        let claims = genuine.claims();
        if claims.expired(unix_now()) {
            return Err(unauthorized());
        }
        // Also for a session id nobody knows: the token says which session it may enter, so
        // the mistake is the URL, and no token holder learns which other sessions exist.
        if claims.sid != session.to_string() {
            return Err(EquipmentError::Forbidden(
                "This token belongs to another session than the one in the URL; use the URL given with the token."
                    .into(),
            ));
        }
        if claims.role != kind.role() {
            return Err(EquipmentError::Forbidden(format!(
                "This endpoint takes a token of an invite with role \"{}\", not \"{}\".",
                kind.role().as_str(),
                claims.role.as_str()
            )));
        }
        if !offer.trim_start().starts_with("v=0") {
            return Err(EquipmentError::BadSdp(
                "The body is not an SDP offer (it must start with \"v=0\").".into(),
            ));
        }
        if self.len() >= MAX_SESSIONS {
            return Err(EquipmentError::Unavailable(
                "Too many WHIP and WHEP sessions on this server; try again later.".into(),
            ));
        }
        let mut client = Client::new(ctx);
        step(&mut client, ClientMessage::Hello { version: VERSION }).await?;
        client.join(Ok(genuine), None).await;
        replies(&mut client)?;
        let ice = IceCredentials::of(&offer);
        let answer = match negotiate(&mut client, kind, offer).await {
            Ok(answer) => answer,
            Err(e) => {
                client.shutdown().await;
                return Err(e);
            }
        };
        let resource = uuid::Uuid::new_v4().simple().to_string();
        let etag = format!("\"{}\"", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        self.map
            .lock()
            .expect("equipment lock is never poisoned")
            .insert(
                resource.clone(),
                Entry {
                    kind,
                    session: session.clone(),
                    etag: etag.clone(),
                    ice,
                    tx,
                },
            );
        tracing::info!(session = %session, ?kind, "equipment session started");
        let span = tracing::info_span!("equipment", session = %session, kind = ?kind);
        tokio::spawn(
            drive(
                self.clone(),
                resource.clone(),
                client,
                rx,
                shutdown.child_token(),
            )
            .instrument(span),
        );
        Ok(Started {
            resource,
            answer,
            etag,
        })
    }

    /// Trickled candidates from the peer (`PATCH`, an `application/trickle-ice-sdpfrag`).
    pub async fn trickle(
        &self,
        kind: Kind,
        session: &SessionId,
        resource: &str,
        if_match: Option<&str>,
        fragment: &str,
    ) -> Result<(), EquipmentError> {
        let (tx, etag, ice) = self.find(kind, session, resource)?;
        let frag = parse_sdpfrag(fragment)?;
        // RFC 9725 §4.3.2: `If-Match: *` or new credentials ask for a restart.
        if if_match == Some("*") || ice.restarts(&frag.ice) {
            return Err(EquipmentError::Unsupported(
                "ICE restarts are not supported: end this session (DELETE) and start a new one."
                    .into(),
            ));
        }
        if let Some(tag) = if_match {
            if tag != etag {
                return Err(EquipmentError::PreconditionFailed);
            }
        }
        let (reply, rx) = oneshot::channel();
        tx.send_timeout(Command::Trickle(frag.candidates, reply), REPLY_TIMEOUT)
            .await
            .map_err(|_| EquipmentError::NotFound)?;
        tokio::time::timeout(REPLY_TIMEOUT, rx)
            .await
            .map_err(|_| EquipmentError::Internal)?
            .map_err(|_| EquipmentError::NotFound)?
    }

    /// Ends a session (`DELETE`): the member leaves, its connection closes.
    pub async fn stop(
        &self,
        kind: Kind,
        session: &SessionId,
        resource: &str,
    ) -> Result<(), EquipmentError> {
        let (tx, _, _) = self.find(kind, session, resource)?;
        let (reply, rx) = oneshot::channel();
        if tx
            .send_timeout(Command::Stop(reply), REPLY_TIMEOUT)
            .await
            .is_err()
        {
            // It ended by itself meanwhile.
            return Ok(());
        }
        let _ = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
        Ok(())
    }

    /// Running sessions (all kinds).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .expect("equipment lock is never poisoned")
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(
        &self,
        kind: Kind,
        session: &SessionId,
        resource: &str,
    ) -> Result<(mpsc::Sender<Command>, String, IceCredentials), EquipmentError> {
        let map = self.map.lock().expect("equipment lock is never poisoned");
        match map.get(resource) {
            Some(e) if e.kind == kind && e.session == *session => {
                Ok((e.tx.clone(), e.etag.clone(), e.ice.clone()))
            }
            _ => Err(EquipmentError::NotFound),
        }
    }

    fn forget(&self, resource: &str) {
        self.map
            .lock()
            .expect("equipment lock is never poisoned")
            .remove(resource);
    }
}

/// Sends one message through the client and turns an error reply into an `EquipmentError`.
async fn step(client: &mut Client, msg: ClientMessage) -> Result<(), EquipmentError> {
    client.handle_message(msg).await;
    replies(client)
}

/// The client's replies to the last step: an error reply as an `EquipmentError`.
fn replies(client: &mut Client) -> Result<(), EquipmentError> {
    let mut result = Ok(());
    for m in client.outbox.drain(..) {
        match m {
            ServerMessage::Error { code, message, .. } => {
                result = Err(from_protocol(ProtocolError::new(code, message)));
            }
            ServerMessage::Lobby { .. } => {
                // Equipment links are never open links; a lobby here is a misconfiguration.
                result = Err(EquipmentError::Forbidden(
                    "This link waits in the lobby; equipment needs its own invite.".into(),
                ));
            }
            _ => {}
        }
    }
    result
}

/// The offer/answer of the kind: publish (WHIP) or play (WHEP).
async fn negotiate(
    client: &mut Client,
    kind: Kind,
    offer: String,
) -> Result<String, EquipmentError> {
    match kind {
        Kind::Whip => {
            step(
                client,
                ClientMessage::PublishOffer {
                    sdp: offer,
                    // No track list: audio is the microphone, video the camera.
                    tracks: Vec::new(),
                },
            )
            .await?;
            client
                .publish_answer_with_candidates(GATHER_WITHIN)
                .await
                .map_err(from_protocol)
        }
        Kind::Whep => match client.play(offer, GATHER_WITHIN).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(EquipmentError::Unavailable(
                "Nothing is sent in this session yet; try again when the course has started."
                    .into(),
            )),
            Err(e) => Err(from_protocol(e)),
        },
    }
}

fn from_protocol(e: ProtocolError) -> EquipmentError {
    let message = e.message.clone();
    match e.code {
        ErrorCode::BadToken | ErrorCode::InviteRevoked => EquipmentError::Unauthorized(message),
        ErrorCode::SessionEnded | ErrorCode::Locked | ErrorCode::Removed | ErrorCode::Forbidden => {
            EquipmentError::Forbidden(message)
        }
        ErrorCode::BadSdp | ErrorCode::BadCandidate => EquipmentError::BadSdp(message),
        _ => EquipmentError::Internal,
    }
}

/// One session's task: room and peer events through the client, and the HTTP requests.
async fn drive(
    registry: Equipment,
    resource: String,
    mut client: Client,
    mut rx: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut stopped: Option<oneshot::Sender<()>> = None;
    loop {
        let flow = tokio::select! {
            ev = client.next_event() => client.handle_event(ev).await,
            cmd = rx.recv() => match cmd {
                Some(Command::Trickle(candidates, reply)) => {
                    let mut result = Ok(());
                    for candidate in candidates {
                        client
                            .handle_message(ClientMessage::IceCandidate {
                                target: match client.role() {
                                    Some(Role::Player) => Target::Subscribe,
                                    _ => Target::Publish,
                                },
                                candidate,
                            })
                            .await;
                        if let Some(ServerMessage::Error { code, message, .. }) = client
                            .outbox
                            .iter()
                            .find(|m| matches!(m, ServerMessage::Error { .. }))
                        {
                            result = Err(from_protocol(ProtocolError::new(*code, message.clone())));
                        }
                    }
                    let _ = reply.send(result);
                    Flow::Continue
                }
                Some(Command::Stop(reply)) => {
                    stopped = Some(reply);
                    Flow::Close
                }
                None => Flow::Close,
            },
            _ = shutdown.cancelled() => Flow::Close,
        };
        // Nobody reads what a socket would get; only an ending matters.
        let ended = client.outbox.drain(..).any(|m| {
            matches!(
                m,
                ServerMessage::Bye { .. } | ServerMessage::PublishClosed { .. }
            )
        });
        if flow == Flow::Close || ended {
            break;
        }
    }
    registry.forget(&resource);
    client.shutdown().await;
    tracing::info!("equipment session ended");
    if let Some(reply) = stopped {
        let _ = reply.send(());
    }
}

/// What a trickle PATCH body carries.
struct SdpFrag {
    ice: IceCredentials,
    candidates: Vec<IceCandidate>,
}

/// Reads an `application/trickle-ice-sdpfrag` body (RFC 8840): candidates per `a=mid`.
fn parse_sdpfrag(body: &str) -> Result<SdpFrag, EquipmentError> {
    let mut frag = SdpFrag {
        ice: IceCredentials::default(),
        candidates: Vec::new(),
    };
    let mut ufrag: Option<String> = None;
    let mut mid: Option<String> = None;
    let mut mline: Option<u16> = None;
    let mut any = false;
    for line in body.lines().map(str::trim_end) {
        if line.is_empty() {
            continue;
        }
        any = true;
        if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(v.to_owned());
            frag.ice.ufrag.get_or_insert_with(|| v.to_owned());
        } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
            frag.ice.pwd.get_or_insert_with(|| v.to_owned());
        } else if line.starts_with("m=") {
            mline = Some(mline.map_or(0, |m| m + 1));
        } else if let Some(v) = line.strip_prefix("a=mid:") {
            mid = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("a=candidate:") {
            frag.candidates.push(IceCandidate {
                candidate: format!("candidate:{v}"),
                sdp_mid: mid.clone(),
                sdp_mline_index: mline.or(Some(0)),
                username_fragment: ufrag.clone(),
            });
        } else if !(line.starts_with("a=") || line.starts_with("c=")) {
            return Err(EquipmentError::BadSdp(format!(
                "The trickle fragment has a line that is not an SDP attribute: {}",
                line.chars().take(40).collect::<String>()
            )));
        }
    }
    if !any {
        return Err(EquipmentError::BadSdp(
            "The trickle fragment is empty.".into(),
        ));
    }
    Ok(frag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdpfrag_candidates_and_restart() {
        let f = parse_sdpfrag(
            "a=ice-options:trickle ice2\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n",
        )
        .expect("fragment");
        assert!(f.ice.pwd.is_none());
        assert_eq!(f.ice.ufrag.as_deref(), Some("abcd"));
        assert_eq!(f.candidates.len(), 1);
        assert_eq!(f.candidates[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(f.candidates[0].sdp_mline_index, Some(0));
        assert_eq!(f.candidates[0].username_fragment.as_deref(), Some("abcd"));
        assert!(f.candidates[0].candidate.starts_with("candidate:1 1 UDP"));
        let restart = parse_sdpfrag("a=ice-ufrag:x\r\na=ice-pwd:yyyyyyyyyyyyyyyyyyyyyy\r\n")
            .expect("fragment");
        assert!(restart.ice.pwd.is_some());
        assert!(parse_sdpfrag("").is_err());
        assert!(parse_sdpfrag("hello there").is_err());
    }

    #[test]
    fn only_changed_ice_credentials_are_a_restart() {
        let ours = IceCredentials::of(
            "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 x\r\na=ice-ufrag:abcd\r\n",
        );
        let cred = |u: Option<&str>, p: Option<&str>| IceCredentials {
            ufrag: u.map(str::to_owned),
            pwd: p.map(str::to_owned),
        };
        for (frag, restart) in [
            (cred(None, None), false),
            (cred(Some("abcd"), None), false),
            (cred(Some("abcd"), Some("abcdefghijklmnopqrstuvwx")), false),
            (cred(Some("efgh"), None), true),
            (cred(Some("abcd"), Some("changedchangedchanged12")), true),
            (cred(None, Some("changedchangedchanged12")), true),
        ] {
            assert_eq!(ours.restarts(&frag), restart, "{frag:?}");
        }
    }
}
