//! `/ws`: one task per client socket. Reads frames (size limit, rate limit, JSON parsing),
//! hands messages and events to `room::client::Client`, and writes its outbox to the socket.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::guard::{ClientAddr, WsPermit};
use super::AppState;
use crate::auth::{Genuine, TokenError};
use crate::protocol::{
    parse_client_message, ByeReason, ClientMessage, ErrorCode, ProtocolError, ServerMessage,
};
use crate::room::client::{Client, ClientCtx, Flow};

/// Frames above this close the socket with code 1009; frames between
/// `signalling.max_message_bytes` and this are answered with `too_large` and ignored.
const HARD_FRAME_LIMIT: usize = 1024 * 1024;
/// What the WebSocket layer reads at most. Above `HARD_FRAME_LIMIT` a frame is still read whole
/// up to here, so the close frame reaches the client in an orderly close (a server that stops
/// reading mid-frame and closes resets the connection, and the client never sees the code).
/// Beyond this the layer refuses the frame itself and the close is best effort.
const READ_LIMIT: usize = 4 * HARD_FRAME_LIMIT;
/// Initial read buffer and write batching threshold per WebSocket.
const SOCKET_BUFFER: usize = 8 * 1024;
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
/// The close frame's reason when a socket was silent for `signalling.idle_timeout_ms`.
const IDLE_REASON: &str = "idle timeout";
/// How long the idle close frame may take to go out.
const CLOSE_SEND_WITHIN: Duration = Duration::from_secs(1);

pub(super) async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    axum::Extension(ClientAddr(addr)): axum::Extension<ClientAddr>,
) -> Response {
    // Counted from here until the socket's task ends (the permit moves into it).
    let Some(permit) = state.guard.websocket(addr) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections from your address.\n",
        )
            .into_response();
    };
    upgrade_socket(ws, state, addr, permit, Door::Public)
}

/// Which door a signalling socket came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// `/ws`: a member's own connection; carried to another node if that node owns the session.
    Public,
    /// `/cluster/ws`: carried here by another node; always served here, never carried again.
    Forwarded,
}

/// `/cluster/ws` after its secret was checked (`forward::upgrade`).
pub(super) fn upgrade_forwarded(
    ws: WebSocketUpgrade,
    state: AppState,
    permit: WsPermit,
) -> Response {
    upgrade_socket(ws, state, None, permit, Door::Forwarded)
}

fn upgrade_socket(
    ws: WebSocketUpgrade,
    state: AppState,
    addr: Option<IpAddr>,
    permit: WsPermit,
    door: Door,
) -> Response {
    ws.max_message_size(READ_LIMIT)
        .max_frame_size(READ_LIMIT)
        // tungstenite's defaults are 128 KiB each, allocated per socket: most of a member's
        // memory for messages that are a few hundred bytes. The buffers still grow for the
        // rare large frame.
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| {
            // The connection id is random and only ties log lines together.
            let span = tracing::debug_span!("peer", conn = %uuid::Uuid::new_v4());
            async move {
                run(socket, state, addr, permit, door).await;
            }
            .instrument(span)
        })
}

/// Before a `join` reaches the client state machine, with its token's signature checked (once,
/// by the caller): a token whose signature does not hold (a guess, not an expired link)
/// counts against the address's failure budget, and from an address over budget it is
/// answered with `rate_limited` after the penalty delay and the socket closed. A genuine
/// token, expired or not, is never held up here: the course leader behind a busy hospital NAT
/// still gets in.
async fn guard_join(
    state: &AppState,
    addr: Option<IpAddr>,
    token: &Result<Genuine, TokenError>,
    client: &mut Client,
    close_code: &mut Option<u16>,
) -> Option<Flow> {
    if token.is_ok() {
        return None;
    }
    let now = Instant::now();
    let over = state.guard.over_budget(addr, now);
    state.guard.failed(addr, now);
    let over = over.err()?;
    tokio::time::sleep(state.guard.penalty()).await;
    state.guard.refused();
    client.reject(
        ProtocolError::new(
            ErrorCode::RateLimited,
            format!(
                "Too many failed joins from your address; try again in {} s.",
                over.retry_after.as_secs()
            ),
        ),
        Some("join"),
    );
    *close_code = Some(CLOSE_POLICY);
    Some(Flow::Close)
}

