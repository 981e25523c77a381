//! Test harness: the real server on 127.0.0.1:0, a real webrtc-rs client speaking the real
//! signalling (`TestPeer`, `WsClient`: both on the `kursrelay-client` crate, the same typed
//! client the load generator and the captioner use), synthetic but real RTP media, and the
//! waiting helpers (`wait`: `eventually`, `none_before`, `stays_false`). The captioner's and
//! the load generator's tests include it by path.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod chromium;
pub mod coturn;
pub mod netsim;
pub mod pg;
pub mod pki;
pub mod tools;
pub mod wait;

pub use wait::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kursrelay::app::Server;
use kursrelay::config::Config;
use kursrelay::http::AppState;
use kursrelay::protocol::{
    ClientMessage, IceCandidate, PublishedTrackDesc, Role, ServerMessage, Source,
    SubscribedTrackDesc, Target, VERSION,
};
use kursrelay::sfu::LiveCounts;
use kursrelay_client::{
    candidate_message, is_keyframe_request, ClientError, Peer, PeerOptions, Signalling,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
};
use webrtc::rtp_transceiver::RtpSender;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// An RFC 3339 UTC time `secs` from now (negative: in the past), for session times: a test
/// never names a calendar day that must still lie ahead, so it passes on any date (.ci/test
/// also runs the date-dependent tests with the clock a year ahead).
/// A REST fuzz seed (tests/fuzz_corpus/rest) as text, its placeholders filled: the admin
/// key, and a session tomorrow (`STARTS_AT`, `ENDS_AT`: a fixed date would go stale).
pub fn rest_seed(input: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(input).replace("ADMIN_KEY", ADMIN_KEY);
    if text.contains("STARTS_AT") || text.contains("ENDS_AT") {
        text = text
            .replace("STARTS_AT", &utc_in(DAY))
            .replace("ENDS_AT", &utc_in(DAY + 3 * HOUR));
    }
    text
}

