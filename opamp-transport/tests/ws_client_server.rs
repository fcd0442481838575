//! WebSocket client connector and server upgrade against each other over
//! 127.0.0.1, plus raw tungstenite peers for hostile frames (WS-01..WS-24).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{RawServerSocket, opamp_ws_handler, raw_ws_client, raw_ws_handler};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, StatusCode, header};
use opamp_proto::{AgentDisconnect, AgentToServer, CustomMessage, Message, ServerToAgent};
use opamp_testkit::{FullResponse, Handler, HttpServer, handler, serve_http, status_response};
use opamp_transport::http::server::{service_unavailable, unauthorized};
use opamp_transport::ws::client::WsClientConnection;
use opamp_transport::ws::server::{WsServerConfig, WsServerConnection};
use opamp_transport::ws::{
    CLOSE_GOING_AWAY, CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, CLOSE_UNSUPPORTED_DATA, WsConnection,
    WsError, WsReceiver,
};
use opamp_transport::{ClientOptions, ConnectError, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsProtocolError, Message as Raw};

const MIB: usize = 1024 * 1024;

fn agent(sequence_num: u64) -> AgentToServer {
    AgentToServer {
        instance_uid: Bytes::from_static(&[1; 16]),
        sequence_num,
        ..Default::default()
    }
}

fn server_message(flags: u64) -> ServerToAgent {
    ServerToAgent {
        instance_uid: Bytes::from_static(&[1; 16]),
        flags,
        ..Default::default()
    }
}

fn custom(data_len: usize) -> Option<CustomMessage> {
    Some(CustomMessage {
        capability: "test".into(),
        r#type: "blob".into(),
        data: Bytes::from(vec![0x5a; data_len]),
    })
}

/// A server accepting OpAMP upgrades, and the client options to reach it.
async fn opamp_server(
    config: WsServerConfig,
) -> (
    HttpServer,
    mpsc::UnboundedReceiver<(String, WsServerConnection)>,
    ClientOptions,
) {
    let (handler, accepted) = opamp_ws_handler(config);
    let server = serve_http(handler, None).await;
    let options = ClientOptions::new(server.url("ws", "/v1/opamp"));
    (server, accepted, options)
}

async fn connect_pair(
    config: WsServerConfig,
    options: impl FnOnce(ClientOptions) -> ClientOptions,
) -> (HttpServer, WsClientConnection, WsServerConnection) {
    let (server, mut accepted, base) = opamp_server(config).await;
    let client = WsClientConnection::connect(&options(base)).await.unwrap();
    let (_, server_side) = accepted.recv().await.unwrap();
    (server, client, server_side)
}

/// A client connected to a raw WebSocket peer, which speaks no OpAMP.
async fn client_with_raw_peer() -> (HttpServer, WsClientConnection, RawServerSocket) {
    let (handler, mut raw_sockets) = raw_ws_handler();
    let server = serve_http(handler, None).await;
    let client = WsClientConnection::connect(&ClientOptions::new(server.url("ws", "/")))
        .await
        .unwrap();
    let raw = raw_sockets.recv().await.unwrap();
    (server, client, raw)
}

#[tokio::test]
async fn ws_01_ws_07_messages_flow_both_ways() {
    let (_server, mut client, mut server_side) =
        connect_pair(WsServerConfig::default(), |o| o).await;

    client.send(&agent(1)).await.unwrap();
    client.send(&agent(2)).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(agent(1)));
    assert_eq!(server_side.recv().await.unwrap(), Some(agent(2)));

    server_side.send(&server_message(3)).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Some(server_message(3)));
}

#[tokio::test]
async fn ws_06_empty_messages_cross_the_wire() {
    let (_server, mut client, mut server_side) =
        connect_pair(WsServerConfig::default(), |o| o).await;
    client.send(&AgentToServer::default()).await.unwrap();
    assert_eq!(
        server_side.recv().await.unwrap(),
        Some(AgentToServer::default())
    );
    server_side.send(&ServerToAgent::default()).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Some(ServerToAgent::default()));
}

