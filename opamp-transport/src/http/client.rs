//! The plain-HTTP client: one `POST` per `AgentToServer` on a pooled
//! hyper-util client, plus streaming `GET` for package downloads.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE,
    LOCATION, PROXY_AUTHORIZATION, RETRY_AFTER,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opamp_proto::{AgentToServer, InstanceUid, Message, ServerToAgent};
use url::Url;

use super::{OPAMP_INSTANCE_UID, PROTOBUF_CONTENT_TYPE};
use crate::connect::{ClientStream, ConnectError, open_stream};
use crate::gzip::{self, CollectError};
use crate::options::{ClientOptions, redacted_url};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a plain-HTTP exchange or download failed.
///
/// [`is_retryable`](Self::is_retryable) says whether sending the same request
/// again (after a backoff) can help; [`retry_after`](Self::retry_after) gives
/// the server's hint for the wait.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// 429 Too Many Requests or 503 Service Unavailable: the server is
    /// overloaded (HTTP-21). Retry after `retry_after` if given, else back off.
    #[error("server busy ({status}), retry after {retry_after:?}")]
    RetryLater {
        /// 429 or 503.
        status: StatusCode,
        /// The parsed `Retry-After` (delta-seconds or HTTP-date), if present
        /// and readable.
        retry_after: Option<Duration>,
    },
    /// 401 Unauthorized (CONN-06).
    #[error("server answered 401 Unauthorized")]
    Unauthorized {
        /// The `WWW-Authenticate` challenge, if the server sent one.
        challenge: Option<HeaderValue>,
    },
    /// 413 Content Too Large: the server refused the request's size. The
    /// same request must not be retried (HTTP-17).
    #[error("server refused the request as too large (413)")]
    PayloadTooLarge,
    /// Any other unexpected status.
    #[error("server answered with status {status}")]
    Status {
        /// The status code.
        status: StatusCode,
    },
    /// No complete response within the request timeout (ERR-04).
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The connection could not be opened (TCP, proxy, TLS), or redirects
    /// failed (too many, no `Location`, HTTPS to HTTP).
    #[error("connection failed: {0}")]
    Connect(#[source] ConnectError),
    /// The connection failed mid-exchange (reset, closed early, malformed
    /// HTTP).
    #[error("HTTP transport error: {0}")]
    Transport(#[source] BoxError),
    /// The encoded request is larger than `max_message_size`; it was not
    /// sent (HTTP-20).
    #[error("AgentToServer of {size} bytes exceeds the {limit}-byte limit; not sent")]
    RequestTooLarge {
        /// Encoded size, before compression.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The response body, after decompression, is larger than
    /// `max_message_size`; it was dropped unprocessed (HTTP-18).
    #[error("response exceeds the {limit}-byte limit; dropped")]
    ResponseTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The response body could not be read as declared: bad or truncated
    /// gzip, or an unsupported `Content-Encoding`.
    #[error("invalid response body: {0}")]
    InvalidBody(String),
    /// The response body is not a valid `ServerToAgent`.
    #[error("undecodable ServerToAgent: {0}")]
    Decode(#[source] opamp_proto::DecodeError),
    /// The download URL is not a usable `http`/`https` URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
}

impl HttpError {
    /// Whether sending the same request again later may succeed.
    ///
    /// True for overload (429/503), timeouts, transport and most connection
    /// failures, 5xx and 408 statuses, and 401 (credentials come from the
    /// header hook and may have been refreshed; back off between attempts).
    /// False for 413 (HTTP-17), other 4xx, bodies that were too large or
    /// undecodable, configuration errors (bad URL, TLS setup) and redirect
    /// failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::RetryLater { .. }
            | Self::Unauthorized { .. }
            | Self::Timeout(_)
            | Self::Transport(_) => true,
            Self::Status { status } => {
                status.is_server_error() || *status == StatusCode::REQUEST_TIMEOUT
            }
            Self::Connect(error) => !matches!(
                error,
                ConnectError::InvalidUrl(_)
                    | ConnectError::UnsupportedScheme(_)
                    | ConnectError::Tls(_)
                    | ConnectError::TooManyRedirects { .. }
                    | ConnectError::InvalidRedirect(_)
                    | ConnectError::InsecureRedirect(_)
            ),
            _ => false,
        }
    }

    /// The server's `Retry-After` hint, for 429/503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RetryLater { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status the server answered with, if the failure was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::RetryLater { status, .. } | Self::Status { status } => Some(*status),
            Self::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            Self::PayloadTooLarge => Some(StatusCode::PAYLOAD_TOO_LARGE),
            _ => None,
        }
    }

    /// Maps a non-success final status.
    fn from_status(status: StatusCode, headers: &HeaderMap) -> Self {
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Self::RetryLater {
                status,
                retry_after: headers
                    .get(RETRY_AFTER)
                    .and_then(|value| crate::parse_retry_after(value, SystemTime::now())),
            },
            StatusCode::UNAUTHORIZED => Self::Unauthorized {
                challenge: headers.get(http::header::WWW_AUTHENTICATE).cloned(),
            },
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            status => Self::Status { status },
        }
    }

    fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        if error.is_connect() {
            let taken = error
                .source()
                .and_then(|source| source.downcast_ref::<ConnectFailure>())
                .and_then(ConnectFailure::take);
            if let Some(connect) = taken {
                return Self::Connect(connect);
            }
        }
        Self::Transport(Box::new(error))
    }
}