pub fn utc_in(secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs(secs.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The repository's top (where Cargo.lock is), also when a client crate's test includes this
/// harness by path (its `CARGO_MANIFEST_DIR` is its own directory).
pub fn repo_root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .expect("the workspace's Cargo.lock above CARGO_MANIFEST_DIR")
}

pub const HOUR: i64 = 3600;
pub const DAY: i64 = 24 * HOUR;

/// Polls `cond` until it holds or `timeout` passes. Returns whether it held. Prefer
/// `eventually` (its failure says what was awaited); this stays for callers that assert
/// themselves.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll_for(timeout, || cond().then_some(())).await.is_some()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("KURSRELAY_TEST_LOG")
                .unwrap_or_else(|_| "warn,webrtc=off,rtc=off".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The real server, in this process, on 127.0.0.1 with an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Test label → session id (created on first use).
    sessions: Mutex<HashMap<String, String>>,
    pub dir: tempfile::TempDir,
    /// The `[db]` section (SQLite in `dir`, or a PostgreSQL database: `pg::db_section`).
    pub db_section: String,
}

/// The admin key every test server accepts.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

impl TestServer {
    pub async fn spawn() -> TestServer {
        Self::spawn_with("").await
    }

    /// `overlay` is TOML on top of the test defaults (loopback only, short ICE timeouts).
    pub async fn spawn_with(overlay: &str) -> TestServer {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let db_section = pg::db_section(dir.path()).await;
        let base = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\
             [media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\nice_disconnected_timeout_ms = 1000\nice_failed_timeout_ms = 2000\n\
             [auth]\nadmin_key = \"{ADMIN_KEY}\"\n{db_section}",
        );
        let mut config = Config::from_overlay(Some((&base, "test base"))).expect("test config");
        if !overlay.is_empty() {
            let mut merged: toml::Table = base.parse().expect("base TOML");
            for (section, values) in overlay.parse::<toml::Table>().expect("overlay TOML") {
                match (merged.get_mut(&section), values) {
                    (Some(toml::Value::Table(m)), toml::Value::Table(v)) => m.extend(v),
                    (_, v) => {
                        merged.insert(section, v);
                    }
                }
            }
            config = Config::from_overlay(Some((&merged.to_string(), "test overlay")))
                .expect("test overlay");
        }
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr();
        let state = server.state();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(stop.clone()));
        TestServer {
            addr,
            state,
            stop,
            task: Some(task),
            sessions: Mutex::new(HashMap::new()),
            dir,
            db_section,
        }
    }

    /// The id of the session a test calls `label`, created (with a course) on first use.
    pub async fn session(&self, label: &str) -> String {
        if let Some(id) = self.sessions.lock().unwrap().get(label) {
            return id.clone();
        }
        let db = &self.state.db;
        let course = db
            .create_course(&format!("Testkurs {label}"))
            .await
            .unwrap();
        let new = kursrelay::db::NewSession {
            title: format!("Dag 1 {label}"),
            // Started an hour ago and ends in two days, whatever the day: no calendar date.
            starts_at: utc_in(-HOUR),
            ends_at: utc_in(2 * DAY),
            host_site: "Molde".into(),
            chat_enabled: label.contains("chat"),
            roster: if label.contains("count") {
                kursrelay::protocol::RosterMode::Count
            } else {
                kursrelay::protocol::RosterMode::Names
            },
        };
        let id = db.create_session(&course.id, &new).await.unwrap().id;
        self.sessions
            .lock()
            .unwrap()
            .insert(label.to_owned(), id.clone());
        id
    }

    /// A join token for a new invite in session `label`.
    pub async fn token(&self, label: &str, role: Role, name: Option<&str>, open: bool) -> String {
        self.token_with(label, role, name, open, None).await.1
    }

    /// (invite id, token) for a new invite, optionally for a relative of `relative_of`.
    pub async fn token_with(
        &self,
        label: &str,
        role: Role,
        name: Option<&str>,
        open: bool,
        relative_of: Option<String>,
    ) -> (String, String) {
        let session = self.session(label).await;
        let invite = self
            .state
            .db
            .create_invite(
                &session,
                &kursrelay::db::NewInvite {
                    role,
                    display_name: name.map(str::to_owned),
                    relative_of,
                    open,
                },
            )
            .await
            .unwrap();
        let claims = kursrelay::auth::Claims::for_invite(
            &invite.session_id,
            &invite.id,
            invite.role,
            invite.open,
            // The link's session "ends" two days from now, whatever the date.
            kursrelay::clock::unix_now() as i64 + 2 * DAY,
            24,
        );
        let link = kursrelay::auth::join_link(&self.state.tokens, "http://x", &claims);
        (invite.id, link.split("#t=").nth(1).unwrap().to_owned())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn live(&self) -> LiveCounts {
        self.state.sfu.metrics().live_tasks()
    }

    pub fn metric(&self, pick: fn(&kursrelay::sfu::Metrics) -> &AtomicU64) -> u64 {
        pick(self.state.sfu.metrics()).load(Ordering::SeqCst)
    }

    /// Stops the server (as Ctrl-C does) and starts it again on the same address with the same
    /// database, as after a restart in a hospital's server room.
    pub async fn restart(self) -> TestServer {
        self.restart_after(Duration::ZERO).await
    }

    /// Like `restart`, with the server away for `gap` in between (nothing listens then).
    pub async fn restart_after(mut self, gap: Duration) -> TestServer {
        let addr = self.addr;
        let sessions = std::mem::take(&mut *self.sessions.lock().unwrap());
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
        tokio::time::sleep(gap).await;
        let overlay = format!(
            "[http]\nlisten = \"{addr}\"\n[media]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 0\n\
             ice_disconnected_timeout_ms = 1000\nice_failed_timeout_ms = 2000\n[auth]\nadmin_key = \"{ADMIN_KEY}\"\n{}",
            self.db_section
        );
        let config = Config::from_overlay(Some((&overlay, "restart"))).expect("restart config");
        let server = Server::bind(config).await.expect("bind again");
        let state = server.state();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(stop.clone()));
        TestServer {
            addr,
            state,
            stop,
            task: Some(task),
            sessions: Mutex::new(sessions),
            dir: std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")),
            db_section: std::mem::take(&mut self.db_section),
        }
    }

    /// Graceful shutdown, as Ctrl-C does it.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A signalling client with nothing automatic: typed messages or raw frames out, the
/// server's messages in as JSON (each checked to be a `ServerMessage`).
pub struct WsClient {
    ws: Signalling,
}

/// A plain HTTP/1.1 reply: status, the header block (lower-cased), the body.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with extra headers.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).await.expect("write");
    // The server may answer (and close) before it has read a large body: that is the point
    // of a body limit, so a failed write of the rest is fine.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    HttpReply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

impl WsClient {
    /// Connects with extra handshake headers (e.g. `X-Forwarded-For` through a trusted proxy).
    /// Err carries the HTTP status when the server refused the upgrade.
    pub async fn connect_with(
        server: &TestServer,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        match Signalling::connect_with(&server.ws_url(), headers).await {
            Ok(ws) => Ok(WsClient { ws }),
            Err(ClientError::Refused(status)) => Err(status),
            Err(e) => panic!("ws connect: {e}"),
        }
    }

    pub async fn connect(server: &TestServer) -> WsClient {
        let ws = Signalling::connect(&server.ws_url())
            .await
            .expect("ws connect");
        WsClient { ws }
    }

    /// A text frame as it is (malformed input, or a message the protocol types cannot say).
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send_text(text).await.expect("ws send");
    }

    /// A message written as JSON by the test, sent as it is.
    pub async fn send(&mut self, value: serde_json::Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_msg(&mut self, msg: &ClientMessage) {
        self.ws.send(msg).await.expect("ws send");
    }

    pub async fn try_send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send_text(text).await
    }

    pub async fn ws_send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send_binary(bytes).await.expect("ws send");
    }

    /// The next message as JSON; None if the socket closed.
    pub async fn recv(&mut self) -> Option<serde_json::Value> {
        let text = tokio::time::timeout(TIMEOUT, self.ws.recv_text())
            .await
            .expect("ws recv timed out")
            .ok()??;
        Some(server_json(&text))
    }

    /// Receives until a message of `kind` arrives (skipping others such as candidates).
    pub async fn recv_type(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let msg = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("socket closed while waiting for {kind}"));
            if msg["type"] == kind {
                return msg;
            }
        }
    }

    /// hello + join with `token`; returns the `joined` message.
    pub async fn hello_join(&mut self, token: &str) -> serde_json::Value {
        self.send_msg(&ClientMessage::Hello { version: VERSION })
            .await;
        assert_eq!(self.recv_type("welcome").await["version"], VERSION);
        self.send_msg(&ClientMessage::Join {
            token: token.to_owned(),
            name: None,
        })
        .await;
        self.recv_type("joined").await
    }

    pub async fn close(self) {
        self.ws.close().await;
    }

    /// Reads until the server closes the socket; the close code, if its close frame had one.
    pub async fn close_code(&mut self) -> Option<u16> {
        tokio::time::timeout(TIMEOUT, self.ws.close_code())
            .await
            .expect("ws recv timed out")
    }
}

