//! The server side: turning a hyper HTTP/1.1 upgrade into an OpAMP
//! WebSocket connection, inside any hyper/tower/axum stack.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper_util::rt::TokioIo;
use opamp_proto::{AgentToServer, ServerToAgent};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::http::server::has_token;
use crate::{DEFAULT_MAX_MESSAGE_SIZE, HeaderlessFrames};

use super::conn::{
    BoxedIo, ConnSettings, DEFAULT_CLOSE_TIMEOUT, OnDemandRead, WsConnection, WsError,
};

/// A server's OpAMP WebSocket connection: sends `ServerToAgent`, receives
/// `AgentToServer`. Made by [`accept_upgrade`].
pub type WsServerConnection = WsConnection<ServerToAgent, AgentToServer>;

/// Settings for accepted WebSocket connections.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WsServerConfig {
    /// Limit for one message, received or sent, header included (WS-08,
    /// WS-09, WS-11). Default [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
    /// Bound for the closing handshake. Default 5 s.
    pub close_timeout: Duration,
    /// Legacy headerless frames (AMB-14). Default: rejected.
    pub headerless_frames: HeaderlessFrames,
}

impl Default for WsServerConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            headerless_frames: HeaderlessFrames::Reject,
        }
    }
}

impl WsServerConfig {
    crate::builder_setters! {
        /// Sets the message size limit.
        pub fn with_max_message_size(bytes: usize) => max_message_size = bytes;

        /// Sets the closing-handshake bound.
        pub fn with_close_timeout(timeout: Duration) => close_timeout = timeout;

        /// Chooses how to treat headerless legacy frames.
        pub fn with_headerless_frames(mode: HeaderlessFrames) => headerless_frames = mode;
    }
}

/// Why a request cannot be upgraded to a WebSocket. Answer it with
/// [`UpgradeError::to_response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The method is not GET.
    #[error("WebSocket upgrade requires GET, got {0}")]
    NotGet(Method),
    /// HTTP/1.0 or HTTP/2+ (only HTTP/1.1 upgrades are supported).
    #[error("WebSocket upgrade requires HTTP/1.1")]
    WrongHttpVersion,
    /// No `Upgrade: websocket` header.
    #[error("missing `Upgrade: websocket` header")]
    MissingUpgradeHeader,
    /// No `upgrade` token in the `Connection` header.
    #[error("missing `Connection: upgrade` header")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` is absent or not 13.
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is absent or not 16 base64-encoded bytes.
    #[error("missing or invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// The request cannot be upgraded: it did not come from a hyper
    /// connection served with upgrades enabled (`with_upgrades()`).
    #[error("request is not upgradable (serve the connection with upgrades enabled)")]
    NotUpgradable,
}

impl UpgradeError {
    /// The HTTP status to answer with: 426 for a wrong WebSocket version,
    /// 500 when the server stack cannot upgrade, 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A response for this error (empty body); a 426 carries
    /// `Sec-WebSocket-Version: 13` as RFC 6455 asks.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = self.status();
        if matches!(self, Self::UnsupportedVersion) {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// The rest of an accepted upgrade: resolves to the connection once hyper
/// hands over the socket, which happens after the 101 response is sent.
/// Spawn it (or await it in a task); it never completes if the response is
/// not returned to hyper.
pub struct PendingWsConnection {
    inner: Pin<Box<dyn Future<Output = Result<WsServerConnection, WsError>> + Send>>,
}

impl fmt::Debug for PendingWsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingWsConnection")
            .finish_non_exhaustive()
    }
}

impl Future for PendingWsConnection {
    type Output = Result<WsServerConnection, WsError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// Whether the request asks for a WebSocket upgrade (has
/// `Upgrade: websocket`). Requests for which this is false should be
/// treated as plain HTTP or rejected (WS-16, HTTP-04).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// Validates a WebSocket upgrade request and accepts it.
///
/// Returns the `101 Switching Protocols` response to send back (with an
/// empty body of the caller's body type) and a [`PendingWsConnection`] to
/// spawn, which yields the framed connection once hyper has switched
/// protocols. A bad request gives an [`UpgradeError`] (answer with
/// [`UpgradeError::to_response`], 400 or 426).
///
/// Authentication (CONN-05/06) and overload refusals (WS-24, 429/503 with
/// `Retry-After`) belong before this call: just return that response instead.
///
/// ```no_run
/// use http_body_util::Empty;
/// use opamp_transport::ws::server::{WsServerConfig, accept_upgrade};
///
/// async fn handle(
///     mut request: http::Request<hyper::body::Incoming>,
/// ) -> Result<http::Response<Empty<bytes::Bytes>>, std::convert::Infallible> {
///     match accept_upgrade(&mut request, WsServerConfig::default()) {
///         Ok((response, pending)) => {
///             tokio::spawn(async move {
///                 let Ok(mut connection) = pending.await else { return };
///                 while let Ok(Some(message)) = connection.recv().await {
///                     let _ = message; // handle AgentToServer
///                 }
///             });
///             Ok(response)
///         }
///         Err(error) => Ok(error.to_response()),
///     }
/// }
/// ```
pub fn accept_upgrade<ReqB, ResB: Default>(
    request: &mut Request<ReqB>,
    config: WsServerConfig,
) -> Result<(Response<ResB>, PendingWsConnection), UpgradeError> {
    let accept_key = validate(request)?;
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return Err(UpgradeError::NotUpgradable);
    }
    let on_upgrade = hyper::upgrade::on(request);