#[tokio::test]
async fn ws_03_frames_on_the_wire_carry_the_zero_header() {
    let (_server, client, mut raw) = client_with_raw_peer().await;
    client.send(&agent(9)).await.unwrap();
    let Some(Ok(Raw::Binary(data))) = raw.next().await else {
        panic!("expected a binary frame")
    };
    assert_eq!(data[0], 0x00);
    assert_eq!(&data[1..], &agent(9).encode_to_vec()[..]);
}

#[tokio::test]
async fn ws_13_split_halves_run_full_duplex_then_reunite_and_close() {
    let (_server, client, server_side) = connect_pair(WsServerConfig::default(), |o| o).await;
    let (client_tx, mut client_rx) = client.split();
    let (server_tx, mut server_rx) = server_side.split();

    // Both sides send before either receives.
    let sending = tokio::spawn({
        let client_tx = client_tx.clone();
        async move {
            for n in 0..3 {
                client_tx.send(&agent(n)).await.unwrap();
            }
        }
    });
    for n in 0..3 {
        server_tx.send(&server_message(n)).await.unwrap();
    }
    sending.await.unwrap();
    for n in 0..3 {
        assert_eq!(server_rx.recv().await.unwrap(), Some(agent(n)));
        assert_eq!(client_rx.recv().await.unwrap(), Some(server_message(n)));
    }

    let client = WsConnection::reunite(client_tx, client_rx).unwrap();
    let server_closing = tokio::spawn(async move {
        let result = server_rx.recv().await;
        (result, server_rx.peer_close().cloned())
    });
    client.close().await.unwrap();
    let (result, peer_close) = server_closing.await.unwrap();
    assert_eq!(result.unwrap(), None);
    assert_eq!(peer_close.unwrap().code, CLOSE_NORMAL);
}

#[tokio::test]
async fn reunite_rejects_halves_of_different_connections() {
    let (handler, mut accepted) = opamp_ws_handler(WsServerConfig::default());
    let server = serve_http(handler, None).await;
    let options = ClientOptions::new(server.url("ws", "/"));
    let first = WsClientConnection::connect(&options).await.unwrap();
    let second = WsClientConnection::connect(&options).await.unwrap();
    let _server_sides = (accepted.recv().await, accepted.recv().await);
    let (tx1, _rx1) = first.split();
    let (_tx2, rx2) = second.split();
    assert!(WsConnection::reunite(tx1, rx2).is_err());
}

#[tokio::test]
async fn ws_17_client_initiated_close_after_agent_disconnect() {
    let (_server, client, mut server_side) = connect_pair(WsServerConfig::default(), |o| o).await;
    let goodbye = AgentToServer {
        agent_disconnect: Some(AgentDisconnect {}),
        ..agent(5)
    };
    client.send(&goodbye).await.unwrap();

    let server_task = tokio::spawn(async move {
        let first = server_side.recv().await.unwrap();
        let end = server_side.recv().await.unwrap();
        (first, end, server_side.peer_close().cloned())
    });
    client.close().await.unwrap();
    let (first, end, peer_close) = server_task.await.unwrap();
    assert_eq!(first, Some(goodbye));
    assert_eq!(end, None, "clean close surfaces as end of stream");
    assert_eq!(peer_close.unwrap().code, CLOSE_NORMAL);
}

#[tokio::test]
async fn ws_18_server_initiated_close_with_going_away() {
    let (_server, mut client, server_side) = connect_pair(WsServerConfig::default(), |o| o).await;
    let client_task = tokio::spawn(async move {
        let end = client.recv().await;
        (
            end,
            client.peer_close().cloned(),
            client.send(&agent(1)).await,
        )
    });
    server_side
        .close_with(CLOSE_GOING_AWAY, "server shutting down")
        .await
        .unwrap();
    let (end, peer_close, send_after) = client_task.await.unwrap();
    assert_eq!(end.unwrap(), None);
    let peer_close = peer_close.unwrap();
    assert_eq!(
        (peer_close.code, peer_close.reason.as_str()),
        (CLOSE_GOING_AWAY, "server shutting down")
    );
    assert!(matches!(send_after, Err(WsError::Closed)), "{send_after:?}");
}