/// A frame from the server as JSON for the test to look into, after checking that it is one of
/// the protocol's `ServerMessage`s (so the server never sends what the types cannot say).
fn server_json(text: &str) -> serde_json::Value {
    if let Err(e) = serde_json::from_str::<ServerMessage>(text) {
        panic!("the server sent something that is not a ServerMessage ({e}): {text}");
    }
    serde_json::from_str(text).expect("server sent JSON")
}

// ---------------------------------------------------------------------------------------------
// Synthetic media: RTP whose payload carries a sequence number and a send time, so a receiver
// can check byte-identical, in-order delivery and latency.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
}

impl VideoCodec {
    fn mime(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "video/VP8",
            VideoCodec::H264 => "video/H264",
        }
    }
    fn fmtp(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "",
            VideoCodec::H264 => {
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"
            }
        }
    }
}

/// A payload: codec header, then u32 sequence, u64 send time (µs since `epoch`), then filler
/// derived from the sequence so that every byte is checkable.
pub fn synthetic_payload(
    codec: Option<VideoCodec>,
    keyframe: bool,
    seq: u32,
    sent_us: u64,
    len: usize,
) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    match codec {
        Some(VideoCodec::Vp8) => {
            b.put_u8(0x10); // S=1, partition 0
            b.put_u8(if keyframe { 0x00 } else { 0x01 }); // VP8 P bit: 0 = keyframe
        }
        Some(VideoCodec::H264) => {
            b.put_u8(if keyframe { 0x65 } else { 0x41 }); // IDR slice or non-IDR slice
        }
        None => {}
    }
    b.put_u32(seq);
    b.put_u64(sent_us);
    let mut i = 0u32;
    while b.len() < len {
        b.put_u8((seq.wrapping_mul(31).wrapping_add(i) & 0xff) as u8);
        i += 1;
    }
    b.freeze()
}

/// Reads back the sequence number a synthetic payload carries.
pub fn payload_seq(codec: Option<VideoCodec>, payload: &[u8]) -> u32 {
    let off = match codec {
        Some(VideoCodec::Vp8) => 2,
        Some(VideoCodec::H264) => 1,
        None => 0,
    };
    u32::from_be_bytes(payload[off..off + 4].try_into().expect("payload too short"))
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    pub camera: Option<VideoCodec>,
    pub microphone: bool,
    pub screen: Option<VideoCodec>,
    /// Video packets per second per video track; audio is 50/s.
    pub video_pps: u32,
    /// A keyframe every this many video packets (and on every PLI).
    pub keyframe_every: u32,
}

impl Default for PublishSpec {
    fn default() -> Self {
        PublishSpec {
            camera: Some(VideoCodec::Vp8),
            microphone: true,
            screen: None,
            video_pps: 50,
            keyframe_every: 100,
        }
    }
}

/// One track the test publisher sends; `sent` keeps every payload by its sequence number.
pub struct SentTrack {
    pub client_track_id: String,
    pub source: &'static str,
    pub codec: Option<VideoCodec>,
    pub ssrc: u32,
    pub sent: Mutex<HashMap<u32, Bytes>>,
    pub plis: AtomicU64,
}

