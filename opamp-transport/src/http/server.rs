//! Server-side helpers for the plain-HTTP transport, usable from any
//! hyper / tower / axum stack: classify a request, read an `AgentToServer`
//! body, build the `ServerToAgent` response and the refusal responses.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ALLOW, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, UPGRADE, VARY,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use opamp_proto::{AgentToServer, InstanceUid, Message, ServerToAgent};

use super::{OPAMP_INSTANCE_UID, PROTOBUF_CONTENT_TYPE};
use crate::TransportKind;
use crate::gzip::{self, CollectError, InflateError};

/// Responses smaller than this are not worth gzipping: the gzip framing
/// alone is 18 bytes and tiny protobufs barely compress.
const GZIP_MIN_SIZE: usize = 256;

/// What an incoming request on the OpAMP endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// An OpAMP request: a plain-HTTP exchange (`POST` with `Content-Type:
    /// application/x-protobuf`; read it with [`read_agent_message`]) or a
    /// WebSocket upgrade (`GET` with `Connection: upgrade` and `Upgrade:
    /// websocket`).
    Opamp(TransportKind),
    /// Neither: answer with [`Rejection::to_response`] instead of hanging.
    Reject(Rejection),
}

/// Why a request was not accepted as OpAMP, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    reason: &'static str,
    allow: Option<&'static str>,
}

impl Rejection {
    /// The status to answer with (400, 405 or 415).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A short human-readable reason, also used as the response body.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The response to send: the status, the reason as a text body, and
    /// `Allow` for 405.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = text_response(self.status, self.reason);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Classifies a request on the OpAMP endpoint (HTTP-04, WS-16).
///
/// - `Content-Type: application/x-protobuf` → `RequestKind::Opamp(TransportKind::PlainHttp)` if the
///   method is `POST`, else 405. The media type is compared case-insensitively
///   and parameters (`; charset=...`) are ignored, as HTTP defines media-type
///   equality; opamp-go compares the whole header string, and both accept
///   what OpAMP clients actually send.
/// - A WebSocket upgrade (`GET`, `Connection` has the `upgrade` token,
///   `Upgrade` has `websocket`) → `RequestKind::Opamp(TransportKind::WebSocket)`. The handshake
///   itself (key, version) is checked by the WebSocket acceptor.
/// - Otherwise a rejection: `POST` with another or no content type → 415, a
///   plain `GET` → 400, any other method → 405. The spec treats "not
///   protobuf" as WebSocket, but a request that does not ask to upgrade
///   cannot become one, so it gets a prompt error rather than a hang.
pub fn classify<B>(request: &Request<B>) -> RequestKind {
    classify_head(request.method(), request.headers())
}

/// [`classify`] for code that holds the split [`http::request::Parts`].
pub fn classify_parts(parts: &http::request::Parts) -> RequestKind {
    classify_head(&parts.method, &parts.headers)
}

fn classify_head(method: &Method, headers: &HeaderMap) -> RequestKind {
    if is_protobuf(headers) {
        if method == Method::POST {
            return RequestKind::Opamp(TransportKind::PlainHttp);
        }
        return RequestKind::Reject(Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "OpAMP plain-HTTP requests must use POST",
            allow: Some("POST"),
        });
    }
    if method == Method::GET && has_token(headers, &CONNECTION, "upgrade") {
        if has_token(headers, &UPGRADE, "websocket") {
            return RequestKind::Opamp(TransportKind::WebSocket);
        }
        return RequestKind::Reject(Rejection {
            status: StatusCode::BAD_REQUEST,
            reason: "only WebSocket upgrades are supported",
            allow: None,
        });
    }
    let rejection = match *method {
        Method::POST => Rejection {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "OpAMP plain-HTTP requests must have Content-Type: application/x-protobuf",
            allow: None,
        },
        Method::GET => Rejection {
            status: StatusCode::BAD_REQUEST,
            reason: "expected a WebSocket upgrade or a POST of application/x-protobuf",
            allow: None,
        },
        _ => Rejection {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "the OpAMP endpoint accepts GET (WebSocket) and POST (plain HTTP)",
            allow: Some("GET, POST"),
        },
    };
    RequestKind::Reject(rejection)
}

