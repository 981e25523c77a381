//! kursrelay's signalling messages: the contract between the server, its clients (`web/`, the
//! `kursrelay-client` crate and the binaries on it) and docs/protocol.md. Pure data and
//! parsing; no I/O, no room logic, no webrtc types. The server re-exports this crate as
//! `kursrelay::protocol` (and `ids` as `kursrelay::ids`).

pub mod ids;

use serde::{Deserialize, Serialize};

use crate::ids::{MemberId, TrackId};

/// The protocol version this server speaks.
pub const VERSION: u32 = 1;

/// Roles a member can have. The role comes only from the join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Representative,
    Participant,
    Site,
    Interpreter,
    /// Hall equipment that publishes the lecture feed over WHIP (OBS, a hardware encoder, a
    /// GStreamer pipeline). Its camera and microphone are shown like the leader's.
    Encoder,
    /// Playback equipment that receives the session's main feed over WHEP (a site's player,
    /// a monitor).
    Player,
    /// Automatic captions from a local speech recogniser: receives the teachers' and the
    /// floor-holder's audio while the leader has automatic captions on, and posts captions.
    Captioner,
}

impl Role {
    /// The protocol's (and the database's) name for the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Representative => "representative",
            Role::Participant => "participant",
            Role::Site => "site",
            Role::Interpreter => "interpreter",
            Role::Encoder => "encoder",
            Role::Player => "player",
            Role::Captioner => "captioner",
        }
    }

    /// Equipment, not a person: never counted as a participant, never named in the export.
    pub fn is_equipment(self) -> bool {
        matches!(self, Role::Encoder | Role::Player | Role::Captioner)
    }

    /// Every role, in the protocol's order.
    pub const ALL: [Role; 8] = [
        Role::Leader,
        Role::Representative,
        Role::Participant,
        Role::Site,
        Role::Interpreter,
        Role::Encoder,
        Role::Player,
        Role::Captioner,
    ];

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a published track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Camera,
    Microphone,
    Screen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

/// Which of a client's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Publish,
    Subscribe,
}

/// An ICE candidate exactly as the browser's `RTCIceCandidate.toJSON()` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// A client's description of one track in its publish offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTrackDesc {
    /// The browser's `MediaStreamTrack.id` (the `a=msid` track id in the offer).
    pub track_id: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello {
        version: u32,
    },
    Join {
        /// The signed token from the join link.
        token: String,
        /// The name to show; for personal invites it defaults to the invite's name.
        #[serde(default)]
        name: Option<String>,
    },
    PublishOffer {
        sdp: String,
        #[serde(default)]
        tracks: Vec<PublishedTrackDesc>,
    },
    Unpublish {
        track_id: String,
    },
    /// Ends the publish connection and everything it sends; the membership stays.
    ClosePublish,
    SubscribeAnswer {
        sdp: String,
    },
    IceCandidate {
        target: Target,
        candidate: IceCandidate,
    },
    RaiseHand,
    /// Lowers your own hand, or (leader, co-host) someone else's.
    LowerHand {
        #[serde(default)]
        member_id: Option<MemberId>,
    },
    /// A participant or site given the floor could not turn camera or microphone on; the
    /// floor goes back and the leader is told why.
    DeclineFloor {
        reason: FloorDecline,
    },
    /// The leader makes the user representative a co-host (admit, floor, hands) or not.
    SetCohost {
        member_id: MemberId,
        cohost: bool,
    },
    Admit {
        member_id: MemberId,
    },
    Deny {
        member_id: MemberId,
    },
    GrantFloor {
        member_id: MemberId,
    },
    RevokeFloor {
        member_id: MemberId,
    },
    Mute {
        member_id: MemberId,
    },
    Remove {
        member_id: MemberId,
    },
    Lock,
    Unlock,
    EndSession,
    SetHeadcount {
        count: u32,
    },
    Chat {
        text: String,
    },
    Caption {
        text: String,
        /// A recogniser's running guess for the line being spoken; the next caption from the
        /// same member replaces it.
        #[serde(default)]
        partial: bool,
    },
    /// The leader turns automatic captions (the captioner) on or off.
    SetAutoCaptions {
        on: bool,
    },
    /// The viewer's own wishes for the video it receives: the largest height it renders any
    /// video at, in device pixels (caps the simulcast layer; null: no cap), "save data"
    /// (the lowest layer only), and the order in which it needs the videos it shows (most
    /// needed first; a weak line keeps those first). Applies to every video it receives, now
    /// and later.
    VideoPreference {
        #[serde(default)]
        max_height: Option<u32>,
        #[serde(default)]
        save_data: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        order: Vec<TrackId>,
    },
    Leave,
}