#[tokio::test]
async fn ws_17_close_wait_is_bounded_when_the_peer_never_answers() {
    // The raw peer is never polled, so it never answers the Close frame.
    let (_server, client, _silent_peer) = client_with_raw_peer().await;
    client.set_close_timeout(Duration::from_millis(50));
    let result = client.close().await;
    assert!(
        matches!(result, Err(WsError::CloseTimeout(t)) if t == Duration::from_millis(50)),
        "{result:?}"
    );
}

#[tokio::test]
async fn ws_09_server_closes_with_1009_on_a_65_mib_message() {
    let (_server, client, mut server_side) = connect_pair(WsServerConfig::default(), |o| {
        o.with_max_message_size(128 * MIB)
    })
    .await;
    let mut client_rx = send_65_mib(client, |custom_message| AgentToServer {
        custom_message,
        ..agent(1)
    });

    let error = server_side.recv().await.unwrap_err();
    match error {
        WsError::IncomingTooLarge { size, limit } => {
            assert!(size > 65 * MIB, "{size}");
            assert_eq!(limit, opamp_transport::DEFAULT_MAX_MESSAGE_SIZE);
        }
        other => panic!("expected IncomingTooLarge, got {other:?}"),
    }
    assert!(error_is_fatal(&server_side.recv().await));

    assert_eq!(client_rx.recv().await.unwrap(), None);
    assert_eq!(client_rx.peer_close().unwrap().code, CLOSE_MESSAGE_TOO_BIG);
}

/// Sends a message carrying a 65 MiB custom message (`with_custom` puts it
/// in) on `connection`, from a task that never finishes (the peer stops
/// reading after the header), with a short close timeout; returns the
/// receiving half.
fn send_65_mib<Tx, Rx>(
    connection: WsConnection<Tx, Rx>,
    with_custom: impl FnOnce(Option<CustomMessage>) -> Tx,
) -> WsReceiver<Rx>
where
    Tx: Message + Send + Sync + 'static,
    Rx: Message + Default,
{
    let big = with_custom(custom(65 * MIB));
    connection.set_close_timeout(Duration::from_millis(50));
    let (sender, receiver) = connection.split();
    tokio::spawn(async move {
        let _ = sender.send(&big).await;
    });
    receiver
}

fn error_is_fatal<T: std::fmt::Debug>(result: &Result<T, WsError>) -> bool {
    matches!(result, Err(e) if e.is_fatal())
}

#[tokio::test]
async fn ws_10_client_closes_with_1009_on_a_65_mib_message() {
    let (_server, mut client, server_side) = connect_pair(
        WsServerConfig::default().with_max_message_size(128 * MIB),
        |o| o,
    )
    .await;
    let mut server_rx = send_65_mib(server_side, |custom_message| ServerToAgent {
        custom_message,
        ..server_message(0)
    });

    let error = client.recv().await.unwrap_err();
    assert!(
        matches!(error, WsError::IncomingTooLarge { limit, .. } if limit == 64 * MIB),
        "{error:?}"
    );
    assert_eq!(server_rx.recv().await.unwrap(), None);
    assert_eq!(server_rx.peer_close().unwrap().code, CLOSE_MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn ws_08_limit_counts_header_plus_data_and_is_configurable() {
    let limit = 1000;
    let (_server, client, mut server_side) = connect_pair(
        WsServerConfig::default().with_max_message_size(limit),
        |o| o,
    )
    .await;
    let with_data = |n: usize| AgentToServer {
        custom_message: custom(n),
        ..agent(1)
    };
    let fits = (0..limit)
        .find(|&n| with_data(n).encoded_len() + 1 == limit)
        .expect("a size that frames to the limit");
    // Exactly at the limit: accepted.
    client.send(&with_data(fits)).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(with_data(fits)));

    // One byte more: closed with 1009.
    assert_eq!(with_data(fits + 1).encoded_len() + 1, limit + 1);
    client.send(&with_data(fits + 1)).await.unwrap();
    let error = server_side.recv().await.unwrap_err();
    assert!(
        matches!(error, WsError::IncomingTooLarge { size, limit: l } if size == limit + 1 && l == limit),
        "{error:?}"
    );
}

#[tokio::test]
async fn ws_12_oversize_outgoing_agent_message_is_not_sent() {
    let (_server, client, mut server_side) =
        connect_pair(WsServerConfig::default(), |o| o.with_max_message_size(512)).await;
    let big = AgentToServer {
        custom_message: custom(1024),
        ..agent(1)
    };
    let error = client.send(&big).await.unwrap_err();
    assert!(
        matches!(error, WsError::OutgoingTooLarge { limit: 512, .. }),
        "{error:?}"
    );
    assert!(!error.is_fatal());
    // The connection still works and the big message never arrived.
    client.send(&agent(2)).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(agent(2)));
}