/// True when `Content-Type` names `application/x-protobuf`, parameters
/// ignored. More than one `Content-Type` header is not protobuf.
fn is_protobuf(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let media_type = text.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case(PROTOBUF_CONTENT_TYPE)
}

/// True when a comma-separated header (over all its lines) lists `token`
/// (case-insensitive). Also used by the WebSocket upgrade checks.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The `OpAMP-Instance-UID` request header (HTTP-08), if present and a UUID.
/// Useful for routing before the body is read; the body stays authoritative.
pub fn instance_uid_header(headers: &HeaderMap) -> Option<InstanceUid> {
    headers
        .get(OPAMP_INSTANCE_UID)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why an `AgentToServer` request body could not be read. Each maps to the
/// status to answer with ([`status`](Self::status),
/// [`to_response`](Self::to_response)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The body, after decompression, is larger than the limit (HTTP-17): 413.
    /// The client must not retry the same request.
    #[error("request body exceeds the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// `Content-Encoding` is neither gzip nor identity: 415.
    #[error("unsupported Content-Encoding {encoding:?}")]
    UnsupportedEncoding {
        /// The coding as sent (truncated).
        encoding: String,
    },
    /// The body claimed gzip but is not valid gzip (bad data, truncated): 400.
    #[error("invalid gzip request body: {0}")]
    InvalidGzip(#[source] io::Error),
    /// The body is empty, so it carries no `instance_uid`: 400.
    #[error("empty request body")]
    EmptyBody,
    /// The body is not a valid `AgentToServer` (truncated, lengths that lie,
    /// wrong wire types): 400.
    #[error("undecodable AgentToServer: {0}")]
    Decode(#[source] opamp_proto::DecodeError),
    /// The whole body did not arrive within the read timeout: 408.
    #[error("request body not received within {timeout:?}")]
    Timeout {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The body stream failed (connection reset, length mismatch): 400.
    #[error("failed to read request body: {0}")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
}

impl ReadError {
    /// The HTTP status this error should be answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidGzip(_) | Self::EmptyBody | Self::Decode(_) | Self::Body(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The response to send: the status with the error text as body. A 408
    /// also says `Connection: close`, since the rest of that body may still be
    /// in flight.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = text_response(self.status(), &self.to_string());
        if matches!(self, Self::UnsupportedEncoding { .. }) {
            // RFC 9110 §15.5.16: tell the client which codings work.
            response.headers_mut().insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, identity"),
            );
        }
        if matches!(self, Self::Timeout { .. } | Self::TooLarge { .. }) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Reads and decodes an `AgentToServer` request body.
///
/// - `Content-Encoding: gzip` is decompressed; identity and no header are
///   read as is (HTTP-06).
/// - `max_message_size` applies to the decompressed bytes, and reading stops
///   as soon as it is passed (HTTP-16, HTTP-17), so memory stays bounded.
/// - The whole body must arrive within `read_timeout`, which stops clients
///   that trickle bytes.
///
/// Call it after [`classify`] returned `RequestKind::Opamp(TransportKind::PlainHttp)`.
pub async fn read_agent_message<B>(
    body: B,
    headers: &HeaderMap,
    max_message_size: usize,
    read_timeout: Duration,
) -> Result<AgentToServer, ReadError>
where
    B: Body,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let encoding =
        gzip::body_encoding(headers).map_err(|unsupported| ReadError::UnsupportedEncoding {
            encoding: unsupported.0,
        })?;
    let collected = tokio::time::timeout(
        read_timeout,
        gzip::collect_bounded(body, encoding, max_message_size),
    )
    .await
    .map_err(|_| ReadError::Timeout {
        timeout: read_timeout,
    })?;
    let bytes = collected.map_err(|error| match error {
        CollectError::TooLarge { limit } => ReadError::TooLarge { limit },
        CollectError::Corrupt(error) => ReadError::InvalidGzip(error),
        CollectError::Body(error) => ReadError::Body(error.into()),
    })?;
    if bytes.is_empty() {
        return Err(ReadError::EmptyBody);
    }
    AgentToServer::decode(bytes).map_err(ReadError::Decode)
}

/// The response was too large to send (HTTP-19).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ServerToAgent of {size} bytes exceeds the {limit}-byte limit")]
#[non_exhaustive]
pub struct ResponseTooLarge {
    /// Encoded size of the message, before compression.
    pub size: usize,
    /// The configured limit.
    pub limit: usize,
}

impl ResponseTooLarge {
    /// The 500 response to send instead: the body must not be sent (HTTP-19).
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response exceeds the message size limit",
        )
    }
}

