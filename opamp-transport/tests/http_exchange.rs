//! Plain-HTTP client against a real hyper server on 127.0.0.1 (HTTP-01..21).

#[path = "common/http.rs"]
mod http_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use http_support::{echo, fixed_response, opamp_handler};
use opamp_proto::{AgentToServer, InstanceUid, Message, ServerErrorResponse, ServerToAgent};
use opamp_testkit::{Handler, serve_http, status_response};
use opamp_transport::http::client::{HttpError, HttpPoster};
use opamp_transport::http::server::{service_unavailable, too_many_requests, unauthorized};
use opamp_transport::http::{OPAMP_INSTANCE_UID, PROTOBUF_CONTENT_TYPE};
use opamp_transport::{ClientOptions, ConnectError};

const LIMIT: usize = 1024 * 1024;

fn uid() -> InstanceUid {
    "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f".parse().unwrap()
}

fn agent_message(sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: uid().to_bytes(),
        sequence_num,
        capabilities: 1,
        ..Default::default()
    }
}

/// A reply big and repetitive enough for the server to gzip it.
fn big_reply(message: &AgentToServer) -> ServerToAgent {
    ServerToAgent {
        instance_uid: message.instance_uid.clone(),
        error_response: Some(ServerErrorResponse {
            error_message: "all work and no play ".repeat(500),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn options_for(url: url::Url) -> ClientOptions {
    ClientOptions::new(url).with_max_message_size(LIMIT)
}

/// The error one exchange gets from a server that answers every request
/// with `respond()`.
async fn exchange_error(
    respond: impl Fn() -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> HttpError {
    let server = serve_http(fixed_response(respond), None).await;
    let poster = HttpPoster::new(options_for(server.url("http", "/"))).unwrap();
    poster.exchange(uid(), &agent_message(1)).await.unwrap_err()
}

/// HTTP-01, HTTP-03, HTTP-08, HTTP-09: a POST with the protobuf content type
/// and the canonical uid header; static headers and the hook go on every
/// request.
#[tokio::test]
async fn http_01_03_08_exchange_sends_required_headers() {
    let (handler, mut seen) = opamp_handler(LIMIT, echo);
    let server = serve_http(handler, None).await;
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hook_calls);
    let options = options_for(server.url("http", "/v1/opamp"))
        .with_header(
            http::header::USER_AGENT,
            HeaderValue::from_static("opamp-test/1"),
        )
        .with_header_hook(move |headers| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            headers.insert("x-token", HeaderValue::from(n));
        });
    let poster = HttpPoster::new(options).unwrap();

    for sequence in 1..=2u64 {
        let reply = poster
            .exchange(uid(), &agent_message(sequence))
            .await
            .unwrap();
        assert_eq!(reply.capabilities, sequence);
        assert_eq!(reply.instance_uid, uid().to_bytes());

        let request = seen.recv().await.unwrap();
        assert_eq!(request.message, agent_message(sequence));
        let headers = &request.headers;
        assert_eq!(headers[CONTENT_TYPE], PROTOBUF_CONTENT_TYPE);
        assert_eq!(
            headers[OPAMP_INSTANCE_UID],
            "0191e3a8-c4b2-7c3d-8e9f-0a1b2c3d4e5f"
        );
        assert_eq!(headers[http::header::USER_AGENT], "opamp-test/1");
        assert_eq!(headers["x-token"], sequence.to_string().as_str());
        assert_eq!(headers[http::header::ACCEPT_ENCODING], "gzip");
        assert!(!headers.contains_key(CONTENT_ENCODING));
    }
    assert_eq!(hook_calls.load(Ordering::SeqCst), 2);
}

/// HTTP-05, HTTP-06: a gzipped request body carries `Content-Encoding: gzip`
/// and the server helper decodes it.
#[tokio::test]
async fn http_05_06_gzipped_request_is_accepted() {
    let (handler, mut seen) = opamp_handler(LIMIT, echo);
    let server = serve_http(handler, None).await;
    let poster = HttpPoster::new(options_for(server.url("http", "/v1/opamp")))
        .unwrap()
        .with_gzip_requests(true);
    let reply = poster.exchange(uid(), &agent_message(7)).await.unwrap();
    assert_eq!(reply.capabilities, 7);
    let request = seen.recv().await.unwrap();
    assert_eq!(request.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(request.message, agent_message(7));
}

/// HTTP-07: the server gzips a large reply because the client offers gzip,
/// and the client decompresses it.
#[tokio::test]
async fn http_07_gzipped_response_is_decoded() {
    let (inner, _seen) = opamp_handler(LIMIT, big_reply);
    let gzipped = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&gzipped);
    // Wrap the handler to observe what went on the wire.
    let handler: Handler = Arc::new(move |request| {
        let response = inner(request);
        let count = Arc::clone(&count);
        Box::pin(async move {
            let response = response.await;
            if response
                .headers()
                .get(CONTENT_ENCODING)
                .is_some_and(|v| v == "gzip")
            {
                count.fetch_add(1, Ordering::SeqCst);
            }
            response
        })
    });
    let server = serve_http(handler, None).await;
    let poster = HttpPoster::new(options_for(server.url("http", "/v1/opamp"))).unwrap();
    let reply = poster.exchange(uid(), &agent_message(1)).await.unwrap();
    assert_eq!(reply, big_reply(&agent_message(1)));
    assert_eq!(gzipped.load(Ordering::SeqCst), 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn protobuf_response(body: Vec<u8>, gzipped: bool) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(PROTOBUF_CONTENT_TYPE),
    );
    if gzipped {
        response
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// HTTP-18: a few KiB of gzip that inflate past the limit are dropped as
/// `ResponseTooLarge`, not processed; a reply under the limit passes.
#[tokio::test]
async fn http_18_response_limit_applies_after_decompression() {
    // A valid ServerToAgent of about 2 MiB: one long error message.
    let huge = ServerToAgent {
        error_response: Some(ServerErrorResponse {
            error_message: "x".repeat(2 * LIMIT),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let bomb = gzip(&huge);
    assert!(bomb.len() < 16 * 1024, "bomb is {} bytes", bomb.len());
    let error = exchange_error(move || protobuf_response(bomb.clone(), true)).await;
    assert!(
        matches!(error, HttpError::ResponseTooLarge { limit: LIMIT }),
        "{error:?}"
    );
    assert!(!error.is_retryable());

    // Same payload without compression: still too large.
    let error = exchange_error(move || protobuf_response(huge.clone(), false)).await;
    assert!(
        matches!(error, HttpError::ResponseTooLarge { .. }),
        "{error:?}"
    );
}

/// HTTP-20: a request over the limit is not sent at all.
#[tokio::test]
async fn http_20_oversized_request_is_not_sent() {
    let (handler, _seen) = opamp_handler(LIMIT, echo);
    let server = serve_http(handler, None).await;
    let options = options_for(server.url("http", "/")).with_max_message_size(64);
    let poster = HttpPoster::new(options).unwrap();
    let mut message = agent_message(1);
    message.capabilities = u64::MAX;
    message.custom_capabilities = Some(opamp_proto::CustomCapabilities {
        capabilities: vec!["x".repeat(100)],
    });
    let error = poster.exchange(uid(), &message).await.unwrap_err();
    assert!(
        matches!(error, HttpError::RequestTooLarge { limit: 64, size } if size > 64),
        "{error:?}"
    );
    assert_eq!(server.connection_count(), 0);
}

/// HTTP-17: the server helper answers 413 for a body over its limit
/// (measured after decompression), and the client reports it as not
/// retryable.
#[tokio::test]
async fn http_17_server_413_is_not_retryable() {
    let (handler, _seen) = opamp_handler(32, echo);
    let server = serve_http(handler, None).await;
    let poster = HttpPoster::new(options_for(server.url("http", "/")))
        .unwrap()
        .with_gzip_requests(true);
    let mut message = agent_message(1);
    // Compresses far below 32 bytes on the wire, but decodes to more.
    message.custom_capabilities = Some(opamp_proto::CustomCapabilities {
        capabilities: vec!["a".repeat(400)],
    });
    let error = poster.exchange(uid(), &message).await.unwrap_err();
    assert!(matches!(error, HttpError::PayloadTooLarge), "{error:?}");
    assert_eq!(error.status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
    assert!(!error.is_retryable());
}

/// HTTP-21: 429 with delta-seconds `Retry-After`.
#[tokio::test]
async fn http_21_429_with_delta_seconds() {
    let error = exchange_error(|| too_many_requests(Some(Duration::from_secs(42)))).await;
    assert!(
        matches!(
            error,
            HttpError::RetryLater {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: Some(d),
            } if d == Duration::from_secs(42)
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

/// HTTP-21: 503 with an HTTP-date `Retry-After`, in the future and in the
/// past (retry now); without the header there is no hint.
#[tokio::test]
async fn http_21_503_with_http_date() {
    let future = SystemTime::now() + Duration::from_secs(3600);
    let future_date = httpdate::fmt_http_date(future);
    let error = exchange_error(move || {
        let mut response = service_unavailable(None);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_str(&future_date).unwrap());
        response
    })
    .await;
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    // The date has one-second resolution and time passes during the test.
    let hint = error.retry_after().unwrap();
    assert!(hint <= Duration::from_secs(3600), "{hint:?}");
    assert!(hint >= Duration::from_secs(3000), "{hint:?}");

    let error = exchange_error(|| {
        let mut response = service_unavailable(None);
        response.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        response
    })
    .await;
    assert_eq!(error.retry_after(), Some(Duration::ZERO));

    let error = exchange_error(|| service_unavailable(None)).await;
    assert!(matches!(
        error,
        HttpError::RetryLater {
            retry_after: None,
            ..
        }
    ));
}

/// CONN-06, HTTP-23: 401 surfaces as `Unauthorized` with the challenge.
#[tokio::test]
async fn conn_06_unauthorized() {
    let error =
        exchange_error(|| unauthorized(Some(HeaderValue::from_static("Bearer realm=\"opamp\""))))
            .await;
    match error {
        HttpError::Unauthorized { challenge } => {
            assert_eq!(challenge.unwrap(), "Bearer realm=\"opamp\"");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

/// AMB-13: any other status is typed, and undecodable bodies are `Decode`.
#[tokio::test]
async fn other_statuses_and_garbage_bodies_are_typed() {
    let error = exchange_error(|| status_response(StatusCode::NOT_FOUND, &[])).await;
    assert!(matches!(
        error,
        HttpError::Status {
            status: StatusCode::NOT_FOUND
        }
    ));
    assert!(!error.is_retryable());

    // A length-delimited field claiming 100 bytes with 2 present.
    let error = exchange_error(|| protobuf_response(vec![0x0a, 100, 1, 2], false)).await;
    assert!(matches!(error, HttpError::Decode(_)), "{error:?}");

    // Truncated gzip.
    let error = exchange_error(|| {
        let packed = gzip(&echo(&agent_message(1)).encode_to_vec());
        protobuf_response(packed[..packed.len() - 3].to_vec(), true)
    })
    .await;
    assert!(matches!(error, HttpError::InvalidBody(_)), "{error:?}");
}

/// ERR-04: no answer within the request timeout is `Timeout` (the server
/// holds every request forever).
#[tokio::test]
async fn err_04_request_timeout() {
    let handler: Handler = Arc::new(|_request| Box::pin(std::future::pending()));
    let server = serve_http(handler, None).await;
    let options =
        options_for(server.url("http", "/")).with_request_timeout(Duration::from_millis(200));
    let poster = HttpPoster::new(options).unwrap();
    let error = poster.exchange(uid(), &agent_message(1)).await.unwrap_err();
    assert!(
        matches!(error, HttpError::Timeout(d) if d == Duration::from_millis(200)),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

/// Nothing listens: a typed, retryable connect error.
#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = url::Url::parse(&format!("http://{addr}/v1/opamp")).unwrap();
    let poster = HttpPoster::new(options_for(url)).unwrap();
    let error = poster.exchange(uid(), &agent_message(1)).await.unwrap_err();
    assert!(
        matches!(error, HttpError::Connect(ConnectError::Io(_))),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

/// Redirects: 307/308 re-post the same body to the new location; loops stop
/// at `max_redirects`.
#[tokio::test]
async fn redirects_are_followed_with_the_same_body_and_bounded() {
    let (opamp, mut seen) = opamp_handler(LIMIT, echo);
    let handler: Handler = Arc::new(move |request| {
        if request.uri().path() == "/old" {
            return Box::pin(async {
                status_response(StatusCode::PERMANENT_REDIRECT, &[(LOCATION, "/v1/opamp")])
            });
        }
        if request.uri().path() == "/loop" {
            return Box::pin(async {
                status_response(StatusCode::TEMPORARY_REDIRECT, &[(LOCATION, "/loop")])
            });
        }
        opamp(request)
    });
    let server = serve_http(handler, None).await;

    let poster = HttpPoster::new(options_for(server.url("http", "/old"))).unwrap();
    let reply = poster.exchange(uid(), &agent_message(3)).await.unwrap();
    assert_eq!(reply.capabilities, 3);
    assert_eq!(seen.recv().await.unwrap().message, agent_message(3));

    let options = options_for(server.url("http", "/loop")).with_max_redirects(3);
    let poster = HttpPoster::new(options).unwrap();
    let error = poster.exchange(uid(), &agent_message(1)).await.unwrap_err();
    assert!(
        matches!(
            error,
            HttpError::Connect(ConnectError::TooManyRedirects { limit: 3 })
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

/// Downloads stream the body, send only the offered headers, and drop
/// credentials when a redirect leaves the origin.
#[tokio::test]
async fn download_streams_body_with_offered_headers() {
    use futures_util::StreamExt as _;

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (seen_sender, mut seen) = tokio::sync::mpsc::unbounded_channel::<HeaderMap>();
    let body = payload.clone();
    let file_server = serve_http(
        Arc::new(move |request: http::Request<hyper::body::Incoming>| {
            let _ = seen_sender.send(request.headers().clone());
            let body = body.clone();
            Box::pin(async move { Response::new(Full::new(Bytes::from(body))) })
        }),
        None,
    )
    .await;
    let file_url = file_server.url("http", "/pkg.tar.gz");
    let redirect_to = file_url.to_string();
    let redirector = serve_http(
        Arc::new(move |_request| {
            let location = HeaderValue::from_str(&redirect_to).unwrap();
            Box::pin(async move {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::FOUND;
                response.headers_mut().insert(LOCATION, location);
                response
            })
        }),
        None,
    )
    .await;

    let options = options_for(redirector.url("http", "/v1/opamp")).with_header(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("opamp-secret"),
    );
    let poster = HttpPoster::new(options).unwrap();
    let mut offered = HeaderMap::new();
    offered.insert("x-download-token", HeaderValue::from_static("t1"));
    offered.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer dl"),
    );

    // Direct: offered headers only, not the OpAMP static ones.
    let response = poster.download(&file_url, &offered).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), Some(payload.len() as u64));
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(received, payload);
    let headers = seen.recv().await.unwrap();
    assert_eq!(headers["x-download-token"], "t1");
    assert_eq!(headers[http::header::AUTHORIZATION], "Bearer dl");
    assert!(!headers.contains_key(http::header::ACCEPT_ENCODING));

    // Through a cross-origin redirect: Authorization is dropped.
    let start = redirector.url("http", "/files/pkg");
    let response = poster.download(&start, &offered).await.unwrap();
    let bytes = response.bytes_limited(payload.len()).await.unwrap();
    assert_eq!(&bytes[..], &payload[..]);
    let headers = seen.recv().await.unwrap();
    assert_eq!(headers["x-download-token"], "t1");
    assert!(!headers.contains_key(http::header::AUTHORIZATION));

    // A limit below the size is enforced.
    let response = poster.download(&file_url, &offered).await.unwrap();
    let error = response.bytes_limited(1000).await.unwrap_err();
    assert!(matches!(error, HttpError::ResponseTooLarge { limit: 1000 }));

    // Non-2xx is an error; non-http URLs are refused.
    let missing = serve_http(
        fixed_response(|| status_response(StatusCode::NOT_FOUND, &[])),
        None,
    )
    .await;
    let error = poster
        .download(&missing.url("http", "/nope"), &HeaderMap::new())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
    let error = poster
        .download(
            &url::Url::parse("ftp://127.0.0.1/x").unwrap(),
            &HeaderMap::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, HttpError::InvalidUrl(_)));
}

/// A download whose body stalls fails with `Timeout` instead of hanging.
#[tokio::test]
async fn download_body_stall_times_out() {
    use futures_util::StreamExt as _;

    // The server sends headers and one chunk, then never finishes the body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, hold) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buffer[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
            .await
            .unwrap();
        let _ = hold.await;
    });
    let url = url::Url::parse(&format!("http://{addr}/file")).unwrap();
    let options = options_for(url.clone()).with_request_timeout(Duration::from_secs(30));
    let poster = HttpPoster::new(options).unwrap();
    let mut body = poster
        .download(&url, &HeaderMap::new())
        .await
        .unwrap()
        .into_body();
    assert_eq!(&body.next().await.unwrap().unwrap()[..], b"first");
    // From here on nothing moves on the wire, so the paused clock jumps
    // straight to the idle deadline.
    tokio::time::pause();
    let error = body.next().await.unwrap().unwrap_err();
    assert!(matches!(error, HttpError::Timeout(_)), "{error:?}");
    assert!(body.next().await.is_none());
    drop(release);
    server.await.unwrap();
}

/// The poster goes through the same CONNECT proxy settings as the WebSocket
/// client: a minimal tunnelling proxy sees the CONNECT and relays bytes.
#[tokio::test]
async fn exchange_through_connect_proxy() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (handler, mut seen) = opamp_handler(LIMIT, echo);
    let server = serve_http(handler, None).await;
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (connect_lines, mut connects) = tokio::sync::mpsc::unbounded_channel::<String>();
    let proxy_task = tokio::spawn(async move {
        loop {
            let (mut client, _) = proxy.accept().await.unwrap();
            let connect_lines = connect_lines.clone();
            tokio::spawn(async move {
                // Byte by byte, so nothing after the head is swallowed.
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(client.read_u8().await.unwrap());
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split_whitespace().nth(1).unwrap().to_owned();
                let _ = connect_lines.send(head.lines().next().unwrap().to_owned());
                let mut upstream = tokio::net::TcpStream::connect(&target).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });

    let proxy_url = url::Url::parse(&format!("http://{proxy_addr}")).unwrap();
    let options = options_for(server.url("http", "/v1/opamp"))
        .with_proxy(opamp_transport::ProxyConfig::new(proxy_url));
    let poster = HttpPoster::new(options).unwrap();
    let reply = poster.exchange(uid(), &agent_message(4)).await.unwrap();
    assert_eq!(reply.capabilities, 4);
    assert_eq!(seen.recv().await.unwrap().message, agent_message(4));
    assert_eq!(
        connects.recv().await.unwrap(),
        format!("CONNECT {} HTTP/1.1", server.addr)
    );
    proxy_task.abort();
}
