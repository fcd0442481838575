//! WebSocket connections of simulated agents.
//!
//! By default an agent connects with opamp-transport's
//! [`WsClientConnection::connect`]. With `--source-addrs` the TCP socket must
//! be bound to a local address before connecting, which the transport's
//! connector does not offer, so the agent opens the socket itself and runs
//! the upgrade with tokio-tungstenite, framing messages with
//! opamp-transport's [`encode_frame`] / [`decode_frame`]. Both read through a
//! 4 KiB buffer, so an idle agent costs little memory on this side too.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use opamp_proto::{AgentToServer, ServerToAgent};
use opamp_transport::ws::WsError;
use opamp_transport::ws::client::WsClientConnection;
use opamp_transport::{
    ClientOptions, ConnectError, DEFAULT_MAX_MESSAGE_SIZE, HeaderlessFrames, decode_frame,
    encode_frame,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use url::Url;

/// How long a closing handshake may take when the run ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connect failed: a short label for the error table, and the
/// server's retry hint if it gave one.
#[derive(Debug)]
pub(crate) struct ConnectFailure {
    pub(crate) kind: &'static str,
    pub(crate) retry_after: Option<Duration>,
}

impl ConnectFailure {
    fn kind(kind: &'static str) -> Self {
        Self {
            kind,
            retry_after: None,
        }
    }
}

/// Opens agent connections; one per run, shared by all agents.
pub(crate) enum WsConnector {
    Transport(Arc<ClientOptions>),
    Bound(BoundConnector),
}

pub(crate) struct BoundConnector {
    url: Url,
    target: SocketAddr,
    sources: Vec<IpAddr>,
    connect_timeout: Duration,
}

impl WsConnector {
    pub(crate) fn transport(url: Url, connect_timeout: Duration) -> Self {
        Self::Transport(Arc::new(
            ClientOptions::new(url).with_connect_timeout(connect_timeout),
        ))
    }

    /// A connector binding each socket to `sources[agent % len]`.
    pub(crate) async fn bound(
        url: Url,
        sources: Vec<IpAddr>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        if url.scheme() != "ws" {
            return Err("--source-addrs works with ws:// only".into());
        }
        let host = url.host_str().ok_or("--url has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let target = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| format!("resolving {host}: {error}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        Ok(Self::Bound(BoundConnector {
            url,
            target,
            sources,
            connect_timeout,
        }))
    }

    pub(crate) async fn connect(&self, agent: usize) -> Result<WsLink, ConnectFailure> {
        match self {
            Self::Transport(options) => WsClientConnection::connect(options)
                .await
                .map(WsLink::Transport)
                .map_err(|error| ConnectFailure {
                    kind: connect_error_kind(&error),
                    retry_after: error.retry_after(),
                }),
            Self::Bound(bound) => {
                let attempt = bound.connect(agent);
                match tokio::time::timeout(bound.connect_timeout, attempt).await {
                    Ok(result) => result.map(|ws| WsLink::Raw(Box::new(ws))),
                    Err(_) => Err(ConnectFailure::kind("connect_timeout")),
                }
            }
        }
    }
}

impl BoundConnector {
    async fn connect(&self, agent: usize) -> Result<WebSocketStream<TcpStream>, ConnectFailure> {
        let source = self.sources[agent % self.sources.len()];
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|error| ConnectFailure::kind(io_error_kind(&error)))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|error| ConnectFailure::kind(io_error_kind(&error)))?;
        let stream = socket
            .connect(self.target)
            .await
            .map_err(|error| ConnectFailure::kind(io_error_kind(&error)))?;
        // Small frames, sent at once; no Nagle delay on heartbeats.
        let _ = stream.set_nodelay(true);
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| ConnectFailure::kind("invalid_url"))?;
        match tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())).await
        {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => Err(ConnectFailure {
                kind: status_kind(response.status().as_u16()),
                retry_after: response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|value| {
                        opamp_transport::parse_retry_after(value, std::time::SystemTime::now())
                    }),
            }),
            Err(tungstenite::Error::Io(error)) => Err(ConnectFailure::kind(io_error_kind(&error))),
            Err(_) => Err(ConnectFailure::kind("handshake")),
        }
    }
}

/// The same limits the transport uses: a 4 KiB read buffer, no write
/// batching.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(DEFAULT_MAX_MESSAGE_SIZE))
        .max_frame_size(Some(DEFAULT_MAX_MESSAGE_SIZE))
}

/// One agent's open WebSocket.
pub(crate) enum WsLink {
    Transport(WsClientConnection),
    Raw(Box<WebSocketStream<TcpStream>>),
}

/// A receive failure: a label and whether the connection is gone.
#[derive(Debug)]
pub(crate) struct RecvFailure {
    pub(crate) kind: &'static str,
    pub(crate) fatal: bool,
}