/// Builds the 200 response carrying `message`.
///
/// `Content-Type` is exactly `application/x-protobuf`. The body is gzipped
/// (with `Content-Encoding: gzip`) when the request's `Accept-Encoding`
/// allows gzip (HTTP-07), the message is at least 256 bytes, and compression
/// actually shrinks it; otherwise it is sent as is, without any
/// `Content-Encoding` (never `identity`). `Vary: Accept-Encoding` is always
/// set.
///
/// The size limit is checked on the encoded message before compression
/// (HTTP-19); over it, nothing is sent and the caller should answer with
/// [`ResponseTooLarge::to_response`] and record the drop.
pub fn response_for(
    message: &ServerToAgent,
    request_headers: &HeaderMap,
    max_message_size: usize,
) -> Result<Response<Full<Bytes>>, ResponseTooLarge> {
    let size = message.encoded_len();
    if size > max_message_size {
        return Err(ResponseTooLarge {
            size,
            limit: max_message_size,
        });
    }
    let encoded = message.encode_to_vec();
    let mut gzipped = false;
    let body = if encoded.len() >= GZIP_MIN_SIZE && accepts_gzip(request_headers) {
        let packed = gzip::compress(&encoded);
        if packed.len() < encoded.len() {
            gzipped = true;
            packed
        } else {
            encoded
        }
    } else {
        encoded
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
    );
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if gzipped {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

/// Whether `Accept-Encoding` allows gzip. An explicit `gzip` (or `x-gzip`)
/// entry decides by its q-value; otherwise `*` does; `q=0` forbids. Without
/// the header nothing is compressed, as opamp-go does. Malformed q-values
/// make that entry count as absent.
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut explicit: Option<bool> = None;
    let mut wildcard: Option<bool> = None;
    let entries = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','));
    for entry in entries {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let mut weight = Some(true);
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                weight = parse_qvalue(value.trim()).map(|q| q > 0);
            }
        }
        let Some(allowed) = weight else {
            continue;
        };
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            explicit = Some(explicit.unwrap_or(false) || allowed);
        } else if coding == "*" {
            wildcard = Some(wildcard.unwrap_or(false) || allowed);
        }
    }
    explicit.or(wildcard).unwrap_or(false)
}

/// Parses an RFC 9110 qvalue (`0`, `0.5`, `1.000`) as thousandths.
fn parse_qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, digit| acc * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// `429 Too Many Requests`, with `Retry-After` in whole seconds (rounded up)
/// when given (HTTP-21, WS-24).
pub fn too_many_requests(retry_after: Option<Duration>) -> Response<Full<Bytes>> {
    retry_later(StatusCode::TOO_MANY_REQUESTS, retry_after)
}

/// `503 Service Unavailable`, with `Retry-After` in whole seconds (rounded
/// up) when given (HTTP-21, WS-24).
pub fn service_unavailable(retry_after: Option<Duration>) -> Response<Full<Bytes>> {
    retry_later(StatusCode::SERVICE_UNAVAILABLE, retry_after)
}

