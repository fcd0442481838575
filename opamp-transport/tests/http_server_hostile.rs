//! Hostile requests against the server-side helpers: each gives a typed error
//! that maps to a status, never a panic, hang or unbounded buffer.

#[path = "common/http.rs"]
mod http_support;

use std::convert::Infallible;
use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::{Empty, Full, StreamBody};
use http_support::opamp_handler;
use opamp_proto::{AgentToServer, InstanceUid, Message, ServerToAgent};
use opamp_testkit::serve_http;
use opamp_transport::http::server::{ReadError, read_agent_message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LIMIT: usize = 64 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn message() -> AgentToServer {
    AgentToServer {
        instance_uid: InstanceUid::from_array([7; 16]).to_bytes(),
        sequence_num: 9,
        custom_capabilities: Some(opamp_proto::CustomCapabilities {
            capabilities: vec!["io.example.capability".to_owned()],
        }),
        ..Default::default()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn headers(encoding: Option<&'static str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if let Some(encoding) = encoding {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    headers
}

async fn read(body: Vec<u8>, encoding: Option<&'static str>) -> Result<AgentToServer, ReadError> {
    read_limited(Full::new(Bytes::from(body)), encoding, LIMIT).await
}

/// Reads an agent message of at most `limit` bytes from `body`, sent with
/// `encoding`.
async fn read_limited<B>(
    body: B,
    encoding: Option<&'static str>,
    limit: usize,
) -> Result<AgentToServer, ReadError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_agent_message(body, &headers(encoding), limit, READ_TIMEOUT).await
}

/// HTTP-06: both plain and gzipped bodies are accepted.
#[tokio::test]
async fn http_06_plain_and_gzipped_bodies() {
    let encoded = message().encode_to_vec();
    assert_eq!(read(encoded.clone(), None).await.unwrap(), message());
    assert_eq!(
        read(encoded.clone(), Some("identity")).await.unwrap(),
        message()
    );
    assert_eq!(read(gzip(&encoded), Some("gzip")).await.unwrap(), message());
}

/// HTTP-17: a gzip bomb (a few KiB inflating to 4 MiB, 64 times the limit)
/// is refused with 413 once the decompressed size passes the limit.
#[tokio::test]
async fn http_17_gzip_bomb_is_413() {
    let bomb = gzip(&vec![0u8; 4 * 1024 * 1024]);
    assert!(bomb.len() < 8 * 1024, "bomb is {} bytes", bomb.len());
    let error = read(bomb, Some("gzip")).await.unwrap_err();
    assert!(
        matches!(error, ReadError::TooLarge { limit: LIMIT }),
        "{error:?}"
    );
    assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// HTTP-17: the limit counts decompressed bytes: a body that is small on the
/// wire but over the limit once inflated is 413, and exactly at the limit is
/// accepted.
#[tokio::test]
async fn http_17_limit_is_measured_after_decompression() {
    let mut big = message();
    let padding = LIMIT - big.encoded_len() - 4;
    big.custom_capabilities = Some(opamp_proto::CustomCapabilities {
        capabilities: vec!["z".repeat(padding)],
    });
    let size = big.encoded_len();
    let encoded = big.encode_to_vec();
    let packed = gzip(&encoded);
    assert!(packed.len() < LIMIT / 10);

    let fits = read_limited(Full::new(Bytes::from(packed.clone())), Some("gzip"), size).await;
    assert_eq!(fits.unwrap(), big);
    let error = read_limited(Full::new(Bytes::from(packed)), Some("gzip"), size - 1)
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::TooLarge { .. }), "{error:?}");
    assert_eq!(error.to_response().status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Uncompressed over the limit: refused from the declared length.
    let error = read_limited(Full::new(Bytes::from(encoded)), None, size - 1)
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::TooLarge { .. }), "{error:?}");
}

/// A missing (empty) body carries no instance uid: 400.
#[tokio::test]
async fn missing_body_is_400() {
    let error = read_limited(Empty::<Bytes>::new(), None, LIMIT)
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::EmptyBody), "{error:?}");
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
}

