//! Client connection options shared by the WebSocket and plain-HTTP clients.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use url::Url;

use crate::DEFAULT_MAX_MESSAGE_SIZE;
use crate::tls::ClientTlsConfig;

/// Default bound for opening a connection (TCP, proxy CONNECT, TLS and the
/// WebSocket upgrade).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default bound for one plain-HTTP request/response exchange.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Default number of 3xx redirects followed before giving up.
pub const DEFAULT_MAX_REDIRECTS: usize = 5;

/// A callback that adjusts request headers right before each connect or
/// request, e.g. to insert a fresh auth token. It runs after the static
/// headers are applied, so it can override them.
pub type HeaderHook = Arc<dyn Fn(&mut HeaderMap) + Send + Sync>;

/// An HTTP proxy reached with `CONNECT` (a tunnel), for every target scheme.
///
/// Only `http://` proxy URLs are supported (the tunnel to the target may
/// still carry TLS). User info in the URL (`http://user:pass@proxy:3128`)
/// becomes a `Proxy-Authorization: Basic` header unless `headers` already
/// has one.
#[derive(Clone)]
pub struct ProxyConfig {
    /// The proxy's URL, `http://host:port`.
    pub url: Url,
    /// Extra headers sent with the `CONNECT` request (OpAMP
    /// `ProxyConnectionSettings.connect_headers`).
    pub headers: HeaderMap,
}

impl ProxyConfig {
    /// A proxy without extra `CONNECT` headers.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            headers: HeaderMap::new(),
        }
    }

    /// Adds headers to the `CONNECT` request.
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }
}

impl fmt::Debug for ProxyConfig {
    // Credentials stay out of logs: password and header values are hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("url", &redacted_url(&self.url))
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How a client reaches an OpAMP server. Used by both
/// [`WsClientConnection`](crate::ws::client::WsClientConnection) and the plain-HTTP
/// client.
///
/// ```
/// use std::time::Duration;
/// use opamp_transport::ClientOptions;
///
/// let url = url::Url::parse("wss://opamp.example.com/v1/opamp").unwrap();
/// let options = ClientOptions::new(url)
///     .with_header(http::header::USER_AGENT, http::HeaderValue::from_static("my-agent/1.0"))
///     .with_header_hook(|headers| {
///         let token = "fresh-token"; // fetched from somewhere
///         headers.insert(
///             http::header::AUTHORIZATION,
///             http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
///         );
///     })
///     .with_connect_timeout(Duration::from_secs(10));
/// assert_eq!(options.max_redirects, 5);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The server endpoint: `ws://`, `wss://` (WebSocket) or `http://`,
    /// `https://` (plain HTTP; the WebSocket client maps them to ws/wss).
    pub endpoint: Url,
    /// Headers sent with every connect or request.
    pub headers: HeaderMap,
    /// Called on every connect or request (each redirect hop included),
    /// after `headers` are applied.
    pub header_hook: Option<HeaderHook>,
    /// TLS settings for `wss://` and `https://`.
    pub tls: ClientTlsConfig,
    /// Optional `CONNECT` proxy.
    pub proxy: Option<ProxyConfig>,
    /// Size limit for one message, sent or received (WS-08..12, HTTP-16..20).
    pub max_message_size: usize,
    /// Bound for opening a connection: TCP, proxy, TLS and, for WebSocket,
    /// the upgrade handshake (per redirect hop).
    pub connect_timeout: Duration,
    /// Bound for one plain-HTTP request/response exchange.
    pub request_timeout: Duration,
    /// How many 3xx redirects to follow (0 disables following).
    pub max_redirects: usize,
    /// Accept legacy WebSocket frames without the OpAMP header (AMB-14).
    /// Off by default; see [`HeaderlessFrames`](crate::HeaderlessFrames).
    pub accept_headerless_frames: bool,
}

