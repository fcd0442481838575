//! The bytes on the wire for OpAMP, both transports, both sides.
//!
//! `opamp-client` and `opamp-server` deal only in `AgentToServer` /
//! `ServerToAgent` values and typed events; everything about framing, HTTP,
//! compression, TLS, proxies, size limits and retry timing lives here. Every
//! failure caused by the peer is a typed, `#[non_exhaustive]` error
//! ([`FrameError`], [`ws::WsError`], [`ConnectError`],
//! [`http::client::HttpError`], [`http::server::ReadError`],
//! [`ws::server::UpgradeError`], [`TlsError`]) or a close code / HTTP
//! status, never a panic; limits apply before memory is spent.
//!
//! # Layout
//!
//! The crate is arranged by transport, then by role, as hyper is:
//!
//! | module | agent side (feature `client`) | server side (feature `server`) |
//! |---|---|---|
//! | [`ws`]: connection, errors, close codes | [`ws::client::WsClientConnection::connect`] | [`ws::server::accept_upgrade`] → [`ws::server::WsServerConnection`] |
//! | [`http`]: media type, uid header, gzip | [`http::client::HttpPoster`] | [`http::server::classify`], [`http::server::read_agent_message`], [`http::server::response_for`] |
//! | root: TLS | [`ClientTlsConfig`] | [`ServerTlsConfig`] |
//! | root: options, limits | [`ClientOptions`], [`ConnectError`] | [`ws::server::WsServerConfig`], `max_size` arguments |
//! | root: retry | [`ExponentialBackoff`], [`RetryPolicy`], [`parse_retry_after`] | [`http::server::too_many_requests`], [`http::server::service_unavailable`] |
//!
//! The root holds only what both roles or both transports share: the frame
//! codec ([`encode_frame`], [`decode_frame`], [`FrameError`],
//! [`HeaderlessFrames`], [`DEFAULT_MAX_MESSAGE_SIZE`]), the TLS config types
//! and [`TlsError`], the retry policy, and the [`ClientOptions`] both client
//! transports connect with.
//!
//! # Features
//!
//! - `client` (default): the agent side. [`ws::client`], [`http::client`],
//!   [`ClientOptions`] with proxies and redirects, [`ClientTlsConfig`] with
//!   the system (`rustls-native-certs`) and bundled (`webpki-roots`) root
//!   stores, and hyper's HTTP/1 client.
//! - `server` (default): the server side. [`ws::server`], [`http::server`]
//!   and [`ServerTlsConfig`]. It uses hyper's upgrade handle only; the
//!   embedder brings the hyper server that serves connections.
//! - `tls-ring` (default): rustls with the *ring* crypto provider.
//! - `tls-aws-lc`: rustls with *aws-lc-rs*. With both, ring is used. With
//!   neither, `ws://` and `http://` work and TLS configs fail to build with
//!   [`TlsError::NoCryptoProvider`]. No process-wide default provider is
//!   ever installed or relied on.
//!
//! An agent depends on this crate with `default-features = false,
//! features = ["client", "tls-ring"]` and compiles no server code; a server
//! uses `features = ["server", "tls-ring"]` and compiles no HTTP client,
//! proxy tunnel, URL parser or root store. Without either role the crate is
//! the frame codec, the [`ws::WsConnection`] type and the retry policy.
//!
//! # Example
//!
//! The WebSocket codec on its own: one `0x00` header byte, then protobuf.
//!
//! ```
//! use opamp_proto::{AgentToServer, InstanceUid};
//! use opamp_transport::{FrameError, HeaderlessFrames, decode_frame, encode_frame};
//!
//! let message = AgentToServer { instance_uid: InstanceUid::new_v7().to_bytes(), ..Default::default() };
//! let frame = encode_frame(&message, opamp_transport::DEFAULT_MAX_MESSAGE_SIZE)?;
//! assert_eq!(frame[0], 0x00);
//! let back: AgentToServer = decode_frame(frame.clone(), 1 << 20, HeaderlessFrames::Reject)?;
//! assert_eq!(back, message);
//!
//! // A header other than 0 is malformed (WS-04).
//! let mut bad = frame.to_vec();
//! bad[0] = 0x01;
//! assert_eq!(
//!     decode_frame::<AgentToServer>(bad.into(), 1 << 20, HeaderlessFrames::Reject),
//!     Err(FrameError::NonZeroHeader(1))
//! );
//! # Ok::<(), FrameError>(())
//! ```
//!
//! An agent's WebSocket connection, with the imports each role uses:
//!
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use opamp_proto::{AgentToServer, InstanceUid};
//! use opamp_transport::ws::client::WsClientConnection;
//! use opamp_transport::{ClientOptions, ClientTlsConfig, SystemRoots};
//!
//! let options = ClientOptions::new("wss://opamp.example.com/v1/opamp".parse()?)
//!     .with_tls(ClientTlsConfig::new().with_system_roots(SystemRoots::WebPki));
//! let mut connection = WsClientConnection::connect(&options).await?;
//! let hello = AgentToServer { instance_uid: InstanceUid::new_v7().to_bytes(), ..Default::default() };
//! connection.send(&hello).await?;
//! let reply = connection.recv().await?;
//! # let _ = reply; Ok(()) }
//! ```
//!
//! # WebSocket
//!
//! Each OpAMP message travels as one **binary** WebSocket message: a varint
//! header (always `0`, so one `0x00` byte) followed by the protobuf bytes
//! (WS-01..07). [`encode_frame`] / [`decode_frame`] are the pure codec:
//! a header other than the single byte `0x00` (non-zero, overlong, truncated
//! or longer than 10 bytes) is [`FrameError`] (WS-04), empty data is a valid
//! empty message (WS-06), and the size limit counts header + data (WS-08).
//! Legacy frames without a header (AMB-14) are rejected by default and can be
//! accepted with [`HeaderlessFrames::Accept`] /
//! [`ClientOptions::with_accept_headerless_frames`]: detection uses the first
//! byte, since a protobuf message never starts with `0x00`.
//!
//! **Agent side.** [`WsClientConnection::connect`] takes [`ClientOptions`]
//! (shared with the plain-HTTP client): `ws://`/`wss://` (or `http(s)://`,
//! mapped), static headers plus a [`HeaderHook`] called on every connect and
//! redirect hop (auth tokens), [`ClientTlsConfig`] (custom root CAs, system
//! roots, client certificate for mTLS, an explicit insecure mode), an HTTP
//! `CONNECT` [`ProxyConfig`], a connect timeout, and 3xx redirects up to
//! `max_redirects` (loops and TLS→plaintext downgrades are refused). A
//! refused upgrade is a typed [`ConnectError`]: `Unauthorized` for 401,
//! `Refused { status, retry_after, .. }` otherwise, with `Retry-After` parsed
//! for 429/503 (WS-24).
//!
//! **Server side.** [`accept_upgrade`] validates a hyper request (GET,
//! `Upgrade: websocket`, `Connection: upgrade`, version 13, a 16-byte key;
//! otherwise [`UpgradeError`] → 400/426) and returns the `101` response plus a
//! [`PendingWsConnection`] that resolves to a [`WsServerConnection`] once
//! hyper switches protocols (`hyper::upgrade::on`), so it fits any
//! hyper/tower/axum stack whose connections are served `with_upgrades()`.
//! Authenticate (401) or refuse for overload (429/503 + `Retry-After`) before
//! calling it.
//!
//! **Connections.** Both roles are a [`WsConnection`]: `send(&msg)`,
//! `recv() -> Result<Option<msg>, WsError>` (`None` = closed cleanly),
//! `close()` / `close_with(code, reason)`, and `split()` into a cloneable
//! [`WsSender`] and a [`WsReceiver`] for a full-duplex driver task
//! (`reunite` joins them back). Limits default to 64 MiB
//! ([`DEFAULT_MAX_MESSAGE_SIZE`]) and are enforced from the frame header
//! before buffering: an oversize incoming message closes with 1009 and gives
//! [`WsError::IncomingTooLarge`] (WS-09/10); an oversize outgoing one is not
//! sent, [`WsError::OutgoingTooLarge`], connection intact (WS-11/12). Text
//! frames close with 1003 ([`WsError::TextFrame`]); malformed binary messages
//! give [`WsError::Frame`] and leave the connection open
//! ([`WsError::is_fatal`]). Pings are answered while a task is receiving.
//! Closing follows RFC 6455 (WS-17/18): send Close, wait for the peer's Close
//! for at most [`DEFAULT_CLOSE_TIMEOUT`] (5 s, adjustable), then drop the
//! socket. An agent sends its `agent_disconnect` message first (WS-17). Each
//! connection reads through a 4 KiB buffer so idle connections stay cheap.
//!
//! **TLS.** rustls with the crypto provider picked by features (`tls-ring`,
//! preferred, or `tls-aws-lc`), never the process default; without either,
//! building a TLS config fails with [`TlsError::NoCryptoProvider`] and plain
//! `ws://`/`http://` still work. [`ServerTlsConfig`] builds the server-side
//! `rustls::ServerConfig` (ALPN `http/1.1`, optional/required client
//! certificates via [`ClientAuth`]) for a `tokio_rustls::TlsAcceptor`.
//!
//! # Plain HTTP
//!
//! OpAMP's plain-HTTP transport is one `POST` per `AgentToServer`, answered by
//! one `ServerToAgent` (HTTP-01, HTTP-09). Both sides live here.
//!
//! **Client:** [`HttpPoster`] posts on a pooled hyper-util client whose
//! connector is the WebSocket client's own (`ClientOptions`: proxy, TLS, root
//! CAs, mTLS, timeouts), so the two transports connect identically. Each
//! request carries `Content-Type: application/x-protobuf`,
//! `OpAMP-Instance-UID` in canonical UUID form, the static headers and the
//! header hook's output (run per request and per redirect hop), and
//! `Accept-Encoding: gzip`; gzipped request bodies are opt-in
//! ([`HttpPoster::with_gzip_requests`]). `max_message_size` is checked on the
//! request before compression (not sent if over, HTTP-20) and on the response
//! after decompression, so a gzip bomb costs no more than the limit
//! (HTTP-18). Failures are typed as [`HttpError`]: `RetryLater` (429/503 with
//! the parsed `Retry-After`, delta-seconds or HTTP-date), `Unauthorized`,
//! `PayloadTooLarge` (413: [`HttpError::is_retryable`] is false, HTTP-17),
//! `Status`, `Timeout`, `Connect`, `Transport`, `Decode`, ... Only 200 is
//! success. [`HttpPoster::download`] is a streaming `GET` for package files
//! that sends only the offered headers.
//!
//! **Server:** helpers that fit any hyper / tower / axum stack.
//! [`classify`] routes a request: `POST` with `Content-Type:
//! application/x-protobuf` (parameters ignored) is plain HTTP, a `GET`
//! upgrade is WebSocket, anything else gets a prompt 400/405/415
//! (HTTP-04, WS-16). [`read_agent_message`] reads the body with gzip
//! support, the limit after decompression (413), a whole-body read timeout
//! (408), and 400 for empty or undecodable bodies; every [`ReadError`] maps
//! to its status. [`response_for`] builds the reply with `Content-Type:
//! application/x-protobuf`, gzipped only when `Accept-Encoding` allows it
//! (q-values and `*`; never `Content-Encoding: identity`), after checking the
//! limit before compression (HTTP-19). [`too_many_requests`],
//! [`service_unavailable`] and [`unauthorized`] build refusals, also for
//! WebSocket upgrades (WS-24).
//!
//! ```no_run
//! # #[cfg(feature = "server")]
//! # mod example {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use opamp_proto::ServerToAgent;
//! use opamp_transport::TransportKind;
//! use opamp_transport::http::server::{RequestKind, classify, read_agent_message, response_for};
//!
//! const LIMIT: usize = opamp_transport::DEFAULT_MAX_MESSAGE_SIZE;
//!
//! async fn handle(request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
//!     match classify(&request) {
//!         RequestKind::Opamp(TransportKind::PlainHttp) => {}
//!         RequestKind::Reject(rejection) => return rejection.to_response(),
//!         _ => todo!("a WebSocket upgrade: hand over to the WebSocket acceptor"),
//!     }
//!     let (parts, body) = request.into_parts();
//!     let read = read_agent_message(body, &parts.headers, LIMIT, Duration::from_secs(30));
//!     let message = match read.await {
//!         Ok(message) => message,
//!         Err(error) => return error.to_response(), // 400, 408, 413 or 415
//!     };
//!     let reply = ServerToAgent { instance_uid: message.instance_uid, ..Default::default() };
//!     response_for(&reply, &parts.headers, LIMIT)
//!         .unwrap_or_else(|too_large| too_large.to_response()) // 500, body not sent
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! # Retries
//!
//! [`RetryPolicy`] decides the wait before the next connect or request
//! attempt; [`RetryPolicyFactory`] makes one per connection, so embedders
//! can plug in their own. The default, [`ExponentialBackoff`], uses full
//! jitter: attempt *n* waits a uniform random time in
//! `[0, min(60 s, 1 s × 2ⁿ))` (CONN-03). A server hint, from `Retry-After`
//! ([`HttpError::retry_after`], `ConnectError::retry_after`) or from
//! `retry_info` of an UNAVAILABLE error response ([`retry_info_hint`]),
//! replaces the computed delay, capped at one hour (CONN-04, WS-23).
//! `reset()` after a success. The jitter source is injectable for
//! deterministic tests.
//!
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use opamp_proto::{AgentToServer, InstanceUid};
//! use opamp_transport::http::client::HttpPoster;
//! use opamp_transport::{ClientOptions, ExponentialBackoff, RetryPolicy};
//!
//! let uid = InstanceUid::new_v7();
//! let options = ClientOptions::new("https://opamp.example.com/v1/opamp".parse()?);
//! let poster = HttpPoster::new(options)?;
//! let mut backoff = ExponentialBackoff::new();
//! let poll = AgentToServer { instance_uid: uid.to_bytes(), ..Default::default() };
//! let reply = loop {
//!     match poster.exchange(uid, &poll).await {
//!         Ok(reply) => break reply,
//!         Err(error) if error.is_retryable() => {
//!             tokio::time::sleep(backoff.next_delay(error.retry_after())).await;
//!         }
//!         Err(error) => return Err(error.into()),
//!     }
//! };
//! backoff.reset();
//! # let _ = reply; Ok(()) }
//! ```
//!
//! [`WsClientConnection::connect`]: ws::client::WsClientConnection::connect
//! [`accept_upgrade`]: ws::server::accept_upgrade
//! [`UpgradeError`]: ws::server::UpgradeError
//! [`PendingWsConnection`]: ws::server::PendingWsConnection
//! [`WsServerConnection`]: ws::server::WsServerConnection
//! [`WsConnection`]: ws::WsConnection
//! [`WsSender`]: ws::WsSender
//! [`WsReceiver`]: ws::WsReceiver
//! [`WsError::IncomingTooLarge`]: ws::WsError::IncomingTooLarge
//! [`WsError::OutgoingTooLarge`]: ws::WsError::OutgoingTooLarge
//! [`WsError::TextFrame`]: ws::WsError::TextFrame
//! [`WsError::Frame`]: ws::WsError::Frame
//! [`WsError::is_fatal`]: ws::WsError::is_fatal
//! [`DEFAULT_CLOSE_TIMEOUT`]: ws::DEFAULT_CLOSE_TIMEOUT
//! [`HttpPoster`]: http::client::HttpPoster
//! [`HttpPoster::with_gzip_requests`]: http::client::HttpPoster::with_gzip_requests
//! [`HttpError`]: http::client::HttpError
//! [`HttpError::is_retryable`]: http::client::HttpError::is_retryable
//! [`HttpPoster::download`]: http::client::HttpPoster::download
//! [`classify`]: http::server::classify
//! [`read_agent_message`]: http::server::read_agent_message
//! [`ReadError`]: http::server::ReadError
//! [`response_for`]: http::server::response_for
//! [`too_many_requests`]: http::server::too_many_requests
//! [`service_unavailable`]: http::server::service_unavailable
//! [`unauthorized`]: http::server::unauthorized
//! [`HttpError::retry_after`]: http::client::HttpError::retry_after
#![forbid(unsafe_code)]