/// One received track on a subscriber.
#[derive(Default)]
pub struct ReceivedTrack {
    /// (ssrc, payload type, RTP sequence number, payload)
    pub packets: Vec<(u32, u8, u16, Bytes)>,
}

#[derive(Default)]
struct Shared {
    inbox: Mutex<Vec<serde_json::Value>>,
    inbox_changed: Notify,
    /// Tracks the latest subscribe offer listed.
    offered: Mutex<Vec<SubscribedTrackDesc>>,
    received: Mutex<HashMap<String, ReceivedTrack>>,
    socket_closed: AtomicBool,
    /// While set, the publisher's sending tasks send nothing (a client that stopped its
    /// tracks); they go on where they were when it is cleared.
    paused: AtomicBool,
    /// If set, every UDP datagram of this peer's media goes through this impaired link.
    link: Option<Arc<netsim::Link>>,
    /// When each received packet arrived (same order as `ReceivedTrack::packets`).
    arrivals: Mutex<HashMap<String, Vec<Instant>>>,
}

enum Cmd {
    Raw(String),
    Send(ClientMessage),
    Publish(
        PublishSpec,
        tokio::sync::oneshot::Sender<Vec<Arc<SentTrack>>>,
    ),
    /// Close both peer connections without telling the server.
    KillMedia,
    /// A new offer on the existing publish connection, with the same tracks.
    Reoffer(tokio::sync::oneshot::Sender<()>),
    /// Close the publish connection only, without telling the server.
    ClosePublishPc,
    /// Stop answering subscribe offers (a client that went deaf).
    IgnoreOffers,
    /// Drop the TCP connection without a close frame.
    DropSocket,
}

/// A real webrtc-rs client: its own task owns the socket and both peer connections, answers
/// subscribe offers, trickles candidates and records everything it receives.
pub struct TestPeer {
    pub member_id: String,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    stop_media: CancellationToken,
}

impl TestPeer {
    /// Joins session `label` as a participant with a personal invite named `name`.
    pub async fn join(server: &TestServer, label: &str, name: &str) -> TestPeer {
        Self::join_as(server, label, Role::Participant, name).await
    }

    /// Joins session `label` as its course leader.
    pub async fn leader(server: &TestServer, label: &str, name: &str) -> TestPeer {
        Self::join_as(server, label, Role::Leader, name).await
    }

    pub async fn join_as(server: &TestServer, label: &str, role: Role, name: &str) -> TestPeer {
        let token = server.token(label, role, Some(name), false).await;
        let mut peer = Self::connect(server, &token, None).await;
        let joined = peer
            .wait_msg(|m| m["type"] == "joined" || m["type"] == "error")
            .await;
        assert_eq!(joined["type"], "joined", "{joined}");
        peer.member_id = joined["member_id"].as_str().expect("member_id").to_owned();
        peer
    }

    /// Connects and sends hello and join with `token`; returns once the reply (joined, lobby
    /// or error) is in the inbox. `member_id` is set if it came as `lobby`/`joined`.
    pub async fn connect(server: &TestServer, token: &str, name: Option<&str>) -> TestPeer {
        Self::connect_url(&server.ws_url(), token, name).await
    }

    /// Like `connect`, for a server in another process.
    pub async fn connect_url(ws_url: &str, token: &str, name: Option<&str>) -> TestPeer {
        Self::connect_with_link(ws_url, token, name, None).await
    }

    /// Like `connect`, with the peer's media going through an impaired link (`netsim`).
    pub async fn connect_impaired(
        server: &TestServer,
        token: &str,
        link: Arc<netsim::Link>,
    ) -> TestPeer {
        Self::connect_with_link(&server.ws_url(), token, None, Some(link)).await
    }

    async fn connect_with_link(
        ws_url: &str,
        token: &str,
        name: Option<&str>,
        link: Option<Arc<netsim::Link>>,
    ) -> TestPeer {
        let ws = Signalling::connect(ws_url).await.expect("ws connect");
        let shared = Arc::new(Shared {
            link,
            ..Shared::default()
        });
        let (cmds, rx) = mpsc::channel(64);
        let stop_media = CancellationToken::new();
        let task = tokio::spawn(peer_task(ws, rx, shared.clone(), stop_media.clone()));
        let mut peer = TestPeer {
            member_id: String::new(),
            shared,
            cmds,
            task,
            stop_media,
        };
        peer.send_msg(ClientMessage::Hello { version: VERSION })
            .await;
        peer.send_msg(ClientMessage::Join {
            token: token.to_owned(),
            name: name.map(str::to_owned),
        })
        .await;
        let first = peer
            .wait_msg(|m| matches!(m["type"].as_str(), Some("joined" | "lobby" | "error")))
            .await;
        if let Some(id) = first["member_id"].as_str() {
            peer.member_id = id.to_owned();
        }
        peer
    }