/// Whether the join just tried here was refused with `internal` (what `Rooms::join` gives when
/// another node won the session's lease first); the caller then looks at the lease again.
fn lost_the_session(client: &Client) -> bool {
    matches!(
        client.outbox.last(),
        Some(ServerMessage::Error { code: ErrorCode::Internal, request: Some(r), .. }) if r == "join"
    )
}

/// Token bucket: `rate` messages per second sustained, `burst` at once.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn run(
    mut socket: WebSocket,
    state: AppState,
    addr: Option<IpAddr>,
    mut permit: WsPermit,
    door: Door,
) {
    let limits = &state.config.signalling;
    let mut rate = RateLimit::new(limits.messages_per_second, limits.message_burst);
    let mut client = Client::new(ClientCtx {
        rooms: state.rooms.clone(),
        sfu: state.sfu.clone(),
        db: state.db.clone(),
        tokens: state.tokens.clone(),
        answer_timeout: limits.answer_timeout(),
    });
    let mut close_code: Option<u16> = None;
    let idle_timeout = limits.idle_timeout();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + limits.ping_interval(),
        limits.ping_interval(),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Several nodes: the member's accepted `hello`, replayed if the member is carried to the
    // session's owner; and whether a join was already tried here (then it is never carried).
    let mut hello: Option<String> = None;
    let mut joined_here = false;

    loop {
        let flow = tokio::select! {
            _ = state.shutdown.cancelled() => {
                client.outbox.push(ServerMessage::Bye { reason: ByeReason::ServerShutdown });
                Flow::Close
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    // Checked at ping ticks: the close comes between `idle_timeout` and
                    // `idle_timeout + ping_interval` after the last thing heard. The member is
                    // dropped (shutdown below). Probably nobody reads the close frame, but a
                    // client whose pongs were lost learns why and reconnects; bounded, since a
                    // silent peer's send buffer may be full, and no lingering for its reply.
                    tracing::info!(silent_ms = last_heard.elapsed().as_millis() as u64, "signalling socket silent; closing it");
                    let frame = CloseFrame { code: CLOSE_NORMAL, reason: IDLE_REASON.into() };
                    let _ = tokio::time::timeout(CLOSE_SEND_WITHIN, socket.send(Message::Close(Some(frame)))).await;
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                Flow::Continue
            }
            frame = socket.recv() => match frame.inspect(|_| last_heard = Instant::now()) {
                Some(Ok(Message::Text(text))) if text.len() > HARD_FRAME_LIMIT => too_big(&mut client, &mut close_code),
                Some(Ok(Message::Binary(data))) if data.len() > HARD_FRAME_LIMIT => too_big(&mut client, &mut close_code),
                Some(Ok(Message::Text(text))) => {
                    if !rate.allow(Instant::now()) {
                        client.reject(ProtocolError::new(ErrorCode::RateLimited, "Too many messages; disconnecting."), None);
                        close_code = Some(CLOSE_POLICY);
                        Flow::Close
                    } else if text.len() > limits.max_message_bytes {
                        client.reject(ProtocolError::new(ErrorCode::TooLarge, format!(
                            "The message is {} bytes; the limit is {}.", text.len(), limits.max_message_bytes)), None);
                        Flow::Continue
                    } else {
                        match parse_client_message(text.as_str()) {
                            Ok(ClientMessage::Join { token, name }) => {
                                tracing::debug!(kind = "join", "client message");
                                // The one check of the token's signature; the client gets the verdict.
                                let token = state.tokens.genuine(&token);
                                match guard_join(&state, addr, &token, &mut client, &mut close_code).await {
                                    Some(flow) => flow,
                                    None => {
                                        // Another node runs the session: the member is carried
                                        // there (a genuine token, after an accepted hello, from
                                        // a member's own door, once).
                                        let session = token.as_ref().ok().map(|g| g.claims().sid.clone());
                                        if let (Door::Public, Some(hello), Some(session), false, true) =
                                            (door, hello.as_deref(), session, joined_here, state.cluster.is_some())
                                        {
                                            match super::forward::carry(&mut socket, &state, &mut permit, &session, hello, text.as_str()).await {
                                                super::forward::Carried::Done => {
                                                    client.shutdown().await;
                                                    return;
                                                }
                                                super::forward::Carried::Unreachable => {
                                                    close_code = Some(CLOSE_NORMAL);
                                                    joined_here = true;
                                                    Flow::Close
                                                }
                                                // Refused (the store is unreachable); the
                                                // member may try again on this socket.
                                                super::forward::Carried::StoreAway => Flow::Continue,
                                                super::forward::Carried::Here => {
                                                    joined_here = true;
                                                    let flow = client.join(token, name.as_deref()).await;
                                                    // Another node started the session between the
                                                    // look at its lease and this node's claim: the
                                                    // member goes there instead of hearing `internal`.
                                                    if lost_the_session(&client) {
                                                        let refusal = client.outbox.pop();
                                                        match super::forward::carry(&mut socket, &state, &mut permit, &session, hello, text.as_str()).await {
                                                            super::forward::Carried::Done => {
                                                                client.shutdown().await;
                                                                return;
                                                            }
                                                            super::forward::Carried::Unreachable => {
                                                                close_code = Some(CLOSE_NORMAL);
                                                                Flow::Close
                                                            }
                                                            super::forward::Carried::StoreAway => Flow::Continue,
                                                            super::forward::Carried::Here => {
                                                                client.outbox.extend(refusal);
                                                                flow
                                                            }
                                                        }
                                                    } else {
                                                        flow
                                                    }
                                                }
                                            }
                                        } else {
                                            joined_here = true;
                                            client.join(token, name.as_deref()).await
                                        }
                                    }
                                }
                            }
                            Ok(ClientMessage::Hello { version }) => {
                                tracing::debug!(kind = "hello", "client message");
                                if version == crate::protocol::VERSION && hello.is_none() {
                                    hello = Some(text.as_str().to_owned());
                                }
                                client.handle_message(ClientMessage::Hello { version }).await
                            }
                            Ok(msg) => {
                                tracing::debug!(kind = msg.type_name(), "client message");
                                client.handle_message(msg).await
                            }
                            Err((err, request)) => {
                                client.reject(err, request.as_deref());
                                Flow::Continue
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    client.reject(ProtocolError::new(ErrorCode::BadMessage, "Binary frames are not used; send JSON text."), None);
                    Flow::Continue
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
                Some(Ok(Message::Close(_))) | None => break,
                // The WebSocket layer refused a frame over READ_LIMIT: say so all the same.
                Some(Err(err)) if is_too_big(&err) => too_big(&mut client, &mut close_code),
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "websocket read failed");
                    break;
                }
            },
            event = client.next_event() => client.handle_event(event).await,
        };
        // Let in with a valid token: no longer held against the address's socket cap (before
        // `joined` goes out, so whoever reads it can count on the freed slot).
        if client.is_admitted() {
            permit.admitted();
        }
        if !flush(&mut socket, &mut client).await {
            break;
        }
        if flow == Flow::Close {
            let frame = CloseFrame {
                code: close_code.unwrap_or(CLOSE_NORMAL),
                reason: "".into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            linger(&mut socket).await;
            break;
        }
    }
    client.shutdown().await;
}

/// A frame over `HARD_FRAME_LIMIT`: `too_large`, then close with 1009.
fn too_big(client: &mut Client, close_code: &mut Option<u16>) -> Flow {
    client.reject(
        ProtocolError::new(
            ErrorCode::TooLarge,
            format!("A message over {HARD_FRAME_LIMIT} bytes ends the connection."),
        ),
        None,
    );
    *close_code = Some(CLOSE_TOO_BIG);
    Flow::Close
}

/// Whether a read failed because the frame or message exceeded the WebSocket layer's limit.
/// axum hides tungstenite's error type (and its version may differ from ours), so this reads
/// the message of the error chain; tests/signalling.rs checks that the close code is 1009.
fn is_too_big(err: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("Space limit exceeded") || text.contains("too long") {
            return true;
        }
        source = e.source();
    }
    false
}

/// After our close frame, reads (and ignores) what the client still sends for a moment, so
/// closing with unread data does not reset the connection and destroy our last messages
/// (e.g. the `rate_limited` error) before the client has read them.
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

/// Writes everything the client queued. False if the socket is gone.
async fn flush(socket: &mut WebSocket, client: &mut Client) -> bool {
    for msg in client.outbox.drain(..) {
        let text = match serde_json::to_string(&msg) {
            Ok(text) => text,
            Err(err) => {
                tracing::error!(error = %err, "could not serialise a server message");
                continue;
            }
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_burst_then_rate() {
        let start = Instant::now();
        let mut r = RateLimit::new(10, 5);
        r.last = start;
        assert!((0..5).all(|_| r.allow(start)));
        assert!(!r.allow(start));
        assert!(r.allow(start + Duration::from_millis(100)));
        assert!(!r.allow(start + Duration::from_millis(100)));
    }
}
