//! The signalling socket, typed: `ClientMessage` out, `ServerMessage` in (docs/protocol.md).
//! The server pings every `signalling.ping_interval_ms`; tungstenite answers each ping with a
//! pong by itself while the socket is read, so a client must keep reading (`recv`) for as
//! long as it stays joined. Knows nothing of peer connections.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{ClientMessage, ServerMessage, VERSION};
use crate::ClientError;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One signalling connection.
pub struct Signalling {
    ws: Ws,
}

impl Signalling {
    /// Opens the WebSocket (`ws://host/ws` or `wss://…`).
    pub async fn connect(url: &str) -> Result<Signalling, ClientError> {
        Self::connect_with(url, &[]).await
    }

    /// Like `connect`, with extra handshake headers (e.g. `X-Forwarded-For` from a proxy).
    /// A refused upgrade is `ClientError::Refused` with the HTTP status.
    pub async fn connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Signalling, ClientError> {
        let mut req = url.into_client_request()?;
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
            let value = v
                .parse()
                .map_err(|e: tungstenite::http::header::InvalidHeaderValue| {
                    tungstenite::Error::HttpFormat(e.into())
                })?;
            req.headers_mut().insert(name, value);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Signalling { ws }),
            Err(tungstenite::Error::Http(resp)) => {
                Err(ClientError::Refused(resp.status().as_u16()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        send(&mut self.ws, msg).await
    }

    /// Sends a text frame as it is: for tests of what the server does with malformed input.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::text(text.into())).await?)
    }

    /// Sends a binary frame (the protocol has none: the server answers with an error).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        Ok(self.ws.send(Message::binary(bytes)).await?)
    }

    /// `hello` and `join`, sent back to back; the server answers `welcome`, then `joined`,
    /// `lobby` or `error` (read them with `recv`, or use `join`).
    pub async fn hello_join(&mut self, token: &str, name: Option<&str>) -> Result<(), ClientError> {
        self.send(&ClientMessage::Hello { version: VERSION })
            .await?;
        self.send(&join(token, name)).await
    }

    /// `hello` + `join`, then waits for the outcome: `joined` or `lobby`, or the server's
    /// `error` as `ClientError::Server`. Messages before it (`welcome`) are skipped.
    pub async fn join(
        &mut self,
        token: &str,
        name: Option<&str>,
    ) -> Result<ServerMessage, ClientError> {
        self.hello_join(token, name).await?;
        loop {
            match self.recv().await?.ok_or(ClientError::Closed("joined"))? {
                msg @ (ServerMessage::Joined { .. } | ServerMessage::Lobby { .. }) => {
                    return Ok(msg)
                }
                ServerMessage::Error {
                    code,
                    message,
                    request,
                } => {
                    return Err(ClientError::Server {
                        request: request.unwrap_or_default(),
                        code,
                        message,
                    })
                }
                _ => {}
            }
        }
    }

    /// The next message; None once the socket has closed.
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        recv(&mut self.ws).await
    }

    /// The next text frame as it came; None once the socket has closed.
    pub async fn recv_text(&mut self) -> Result<Option<String>, ClientError> {
        recv_text(&mut self.ws).await
    }

    /// Reads until the server closes the socket: the close frame's code, if it had one.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    }

    /// A close frame, then the socket is dropped.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Two halves, for a loop that reads and sends from different `select!` branches.
    pub fn split(self) -> (SignallingTx, SignallingRx) {
        let (sink, stream) = self.ws.split();
        (SignallingTx { sink }, SignallingRx { stream })
    }
}

/// The sending half of `Signalling::split`.
pub struct SignallingTx {
    sink: SplitSink<Ws, Message>,
}

impl SignallingTx {
    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        send(&mut self.sink, msg).await
    }

    /// Sends a text frame as it is (tests of malformed input).
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        Ok(self.sink.send(Message::text(text.into())).await?)
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

/// The receiving half of `Signalling::split`. Reading it is what answers the server's pings.
pub struct SignallingRx {
    stream: SplitStream<Ws>,
}

impl SignallingRx {
    /// The next message; None once the socket has closed. Cancel-safe (a `select!` branch).
    pub async fn recv(&mut self) -> Result<Option<ServerMessage>, ClientError> {
        recv(&mut self.stream).await
    }

    /// The next text frame as it came; None once the socket has closed. Cancel-safe.
    pub async fn recv_text(&mut self) -> Result<Option<String>, ClientError> {
        recv_text(&mut self.stream).await
    }
}

fn join(token: &str, name: Option<&str>) -> ClientMessage {
    ClientMessage::Join {
        token: token.to_owned(),
        name: name.map(str::to_owned),
    }
}

async fn send(
    sink: &mut (impl SinkExt<Message, Error = tungstenite::Error> + Unpin),
    msg: &ClientMessage,
) -> Result<(), ClientError> {
    let text = serde_json::to_string(msg)?;
    Ok(sink.send(Message::text(text)).await?)
}

async fn recv_text(
    stream: &mut (impl StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin),
) -> Result<Option<String>, ClientError> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(Some(text.as_str().to_owned())),
            // Pings are answered by tungstenite itself; pongs and binary frames carry nothing.
            Some(Ok(
                Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_),
            )) => {}
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                return Ok(None)
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn recv(
    stream: &mut (impl StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin),
) -> Result<Option<ServerMessage>, ClientError> {
    match recv_text(stream).await? {
        Some(text) => Ok(Some(serde_json::from_str(&text)?)),
        None => Ok(None),
    }
}