    /// Waits for the next message matching `pred` that arrives after `count` messages.
    pub async fn wait_msg_after(
        &self,
        count: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.shared.inbox_changed.notified();
            if let Some(m) = self
                .shared
                .inbox
                .lock()
                .unwrap()
                .iter()
                .skip(count)
                .find(|m| pred(m))
            {
                return m.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no matching message after {count}; got {:#?}", self.inbox());
            }
        }
    }

    pub fn inbox_len(&self) -> usize {
        self.shared.inbox.lock().unwrap().len()
    }

    /// A message written as JSON by the test, sent as it is.
    pub async fn send(&self, value: serde_json::Value) {
        self.send_raw(value.to_string()).await;
    }

    pub async fn send_msg(&self, msg: ClientMessage) {
        self.cmds
            .send(Cmd::Send(msg))
            .await
            .expect("peer task alive");
    }

    pub async fn send_raw(&self, text: String) {
        self.cmds
            .send(Cmd::Raw(text))
            .await
            .expect("peer task alive");
    }

    /// Publishes per `spec` and starts sending once the answer is applied.
    pub async fn publish(&self, spec: PublishSpec) -> Vec<Arc<SentTrack>> {
        self.try_publish(spec)
            .await
            .expect("the server refused to publish")
    }

    /// Like `publish`, but None if the server answers the offer with an error.
    pub async fn try_publish(&self, spec: PublishSpec) -> Option<Vec<Arc<SentTrack>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send(Cmd::Publish(spec, tx))
            .await
            .expect("peer task alive");
        tokio::time::timeout(TIMEOUT, rx)
            .await
            .expect("publish timed out")
            .ok()
    }

    pub async fn leave(&self) {
        self.send_msg(ClientMessage::Leave).await;
    }

    pub async fn kill_media(&self) {
        let _ = self.cmds.send(Cmd::KillMedia).await;
    }

    /// Stops (true) or resumes (false) sending on every published track.
    pub fn pause_media(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    /// Offers again on the same publish connection (same tracks); returns once the answer is
    /// applied.
    pub async fn reoffer(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send(Cmd::Reoffer(tx))
            .await
            .expect("peer task alive");
        tokio::time::timeout(TIMEOUT, rx)
            .await
            .expect("re-offer timed out")
            .expect("re-offer answered");
    }

    /// Closes the publish connection without a word to the server.
    pub async fn close_publish_pc(&self) {
        let _ = self.cmds.send(Cmd::ClosePublishPc).await;
    }

    /// From now on, subscribe offers are recorded but never answered.
    pub async fn ignore_offers(&self) {
        let _ = self.cmds.send(Cmd::IgnoreOffers).await;
    }

    pub async fn drop_socket(&self) {
        let _ = self.cmds.send(Cmd::DropSocket).await;
    }

    /// Every message received so far.
    pub fn inbox(&self) -> Vec<serde_json::Value> {
        self.shared.inbox.lock().unwrap().clone()
    }

    /// Waits for a message matching `pred` (looking at everything received so far too).
    pub async fn wait_msg(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let notified = self.shared.inbox_changed.notified();
            if let Some(m) = self.shared.inbox.lock().unwrap().iter().find(|m| pred(m)) {
                return m.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no matching message; got {:#?}", self.inbox());
            }
        }
    }

    /// Track ids the latest subscribe offer listed.
    pub fn offered(&self) -> Vec<SubscribedTrackDesc> {
        self.shared.offered.lock().unwrap().clone()
    }

    pub fn socket_closed(&self) -> bool {
        self.shared.socket_closed.load(Ordering::SeqCst)
    }

    /// Packets received on the track the server calls `track_id`.
    /// When each packet of `track_id` arrived, in arrival order.
    pub fn arrivals(&self, track_id: &str) -> Vec<Instant> {
        self.shared
            .arrivals
            .lock()
            .unwrap()
            .get(track_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn received_count(&self, track_id: &str) -> usize {
        self.shared
            .received
            .lock()
            .unwrap()
            .get(track_id)
            .map_or(0, |t| t.packets.len())
    }

    pub fn with_received<R>(&self, track_id: &str, f: impl FnOnce(&ReceivedTrack) -> R) -> R {
        let map = self.shared.received.lock().unwrap();
        let empty = ReceivedTrack::default();
        f(map.get(track_id).unwrap_or(&empty))
    }

    /// The server's track id for a track `publisher` publishes from `source`, once offered.
    pub async fn wait_offered(&self, publisher: &str, source: &str) -> String {
        let publisher: String = publisher.to_owned();
        let mut found = None;
        let ok = wait_until(TIMEOUT, || {
            found = self
                .offered()
                .into_iter()
                .find(|t| {
                    t.member_id.to_string() == publisher
                        && serde_json::to_value(t.source).unwrap() == source
                })
                .map(|t| t.track_id.to_string());
            found.is_some()
        })
        .await;
        assert!(
            ok,
            "no {source} track of {publisher} offered; offered {:?}",
            self.offered()
        );
        found.unwrap()
    }

    /// Ends the peer: stops sending, closes the socket.
    pub async fn close(self) {
        self.stop_media.cancel();
        let _ = self.cmds.send(Cmd::DropSocket).await;
        let _ = tokio::time::timeout(TIMEOUT, self.task).await;
    }
}

#[derive(Clone)]
struct PeerHandler {
    target: Target,
    candidates: mpsc::UnboundedSender<(Target, RTCIceCandidateInit)>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send((self.target, init));
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let id = track.track_id().await;
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    shared
                        .arrivals
                        .lock()
                        .unwrap()
                        .entry(id.clone())
                        .or_default()
                        .push(Instant::now());
                    let mut map = shared.received.lock().unwrap();
                    map.entry(id.clone()).or_default().packets.push((
                        p.header.ssrc,
                        p.header.payload_type,
                        p.header.sequence_number,
                        p.payload,
                    ));
                }
            }
        });
    }
}