/// The connector's error: hyper-util boxes it, and the exchange takes the
/// typed [`ConnectError`] back out.
#[derive(Debug)]
struct ConnectFailure(Mutex<Option<ConnectError>>);

impl ConnectFailure {
    fn take(&self) -> Option<ConnectError> {
        self.0.lock().ok()?.take()
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.lock().ok().as_deref() {
            Some(Some(error)) => fmt::Display::fmt(error, f),
            _ => f.write_str("connect failed"),
        }
    }
}

impl StdError for ConnectFailure {}

/// Connections for the pool, opened with [`open_stream`] so proxy and TLS
/// settings are exactly the WebSocket client's.
#[derive(Clone)]
struct OpampConnector {
    options: Arc<ClientOptions>,
}

impl tower_service::Service<Uri> for OpampConnector {
    type Response = TokioIo<ClientStream>;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let options = Arc::clone(&self.options);
        Box::pin(async move {
            let failure = |error| ConnectFailure(Mutex::new(Some(error)));
            let target = Url::parse(&destination.to_string())
                .map_err(|error| failure(ConnectError::InvalidUrl(error.to_string())))?;
            let stream = open_stream(&target, &options).await.map_err(failure)?;
            Ok(TokioIo::new(stream))
        })
    }
}

impl Connection for ClientStream {
    fn connected(&self) -> Connected {
        // The proxy is a CONNECT tunnel, so requests keep origin form and the
        // pool needs no proxy marking.
        Connected::new()
    }
}

/// A plain-HTTP OpAMP client (HTTP-01..20): `POST`s each `AgentToServer` to
/// the endpoint and returns the `ServerToAgent` from the response.
///
/// Connections are pooled and reused (keep-alive has no protocol meaning,
/// HTTP-25). Proxy and TLS come from [`ClientOptions`], like the WebSocket
/// client's. Each request carries:
/// - `Content-Type: application/x-protobuf` (HTTP-03) and
///   `OpAMP-Instance-UID: <canonical uuid>` (HTTP-08);
/// - the static headers and the header hook's output, computed per request
///   (and per redirect hop);
/// - `Accept-Encoding: gzip`; with [`with_gzip_requests`](Self::with_gzip_requests)
///   the body is gzipped and sent with `Content-Encoding: gzip` (HTTP-05).
///
/// The response must be 200. Its body is read with `max_message_size`
/// applied after decompression (HTTP-18), and the whole exchange, redirects
/// included, is bounded by `request_timeout`. `301`, `302`, `307` and `308`
/// are followed up to `max_redirects` by posting the same body to the new
/// location; HTTPS never redirects to HTTP.
///
/// The poster does not serialise calls: the OpAMP client must keep at most
/// one exchange in flight (HTTP-10). Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct HttpPoster {
    client: Client<OpampConnector, Full<Bytes>>,
    options: Arc<ClientOptions>,
    gzip_requests: bool,
}