fn retry_later(status: StatusCode, retry_after: Option<Duration>) -> Response<Full<Bytes>> {
    let mut response = text_response(status, "server busy, retry later");
    if let Some(delay) = retry_after {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `401 Unauthorized` (CONN-06). Pass the `WWW-Authenticate` challenge for
/// your scheme (for example `Bearer realm="opamp"`); HTTP expects one on
/// every 401.
pub fn unauthorized(challenge: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = text_response(StatusCode::UNAUTHORIZED, "authentication required");
    if let Some(challenge) = challenge {
        response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    }
    response
}

fn text_response(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Gunzips a plain-HTTP body with the size limit applied to the decompressed
/// bytes (HTTP-18), then decodes it. Errors are the ones a server answers
/// with: [`ReadError::TooLarge`] (413), [`ReadError::InvalidGzip`] or
/// [`ReadError::Decode`] (400).
pub fn decode_gzip_body<M: prost::Message + Default>(
    body: &[u8],
    limit: usize,
) -> Result<M, ReadError> {
    let plain = gzip::decompress(body, limit).map_err(|error| match error {
        InflateError::TooLarge { limit } => ReadError::TooLarge { limit },
        InflateError::Corrupt(io) => ReadError::InvalidGzip(io),
    })?;
    M::decode(Bytes::from(plain)).map_err(ReadError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/v1/opamp");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn status_of(kind: RequestKind) -> Option<StatusCode> {
        match kind {
            RequestKind::Reject(rejection) => Some(rejection.status()),
            _ => None,
        }
    }

    /// HTTP-04, WS-16: protobuf POST is plain HTTP, an upgrade is WebSocket.
    #[test]
    fn http_04_ws_16_classification() {
        let post = request(Method::POST, &[("content-type", "application/x-protobuf")]);
        assert_eq!(
            classify(&post),
            RequestKind::Opamp(TransportKind::PlainHttp)
        );
        let post = request(
            Method::POST,
            &[("content-type", "Application/X-Protobuf; v=1")],
        );
        assert_eq!(
            classify(&post),
            RequestKind::Opamp(TransportKind::PlainHttp)
        );

        let upgrade = request(
            Method::GET,
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket"),
            ],
        );
        assert_eq!(
            classify(&upgrade),
            RequestKind::Opamp(TransportKind::WebSocket)
        );
        let (parts, ()) = upgrade.into_parts();
        assert_eq!(
            classify_parts(&parts),
            RequestKind::Opamp(TransportKind::WebSocket)
        );
    }

    /// HTTP-04, WS-16: anything else gets a prompt 400/405/415.
    #[test]
    fn http_04_other_requests_are_rejected_with_a_status() {
        let cases = [
            (
                request(Method::POST, &[("content-type", "application/json")]),
                415,
            ),
            (request(Method::POST, &[]), 415),
            (
                request(
                    Method::POST,
                    &[("content-type", "application/x-protobuffer")],
                ),
                415,
            ),
            (request(Method::GET, &[]), 400),
            (
                request(
                    Method::GET,
                    &[("connection", "upgrade"), ("upgrade", "h2c")],
                ),
                400,
            ),
            (
                request(Method::PUT, &[("content-type", "application/x-protobuf")]),
                405,
            ),
            (request(Method::DELETE, &[]), 405),
            (
                request(
                    Method::POST,
                    &[
                        ("content-type", "application/x-protobuf"),
                        ("content-type", "text/plain"),
                    ],
                ),
                415,
            ),
        ];
        for (request, expected) in cases {
            let kind = classify(&request);
            assert_eq!(
                status_of(kind.clone()),
                Some(StatusCode::from_u16(expected).unwrap())
            );
            if let RequestKind::Reject(rejection) = kind {
                let response = rejection.to_response();
                assert_eq!(response.status().as_u16(), expected);
                assert_eq!(response.headers().contains_key(ALLOW), expected == 405);
            }
        }
    }

    #[test]
    fn instance_uid_header_is_parsed() {
        let mut headers = HeaderMap::new();
        assert_eq!(instance_uid_header(&headers), None);
        headers.insert(
            OPAMP_INSTANCE_UID,
            HeaderValue::from_static("0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f"),
        );
        assert_eq!(
            instance_uid_header(&headers)
                .map(|uid| uid.to_string())
                .as_deref(),
            Some("0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f")
        );
        headers.insert(OPAMP_INSTANCE_UID, HeaderValue::from_static("nope"));
        assert_eq!(instance_uid_header(&headers), None);
    }

    fn accept(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    /// HTTP-07: Accept-Encoding negotiation with q-values and `*`.
    #[test]
    fn http_07_accept_encoding_negotiation() {
        assert!(!accepts_gzip(&accept(&[])));
        assert!(accepts_gzip(&accept(&["gzip"])));
        assert!(accepts_gzip(&accept(&["deflate, GZIP;q=0.5"])));
        assert!(accepts_gzip(&accept(&["br", "x-gzip"])));
        assert!(accepts_gzip(&accept(&["*"])));
        assert!(accepts_gzip(&accept(&["gzip;q=0.001"])));
        assert!(accepts_gzip(&accept(&["gzip ; q=1.000"])));
        assert!(!accepts_gzip(&accept(&["gzip;q=0"])));
        assert!(!accepts_gzip(&accept(&["gzip;q=0.000"])));
        assert!(!accepts_gzip(&accept(&["*;q=0"])));
        assert!(!accepts_gzip(&accept(&["*, gzip;q=0"])));
        assert!(accepts_gzip(&accept(&["*;q=0, gzip"])));
        assert!(!accepts_gzip(&accept(&["identity"])));
        assert!(!accepts_gzip(&accept(&["br, deflate"])));
        // Malformed weights make the entry count as absent.
        assert!(!accepts_gzip(&accept(&["gzip;q=2"])));
        assert!(!accepts_gzip(&accept(&["gzip;q=0.0001"])));
        assert!(accepts_gzip(&accept(&["gzip;q=abc, *"])));
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue("0"), Some(0));
        assert_eq!(parse_qvalue("0."), Some(0));
        assert_eq!(parse_qvalue("0.5"), Some(500));
        assert_eq!(parse_qvalue("0.123"), Some(123));
        assert_eq!(parse_qvalue("1"), Some(1000));
        assert_eq!(parse_qvalue("1.0"), Some(1000));
        assert_eq!(parse_qvalue("1.5"), None);
        assert_eq!(parse_qvalue("0.-1"), None);
        assert_eq!(parse_qvalue(""), None);
    }

    fn big_message() -> ServerToAgent {
        ServerToAgent {
            instance_uid: Bytes::from_static(&[1; 16]),
            error_response: Some(opamp_proto::ServerErrorResponse {
                error_message: "repetitive ".repeat(100),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// HTTP-07: gzip only when allowed; never `Content-Encoding: identity`.
    #[test]
    fn http_07_response_is_gzipped_only_when_allowed() {
        let message = big_message();
        let plain = response_for(&message, &accept(&["gzip;q=0"]), 1 << 20).unwrap();
        assert_eq!(plain.headers()[CONTENT_TYPE], PROTOBUF_CONTENT_TYPE);
        assert!(!plain.headers().contains_key(CONTENT_ENCODING));

        let packed = response_for(&message, &accept(&["gzip"]), 1 << 20).unwrap();
        assert_eq!(packed.headers()[CONTENT_TYPE], PROTOBUF_CONTENT_TYPE);
        assert_eq!(packed.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(packed.headers()[VARY], "accept-encoding");

        // Tiny messages are sent as is even when gzip is allowed.
        let tiny = ServerToAgent::default();
        let response = response_for(&tiny, &accept(&["gzip"]), 1 << 20).unwrap();
        assert!(!response.headers().contains_key(CONTENT_ENCODING));
    }

    /// HTTP-19: the limit is checked on the encoded size, before compression.
    #[test]
    fn http_19_oversized_response_is_not_built() {
        let message = big_message();
        let size = message.encoded_len();
        assert!(response_for(&message, &accept(&["gzip"]), size).is_ok());
        let error = response_for(&message, &accept(&["gzip"]), size - 1).unwrap_err();
        assert_eq!(
            error,
            ResponseTooLarge {
                size,
                limit: size - 1
            }
        );
        assert_eq!(
            error.to_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    /// HTTP-21, WS-24, CONN-06: refusal responses.
    #[test]
    fn http_21_refusals_carry_retry_after() {
        let response = too_many_requests(Some(Duration::from_millis(1500)));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let response = service_unavailable(Some(Duration::from_secs(30)));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "30");
        assert!(
            !service_unavailable(None)
                .headers()
                .contains_key(RETRY_AFTER)
        );

        let response = unauthorized(Some(HeaderValue::from_static("Bearer realm=\"opamp\"")));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"opamp\""
        );
    }
}