/// A connection like the server's (the client crate's `media_setup`), on loopback, through the
/// peer's impaired link if it has one.
async fn new_pc(handler: PeerHandler) -> Peer {
    let options = PeerOptions::bind("127.0.0.1:0");
    let options = match handler.shared.link.clone() {
        Some(link) => options.with_runtime(Arc::new(netsim::ImpairedRuntime { link })),
        None => options,
    };
    Peer::new(Arc::new(handler), options)
        .await
        .expect("build test peer connection")
}

/// A track being published: its record, the local track written to, and its sender.
type OutTrack = (Arc<SentTrack>, Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>);

struct PendingPublish {
    spec: PublishSpec,
    tracks: Vec<OutTrack>,
    reply: tokio::sync::oneshot::Sender<Vec<Arc<SentTrack>>>,
}

async fn peer_task(
    ws: Signalling,
    mut cmds: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    stop_media: CancellationToken,
) {
    let (mut sink, mut stream) = ws.split();
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel();
    let mut pub_pc: Option<Peer> = None;
    let mut sub_pc: Option<Peer> = None;
    let mut pending: Option<PendingPublish> = None;
    let mut pub_descs: Vec<PublishedTrackDesc> = Vec::new();
    let mut reoffer_reply: Option<tokio::sync::oneshot::Sender<()>> = None;
    let mut ignore_offers = false;
    // Candidates for a connection not built yet (a `Peer` holds the rest itself).
    let mut early: HashMap<Target, Vec<IceCandidate>> = HashMap::new();
    let handler = |target| PeerHandler {
        target,
        candidates: cand_tx.clone(),
        shared: shared.clone(),
    };

    loop {
        tokio::select! {
            text = stream.recv_text() => {
                let Ok(Some(text)) = text else { break };
                let json = server_json(&text);
                let msg: ServerMessage = serde_json::from_str(&text).expect("checked by server_json");
                match msg {
                    ServerMessage::SubscribeOffer { .. } if ignore_offers => {}
                    ServerMessage::SubscribeOffer { sdp, tracks } => {
                        if sub_pc.is_none() {
                            sub_pc = Some(new_pc(handler(Target::Subscribe)).await);
                        }
                        let pc = sub_pc.as_mut().expect("built above");
                        for c in early.remove(&Target::Subscribe).unwrap_or_default() {
                            let _ = pc.add_candidate(&c).await;
                        }
                        let sdp = pc.answer(&sdp).await.expect("answer the subscribe offer");
                        *shared.offered.lock().unwrap() = tracks;
                        if sink.send(&ClientMessage::SubscribeAnswer { sdp }).await.is_err() { break; }
                    }
                    ServerMessage::PublishAnswer { sdp } => {
                        if std::env::var("DUMP_SDP").is_ok() { eprintln!("ANSWER {sdp}"); }
                        if let (Some(pc), Some(p)) = (pub_pc.as_mut(), pending.take()) {
                            pc.apply_answer(&sdp).await.expect("apply publish answer");
                            start_sending(p, stop_media.clone(), shared.clone()).await;
                        } else if let (Some(pc), Some(reply)) = (pub_pc.as_mut(), reoffer_reply.take()) {
                            pc.apply_answer(&sdp).await.expect("apply publish answer");
                            let _ = reply.send(());
                        }
                    }
                    ServerMessage::Error { request: Some(request), .. } if request == "publish_offer" => {
                        pending = None; // refused: the publish() caller gets None
                        reoffer_reply = None;
                    }
                    ServerMessage::IceCandidate { target, candidate } => {
                        let pc = match target {
                            Target::Publish => pub_pc.as_mut(),
                            Target::Subscribe => sub_pc.as_mut(),
                        };
                        match pc {
                            Some(pc) => { let _ = pc.add_candidate(&candidate).await; }
                            None => early.entry(target).or_default().push(candidate),
                        }
                    }
                    _ => {}
                }
                shared.inbox.lock().unwrap().push(json);
                shared.inbox_changed.notify_waiters();
            }
            Some((target, init)) = cand_rx.recv() => {
                if sink.send(&candidate_message(target, &init)).await.is_err() { break; }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Raw(text)) => { if sink.send_text(text).await.is_err() { break; } }
                Some(Cmd::Send(msg)) => { if sink.send(&msg).await.is_err() { break; } }
                Some(Cmd::Publish(spec, reply)) => {
                    let pc = new_pc(handler(Target::Publish)).await;
                    let mut tracks = Vec::new();
                    let mut descs = Vec::new();
                    let plan = [
                        (spec.camera, Source::Camera, true),
                        (None, Source::Microphone, spec.microphone),
                        (spec.screen, Source::Screen, spec.screen.is_some()),
                    ];
                    for (codec, source, wanted) in plan {
                        if !wanted { continue; }
                        if source == Source::Camera && codec.is_none() { continue; }
                        let name = source_name(source);
                        let ssrc = rand::random::<u32>();
                        let id = format!("test-{name}-{ssrc}");
                        let (kind, rtp_codec) = match codec {
                            Some(c) => (RtpCodecKind::Video, RTCRtpCodec { mime_type: c.mime().into(), clock_rate: 90000, channels: 0, sdp_fmtp_line: c.fmtp().into(), rtcp_feedback: vec![] }),
                            None => (RtpCodecKind::Audio, RTCRtpCodec { mime_type: "audio/opus".into(), clock_rate: 48000, channels: 2, sdp_fmtp_line: "minptime=10;useinbandfec=1".into(), rtcp_feedback: vec![] }),
                        };
                        let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                            format!("stream-{ssrc}"), id.clone(), id.clone(), kind,
                            vec![RTCRtpEncodingParameters { rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() }, codec: rtp_codec, ..Default::default() }],
                        )));
                        let sender = pc.connection().add_track(local.clone() as Arc<dyn TrackLocal>).await.expect("add_track");
                        let sent = Arc::new(SentTrack { client_track_id: id.clone(), source: name, codec, ssrc, sent: Mutex::new(HashMap::new()), plis: AtomicU64::new(0) });
                        descs.push(PublishedTrackDesc { track_id: id, source });
                        tracks.push((sent, local, sender));
                    }
                    let sdp = pc.offer().await.expect("publish offer");
                    pub_pc = Some(pc);
                    pub_descs = descs.clone();
                    pending = Some(PendingPublish { spec, tracks, reply });
                    if std::env::var("DUMP_SDP").is_ok() { eprintln!("OFFER {sdp}"); }
                    if sink.send(&ClientMessage::PublishOffer { sdp, tracks: descs }).await.is_err() { break; }
                }
                Some(Cmd::Reoffer(reply)) => {
                    let Some(pc) = pub_pc.as_ref() else { continue };
                    let sdp = pc.offer().await.expect("publish offer");
                    reoffer_reply = Some(reply);
                    let msg = ClientMessage::PublishOffer { sdp, tracks: pub_descs.clone() };
                    if sink.send(&msg).await.is_err() { break; }
                }
                Some(Cmd::ClosePublishPc) => {
                    if let Some(pc) = pub_pc.take() { pc.close().await; }
                }
                Some(Cmd::IgnoreOffers) => ignore_offers = true,
                Some(Cmd::KillMedia) => {
                    stop_media.cancel();
                    if let Some(pc) = pub_pc.take() { pc.close().await; }
                    if let Some(pc) = sub_pc.take() { pc.close().await; }
                }
                Some(Cmd::DropSocket) | None => break,
            }
        }
    }
    shared.socket_closed.store(true, Ordering::SeqCst);
    shared.inbox_changed.notify_waiters();
    stop_media.cancel();
    if let Some(pc) = pub_pc.take() {
        pc.close().await;
    }
    if let Some(pc) = sub_pc.take() {
        pc.close().await;
    }
}

