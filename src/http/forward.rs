//! Several nodes (issue 22): a member whose session runs on another node is carried there.
//! This node's `/ws` door reads the member's `hello` and `join` as always; if another node
//! holds the session's live lease, it opens a WebSocket to that node's `/cluster/ws` (with
//! `cluster.secret`), replays `hello` and `join`, drops the owner's `welcome` (the member has
//! had this node's), and from then on copies frames both ways unchanged. The member's client
//! sees the same messages in the same order; floor, lobby, roster and attendance are decided
//! by the owner's room. Media does not pass here: the owner's SDP carries the owner's own ICE
//! candidates, so the member's media connection goes to the owner's media port.
//!
//! `/cluster/ws` is the owner's side: the same signalling loop as `/ws`, refused without the
//! secret (compared in constant time) and never forwarded again. It decides nothing of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::Instrument;

use super::guard::{same_secret, WsPermit};
use super::AppState;
use crate::cluster::Owner;
use crate::db::DbError;
use crate::ids::SessionId;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::room::SessionSettings;

/// The owner's endpoint for forwarded members.
pub const PATH: &str = "/cluster/ws";
/// How long opening the connection to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a door tries to reach a session's owner before it gives up on this join.
const ATTEMPTS: usize = 3;
/// What `/metrics` tells of the node-to-node signalling.
#[derive(Debug, Default)]
pub struct Counts {
    /// Members this node carries to other nodes right now.
    pub carried_open: AtomicU64,
    /// Node connections refused here for a missing or wrong secret.
    pub refused: AtomicU64,
}

/// `/cluster/ws`: another node carries a member's signalling here. 404 on a single server;
/// 401 without the right `Authorization: Bearer <cluster.secret>`, before anything else.
pub(super) async fn upgrade(State(state): State<AppState>, request: Request) -> Response {
    if state.cluster.is_none() {
        return (
            StatusCode::NOT_FOUND,
            "This server is not a node of several.\n",
        )
            .into_response();
    }
    // The secret before anything else about the request, the upgrade included.
    let (mut parts, _body) = request.into_parts();
    let given = bearer(&parts.headers);
    if let Err(refused) = check_secret(&state, given) {
        return refused;
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // Not counted against an address: the member was counted at the door it came in by, and
    // all of one node's members share its address.
    let Some(permit) = state.guard.websocket(None) else {
        return StatusCode::TOO_MANY_REQUESTS.into_response();
    };
    super::ws::upgrade_forwarded(ws, state, permit)
}

/// `Err` with the 401 to send unless `given` is this region's `cluster.secret` (compared in
/// constant time: `guard::same_secret`).
#[allow(clippy::result_large_err)]
fn check_secret(state: &AppState, given: &str) -> Result<(), Response> {
    let real = state.cluster.as_ref().map(|n| n.secret()).unwrap_or("");
    if !real.is_empty() && same_secret(given, real) {
        return Ok(());
    }
    state.carried.refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("refused a node-to-node request: cluster.secret missing or wrong");
    Err((
        StatusCode::UNAUTHORIZED,
        "The node-to-node connection needs this region's cluster.secret; it was missing or wrong.\n",
    )
        .into_response())
}

fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// What the admin API, called on one node, tells the room of a session running on another.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "notice")]
pub enum RoomNotice {
    /// The session was ended.
    End,
    /// An invite was withdrawn: whoever holds it goes.
    Revoke { invite_id: String },
    /// The session's settings changed in the store: the room reads them again.
    Settings,
}

/// The owner's path for room notices.
pub const NOTICE_PATH: &str = "/cluster/notice/{session}";

/// Several nodes: tells the room of `session` about `notice` if another node runs it (the
/// admin API changed the store here; the owner's room must follow at once, as a room on this
/// node does). Best effort: a failure is logged, and the room learns the store's state at its
/// next start.
pub async fn tell_owner(state: &AppState, session: &str, notice: RoomNotice) {
    let Some(node) = &state.cluster else {
        return;
    };
    let owner = match node.owner_elsewhere(session).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the session's lease; its room elsewhere is not told");
            return;
        }
    };
    let body = serde_json::to_string(&notice).expect("a notice serialises");
    let path = NOTICE_PATH.replace("{session}", session);
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        post_internal(&owner.internal_url, &path, node.secret(), &body),
    )
    .await
    {
        Ok(Ok(204)) => {}
        Ok(Ok(status)) => {
            tracing::warn!(owner = %owner.node_id, status, "the session's owner refused a room notice")
        }
        Ok(Err(e)) => {
            tracing::warn!(owner = %owner.node_id, error = %e, "cannot tell the session's owner")
        }
        Err(_) => {
            tracing::warn!(owner = %owner.node_id, "the session's owner did not answer a room notice in time")
        }
    }
}