impl fmt::Debug for HttpPoster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpPoster")
            .field("options", &self.options)
            .field("gzip_requests", &self.gzip_requests)
            .finish_non_exhaustive()
    }
}

impl HttpPoster {
    /// A poster for `options.endpoint`, which must be `http://` or
    /// `https://`. For `https`, the TLS settings are built (and checked) now.
    ///
    /// Construction does no I/O and needs no runtime; requests must run on a
    /// tokio runtime.
    pub fn new(options: ClientOptions) -> Result<Self, ConnectError> {
        let endpoint = &options.endpoint;
        match endpoint.scheme() {
            "https" => {
                options.tls.build()?;
            }
            "http" => {}
            other => return Err(ConnectError::UnsupportedScheme(other.to_owned())),
        }
        if endpoint.host().is_none() {
            return Err(ConnectError::InvalidUrl(format!(
                "{} has no host",
                redacted_url(endpoint)
            )));
        }
        let options = Arc::new(options);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(OpampConnector {
                options: Arc::clone(&options),
            });
        Ok(Self {
            client,
            options,
            gzip_requests: false,
        })
    }

    /// Gzips request bodies and sends `Content-Encoding: gzip` (HTTP-05).
    /// Off by default: OpAMP messages are usually small, and not every
    /// server accepts compressed requests.
    pub fn with_gzip_requests(mut self, enabled: bool) -> Self {
        self.gzip_requests = enabled;
        self
    }

    /// The options this poster was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Sends one `AgentToServer` and returns the server's answer.
    ///
    /// `uid` goes into the `OpAMP-Instance-UID` header; it should match
    /// `message.instance_uid`.
    pub async fn exchange(
        &self,
        uid: InstanceUid,
        message: &AgentToServer,
    ) -> Result<ServerToAgent, HttpError> {
        let limit = self.options.max_message_size;
        let size = message.encoded_len();
        if size > limit {
            // HTTP-20: checked before compression; not sent.
            tracing::warn!(
                size,
                limit,
                "AgentToServer exceeds the message size limit; dropped"
            );
            return Err(HttpError::RequestTooLarge { size, limit });
        }
        let encoded = message.encode_to_vec();
        let body = if self.gzip_requests {
            Bytes::from(gzip::compress(&encoded))
        } else {
            Bytes::from(encoded)
        };
        let timeout = self.options.request_timeout;
        tokio::time::timeout(timeout, self.exchange_unbounded(uid, body))
            .await
            .unwrap_or(Err(HttpError::Timeout(timeout)))
    }

    async fn exchange_unbounded(
        &self,
        uid: InstanceUid,
        body: Bytes,
    ) -> Result<ServerToAgent, HttpError> {
        // A hyphenated UUID is always a valid header value.
        let uid_value = HeaderValue::try_from(uid.to_string()).ok();
        let mut target = self.options.endpoint.clone();
        let mut hops = 0usize;
        let response = loop {
            let mut headers = self.options.request_headers();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
            );
            if let Some(uid_value) = &uid_value {
                headers.insert(OPAMP_INSTANCE_UID, uid_value.clone());
            }
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            if self.gzip_requests {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            } else {
                headers.remove(CONTENT_ENCODING);
            }
            headers.remove(CONTENT_LENGTH);
            let response = self
                .send(Method::POST, &target, headers, body.clone())
                .await?;
            let status = response.status();
            let follow = matches!(
                status,
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            if !follow {
                break response;
            }
            target = self.redirect_target(&target, &response, &mut hops)?;
        };

        let status = response.status();
        if status != StatusCode::OK {
            tracing::debug!(%status, "OpAMP HTTP exchange refused");
            return Err(HttpError::from_status(status, response.headers()));
        }
        let encoding = gzip::body_encoding(response.headers()).map_err(|unsupported| {
            HttpError::InvalidBody(format!("unsupported Content-Encoding {:?}", unsupported.0))
        })?;
        let limit = self.options.max_message_size;
        let bytes = gzip::collect_bounded(response.into_body(), encoding, limit)
            .await
            .map_err(|error| match error {
                CollectError::TooLarge { limit } => {
                    // HTTP-18: treat as failed, do not process, record it.
                    tracing::warn!(
                        limit,
                        "ServerToAgent exceeds the message size limit; dropped"
                    );
                    HttpError::ResponseTooLarge { limit }
                }
                CollectError::Corrupt(error) => HttpError::InvalidBody(error.to_string()),
                CollectError::Body(error) => HttpError::Transport(Box::new(error)),
            })?;
        ServerToAgent::decode(bytes).map_err(HttpError::Decode)
    }