/// The protocol's name for a source (`camera`, …), as `SentTrack::source` keeps it.
fn source_name(source: Source) -> &'static str {
    match source {
        Source::Camera => "camera",
        Source::Microphone => "microphone",
        Source::Screen => "screen",
    }
}

/// Starts one sending task per track (paced, keyframes periodically and on PLI) and replies
/// with the tracks' records.
async fn start_sending(p: PendingPublish, stop: CancellationToken, shared: Arc<Shared>) {
    let epoch = Instant::now();
    let mut records = Vec::new();
    for (sent, local, sender) in p.tracks {
        let params = sender.get_parameters().await.expect("sender parameters");
        let mime = match sent.codec {
            Some(c) => c.mime(),
            None => "audio/opus",
        };
        let pt = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .map(|c| c.payload_type)
            .unwrap_or_else(|| {
                panic!(
                    "{mime} not negotiated: {:?}",
                    params
                        .rtp_parameters
                        .codecs
                        .iter()
                        .map(|c| (&c.rtp_codec.mime_type, c.payload_type))
                        .collect::<Vec<_>>()
                )
            });
        records.push(sent.clone());
        // Keyframe requests from the server arrive on the local track.
        let pli_local = local.clone();
        let pli_sent = sent.clone();
        let kf_wanted = Arc::new(AtomicBool::new(true));
        let kf_flag = kf_wanted.clone();
        let stop_rtcp = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rtcp.cancelled() => return,
                    ev = pli_local.poll() => match ev {
                        Some(TrackLocalEvent::OnRtcpPacket(pkts)) => {
                            if is_keyframe_request(&pkts) {
                                pli_sent.plis.fetch_add(1, Ordering::SeqCst);
                                kf_flag.store(true, Ordering::SeqCst);
                            }
                        }
                        Some(_) => {}
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        let spec = p.spec.clone();
        let stop = stop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let (pps, clock_step, len) = match sent.codec {
                Some(_) => (spec.video_pps, 90_000 / spec.video_pps, 1000),
                None => (50, 960, 120),
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1) / pps);
            let mut seq: u32 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if shared.paused.load(Ordering::SeqCst) {
                    continue;
                }
                let keyframe = sent.codec.is_some()
                    && (kf_wanted.swap(false, Ordering::SeqCst)
                        || seq.is_multiple_of(spec.keyframe_every));
                let payload = synthetic_payload(
                    sent.codec,
                    keyframe,
                    seq,
                    epoch.elapsed().as_micros() as u64,
                    len,
                );
                sent.sent.lock().unwrap().insert(seq, payload.clone());
                let packet = rtp::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker: true,
                        payload_type: pt,
                        sequence_number: seq as u16,
                        timestamp: seq.wrapping_mul(clock_step),
                        ssrc: sent.ssrc,
                        ..Default::default()
                    },
                    payload,
                };
                if local.write_rtp(packet).await.is_err() && stop.is_cancelled() {
                    return;
                }
                seq += 1;
            }
        });
    }
    let _ = p.reply.send(records);
}