/// One HTTP/1.1 POST of a JSON `body` to another node (plain HTTP on the internal network,
/// `Authorization: Bearer <cluster.secret>`); its status code.
async fn post_internal(
    internal_url: &str,
    path: &str,
    secret: &str,
    body: &str,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let host = internal_host(internal_url);
    let request = axum::http::Request::post(internal_path(internal_url, path))
        .header(header::HOST, host)
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(
            axum::body::Bytes::copy_from_slice(body.as_bytes()),
        ))?;
    Ok(send_internal(host, request).await?.status().as_u16())
}

/// Marks a WHIP/WHEP request one node carried to another (the value is `cluster.secret`): the
/// receiving node handles it itself and never carries it again.
pub const CARRIED_HEADER: &str = "x-kursrelay-carried";
/// How long a carried WHIP/WHEP request may take at the owner (it waits for the answer SDP).
const CARRY_TIMEOUT: Duration = Duration::from_secs(15);
/// The request headers a carried WHIP/WHEP request keeps.
const CARRIED_REQUEST_HEADERS: [header::HeaderName; 4] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::IF_MATCH,
    header::ACCEPT,
];

/// Several nodes: a WHIP or WHEP request (`method` on `path`, `/whip/{session}[/{resource}]`)
/// for a session another node runs is carried to that node and its answer returned unchanged
/// (status, `Location`, `ETag`, `Link`, body), so an encoder or player may use any node, like
/// a member's join link. The SDP answer names the owner's media port, so the media goes there.
/// `None`: handle it here (a single server, nobody else runs the session, the store cannot say,
/// or the request was already carried here by another node).
pub(super) async fn carry_http(
    state: &AppState,
    session: &str,
    method: axum::http::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Option<Response> {
    let node = state.cluster.as_ref()?;
    let carried = headers
        .get(CARRIED_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| same_secret(v, node.secret()));
    if carried {
        return None;
    }
    let owner = match tokio::time::timeout(STORE_ANSWER_WITHIN, node.owner_elsewhere(session)).await
    {
        Ok(Ok(Some(owner))) => owner,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the session's lease; the equipment request is handled here");
            return None;
        }
        Err(_) => return Some(store_away_http()),
    };
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(internal_path(&owner.internal_url, path));
    for name in CARRIED_REQUEST_HEADERS {
        for value in headers.get_all(&name) {
            request = request.header(&name, value);
        }
    }
    let host = internal_host(&owner.internal_url).to_owned();
    let request = request
        .header(header::HOST, &host)
        .header(CARRIED_HEADER, node.secret())
        .body(http_body_util::Full::new(body));
    let Ok(request) = request else {
        return Some(StatusCode::BAD_REQUEST.into_response());
    };
    match tokio::time::timeout(CARRY_TIMEOUT, send_internal(&host, request)).await {
        Ok(Ok(response)) => Some(response),
        Ok(Err(e)) => {
            tracing::warn!(owner = %owner.node_id, error = %e, "cannot carry an equipment request to the session's owner");
            Some(owner_unreachable_http())
        }
        Err(_) => {
            tracing::warn!(owner = %owner.node_id, "the session's owner did not answer an equipment request in time");
            Some(owner_unreachable_http())
        }
    }
}

/// One HTTP/1.1 request to another node; its answer with the hop-by-hop headers left out.
async fn send_internal(
    host: &str,
    request: axum::http::Request<http_body_util::Full<axum::body::Bytes>>,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(host).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let answer = sender.send_request(request).await?;
    let (parts, body) = answer.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut response = (parts.status, body).into_response();
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "content-length" | "keep-alive"
        ) {
            response.headers_mut().append(name, value.clone());
        }
    }
    Ok(response)
}

/// `h:p` of an internal URL (`http://h:p[/prefix]`).
fn internal_host(internal_url: &str) -> &str {
    let rest = internal_url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .unwrap_or(internal_url);
    rest.split('/').next().unwrap_or(rest)
}

/// The path on the other node: its prefix (if its internal URL has one) and `path`.
fn internal_path(internal_url: &str, path: &str) -> String {
    let rest = internal_url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .unwrap_or(internal_url);
    let prefix = rest.find('/').map_or("", |i| &rest[i..]);
    format!("{prefix}{path}")
}

fn equipment_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

fn store_away_http() -> Response {
    equipment_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        STORE_AWAY_MESSAGE,
    )
}

fn owner_unreachable_http() -> Response {
    equipment_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "The server that runs this course cannot be reached just now. Try again in a few seconds.",
    )
}

