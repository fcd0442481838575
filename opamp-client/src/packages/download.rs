//! The narrow download interface the syncer needs.

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use opamp_proto::Header;

/// Why a download could not start or broke off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The offered `download_url` cannot be requested.
    #[error("invalid download URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as offered.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An offered header is not a valid HTTP header.
    #[error("invalid download header {0:?}")]
    InvalidHeader(String),
    /// The server answered with a status other than 200.
    #[error("download server answered HTTP {0}")]
    Status(u16),
    /// Connecting, sending or receiving failed.
    #[error("download transport failed: {0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A download in progress: the body as a stream of chunks.
pub struct Download {
    /// The length the server announced (`Content-Length`), if any. The syncer
    /// uses it for the progress percentage, to refuse over-large files early,
    /// and to detect bodies that end short.
    pub content_length: Option<u64>,
    /// The body, chunk by chunk. An `Err` item ends the download.
    pub body: BoxStream<'static, Result<Bytes, DownloadError>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// Fetches package files: an HTTP GET of `url` with the offered headers
/// (PKG-06), answering once the response status and headers are in.
///
/// The syncer applies its own idle timeout both to this future and to every
/// chunk of the body, so implementations need no timeouts of their own.
pub trait Downloader: Send + Sync {
    /// Starts downloading `url`, sending `headers` with the request.
    fn download<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [Header],
    ) -> BoxFuture<'a, Result<Download, DownloadError>>;
}

/// Package downloads over the transport's HTTP client: the same TLS and proxy
/// settings as the OpAMP connection, redirects followed, and only the offered
/// headers sent. Its own request timeout applies in addition to the syncer's
/// idle timeout.
impl Downloader for opamp_transport::http::client::HttpPoster {
    fn download<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [Header],
    ) -> BoxFuture<'a, Result<Download, DownloadError>> {
        Box::pin(async move {
            let parsed = url::Url::parse(url).map_err(|error| DownloadError::InvalidUrl {
                url: url.to_owned(),
                reason: error.to_string(),
            })?;
            let mut header_map = http::HeaderMap::with_capacity(headers.len());
            for header in headers {
                let name = http::HeaderName::from_bytes(header.key.as_bytes())
                    .map_err(|_| DownloadError::InvalidHeader(header.key.clone()))?;
                let value = http::HeaderValue::from_str(&header.value)
                    .map_err(|_| DownloadError::InvalidHeader(header.key.clone()))?;
                header_map.append(name, value);
            }
            let response =
                opamp_transport::http::client::HttpPoster::download(self, &parsed, &header_map)
                    .await
                    .map_err(|error| from_http_error(error, url))?;
            let content_length = response.content_length();
            let body = response
                .into_body()
                .map(|chunk| chunk.map_err(|error| DownloadError::Transport(Box::new(error))))
                .boxed();
            Ok(Download {
                content_length,
                body,
            })
        })
    }
}

fn from_http_error(error: opamp_transport::http::client::HttpError, url: &str) -> DownloadError {
    if let Some(status) = error.status() {
        return DownloadError::Status(status.as_u16());
    }
    match error {
        opamp_transport::http::client::HttpError::InvalidUrl(reason) => DownloadError::InvalidUrl {
            url: url.to_owned(),
            reason,
        },
        other => DownloadError::Transport(Box::new(other)),
    }
}