impl ClientMessage {
    /// Every `type` a client may send; anything else is `unknown_type`.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "join",
        "publish_offer",
        "unpublish",
        "close_publish",
        "subscribe_answer",
        "ice_candidate",
        "raise_hand",
        "lower_hand",
        "decline_floor",
        "set_cohost",
        "admit",
        "deny",
        "grant_floor",
        "revoke_floor",
        "mute",
        "remove",
        "lock",
        "unlock",
        "end_session",
        "set_headcount",
        "chat",
        "caption",
        "set_auto_captions",
        "video_preference",
        "leave",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Join { .. } => "join",
            ClientMessage::PublishOffer { .. } => "publish_offer",
            ClientMessage::Unpublish { .. } => "unpublish",
            ClientMessage::ClosePublish => "close_publish",
            ClientMessage::SubscribeAnswer { .. } => "subscribe_answer",
            ClientMessage::IceCandidate { .. } => "ice_candidate",
            ClientMessage::RaiseHand => "raise_hand",
            ClientMessage::LowerHand { .. } => "lower_hand",
            ClientMessage::DeclineFloor { .. } => "decline_floor",
            ClientMessage::SetCohost { .. } => "set_cohost",
            ClientMessage::Admit { .. } => "admit",
            ClientMessage::Deny { .. } => "deny",
            ClientMessage::GrantFloor { .. } => "grant_floor",
            ClientMessage::RevokeFloor { .. } => "revoke_floor",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::Lock => "lock",
            ClientMessage::Unlock => "unlock",
            ClientMessage::EndSession => "end_session",
            ClientMessage::SetHeadcount { .. } => "set_headcount",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::Caption { .. } => "caption",
            ClientMessage::SetAutoCaptions { .. } => "set_auto_captions",
            ClientMessage::VideoPreference { .. } => "video_preference",
            ClientMessage::Leave => "leave",
        }
    }
}

/// What a viewer gets of one video (`video_quality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoQualityState {
    /// The best layer the viewer asked for.
    Full,
    /// A lower layer: its line does not carry more.
    Reduced,
    /// No picture: its line does not carry even the lowest layer. The sound goes on.
    Paused,
}

/// Why a member given the floor sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloorDecline {
    /// The browser (or the person) refused camera and microphone.
    Denied,
    /// No camera or microphone could be started (none, busy, or a page that is not https).
    NoDevice,
}

/// What everyone but the leader sees of the people present (the session's `roster` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RosterMode {
    /// The names each person chose (the default).
    #[default]
    Names,
    /// Only how many take part; participants are not listed.
    Count,
}

impl RosterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RosterMode::Names => "names",
            RosterMode::Count => "count",
        }
    }

    pub fn parse(s: &str) -> Option<RosterMode> {
        match s {
            "names" => Some(RosterMode::Names),
            "count" => Some(RosterMode::Count),
            _ => None,
        }
    }
}

/// A member as the room knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub member_id: MemberId,
    pub name: String,
    pub role: Role,
}

/// One present member as a viewer may see them. `subject` and `relative_of` (pseudonymous
/// invite ids) are only ever filled for the course leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub member_id: MemberId,
    /// Empty for someone who joined without a name: shown as e.g. "Deltaker {number}".
    pub name: String,
    /// The member's number in the session, for people without a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    pub role: Role,
    pub floor: bool,
    /// A user representative the leader made co-host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cohost: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headcount: Option<u32>,
    /// Given the floor but could not send (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_declined: Option<FloorDecline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_of: Option<String>,
}

/// Someone waiting in the lobby (shown to the leader only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyEntry {
    pub member_id: MemberId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