/// `POST /cluster/notice/{session}` (another node's admin API changed the store): the room
/// running here follows, as after a call to this node's own API. 204; 401 without the secret.
pub(super) async fn notice(
    State(state): State<AppState>,
    axum::extract::Path(session): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if state.cluster.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Err(refused) = check_secret(&state, bearer(&headers)) {
        return refused;
    }
    let (Some(sid), Ok(notice)) = (
        SessionId::parse(&session),
        serde_json::from_slice::<RoomNotice>(&body),
    ) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match notice {
        RoomNotice::End => state.rooms.end(&sid).await,
        RoomNotice::Revoke { invite_id } => state.rooms.revoke(&sid, &invite_id).await,
        RoomNotice::Settings => match state.db.session(&session).await {
            Ok(s) => {
                state
                    .rooms
                    .set_settings(&sid, SessionSettings::of(&s))
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session for a settings notice");
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
        },
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The owner's `/cluster/ws` address from its `internal_url` (`http://h:p[/prefix]`).
fn owner_ws_url(internal_url: &str) -> String {
    let base = internal_url.trim_end_matches('/');
    let rest = base.strip_prefix("http://").unwrap_or(base);
    format!("ws://{rest}{PATH}")
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(state: &AppState, owner: &Owner) -> Option<Upstream> {
    let node = state.cluster.as_ref()?;
    let mut request = owner_ws_url(&owner.internal_url)
        .into_client_request()
        .ok()?;
    let bearer = format!("Bearer {}", node.secret()).parse().ok()?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((upstream, _))) => Some(upstream),
        Ok(Err(e)) => {
            tracing::warn!(owner = %owner.node_id, error = %e, "cannot reach the session's owner node");
            None
        }
        Err(_) => {
            tracing::warn!(owner = %owner.node_id, "the session's owner node did not answer in time");
            None
        }
    }
}

/// What became of a join the door tried to carry to another node.
pub(super) enum Carried {
    /// The member was carried to the owner and the connection has ended.
    Done,
    /// No other node holds the session (any more): run it here.
    Here,
    /// The owner could not be reached; the member was told and the socket is to be closed.
    Unreachable,
    /// The store does not answer: the member was told the join cannot be taken now (the socket
    /// stays open; the member may try again).
    StoreAway,
}

/// How long the door waits for the store to say who runs a session before it refuses the
/// join as "the store is unreachable".
const STORE_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The `join` refusal (`unavailable`) while the store is unreachable.
pub(super) const STORE_AWAY_MESSAGE: &str =
    "The course register cannot be reached just now, so nobody can join. \
Those already in the course carry on. Try again in a minute.";

/// Carries the member to the node that owns `session`, if another does. `hello` and `join`
/// are the member's own frames, replayed in order. An owner that cannot be reached is tried
/// again once its lease has run out: by then the session is free, and it runs here.
pub(super) async fn carry(
    socket: &mut WebSocket,
    state: &AppState,
    permit: &mut WsPermit,
    session: &str,
    hello: &str,
    join: &str,
) -> Carried {
    let Some(node) = &state.cluster else {
        return Carried::Here;
    };
    for _ in 0..ATTEMPTS {
        // A store that does not answer refuses the join at once, clearly: nothing of it could
        // be recorded, and a room must not start (or be taken over) without its lease.
        let looked = tokio::time::timeout(STORE_ANSWER_WITHIN, node.owner_elsewhere(session))
            .await
            .unwrap_or_else(|_| Err(DbError::Invalid("no answer".into())));
        let owner = match looked {
            Ok(Some(owner)) => owner,
            Ok(None) => return Carried::Here,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session's lease; the join is refused");
                let _ = send_server(
                    socket,
                    &ServerMessage::Error {
                        code: ErrorCode::Unavailable,
                        message: STORE_AWAY_MESSAGE.into(),
                        request: Some("join".into()),
                    },
                )
                .await;
                return Carried::StoreAway;
            }
        };
        if let Some(upstream) = connect(state, &owner).await {
            let span = tracing::info_span!("forwarded", owner = %owner.node_id);
            relay(socket, state, permit, upstream, hello, join)
                .instrument(span)
                .await;
            return Carried::Done;
        }
        // The owner is gone or cut off: wait for its lease to run out (at most one lease).
        let wait_ms = (owner.expires_ms - crate::attendance::now_ms())
            .clamp(0, node.lease_length().as_millis() as i64);
        tokio::time::sleep(Duration::from_millis(wait_ms as u64 + 50)).await;
    }
    let _ = send_server(
        socket,
        &ServerMessage::Error {
            code: ErrorCode::Unavailable,
            message:
                "The server running this session cannot be reached just now. Try again in a moment."
                    .into(),
            request: Some("join".into()),
        },
    )
    .await;
    Carried::Unreachable
}

async fn send_server(socket: &mut WebSocket, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// Copies frames both ways until either side ends. This node keeps the member's socket alive
/// (pings, the idle timeout) as `/ws` does; the owner applies the protocol's limits.
async fn relay(
    socket: &mut WebSocket,
    state: &AppState,
    permit: &mut WsPermit,
    mut upstream: Upstream,
    hello: &str,
    join: &str,
) {
    let counts = state.carried.clone();
    counts.carried_open.fetch_add(1, Ordering::Relaxed);
    let _open = scopeguard(move || {
        counts.carried_open.fetch_sub(1, Ordering::Relaxed);
    });
    if upstream
        .send(tungstenite::Message::text(hello))
        .await
        .is_err()
        || upstream
            .send(tungstenite::Message::text(join))
            .await
            .is_err()
    {
        let _ = socket.send(Message::Close(Some(going_away()))).await;
        return;
    }
    tracing::debug!("member carried to the session's owner");
    let limits = &state.config.signalling;
    let idle_timeout = limits.idle_timeout();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + limits.ping_interval(),
        limits.ping_interval(),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The owner answers the replayed hello with its own welcome; the member had this node's.
    let mut welcome_pending = true;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                let _ = send_server(socket, &ServerMessage::Bye { reason: crate::protocol::ByeReason::ServerShutdown }).await;
                let _ = socket.send(Message::Close(None)).await;
                let _ = upstream.close(None).await;
                return;
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    let frame = CloseFrame { code: 1000, reason: "idle timeout".into() };
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
                    let _ = upstream.close(None).await;
                    return;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    let _ = upstream.close(None).await;
                    return;
                }
            }
            frame = socket.recv() => {
                last_heard = Instant::now();
                let out = match frame {
                    Some(Ok(Message::Text(text))) => tungstenite::Message::text(text.as_str()),
                    Some(Ok(Message::Binary(data))) => tungstenite::Message::binary(data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        let _ = upstream.close(None).await;
                        return;
                    }
                };
                if upstream.send(out).await.is_err() {
                    let _ = socket.send(Message::Close(Some(going_away()))).await;
                    return;
                }
            }
            frame = upstream.next() => match frame {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    if std::mem::take(&mut welcome_pending) && text.as_str().contains("\"welcome\"")
                        && serde_json::from_str::<serde_json::Value>(text.as_str()).is_ok_and(|v| v["type"] == "welcome")
                    {
                        continue;
                    }
                    // Let in by the owner: as on /ws, the socket no longer counts against
                    // the member's address (hospital NAT).
                    if text.as_str().contains("\"joined\"")
                        && serde_json::from_str::<serde_json::Value>(text.as_str()).is_ok_and(|v| v["type"] == "joined")
                    {
                        permit.admitted();
                    }
                    if socket.send(Message::Text(text.as_str().into())).await.is_err() {
                        let _ = upstream.close(None).await;
                        return;
                    }
                }
                Some(Ok(tungstenite::Message::Binary(data))) => {
                    if socket.send(Message::Binary(data)).await.is_err() {
                        let _ = upstream.close(None).await;
                        return;
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    // The owner closed (bye, a limit): the member gets the same close.
                    let frame = frame.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() });
                    let _ = socket.send(Message::Close(frame)).await;
                    linger(socket).await;
                    return;
                }
                Some(Ok(_)) => {}
                // The owner died or the network between the nodes broke: the member's client
                // reconnects (through any node) and is carried to whichever node runs the
                // session then.
                None | Some(Err(_)) => {
                    tracing::warn!("the session's owner node went away; the member is told to reconnect");
                    let _ = socket.send(Message::Close(Some(going_away()))).await;
                    return;
                }
            }
        }
    }
}

/// Close code 1001: this side of the member's connection goes away; reconnect.
fn going_away() -> CloseFrame {
    CloseFrame {
        code: 1001,
        reason: "session moving to another server".into(),
    }
}

/// Reads (and drops) what the member still sends for a moment after the close, so its last
/// messages are not destroyed by a reset.
async fn linger(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(frame)) = socket.recv().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Runs `f` when dropped (however the relay ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back() {
        for n in [
            RoomNotice::End,
            RoomNotice::Revoke {
                invite_id: "i1".into(),
            },
            RoomNotice::Settings,
        ] {
            let text = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<RoomNotice>(&text).unwrap(), n);
        }
    }

    #[test]
    fn the_owner_is_reached_at_its_internal_url() {
        assert_eq!(
            owner_ws_url("http://10.1.2.3:8081"),
            "ws://10.1.2.3:8081/cluster/ws"
        );
        assert_eq!(
            owner_ws_url("http://10.1.2.3:8081/kurs/"),
            "ws://10.1.2.3:8081/kurs/cluster/ws"
        );
    }
}