mod backoff;
#[cfg(feature = "client")]
mod connect;
mod frame;
#[cfg(any(feature = "client", feature = "server"))]
mod gzip;
#[cfg(any(feature = "client", feature = "server"))]
pub mod http;
mod kind;
#[cfg(feature = "client")]
mod options;
mod retry_after;
mod setters;
#[cfg(any(feature = "client", feature = "server"))]
mod tls;
pub mod ws;

pub use backoff::{ExponentialBackoff, RetryPolicy, RetryPolicyFactory, retry_info_hint};
pub use frame::{
    DEFAULT_MAX_MESSAGE_SIZE, FrameError, HeaderlessFrames, decode_frame, encode_frame, framed_len,
};
pub use kind::TransportKind;
/// The protocol's message types, re-exported so that users of this crate
/// need not depend on `opamp-proto` themselves.
pub use opamp_proto as proto;
pub use retry_after::parse_retry_after;
#[cfg(any(feature = "client", feature = "server"))]
pub use tls::{TlsError, TlsVersion};

// Shared by both client transports.
#[cfg(feature = "client")]
pub use connect::ConnectError;
#[cfg(feature = "client")]
pub use options::{
    ClientOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REDIRECTS, DEFAULT_REQUEST_TIMEOUT,
    HeaderHook, ProxyConfig,
};
#[cfg(feature = "client")]
pub use tls::{ClientTlsConfig, SystemRoots};

#[cfg(feature = "server")]
pub use tls::{ClientAuth, ServerTlsConfig};