    /// Starts a streaming `GET` of `url`, for package downloads.
    ///
    /// Only `headers` are sent (for example the `DownloadableFile.headers`
    /// the server offered); the OpAMP static headers and header hook are
    /// not, since the file may live on another host. No `Accept-Encoding` is
    /// sent, so the bytes arrive as stored and match `content_hash`.
    ///
    /// Redirects (301, 302, 303, 307, 308) are followed up to
    /// `max_redirects`; `Authorization`, `Cookie` and `Proxy-Authorization`
    /// are dropped when a redirect leaves the original scheme, host and
    /// port. Any final status other than 2xx is an error. The response
    /// headers must arrive within `request_timeout`; after that, the same
    /// timeout bounds each wait for the next chunk, not the whole transfer.
    pub async fn download(
        &self,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<DownloadResponse, HttpError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidUrl(format!(
                "{} is not an http or https URL",
                redacted_url(url)
            )));
        }
        let timeout = self.options.request_timeout;
        let start = async {
            let origin = url.origin();
            let mut target = url.clone();
            let mut hops = 0usize;
            loop {
                let mut request_headers = headers.clone();
                if target.origin() != origin {
                    for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION] {
                        request_headers.remove(name);
                    }
                }
                let response = self
                    .send(Method::GET, &target, request_headers, Bytes::new())
                    .await?;
                if !response.status().is_redirection() {
                    break Ok(response);
                }
                target = self.redirect_target(&target, &response, &mut hops)?;
            }
        };
        let response = tokio::time::timeout(timeout, start)
            .await
            .unwrap_or(Err(HttpError::Timeout(timeout)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpError::from_status(status, response.headers()));
        }
        let (parts, body) = response.into_parts();
        Ok(DownloadResponse {
            status,
            headers: parts.headers,
            body: DownloadBody {
                body,
                idle_timeout: timeout,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                done: false,
            },
        })
    }

    /// Sends one request to `target` through the pool.
    async fn send(
        &self,
        method: Method,
        target: &Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, HttpError> {
        let uri = request_uri(target)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        tracing::trace!(target = %redacted_url(target), "sending HTTP request");
        self.client
            .request(request)
            .await
            .map_err(HttpError::from_client)
    }

    /// The next URL for a 3xx response, enforcing the hop limit and refusing
    /// HTTPS → HTTP.
    fn redirect_target(
        &self,
        current: &Url,
        response: &Response<Incoming>,
        hops: &mut usize,
    ) -> Result<Url, HttpError> {
        let limit = self.options.max_redirects;
        if *hops >= limit {
            return Err(HttpError::Connect(ConnectError::TooManyRedirects { limit }));
        }
        *hops += 1;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                HttpError::Connect(ConnectError::InvalidRedirect(format!(
                    "{} without a usable Location",
                    response.status()
                )))
            })?;
        let next = current.join(location).map_err(|error| {
            HttpError::Connect(ConnectError::InvalidRedirect(format!(
                "bad Location {location:?}: {error}"
            )))
        })?;
        match (current.scheme(), next.scheme()) {
            ("https", "http") => Err(HttpError::Connect(ConnectError::InsecureRedirect(
                redacted_url(&next),
            ))),
            (_, "http" | "https") => {
                tracing::debug!(
                    from = %redacted_url(current),
                    to = %redacted_url(&next),
                    status = %response.status(),
                    "following redirect"
                );
                Ok(next)
            }
            (_, other) => Err(HttpError::Connect(ConnectError::InvalidRedirect(format!(
                "redirect to unsupported scheme {other:?}"
            )))),
        }
    }
}