#[tokio::test]
async fn ws_11_oversize_outgoing_server_message_is_not_sent() {
    let (_server, mut client, server_side) =
        connect_pair(WsServerConfig::default().with_max_message_size(512), |o| o).await;
    let big = ServerToAgent {
        custom_message: custom(1024),
        ..server_message(1)
    };
    let error = server_side.send(&big).await.unwrap_err();
    assert!(
        matches!(error, WsError::OutgoingTooLarge { size, limit: 512 } if size > 1024),
        "{error:?}"
    );
    server_side.send(&server_message(2)).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Some(server_message(2)));
}

#[tokio::test]
async fn ws_01_text_frame_to_server_is_typed_error_and_closed_1003() {
    let (server, mut accepted, _) = opamp_server(WsServerConfig::default()).await;
    let mut raw = raw_ws_client(&server.url("ws", "/")).await;
    let (_, mut server_side) = accepted.recv().await.unwrap();
    text_frame_is_refused_with_1003(&mut server_side, &mut raw).await;
}

#[tokio::test]
async fn ws_01_text_frame_to_client_is_typed_error_and_closed_1003() {
    let (_server, mut client, mut raw) = client_with_raw_peer().await;
    text_frame_is_refused_with_1003(&mut client, &mut raw).await;
}

/// WS-01: a text frame from the raw peer is a typed error for `connection`,
/// which closes with 1003.
async fn text_frame_is_refused_with_1003<Tx, Rx, S>(
    connection: &mut WsConnection<Tx, Rx>,
    raw: &mut S,
) where
    Tx: Message,
    Rx: Message + Default,
    S: SinkExt<Raw> + StreamExt<Item = Result<Raw, WsProtocolError>> + Unpin,
    S::Error: std::fmt::Debug,
{
    raw.send(Raw::text("hello")).await.unwrap();
    assert!(matches!(connection.recv().await, Err(WsError::TextFrame)));
    let Some(Ok(Raw::Close(Some(frame)))) = raw.next().await else {
        panic!("expected a Close frame")
    };
    assert_eq!(u16::from(frame.code), CLOSE_UNSUPPORTED_DATA);
}

#[tokio::test]
async fn ws_04_bad_headers_and_protobuf_are_typed_and_not_fatal() {
    let (server, mut accepted, _) = opamp_server(WsServerConfig::default()).await;
    let mut raw = raw_ws_client(&server.url("ws", "/")).await;
    let (_, mut server_side) = accepted.recv().await.unwrap();

    let mut ten_byte_varint = vec![0xff; 9];
    ten_byte_varint.push(0x01);
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (vec![0x01, 0x08, 0x01], FrameError::NonZeroHeader(1)),
        (vec![0x80, 0x00], FrameError::OverlongHeader),
        (ten_byte_varint, FrameError::NonZeroHeader(u64::MAX)),
        (vec![0x80; 11], FrameError::MalformedHeader),
        (vec![], FrameError::MissingHeader),
    ];
    for (frame, expected) in cases {
        raw.send(Raw::binary(frame.clone())).await.unwrap();
        match server_side.recv().await {
            Err(WsError::Frame(error)) => assert_eq!(error, expected, "{frame:?}"),
            other => panic!("{frame:?}: expected a frame error, got {other:?}"),
        }
    }
    // Truncated and length-lying protobuf after a valid header.
    for frame in [
        vec![0x00, 0x0a, 0x10, 0x01],
        vec![0x00, 0x0a, 0xe8, 0x07, 0x01],
    ] {
        raw.send(Raw::binary(frame)).await.unwrap();
        assert!(matches!(
            server_side.recv().await,
            Err(WsError::Frame(FrameError::Decode(_)))
        ));
    }
    // The connection is still usable.
    let mut valid = vec![0x00];
    valid.extend(agent(4).encode_to_vec());
    raw.send(Raw::binary(valid)).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(agent(4)));
}