    let mut response = Response::new(ResB::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);

    let settings = ConnSettings {
        max_message_size: config.max_message_size,
        headerless: config.headerless_frames,
        close_timeout: config.close_timeout,
    };
    let inner = Box::pin(async move {
        let upgraded = on_upgrade
            .await
            .map_err(|e| WsError::UpgradeFailed(Box::new(e)))?;
        let io: BoxedIo = Box::new(OnDemandRead::new(TokioIo::new(upgraded)));
        let ws =
            WebSocketStream::from_raw_socket(io, Role::Server, Some(settings.websocket_config()))
                .await;
        Ok(WsConnection::new(ws, settings))
    });
    Ok((response, PendingWsConnection { inner }))
}

/// Checks the RFC 6455 handshake headers; returns `Sec-WebSocket-Accept`.
fn validate<B>(request: &Request<B>) -> Result<HeaderValue, UpgradeError> {
    if request.method() != Method::GET {
        return Err(UpgradeError::NotGet(request.method().clone()));
    }
    if request.version() != Version::HTTP_11 {
        return Err(UpgradeError::WrongHttpVersion);
    }
    let headers = request.headers();
    if !is_websocket_upgrade(headers) {
        return Err(UpgradeError::MissingUpgradeHeader);
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(UpgradeError::MissingConnectionUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(UpgradeError::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeError::InvalidKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| UpgradeError::InvalidKey)?;
    if decoded.len() != 16 {
        return Err(UpgradeError::InvalidKey);
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| UpgradeError::InvalidKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request() -> http::request::Builder {
        Request::builder()
            .method(Method::GET)
            .uri("/v1/opamp")
            .header(header::HOST, "h")
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn rfc_6455_sample_key_gives_sample_accept() {
        let request = upgrade_request().body(()).unwrap();
        assert_eq!(validate(&request).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn bad_upgrade_requests_are_typed() {
        type Spoil = fn(&mut Request<()>);
        let cases: [(&str, Spoil, UpgradeError); 7] = [
            (
                "POST",
                |request| *request.method_mut() = Method::POST,
                UpgradeError::NotGet(Method::POST),
            ),
            (
                "HTTP/1.0",
                |request| *request.version_mut() = Version::HTTP_10,
                UpgradeError::WrongHttpVersion,
            ),
            (
                "a key of 5 bytes",
                |request| {
                    request.headers_mut().insert(
                        header::SEC_WEBSOCKET_KEY,
                        HeaderValue::from_static("c2hvcnQ="),
                    );
                },
                UpgradeError::InvalidKey,
            ),
            (
                "no key",
                |request| {
                    request.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
                },
                UpgradeError::InvalidKey,
            ),
            (
                "no Upgrade header",
                |request| {
                    request.headers_mut().remove(header::UPGRADE);
                },
                UpgradeError::MissingUpgradeHeader,
            ),
            (
                "Connection without upgrade",
                |request| {
                    request
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
                },
                UpgradeError::MissingConnectionUpgrade,
            ),
            (
                "WebSocket version 8",
                |request| {
                    request
                        .headers_mut()
                        .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
                },
                UpgradeError::UnsupportedVersion,
            ),
        ];
        for (case, spoil, expected) in cases {
            let mut request = upgrade_request().body(()).unwrap();
            spoil(&mut request);
            assert_eq!(validate(&request).unwrap_err(), expected, "{case}");
        }
        let response: Response<()> = UpgradeError::UnsupportedVersion.to_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }

    #[test]
    fn request_without_hyper_upgrade_extension_is_not_upgradable() {
        let mut request = upgrade_request().body(()).unwrap();
        let error = accept_upgrade::<(), ()>(&mut request, WsServerConfig::default()).unwrap_err();
        assert_eq!(error, UpgradeError::NotUpgradable);
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn ws_16_upgrade_detection() {
        let request = upgrade_request().body(()).unwrap();
        assert!(is_websocket_upgrade(request.headers()));
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&headers));
        assert!(!is_websocket_upgrade(&HeaderMap::new()));
    }
}