impl ClientOptions {
    /// Options with defaults: no extra headers, default TLS, no proxy,
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_REQUEST_TIMEOUT`], [`DEFAULT_MAX_REDIRECTS`], strict framing.
    pub fn new(endpoint: Url) -> Self {
        Self {
            endpoint,
            headers: HeaderMap::new(),
            header_hook: None,
            tls: ClientTlsConfig::default(),
            proxy: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            accept_headerless_frames: false,
        }
    }

    /// Adds (appends) one static header.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Adds static headers.
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }

    crate::builder_setters! {
        /// Sets the per-connect header hook.
        pub fn with_header_hook(hook: impl Fn(&mut HeaderMap) + Send + Sync + 'static)
            => header_hook = Some(Arc::new(hook));

        /// Sets TLS settings.
        pub fn with_tls(tls: ClientTlsConfig) => tls = tls;

        /// Routes connections through a `CONNECT` proxy.
        pub fn with_proxy(proxy: ProxyConfig) => proxy = Some(proxy);

        /// Sets the message size limit.
        pub fn with_max_message_size(bytes: usize) => max_message_size = bytes;

        /// Sets the connect timeout.
        pub fn with_connect_timeout(timeout: Duration) => connect_timeout = timeout;

        /// Sets the plain-HTTP request timeout.
        pub fn with_request_timeout(timeout: Duration) => request_timeout = timeout;

        /// Sets how many redirects to follow.
        pub fn with_max_redirects(max: usize) => max_redirects = max;

        /// Accepts legacy headerless WebSocket frames (AMB-14).
        pub fn with_accept_headerless_frames(accept: bool) => accept_headerless_frames = accept;
    }

    /// The headers for one connect or request: static headers, then the hook.
    pub fn request_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        if let Some(hook) = &self.header_hook {
            hook(&mut headers);
        }
        headers
    }
}

impl fmt::Debug for ClientOptions {
    // Header values often hold tokens, so only names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("endpoint", &redacted_url(&self.endpoint))
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("header_hook", &self.header_hook.is_some())
            .field("tls", &self.tls)
            .field("proxy", &self.proxy)
            .field("max_message_size", &self.max_message_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_redirects", &self.max_redirects)
            .field("accept_headerless_frames", &self.accept_headerless_frames)
            .finish()
    }
}

/// The URL with any password replaced, for logs and `Debug`.
pub(crate) fn redacted_url(url: &Url) -> String {
    let mut copy = url.clone();
    if copy.password().is_some() {
        // Cannot fail for URLs that already carry a password.
        let _ = copy.set_password(Some("REDACTED"));
    }
    copy.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn debug_never_prints_secrets() {
        let proxy = ProxyConfig::new(Url::parse("http://user:hunter2@proxy:3128").unwrap())
            .with_headers(HeaderMap::from_iter([(
                http::header::PROXY_AUTHORIZATION,
                http::HeaderValue::from_static("Basic c2VjcmV0"),
            )]));
        let options =
            ClientOptions::new(Url::parse("wss://a:pw-secret@example.com/v1/opamp").unwrap())
                .with_header(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_static("Bearer tok-secret"),
                )
                .with_proxy(proxy);
        let text = format!("{options:?}");
        for secret in ["hunter2", "c2VjcmV0", "pw-secret", "tok-secret"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(text.contains("authorization"), "{text}");
    }

    #[test]
    fn hook_runs_after_static_headers_on_every_call() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let options = ClientOptions::new(Url::parse("ws://h/").unwrap())
            .with_header(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static("static"),
            )
            .with_header_hook(move |headers| {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from(n));
            });
        assert_eq!(options.request_headers()[http::header::AUTHORIZATION], "1");
        assert_eq!(options.request_headers()[http::header::AUTHORIZATION], "2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn defaults() {
        let options = ClientOptions::new(Url::parse("http://h/").unwrap());
        assert_eq!(options.max_message_size, 64 << 20);
        assert_eq!(options.max_redirects, 5);
        assert!(!options.accept_headerless_frames);
    }
}