#[tokio::test]
async fn amb_14_headerless_frames_rejected_by_default_accepted_on_opt_in() {
    let (handler, mut raw_sockets) = raw_ws_handler();
    let server = serve_http(handler, None).await;
    let legacy = server_message(7).encode_to_vec();

    let mut strict = WsClientConnection::connect(&ClientOptions::new(server.url("ws", "/")))
        .await
        .unwrap();
    let mut raw = raw_sockets.recv().await.unwrap();
    raw.send(Raw::binary(legacy.clone())).await.unwrap();
    assert!(matches!(
        strict.recv().await,
        Err(WsError::Frame(FrameError::NonZeroHeader(_)))
    ));

    let options = ClientOptions::new(server.url("ws", "/")).with_accept_headerless_frames(true);
    let mut lenient = WsClientConnection::connect(&options).await.unwrap();
    let mut raw = raw_sockets.recv().await.unwrap();
    raw.send(Raw::binary(legacy)).await.unwrap();
    assert_eq!(lenient.recv().await.unwrap(), Some(server_message(7)));
}

#[tokio::test]
async fn ws_15_pings_are_answered_while_receiving() {
    let (_server, mut client, mut raw) = client_with_raw_peer().await;
    let receiving = tokio::spawn(async move { client.recv().await });

    raw.send(Raw::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let Some(Ok(Raw::Pong(payload))) = raw.next().await else {
        panic!("expected a Pong")
    };
    assert_eq!(&payload[..], b"are you there");

    let mut frame = vec![0x00];
    frame.extend(server_message(1).encode_to_vec());
    raw.send(Raw::binary(frame)).await.unwrap();
    assert_eq!(receiving.await.unwrap().unwrap(), Some(server_message(1)));
}

#[tokio::test]
async fn peer_vanishing_without_close_is_a_reset() {
    let (_server, mut client, raw) = client_with_raw_peer().await;
    drop(raw);
    let error = client.recv().await.unwrap_err();
    assert!(
        matches!(error, WsError::ConnectionReset | WsError::Io(_)),
        "{error:?}"
    );
    assert!(matches!(client.recv().await, Err(WsError::Closed)));
}

/// The error a WebSocket connect gets from a server that answers every
/// request with `respond()`.
async fn refusal(respond: impl Fn() -> FullResponse + Send + Sync + 'static) -> ConnectError {
    let respond = Arc::new(respond);
    let server = serve_http(
        handler(move |_| {
            let response = respond();
            async move { response }
        }),
        None,
    )
    .await;
    WsClientConnection::connect(&ClientOptions::new(server.url("ws", "/")))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn ws_24_503_refusal_carries_retry_after_seconds() {
    let error = refusal(|| service_unavailable(Some(Duration::from_secs(120)))).await;
    match error {
        ConnectError::Refused {
            status,
            retry_after,
            ..
        } => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn ws_24_429_refusal_carries_retry_after_date() {
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let error = refusal(move || {
        status_response(
            StatusCode::TOO_MANY_REQUESTS,
            &[(header::RETRY_AFTER, &when)],
        )
    })
    .await;
    assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let retry_after = error.retry_after().expect("Retry-After parsed");
    // The date is an hour ahead (whole seconds), so the hint is close to it.
    assert!(
        retry_after > Duration::from_secs(3000) && retry_after <= Duration::from_secs(3600),
        "{retry_after:?}"
    );
}

#[tokio::test]
async fn conn_06_401_refusal_is_unauthorized() {
    let error = refusal(|| unauthorized(Some(HeaderValue::from_static("Bearer")))).await;
    match error {
        ConnectError::Unauthorized { headers } => {
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn other_refusal_status_is_typed_without_retry_after() {
    let error = refusal(|| status_response(StatusCode::FORBIDDEN, &[])).await;
    assert!(
        matches!(
            error,
            ConnectError::Refused {
                status: StatusCode::FORBIDDEN,
                retry_after: None,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn server_rejects_a_non_websocket_request_with_400() {
    let (server, _accepted, _) = opamp_server(WsServerConfig::default()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /v1/opamp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

/// Redirects `/hop/N` to `/hop/N+1` until `/hop/last`, which upgrades.
fn redirecting_handler(
    last: usize,
    status: StatusCode,
) -> (
    Handler,
    mpsc::UnboundedReceiver<(String, WsServerConnection)>,
) {
    let (opamp, accepted) = opamp_ws_handler(WsServerConfig::default());
    let handler = handler(move |request| {
        let opamp = opamp.clone();
        async move {
            let hop: usize = request
                .uri()
                .path()
                .trim_start_matches("/hop/")
                .parse()
                .unwrap_or(0);
            if hop < last {
                let location = format!("/hop/{}", hop + 1);
                status_response(status, &[(header::LOCATION, &location)])
            } else {
                opamp(request).await
            }
        }
    });
    (handler, accepted)
}

#[tokio::test]
async fn conn_01_redirects_are_followed_and_the_hook_runs_per_hop() {
    let (handler, mut accepted) = redirecting_handler(2, StatusCode::TEMPORARY_REDIRECT);
    let server = serve_http(handler, None).await;
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let counter = hook_calls.clone();
    let options = ClientOptions::new(server.url("http", "/hop/0")).with_header_hook(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let client = WsClientConnection::connect(&options).await.unwrap();
    let (path, mut server_side) = accepted.recv().await.unwrap();
    assert_eq!(path, "/hop/2");
    assert_eq!(hook_calls.load(Ordering::SeqCst), 3, "one call per request");
    client.send(&agent(1)).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(agent(1)));
}

#[tokio::test]
async fn too_many_redirects_are_refused() {
    let (handler, _accepted) = redirecting_handler(3, StatusCode::FOUND);
    let server = serve_http(handler, None).await;
    let options = ClientOptions::new(server.url("ws", "/hop/0")).with_max_redirects(2);
    let error = WsClientConnection::connect(&options).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::TooManyRedirects { limit: 2 }),
        "{error:?}"
    );
    // With the default limit (5) the same chain works.
    let options = ClientOptions::new(server.url("ws", "/hop/0"));
    WsClientConnection::connect(&options).await.unwrap();
}

#[tokio::test]
async fn redirect_loop_is_refused() {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let server =
        serve_http(
            handler(move |request| {
                seen.fetch_add(1, Ordering::SeqCst);
                let next = if request.uri().path() == "/a" {
                    "/b"
                } else {
                    "/a"
                };
                async move {
                    status_response(StatusCode::MOVED_PERMANENTLY, &[(header::LOCATION, next)])
                }
            }),
            None,
        )
        .await;
    let options = ClientOptions::new(server.url("ws", "/a")).with_max_redirects(50);
    let error = WsClientConnection::connect(&options).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::TooManyRedirects { .. }),
        "{error:?}"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the loop is detected, not run up to the limit"
    );
}

#[tokio::test]
async fn redirect_without_location_is_typed() {
    let server = serve_http(
        handler(|_| async { status_response(StatusCode::FOUND, &[]) }),
        None,
    )
    .await;
    let error = WsClientConnection::connect(&ClientOptions::new(server.url("ws", "/")))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::InvalidRedirect(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn conn_05_static_headers_and_hook_are_sent_on_every_connect() {
    let (opamp, mut accepted) = opamp_ws_handler(WsServerConfig::default());
    let (headers_tx, mut headers_rx) = mpsc::unbounded_channel();
    let server = serve_http(
        handler(move |request| {
            let _ = headers_tx.send(request.headers().clone());
            opamp(request)
        }),
        None,
    )
    .await;
    let token = Arc::new(AtomicUsize::new(0));
    let next_token = token.clone();
    let options = ClientOptions::new(server.url("ws", "/"))
        .with_header(header::USER_AGENT, HeaderValue::from_static("test-agent/1"))
        .with_header_hook(move |headers| {
            let n = next_token.fetch_add(1, Ordering::SeqCst) + 1;
            headers.insert(
                header::AUTHORIZATION,
                format!("Bearer token-{n}").parse().unwrap(),
            );
        });
    for n in 1..=2 {
        let _client = WsClientConnection::connect(&options).await.unwrap();
        let _server_side = accepted.recv().await.unwrap();
        let headers = headers_rx.recv().await.unwrap();
        assert_eq!(headers[header::USER_AGENT], "test-agent/1");
        assert_eq!(
            headers[header::AUTHORIZATION],
            format!("Bearer token-{n}").as_str()
        );
    }
    assert_eq!(token.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connect_to_a_closed_port_is_an_io_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let options = ClientOptions::new(format!("ws://{addr}/").parse().unwrap());
    let error = WsClientConnection::connect(&options).await.unwrap_err();
    assert!(matches!(error, ConnectError::Io(_)), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_applies_to_a_silent_server() {
    // Accepts TCP but never answers the upgrade request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let options = ClientOptions::new(format!("ws://{addr}/").parse().unwrap())
        .with_connect_timeout(Duration::from_secs(10));
    let error = WsClientConnection::connect(&options).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Timeout(t) if t == Duration::from_secs(10)),
        "{error:?}"
    );
}

#[tokio::test]
async fn conn_01_connect_through_a_connect_proxy_with_credentials_and_headers() {
    let (_server, mut accepted, base) = opamp_server(WsServerConfig::default()).await;
    let proxy = common::proxy(200).await;
    let mut extra = http::HeaderMap::new();
    extra.insert("x-proxy-tenant", HeaderValue::from_static("blue"));
    let options = base.with_proxy(
        opamp_transport::ProxyConfig::new(proxy.url("agent:s3cret@")).with_headers(extra),
    );
    let client = WsClientConnection::connect(&options).await.unwrap();
    let (_, mut server_side) = accepted.recv().await.unwrap();
    client.send(&agent(1)).await.unwrap();
    assert_eq!(server_side.recv().await.unwrap(), Some(agent(1)));

    let requests = proxy.requests();
    assert_eq!(requests.len(), 1);
    let target = format!(
        "{}:{}",
        options.endpoint.host_str().unwrap(),
        options.endpoint.port().unwrap()
    );
    assert_eq!(
        requests[0].request_line,
        format!("CONNECT {target} HTTP/1.1")
    );
    assert_eq!(requests[0].header("host"), Some(target.as_str()));
    assert_eq!(requests[0].header("x-proxy-tenant"), Some("blue"));
    let expected = format!("Basic {}", base64_encode("agent:s3cret"));
    assert_eq!(
        requests[0].header("proxy-authorization"),
        Some(expected.as_str())
    );
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn proxy_refusal_is_typed() {
    let proxy = common::proxy(407).await;
    let options = ClientOptions::new("ws://127.0.0.1:9/".parse().unwrap())
        .with_proxy(opamp_transport::ProxyConfig::new(proxy.url("")));
    let error = WsClientConnection::connect(&options).await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Proxy { status } if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED),
        "{error:?}"
    );
    assert_eq!(
        error.status(),
        Some(StatusCode::PROXY_AUTHENTICATION_REQUIRED)
    );
}