/// The roster as one viewer may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterView {
    pub members: Vec<RosterEntry>,
    /// Leader only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lobby: Option<Vec<LobbyEntry>>,
    /// The hand-raise queue in order of raising; leader and user representative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hands: Option<Vec<MemberId>>,
    pub locked: bool,
    /// People taking part: admitted participants plus every site's headcount. Interpreters,
    /// the leader and the user representative are not counted.
    pub participant_count: u32,
    /// What this session shows of participants to everyone but the leader.
    #[serde(default)]
    pub roster: RosterMode,
    /// Whether this session relays chat now (as in `joined`; the organisers may switch it
    /// during the session).
    #[serde(default)]
    pub chat_enabled: bool,
    /// The receiver's own place in the hand queue (1 = next), while its hand is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_position: Option<u32>,
    /// The leader turned automatic captions on (a captioner receives speech and captions it).
    #[serde(default)]
    pub auto_captions: bool,
}

/// One track of a subscribe offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTrackDesc {
    pub track_id: TrackId,
    pub member_id: MemberId,
    pub kind: MediaKind,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    Left,
    PeerFailed,
    ServerShutdown,
    /// The leader did not let you in.
    Denied,
    /// The leader removed you; this link no longer works.
    Removed,
    SessionEnded,
    /// The same invite joined from somewhere else (e.g. another tab).
    Replaced,
    /// The organisers withdrew this invite while you were in the session.
    Revoked,
    /// Subscribe offers went unanswered again and again.
    Unresponsive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        version: u32,
        server: String,
    },
    Joined {
        member_id: MemberId,
        session: String,
        role: Role,
        name: String,
        /// Whether this session relays chat (off unless the organisers turned it on).
        chat_enabled: bool,
        /// For open links: a token to rejoin without waiting in the lobby again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejoin_token: Option<String>,
        /// Whether this server accepts simulcast publishing (`media.simulcast`): publish
        /// cameras and screens as three layers (rids `q`, `h`, `f`, lowest first) when true.
        simulcast: bool,
    },
    /// Waiting for the course leader to let you in.
    Lobby {
        member_id: MemberId,
        session: String,
    },
    Roster {
        #[serde(flatten)]
        roster: RosterView,
    },
    Floor {
        granted: bool,
    },
    Hand {
        raised: bool,
    },
    /// The leader turned your microphone off; it is no longer forwarded.
    Muted,
    Chat {
        member_id: MemberId,
        name: String,
        text: String,
    },
    Caption {
        member_id: MemberId,
        text: String,
        /// From the captioner (speech recognition), not a person: shown marked as automatic.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        automatic: bool,
        /// Replaces this member's previous partial caption; a final one (false) ends the line.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        partial: bool,
    },
    /// A request without other visible reply succeeded.
    Ok {
        request: String,
    },
    PublishAnswer {
        sdp: String,
    },
    /// A member whose sound is forwarded started or stopped speaking (from the audio level
    /// its browser sends; a few hundred ms of hysteresis). Sent on a change only.
    Speaking {
        member_id: MemberId,
        speaking: bool,
    },
    /// What this viewer gets of a video changed (its line, or its own `video_preference`):
    /// sent on a change only, not per packet.
    VideoQuality {
        track_id: String,
        state: VideoQualityState,
    },
    Unpublished {
        track_id: String,
    },
    /// The publish connection ended (`close_publish`, or it failed); its tracks are no longer
    /// forwarded. The membership and the subscribe connection go on.
    PublishClosed {
        reason: PublishClosedReason,
    },
    SubscribeOffer {
        sdp: String,
        tracks: Vec<SubscribedTrackDesc>,
    },
    IceCandidate {
        target: Target,
        candidate: IceCandidate,
    },
    Bye {
        reason: ByeReason,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
}

/// Why a publish connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishClosedReason {
    /// The client asked (`close_publish`).
    Requested,
    /// The connection failed or was closed by the client's side.
    Failed,
    /// A `publish_offer` came from a new `RTCPeerConnection`; it replaced this one.
    Replaced,
}

