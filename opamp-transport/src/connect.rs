//! Opening a byte stream to a server: TCP, optional HTTP `CONNECT` proxy
//! tunnel, then TLS for `https`/`wss`. Shared by the WebSocket and plain-HTTP
//! clients, together with [`ConnectError`], the typed reasons a connection
//! attempt fails.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::{HeaderMap, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use url::Url;

use crate::options::{ClientOptions, ProxyConfig, redacted_url};
use crate::tls::TlsError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest proxy `CONNECT` response head we read before giving up.
const MAX_PROXY_RESPONSE_HEAD: usize = 16 * 1024;

/// Why a client could not connect (or upgrade) to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL cannot be used (no host, bad redirect target, ...).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The URL scheme is not one this client speaks.
    #[error("unsupported URL scheme {0:?}")]
    UnsupportedScheme(String),
    /// Name resolution, TCP connect or socket I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The attempt took longer than the configured timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TLS handshake failed (untrusted certificate, name mismatch,
    /// client certificate refused, ...).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(#[source] io::Error),
    /// The proxy answered `CONNECT` with a non-2xx status (407 means it wants
    /// credentials).
    #[error("proxy refused CONNECT with status {status}")]
    Proxy {
        /// The proxy's status code.
        status: StatusCode,
    },
    /// The proxy's answer was not valid HTTP.
    #[error("malformed proxy response: {0}")]
    ProxyProtocol(String),
    /// The server answered with 401 Unauthorized (CONN-06).
    #[error("server refused the connection: 401 Unauthorized")]
    Unauthorized {
        /// Response headers (e.g. `WWW-Authenticate`).
        headers: HeaderMap,
    },
    /// The server refused with another status. For 429 and 503 the server
    /// may say when to retry (WS-24, HTTP-13).
    #[error("server refused the connection with status {status}")]
    Refused {
        /// The status code.
        status: StatusCode,
        /// Parsed `Retry-After`, if present and readable.
        retry_after: Option<Duration>,
        /// Response headers.
        headers: HeaderMap,
    },
    /// More redirects than `max_redirects`, or a redirect loop.
    #[error("too many redirects (limit {limit})")]
    TooManyRedirects {
        /// The configured limit.
        limit: usize,
    },
    /// A 3xx response without a usable `Location`.
    #[error("invalid redirect: {0}")]
    InvalidRedirect(String),
    /// A redirect from TLS to plaintext, refused so headers (tokens) are not
    /// sent in clear text.
    #[error("refusing redirect from a TLS endpoint to plaintext {0}")]
    InsecureRedirect(String),
    /// The protocol handshake (WebSocket upgrade or HTTP exchange) failed
    /// for a reason other than an HTTP status.
    #[error("handshake failed: {0}")]
    Handshake(#[source] BoxError),
}

impl ConnectError {
    /// The server's `Retry-After` hint, if the refusal carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status of a refusal by the server or proxy, if any.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } | Self::Proxy { status } => Some(*status),
            Self::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }

    /// Classifies an I/O error: rustls errors surfacing through the stream
    /// (e.g. a fatal alert because the server refused our client
    /// certificate, which TLS 1.3 reports only after the handshake) become
    /// [`ConnectError::TlsHandshake`].
    pub(crate) fn from_io(error: io::Error) -> Self {
        let is_tls = error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if is_tls {
            Self::TlsHandshake(error)
        } else {
            Self::Io(error)
        }
    }

    /// Builds `Unauthorized` or `Refused` (with parsed `Retry-After`) for a
    /// server's non-success status.
    pub(crate) fn from_refusal(status: StatusCode, headers: HeaderMap) -> Self {
        if status == StatusCode::UNAUTHORIZED {
            return Self::Unauthorized { headers };
        }
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| crate::parse_retry_after(value, SystemTime::now()));
        Self::Refused {
            status,
            retry_after,
            headers,
        }
    }
}

/// A connected byte stream, plain TCP or TLS over TCP (possibly through a
/// proxy tunnel). Implements tokio's `AsyncRead + AsyncWrite`.
#[derive(Debug)]
pub(crate) struct ClientStream {
    inner: StreamInner,
}

#[derive(Debug)]
enum StreamInner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            StreamInner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            StreamInner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            StreamInner::Plain(s) => s.is_write_vectored(),
            StreamInner::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Whether a scheme needs TLS; `None` for schemes this crate does not speak.