/// The request URI for `url`: without user info (never sent in a request
/// line) and without fragment.
fn request_uri(url: &Url) -> Result<Uri, HttpError> {
    let mut clean = url.clone();
    clean.set_fragment(None);
    // Both only fail for URLs that cannot have credentials, which is fine.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean
        .as_str()
        .parse::<Uri>()
        .map_err(|error| HttpError::InvalidUrl(format!("{}: {error}", redacted_url(url))))
}

/// A successful download: status, headers and the body as a stream.
#[derive(Debug)]
pub struct DownloadResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: DownloadBody,
}

impl DownloadResponse {
    /// The (2xx) status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The declared `Content-Length`, if any (useful for progress,
    /// `PackageDownloadDetails`). Not trusted as a bound.
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
    }

    /// The body as a stream of chunks.
    pub fn into_body(self) -> DownloadBody {
        self.body
    }

    /// Reads the whole body into memory, failing with
    /// [`HttpError::ResponseTooLarge`] as soon as it passes `limit` bytes.
    pub async fn bytes_limited(self, limit: usize) -> Result<Bytes, HttpError> {
        use futures_util::StreamExt as _;
        if self
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(HttpError::ResponseTooLarge { limit });
        }
        let mut body = self.body;
        let mut collected = bytes::BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if collected.len() + chunk.len() > limit {
                return Err(HttpError::ResponseTooLarge { limit });
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(collected.freeze())
    }
}

/// A download body: a [`Stream`] of `Bytes` chunks. Each wait for the next
/// chunk is bounded by the request timeout ([`HttpError::Timeout`]).
pub struct DownloadBody {
    body: Incoming,
    idle_timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl fmt::Debug for DownloadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadBody")
            .field("idle_timeout", &self.idle_timeout)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for DownloadBody {
    type Item = Result<Bytes, HttpError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    let next = tokio::time::Instant::now() + this.idle_timeout;
                    this.deadline.as_mut().reset(next);
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(HttpError::Transport(Box::new(error)))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(Some(Err(HttpError::Timeout(this.idle_timeout))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_17_413_is_not_retryable_but_overload_is() {
        assert!(!HttpError::PayloadTooLarge.is_retryable());
        let busy = HttpError::from_status(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new());
        assert!(busy.is_retryable());
        assert_eq!(busy.retry_after(), None);
        assert!(
            HttpError::Status {
                status: StatusCode::BAD_GATEWAY
            }
            .is_retryable()
        );
        assert!(
            !HttpError::Status {
                status: StatusCode::NOT_FOUND
            }
            .is_retryable()
        );
        assert!(!HttpError::ResponseTooLarge { limit: 1 }.is_retryable());
        assert!(!HttpError::Connect(ConnectError::TooManyRedirects { limit: 1 }).is_retryable());
        assert!(HttpError::Connect(ConnectError::Timeout(Duration::from_secs(1))).is_retryable());
    }

    #[test]
    fn http_21_status_mapping_reads_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        let error = HttpError::from_status(StatusCode::TOO_MANY_REQUESTS, &headers);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(12)));
        assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        let error = HttpError::from_status(StatusCode::UNAUTHORIZED, &headers);
        assert!(matches!(error, HttpError::Unauthorized { challenge: None }));
        let error = HttpError::from_status(StatusCode::PAYLOAD_TOO_LARGE, &headers);
        assert!(matches!(error, HttpError::PayloadTooLarge));
        assert_eq!(error.retry_after(), None);
    }

    #[test]
    fn request_uri_drops_credentials_and_fragment() {
        let url = Url::parse("https://user:secret@example.com:8443/v1/opamp?x=1#frag").unwrap();
        assert_eq!(
            request_uri(&url).unwrap().to_string(),
            "https://example.com:8443/v1/opamp?x=1"
        );
    }

    #[test]
    fn new_rejects_non_http_endpoints() {
        let options = ClientOptions::new(Url::parse("ws://127.0.0.1/v1/opamp").unwrap());
        assert!(matches!(
            HttpPoster::new(options),
            Err(ConnectError::UnsupportedScheme(ref s)) if s == "ws"
        ));
    }
}