impl WsLink {
    pub(crate) async fn send(&mut self, message: &AgentToServer) -> Result<(), &'static str> {
        match self {
            Self::Transport(connection) => connection
                .send(message)
                .await
                .map_err(|error| ws_error_kind(&error)),
            Self::Raw(ws) => {
                let frame = encode_frame(message, DEFAULT_MAX_MESSAGE_SIZE)
                    .map_err(|_| "outgoing_too_large")?;
                ws.send(WsMessage::Binary(frame))
                    .await
                    .map_err(|error| tungstenite_error_kind(&error))
            }
        }
    }

    /// The next message; `Ok(None)` when the server closed the connection.
    /// Cancel-safe: nothing is lost if the future is dropped while waiting.
    pub(crate) async fn recv(&mut self) -> Result<Option<ServerToAgent>, RecvFailure> {
        match self {
            Self::Transport(connection) => connection.recv().await.map_err(|error| RecvFailure {
                kind: ws_error_kind(&error),
                fatal: error.is_fatal(),
            }),
            Self::Raw(ws) => loop {
                let fatal = |kind| RecvFailure { kind, fatal: true };
                match ws.next().await {
                    None => return Ok(None),
                    Some(Ok(WsMessage::Binary(data))) => {
                        return decode_frame(
                            data,
                            DEFAULT_MAX_MESSAGE_SIZE,
                            HeaderlessFrames::Reject,
                        )
                        .map(Some)
                        .map_err(|_| RecvFailure {
                            kind: "malformed_frame",
                            fatal: false,
                        });
                    }
                    Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Ok(WsMessage::Text(_))) => return Err(fatal("text_frame")),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(fatal(tungstenite_error_kind(&error))),
                }
            },
        }
    }

    /// Closes politely, bounded in time.
    pub(crate) async fn close(self) {
        let closing = async {
            match self {
                Self::Transport(connection) => {
                    let _ = connection.close().await;
                }
                Self::Raw(mut ws) => {
                    let _ = ws.as_mut().close(None).await;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

fn status_kind(status: u16) -> &'static str {
    match status {
        401 => "refused_401",
        429 => "refused_429",
        503 => "refused_503",
        400..=499 => "refused_4xx",
        _ => "refused_other",
    }
}

pub(crate) fn io_error_kind(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection_refused",
        io::ErrorKind::ConnectionReset => "connection_reset",
        io::ErrorKind::ConnectionAborted => "connection_aborted",
        io::ErrorKind::BrokenPipe => "broken_pipe",
        io::ErrorKind::TimedOut => "timed_out",
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => "no_local_port",
        io::ErrorKind::UnexpectedEof => "unexpected_eof",
        _ if error.raw_os_error() == Some(24) => "too_many_open_files",
        _ => "io_other",
    }
}

pub(crate) fn connect_error_kind(error: &ConnectError) -> &'static str {
    match error {
        ConnectError::Io(error) => io_error_kind(error),
        ConnectError::Timeout(_) => "connect_timeout",
        ConnectError::Unauthorized { .. } => "refused_401",
        ConnectError::Refused { status, .. } => status_kind(status.as_u16()),
        ConnectError::Handshake(_) => "handshake",
        _ => "connect_other",
    }
}

fn ws_error_kind(error: &WsError) -> &'static str {
    match error {
        WsError::Closed => "closed",
        WsError::ConnectionReset => "connection_reset",
        WsError::Io(error) => io_error_kind(error),
        WsError::Frame(_) => "malformed_frame",
        WsError::IncomingTooLarge { .. } => "incoming_too_large",
        WsError::OutgoingTooLarge { .. } => "outgoing_too_large",
        WsError::TextFrame => "text_frame",
        WsError::Protocol(_) => "ws_protocol",
        _ => "ws_other",
    }
}

fn tungstenite_error_kind(error: &tungstenite::Error) -> &'static str {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed",
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "connection_reset"
        }
        tungstenite::Error::Io(error) => io_error_kind(error),
        tungstenite::Error::Capacity(_) => "incoming_too_large",
        tungstenite::Error::Protocol(_) => "ws_protocol",
        _ => "ws_other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_short_stable_labels() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(io_error_kind(&refused), "connection_refused");
        assert_eq!(
            io_error_kind(&io::Error::from_raw_os_error(24)),
            "too_many_open_files"
        );
        assert_eq!(
            connect_error_kind(&ConnectError::Refused {
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                retry_after: None,
                headers: http::HeaderMap::new(),
            }),
            "refused_503"
        );
        assert_eq!(ws_error_kind(&WsError::ConnectionReset), "connection_reset");
        assert_eq!(status_kind(404), "refused_4xx");
    }

    #[tokio::test]
    async fn bound_connector_needs_plain_ws() {
        let url = Url::parse("wss://127.0.0.1:1/v1/opamp").unwrap();
        let sources = vec![IpAddr::from([127, 0, 0, 1])];
        assert!(
            WsConnector::bound(url, sources, Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