pub(crate) fn scheme_uses_tls(scheme: &str) -> Option<bool> {
    match scheme {
        "ws" | "http" => Some(false),
        "wss" | "https" => Some(true),
        _ => None,
    }
}

/// Host and port of a URL, with the scheme's default port.
fn host_and_port(url: &Url) -> Result<(url::Host<String>, u16), ConnectError> {
    let host = url
        .host()
        .ok_or_else(|| ConnectError::InvalidUrl(format!("{} has no host", redacted_url(url))))?
        .to_owned();
    let port = url.port_or_known_default().ok_or_else(|| {
        ConnectError::InvalidUrl(format!(
            "{} has no port and no default port",
            redacted_url(url)
        ))
    })?;
    Ok((host, port))
}

/// `host:port` as written in a `CONNECT` request line and `Host` header
/// (IPv6 in brackets).
fn authority(host: &url::Host<String>, port: u16) -> String {
    match host {
        url::Host::Ipv6(addr) => format!("[{addr}]:{port}"),
        other => format!("{other}:{port}"),
    }
}

async fn tcp_connect(host: &url::Host<String>, port: u16) -> io::Result<TcpStream> {
    let stream = match host {
        url::Host::Domain(name) => TcpStream::connect((name.as_str(), port)).await?,
        url::Host::Ipv4(addr) => {
            TcpStream::connect(SocketAddr::new(IpAddr::V4(*addr), port)).await?
        }
        url::Host::Ipv6(addr) => {
            TcpStream::connect(SocketAddr::new(IpAddr::V6(*addr), port)).await?
        }
    };
    // OpAMP messages are small and latency matters more than packet count.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a stream to `target` (schemes `ws`, `wss`, `http`, `https`):
/// TCP (or a `CONNECT` tunnel through `options.proxy`), then TLS with
/// `options.tls` for `wss`/`https`. The whole attempt is bounded by
/// `options.connect_timeout`.
///
/// The caller speaks HTTP/1.1 over the result (ALPN offers only `http/1.1`).
pub(crate) async fn open_stream(
    target: &Url,
    options: &ClientOptions,
) -> Result<ClientStream, ConnectError> {
    let timeout = options.connect_timeout;
    match tokio::time::timeout(timeout, open_stream_unbounded(target, options)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

async fn open_stream_unbounded(
    target: &Url,
    options: &ClientOptions,
) -> Result<ClientStream, ConnectError> {
    let use_tls = scheme_uses_tls(target.scheme())
        .ok_or_else(|| ConnectError::UnsupportedScheme(target.scheme().to_owned()))?;
    let (host, port) = host_and_port(target)?;
    // Build TLS settings before any I/O: a config error should not cost a
    // round trip.
    let tls_config = if use_tls {
        Some(options.tls.build()?)
    } else {
        None
    };

    let (tcp, proxied) = match &options.proxy {
        Some(proxy) => (connect_via_proxy(proxy, &host, port).await?, true),
        None => (tcp_connect(&host, port).await?, false),
    };

    let inner = match tls_config {
        None => StreamInner::Plain(tcp),
        Some(config) => {
            let server_name = match &host {
                url::Host::Domain(name) => ServerName::try_from(name.clone()).map_err(|e| {
                    ConnectError::InvalidUrl(format!("bad TLS server name {name:?}: {e}"))
                })?,
                url::Host::Ipv4(addr) => ServerName::IpAddress(IpAddr::V4(*addr).into()),
                url::Host::Ipv6(addr) => ServerName::IpAddress(IpAddr::V6(*addr).into()),
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(ConnectError::TlsHandshake)?;
            StreamInner::Tls(Box::new(tls))
        }
    };
    tracing::debug!(target = %redacted_url(target), tls = use_tls, proxied, "connected");
    Ok(ClientStream { inner })
}

/// Opens a `CONNECT` tunnel to `host:port` through an HTTP proxy.
async fn connect_via_proxy(
    proxy: &ProxyConfig,
    host: &url::Host<String>,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    if proxy.url.scheme() != "http" {
        return Err(ConnectError::UnsupportedScheme(format!(
            "proxy scheme {}",
            proxy.url.scheme()
        )));
    }
    let (proxy_host, proxy_port) = host_and_port(&proxy.url)?;
    let mut stream = tcp_connect(&proxy_host, proxy_port).await?;

    let target = authority(host, port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n").into_bytes();
    let mut headers = proxy.headers.clone();
    if !headers.contains_key(http::header::PROXY_AUTHORIZATION) {
        if let Some(value) = basic_auth_from_userinfo(&proxy.url) {
            headers.insert(http::header::PROXY_AUTHORIZATION, value);
        }
    }
    for (name, value) in &headers {
        request.extend_from_slice(name.as_str().as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await?;

    let head = read_response_head(&mut stream).await?;
    let status = parse_status_line(&head)?;
    if !status.is_success() {
        return Err(ConnectError::Proxy { status });
    }
    tracing::debug!(proxy = %redacted_url(&proxy.url), %target, "proxy tunnel open");
    Ok(stream)
}

/// `Proxy-Authorization: Basic ...` from `user:password@` in the proxy URL.
pub(crate) fn basic_auth_from_userinfo(url: &Url) -> Option<http::HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |part: &str| percent_decode(part);
    let credentials = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or(""))
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = http::HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Decodes `%XX` escapes (URL user info is stored percent-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads up to and including the blank line ending a response head. Reads
/// byte by byte so no tunnelled bytes after the head are consumed.
async fn read_response_head(stream: &mut TcpStream) -> Result<Vec<u8>, ConnectError> {
    let mut head = Vec::with_capacity(256);
    loop {
        let byte = match stream.read_u8().await {
            Ok(byte) => byte,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ConnectError::ProxyProtocol(
                    "connection closed before the response ended".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        head.push(byte);
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_PROXY_RESPONSE_HEAD {
            return Err(ConnectError::ProxyProtocol("response head too long".into()));
        }
    }
}

/// Status code from `HTTP/1.x SSS reason`.
fn parse_status_line(head: &[u8]) -> Result<StatusCode, ConnectError> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .map_err(|_| ConnectError::ProxyProtocol("status line is not UTF-8".into()))?
        .trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ConnectError::ProxyProtocol(format!(
            "unexpected status line {line:?}"
        )));
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 {
        return Err(ConnectError::ProxyProtocol(format!(
            "bad status code in {line:?}"
        )));
    }
    StatusCode::from_bytes(code.as_bytes())
        .map_err(|_| ConnectError::ProxyProtocol(format!("bad status code in {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_parsing() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap(),
            200
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 407 Proxy Auth\r\n\r\n").unwrap(),
            407
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n\r\n").unwrap(), 204);
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 x\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(
                matches!(parse_status_line(bad), Err(ConnectError::ProxyProtocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn proxy_basic_auth_from_url() {
        let url = Url::parse("http://us%20er:p%40ss@proxy:3128").unwrap();
        let value = basic_auth_from_userinfo(&url).unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("us er:p@ss");
        assert_eq!(value.to_str().unwrap(), format!("Basic {expected}"));
        assert!(value.is_sensitive());
        assert!(basic_auth_from_userinfo(&Url::parse("http://proxy:3128").unwrap()).is_none());
    }

    #[test]
    fn percent_decode_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%2Fb%zz%+1%4"), "a/b%zz%+1%4");
    }

    #[test]
    fn ipv6_authority_has_brackets() {
        let url = Url::parse("wss://[::1]:4320/v1").unwrap();
        let (host, port) = host_and_port(&url).unwrap();
        assert_eq!(authority(&host, port), "[::1]:4320");
        let url = Url::parse("https://example.com/v1").unwrap();
        let (host, port) = host_and_port(&url).unwrap();
        assert_eq!(authority(&host, port), "example.com:443");
    }

    #[test]
    fn refusal_classification() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        let err = ConnectError::from_refusal(StatusCode::SERVICE_UNAVAILABLE, headers.clone());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        let err = ConnectError::from_refusal(StatusCode::UNAUTHORIZED, headers);
        assert!(matches!(err, ConnectError::Unauthorized { .. }));
        assert_eq!(err.retry_after(), None);
    }

    #[tokio::test]
    async fn unsupported_scheme_is_typed() {
        let options = ClientOptions::new(Url::parse("ftp://127.0.0.1/").unwrap());
        let err = open_stream(&options.endpoint, &options).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::UnsupportedScheme(ref s) if s == "ftp"),
            "{err:?}"
        );
    }
}
