//! The application's hooks into the server.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use opamp_proto::{AgentToServer, InstanceUidError, ServerToAgent};

use crate::connection::{Connection, PeerInfo, TransportKind};

/// Hooks the server calls as agents connect, talk and leave. Every method
/// has a default, so implement only what you need.
///
/// # Ordering
///
/// For one [`Connection`] the calls never overlap and come in this order:
/// `on_connected` once, then `on_message` once per `AgentToServer` in
/// arrival order (each awaited before the next message is processed), then
/// `on_disconnected` once. `on_read_error` may come between messages. Calls
/// for different connections run concurrently, so keep shared state behind
/// locks.
///
/// For a WebSocket, `on_connected` runs right after the upgrade. For plain
/// HTTP the connection is the agent's session: `on_connected` runs before
/// the first message of the session, and the session ends (with
/// `on_disconnected`) on `agent_disconnect`, after a silence longer than the
/// registry's stale timeout, or on [`Connection::disconnect`].
///
/// `on_connecting` runs for every WebSocket upgrade request and every plain
/// HTTP request, before anything is read from the body: it is the place for
/// authentication (CONN-05/06) and admission control.
///
/// The registry's bookkeeping for a message runs before `on_message`, so
/// [`Registry::agent`](crate::Registry::agent) already shows the merged
/// status of the agent.
pub trait Callbacks: Send + Sync + 'static {
    /// Decides whether to accept a request (WebSocket upgrade or plain-HTTP
    /// exchange). Reject with [`Refusal::unauthorized`] when authentication
    /// fails (CONN-06), or [`Refusal::too_many_requests`] /
    /// [`Refusal::service_unavailable`] with `Retry-After` to throttle
    /// (WS-24, HTTP-21).
    fn on_connecting(
        &self,
        request: &ConnectRequest<'_>,
    ) -> impl Future<Output = ConnectDecision> + Send {
        let _ = request;
        async { ConnectDecision::Accept }
    }

    /// A connection (or plain-HTTP session) started.
    fn on_connected(&self, connection: &Connection) {
        let _ = connection;
    }

    /// An `AgentToServer` arrived. Return a `ServerToAgent` to send back; it
    /// is merged over the registry's own reply (flags are combined, fields
    /// you set win), `instance_uid` is filled in (UID-06), offers the agent
    /// has not announced it accepts are removed (CAP-09), and a `command`
    /// goes out alone (CMD-02). Every message gets a reply (STS-04), so
    /// `None` still sends the registry's reply or a bare acknowledgement.
    ///
    /// To throttle, return [`unavailable_response`](crate::unavailable_response)
    /// (WS-22).
    fn on_message(
        &self,
        connection: &Connection,
        message: &AgentToServer,
    ) -> impl Future<Output = Option<ServerToAgent>> + Send {
        let _ = (connection, message);
        async { None }
    }

    /// A connection (or plain-HTTP session) ended.
    fn on_disconnected(&self, connection: &Connection, reason: &DisconnectReason) {
        let _ = (connection, reason);
    }

    /// A message from an agent could not be read. `connection` is `None` for
    /// plain-HTTP requests that fail before the agent is known.
    fn on_read_error(
        &self,
        peer: &PeerInfo,
        connection: Option<&Connection>,
        error: &AgentMessageError,
    ) {
        let _ = (peer, connection, error);
    }
}

/// Callbacks that do nothing: the registry alone drives the protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCallbacks;

impl Callbacks for NoCallbacks {}

/// The head of a request asking to become an OpAMP connection.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnectRequest<'a> {
    /// Method, URI, headers (for example `Authorization`) and extensions.
    pub parts: &'a http::request::Parts,
    /// Peer address and TLS client certificates, when known.
    pub peer: &'a PeerInfo,
    /// What the request asks for.
    pub transport: TransportKind,
}

/// The answer to [`Callbacks::on_connecting`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectDecision {
    /// Go ahead.
    Accept,
    /// Answer with this HTTP response instead.
    Refuse(Refusal),
}

/// An HTTP response refusing a connection.
#[derive(Debug)]
pub struct Refusal {
    response: Response<Full<Bytes>>,
}

impl Refusal {
    /// `401 Unauthorized` with an optional `WWW-Authenticate` challenge
    /// (CONN-06, SEC-01).
    pub fn unauthorized(challenge: Option<HeaderValue>) -> Self {
        Self {
            response: opamp_transport::http::server::unauthorized(challenge),
        }
    }

    /// `429 Too Many Requests`, with `Retry-After` when given (WS-24, HTTP-21).
    pub fn too_many_requests(retry_after: Option<Duration>) -> Self {
        Self {
            response: opamp_transport::http::server::too_many_requests(retry_after),
        }
    }

    /// `503 Service Unavailable`, with `Retry-After` when given (WS-24, HTTP-21).
    pub fn service_unavailable(retry_after: Option<Duration>) -> Self {
        Self {
            response: opamp_transport::http::server::service_unavailable(retry_after),
        }
    }

    /// Any status with an empty body.
    pub fn status(status: StatusCode) -> Self {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Self { response }
    }

    /// A fully custom response.
    pub fn from_response(response: Response<Full<Bytes>>) -> Self {
        Self { response }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.response.headers_mut().append(name, value);
        self
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        self.response
    }
}

pub use crate::vocab::DisconnectReason;

/// A message from an agent that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentMessageError {
    /// A WebSocket message with a bad header, an undecodable body, or over
    /// the size limit.
    #[error("bad WebSocket message: {0}")]
    Frame(#[from] opamp_transport::FrameError),
    /// A WebSocket text frame; OpAMP uses binary messages only (WS-01).
    #[error("WebSocket text frame; OpAMP messages are binary")]
    TextFrame,
    /// A plain-HTTP body that could not be read or decoded.
    #[error("bad plain-HTTP request: {0}")]
    Http(#[from] opamp_transport::http::server::ReadError),
    /// `instance_uid` is not 16 bytes (UID-03).
    #[error("invalid instance_uid: {0}")]
    InstanceUid(#[from] InstanceUidError),
}