/// Checks one subscriber's copy of one sent track: payloads byte-identical to what was sent,
/// in order, RTP sequence numbers contiguous, one SSRC that is not the publisher's. Returns
/// (packets, ssrc).
pub fn check_delivery(peer: &TestPeer, track_id: &str, sent: &SentTrack) -> (usize, u32) {
    peer.with_received(track_id, |rx| {
        assert!(!rx.packets.is_empty(), "nothing received on {track_id}");
        let ssrc = rx.packets[0].0;
        assert_ne!(ssrc, sent.ssrc, "SSRC was not rewritten");
        let sent_map = sent.sent.lock().unwrap();
        let mut last_payload_seq: Option<u32> = None;
        let mut last_rtp_seq: Option<u16> = None;
        for (pssrc, _pt, rtp_seq, payload) in &rx.packets {
            assert_eq!(*pssrc, ssrc, "SSRC changed mid-stream");
            let seq = payload_seq(sent.codec, payload);
            let original = sent_map
                .get(&seq)
                .unwrap_or_else(|| panic!("received a payload never sent: {seq}"));
            assert_eq!(
                original, payload,
                "payload {seq} differs from what was sent"
            );
            if let Some(last) = last_payload_seq {
                assert!(seq > last, "out of order: {seq} after {last}");
            }
            if let Some(last) = last_rtp_seq {
                assert_eq!(
                    *rtp_seq,
                    last.wrapping_add(1),
                    "gap in RTP sequence numbers"
                );
            }
            last_payload_seq = Some(seq);
            last_rtp_seq = Some(*rtp_seq);
        }
        (rx.packets.len(), ssrc)
    })
}

/// A WAV file of 16-bit mono PCM at `rate` (for Chromium's `--use-file-for-fake-audio-capture`).
pub fn wav_mono16(rate: u32, pcm: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + pcm.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
    out.extend_from_slice(pcm);
    out
}