/// Stable error codes (docs/protocol.md lists them with what happens to the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    TooLarge,
    UnsupportedVersion,
    OutOfOrder,
    AlreadyJoined,
    BadRequest,
    BadSdp,
    NoOfferPending,
    NoConnection,
    BadCandidate,
    UnknownTrack,
    BadToken,
    InviteRevoked,
    SessionEnded,
    Locked,
    Removed,
    Forbidden,
    UnknownMember,
    /// Chat is turned off for this session.
    ChatDisabled,
    /// A subscribe offer was not answered in time; it is sent again.
    AnswerTimeout,
    RateLimited,
    /// Several servers: the shared store, or the server that runs the session, cannot be
    /// reached just now; nothing was done, try again later (members already in are not
    /// affected).
    Unavailable,
    Internal,
}

/// A request the server answers with an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn into_message(self, request: Option<&str>) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message,
            request: request.map(str::to_owned),
        }
    }
}

/// Parses one text frame. The error says which of `bad_json`, `bad_message`, `unknown_type` it
/// is, plus the `type` when one could be read, so the reply can name the request.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, (ProtocolError, Option<String>)> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        (
            ProtocolError::new(
                ErrorCode::BadJson,
                format!("The message is not valid JSON: {e}"),
            ),
            None,
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err((
            ProtocolError::new(ErrorCode::BadJson, "The message must be a JSON object."),
            None,
        ));
    };
    let Some(kind) = object.get("type").and_then(|t| t.as_str()) else {
        return Err((
            ProtocolError::new(ErrorCode::BadMessage, "The message has no \"type\" string."),
            None,
        ));
    };
    if !ClientMessage::TYPES.contains(&kind) {
        // Echo the type only if it is short and plain; it is client input.
        let shown: String = kind
            .chars()
            .take(40)
            .filter(|c| c.is_ascii_graphic())
            .collect();
        return Err((
            ProtocolError::new(
                ErrorCode::UnknownType,
                format!("Unknown message type \"{shown}\"."),
            ),
            None,
        ));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value).map_err(|e| {
        (
            ProtocolError::new(
                ErrorCode::BadMessage,
                format!("Bad \"{kind}\" message: {e}"),
            ),
            Some(kind),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_example() {
        let cases = [
            r#"{"type": "hello", "version": 1}"#,
            r#"{"type": "join", "token": "a.b.c", "name": "Kari"}"#,
            r#"{"type": "join", "token": "a.b.c"}"#,
            r#"{"type": "raise_hand"}"#,
            r#"{"type": "lower_hand"}"#,
            r#"{"type": "lower_hand", "member_id": "5b0f5c2e-aa00-4b5e-9f00-1234567890ab"}"#,
            r#"{"type": "decline_floor", "reason": "denied"}"#,
            r#"{"type": "set_cohost", "member_id": "5b0f5c2e-aa00-4b5e-9f00-1234567890ab", "cohost": true}"#,
            r#"{"type": "grant_floor", "member_id": "5b0f5c2e-aa00-4b5e-9f00-1234567890ab"}"#,
            r#"{"type": "set_headcount", "count": 12}"#,
            r#"{"type": "chat", "text": "Hei"}"#,
            r#"{"type": "publish_offer", "sdp": "v=0", "tracks": [{"track_id": "a", "source": "camera"}]}"#,
            r#"{"type": "unpublish", "track_id": "a"}"#,
            r#"{"type": "subscribe_answer", "sdp": "v=0"}"#,
            r#"{"type": "ice_candidate", "target": "publish", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}}"#,
            r#"{"type": "leave"}"#,
        ];
        for text in cases {
            let msg = parse_client_message(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert!(text.contains(msg.type_name()));
        }
    }

    #[test]
    fn classifies_bad_input() {
        let cases = [
            ("{", ErrorCode::BadJson),
            ("[1,2]", ErrorCode::BadJson),
            ("\"hello\"", ErrorCode::BadJson),
            ("{}", ErrorCode::BadMessage),
            (r#"{"type": 5}"#, ErrorCode::BadMessage),
            (r#"{"type": "dance"}"#, ErrorCode::UnknownType),
            (r#"{"type": "hello"}"#, ErrorCode::BadMessage),
            (
                r#"{"type": "join", "session": "x", "name": "y", "role": "king"}"#,
                ErrorCode::BadMessage,
            ),
            (
                r#"{"type": "ice_candidate", "target": "both", "candidate": {"candidate": ""}}"#,
                ErrorCode::BadMessage,
            ),
        ];
        for (text, code) in cases {
            let (err, _) = parse_client_message(text).unwrap_err();
            assert_eq!(err.code, code, "{text}");
        }
    }

    #[test]
    fn server_messages_serialise_as_documented() {
        let msg = ServerMessage::Error {
            code: ErrorCode::NoOfferPending,
            message: "m".into(),
            request: Some("subscribe_answer".into()),
        };
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["code"], "no_offer_pending");
        assert_eq!(json["request"], "subscribe_answer");
        let bye = serde_json::to_value(ServerMessage::Bye {
            reason: ByeReason::PeerFailed,
        })
        .unwrap();
        assert_eq!(
            bye,
            serde_json::json!({"type": "bye", "reason": "peer_failed"})
        );
    }

    /// Typed messages serialise to exactly the JSON docs/protocol.md shows (the clients build
    /// them with these types, not with `json!`), and read back to the same value.
    #[test]
    fn typed_messages_round_trip_as_documented() {
        use serde_json::json;
        let member: MemberId =
            serde_json::from_value(json!("5b0f5c2e-aa00-4b5e-9f00-1234567890ab"))
                .expect("a member id is a uuid string");
        let track: TrackId = serde_json::from_value(json!("9a1e5c2e-aa00-4b5e-9f00-1234567890ab"))
            .expect("a track id is a uuid string");
        let candidate = IceCandidate {
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        };
        let client = [
            (
                ClientMessage::Hello { version: VERSION },
                json!({"type": "hello", "version": 1}),
            ),
            (
                ClientMessage::Join {
                    token: "a.b.c".into(),
                    name: Some("Kari".into()),
                },
                json!({"type": "join", "token": "a.b.c", "name": "Kari"}),
            ),
            (
                ClientMessage::PublishOffer {
                    sdp: "v=0\r\n".into(),
                    tracks: vec![
                        PublishedTrackDesc {
                            track_id: "cam".into(),
                            source: Source::Camera,
                        },
                        PublishedTrackDesc {
                            track_id: "mic".into(),
                            source: Source::Microphone,
                        },
                    ],
                },
                json!({"type": "publish_offer", "sdp": "v=0\r\n", "tracks": [
                    {"track_id": "cam", "source": "camera"},
                    {"track_id": "mic", "source": "microphone"}]}),
            ),
            (
                ClientMessage::SubscribeAnswer {
                    sdp: "v=0\r\n".into(),
                },
                json!({"type": "subscribe_answer", "sdp": "v=0\r\n"}),
            ),
            (
                ClientMessage::IceCandidate {
                    target: Target::Publish,
                    candidate: candidate.clone(),
                },
                json!({"type": "ice_candidate", "target": "publish", "candidate": {
                    "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
                    "sdpMid": "0", "sdpMLineIndex": 0}}),
            ),
            (
                ClientMessage::ClosePublish,
                json!({"type": "close_publish"}),
            ),
            (
                ClientMessage::SetCohost {
                    member_id: member,
                    cohost: true,
                },
                json!({"type": "set_cohost", "member_id": member.to_string(), "cohost": true}),
            ),
            (
                ClientMessage::DeclineFloor {
                    reason: FloorDecline::NoDevice,
                },
                json!({"type": "decline_floor", "reason": "no_device"}),
            ),
            (
                ClientMessage::Caption {
                    text: "og derfor".into(),
                    partial: true,
                },
                json!({"type": "caption", "text": "og derfor", "partial": true}),
            ),
            (
                ClientMessage::VideoPreference {
                    max_height: Some(360),
                    save_data: false,
                    order: Vec::new(),
                },
                json!({"type": "video_preference", "max_height": 360, "save_data": false}),
            ),
            (
                ClientMessage::VideoPreference {
                    max_height: None,
                    save_data: false,
                    order: vec![track],
                },
                json!({"type": "video_preference", "max_height": null, "save_data": false,
                       "order": [track.to_string()]}),
            ),
            (ClientMessage::Leave, json!({"type": "leave"})),
        ];
        for (msg, wire) in client {
            assert_eq!(serde_json::to_value(&msg).unwrap(), wire, "{msg:?}");
            let text = serde_json::to_string(&msg).unwrap();
            assert_eq!(parse_client_message(&text).unwrap(), msg, "{text}");
        }

        let server = [
            (
                ServerMessage::Welcome {
                    version: 1,
                    server: "kursrelay 0.1.0".into(),
                },
                json!({"type": "welcome", "version": 1, "server": "kursrelay 0.1.0"}),
            ),
            (
                ServerMessage::Joined {
                    member_id: member,
                    session: "3f2a".into(),
                    role: Role::Participant,
                    name: "Kari".into(),
                    chat_enabled: false,
                    rejoin_token: None,
                    simulcast: true,
                },
                json!({"type": "joined", "member_id": member.to_string(), "session": "3f2a",
                       "role": "participant", "name": "Kari", "chat_enabled": false,
                       "simulcast": true}),
            ),
            (
                ServerMessage::Roster {
                    roster: RosterView {
                        members: vec![RosterEntry {
                            member_id: member,
                            name: "Volda sjukehus".into(),
                            number: None,
                            role: Role::Site,
                            floor: false,
                            cohost: false,
                            headcount: Some(9),
                            floor_declined: None,
                            subject: None,
                            relative_of: None,
                        }],
                        lobby: None,
                        hands: Some(vec![member]),
                        locked: false,
                        participant_count: 9,
                        roster: RosterMode::Names,
                        chat_enabled: false,
                        hand_position: Some(1),
                        auto_captions: false,
                    },
                },
                json!({"type": "roster",
                       "members": [{"member_id": member.to_string(), "name": "Volda sjukehus",
                                    "role": "site", "floor": false, "headcount": 9}],
                       "hands": [member.to_string()], "locked": false, "participant_count": 9,
                       "roster": "names", "chat_enabled": false, "hand_position": 1,
                       "auto_captions": false}),
            ),
            (
                ServerMessage::Caption {
                    member_id: member,
                    text: "og derfor".into(),
                    automatic: true,
                    partial: false,
                },
                json!({"type": "caption", "member_id": member.to_string(), "text": "og derfor",
                       "automatic": true}),
            ),
            (
                ServerMessage::SubscribeOffer {
                    sdp: "v=0\r\n".into(),
                    tracks: vec![SubscribedTrackDesc {
                        track_id: track,
                        member_id: member,
                        kind: MediaKind::Audio,
                        source: Source::Microphone,
                    }],
                },
                json!({"type": "subscribe_offer", "sdp": "v=0\r\n", "tracks": [
                    {"track_id": track.to_string(), "member_id": member.to_string(),
                     "kind": "audio", "source": "microphone"}]}),
            ),
            (
                ServerMessage::IceCandidate {
                    target: Target::Subscribe,
                    candidate,
                },
                json!({"type": "ice_candidate", "target": "subscribe", "candidate": {
                    "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
                    "sdpMid": "0", "sdpMLineIndex": 0}}),
            ),
            (
                ServerMessage::VideoQuality {
                    track_id: "9c1e".into(),
                    state: VideoQualityState::Reduced,
                },
                json!({"type": "video_quality", "track_id": "9c1e", "state": "reduced"}),
            ),
            (ServerMessage::Muted, json!({"type": "muted"})),
            (
                ServerMessage::Bye {
                    reason: ByeReason::SessionEnded,
                },
                json!({"type": "bye", "reason": "session_ended"}),
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::BadSdp,
                    message: "m".into(),
                    request: Some("publish_offer".into()),
                },
                json!({"type": "error", "code": "bad_sdp", "message": "m",
                       "request": "publish_offer"}),
            ),
        ];
        for (msg, wire) in server {
            assert_eq!(serde_json::to_value(&msg).unwrap(), wire, "{msg:?}");
            let back: ServerMessage = serde_json::from_value(wire).unwrap();
            assert_eq!(back, msg);
        }
    }
}