/// Truncated protobuf: 400.
#[tokio::test]
async fn truncated_protobuf_is_400() {
    let encoded = message().encode_to_vec();
    let error = read(encoded[..encoded.len() - 5].to_vec(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::Decode(_)), "{error:?}");
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
}

/// Length-lying protobuf (a field claims far more bytes than follow, and a
/// varint length that overflows): 400, with no allocation of the claimed size.
#[tokio::test]
async fn length_lying_protobuf_is_400() {
    // Field 1 (instance_uid, bytes) claiming 2^31 bytes, followed by 3.
    let mut lying = vec![0x0a, 0x80, 0x80, 0x80, 0x80, 0x08];
    lying.extend_from_slice(&[1, 2, 3]);
    let error = read(lying, None).await.unwrap_err();
    assert!(matches!(error, ReadError::Decode(_)), "{error:?}");

    // An 11-byte varint length: malformed.
    let mut overlong = vec![0x0a];
    overlong.extend_from_slice(&[0xff; 10]);
    overlong.push(0x01);
    let error = read(overlong, None).await.unwrap_err();
    assert!(matches!(error, ReadError::Decode(_)), "{error:?}");

    // Wrong wire type for a known field (instance_uid as a varint).
    let error = read(vec![0x08, 0x01], None).await.unwrap_err();
    assert!(matches!(error, ReadError::Decode(_)), "{error:?}");
}

/// Bad gzip is 400; an unknown coding is 415 and names the accepted ones.
#[tokio::test]
async fn bad_encodings_are_typed() {
    let error = read(b"definitely not gzip".to_vec(), Some("gzip"))
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::InvalidGzip(_)), "{error:?}");
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);

    let packed = gzip(&message().encode_to_vec());
    let error = read(packed[..packed.len() / 2].to_vec(), Some("gzip"))
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::InvalidGzip(_)), "{error:?}");

    let error = read(message().encode_to_vec(), Some("br"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ReadError::UnsupportedEncoding { ref encoding } if encoding == "br"),
        "{error:?}"
    );
    let response = error.to_response();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        response
            .headers()
            .contains_key(http::header::ACCEPT_ENCODING)
    );
}

/// A body that never yields: 408 after the read timeout (paused clock).
#[tokio::test(start_paused = true)]
async fn slow_body_never_arriving_is_408() {
    let body = StreamBody::new(stream::pending::<Result<Frame<Bytes>, Infallible>>());
    let error = read_limited(body, None, LIMIT).await.unwrap_err();
    assert!(
        matches!(error, ReadError::Timeout { timeout } if timeout == READ_TIMEOUT),
        "{error:?}"
    );
    assert_eq!(error.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        error.to_response().headers()[http::header::CONNECTION],
        "close"
    );
}

/// A body trickling one byte per second forever: the timeout covers the
/// whole body, not each chunk, so it ends with 408.
#[tokio::test(start_paused = true)]
async fn trickling_body_is_408() {
    let trickle = stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\x0a"))),
            (),
        ))
    });
    let error = read_limited(StreamBody::new(trickle), None, LIMIT)
        .await
        .unwrap_err();
    assert!(matches!(error, ReadError::Timeout { .. }), "{error:?}");
}

/// Over a real connection: a Content-Length that lies (more promised than
/// sent before the client half-closes) is a body error, answered 400.
#[tokio::test]
async fn lying_content_length_over_the_network_is_400() {
    let (handler, _seen) = opamp_handler(LIMIT, |_| ServerToAgent::default());
    let server = serve_http(handler, None).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
              Content-Length: 100\r\n\r\n\x0a\x02ab",
        )
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
}

/// HTTP-04, WS-16 over a real connection: a POST with the wrong content type
/// gets 415 promptly, a bare GET 400, a PUT 405.
#[tokio::test]
async fn http_04_wrong_content_type_over_the_network() {
    let (handler, _seen) = opamp_handler(LIMIT, |_| ServerToAgent::default());
    let server = serve_http(handler, None).await;
    let cases: [(&[u8], &str); 3] = [
        (
            b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "HTTP/1.1 415 ",
        ),
        (
            b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"PUT /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405 ",
        ),
    ];
    for (request, expected) in cases {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(expected), "expected {expected}: {text}");
    }
}
